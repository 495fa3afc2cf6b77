"""Job records: the states a job goes through and the read-only view of one record.

A job record is the Redis hash ``P job:<id>`` (see :mod:`fcn_dist.queue.redis_queue` for the
keys and the transitions). Its fields: `id`, `spec` (the validated `JobSpec` as canonical JSON,
never pickle), `variant`, `backbone`, `name`, `state`, `attempts`, `max_attempts`, `priority`,
`score`, `seq`, `created_at`, `updated_at`, `started_at`, `finished_at`, `heartbeat_at` (seconds
since the epoch, server clock), `worker` (last claimer), `lease_deadline`, `retry_at`, `error`
(one line), `traceback` (tail), `result` (the run's JSON result summary), `depends_on` (parent
job id for staged chains), `init_from` (the parent's `best_checkpoint`, set when the parent
succeeds), `idem_key`, `run_dir`, `dashboard` (the Ray dashboard links, JSON), `progress`
(the run's latest epoch, step and metrics, JSON, published by the worker),
`cancel_requested` (`1` while a running job is being cancelled), `cancel_reason`,
`cancelled_by_parent`, `lease` (the fencing number of the latest claim: the holder presents it
with every call), `lease_ended` (how the holder of that lease ended it: `completed`, `failed`,
`released`, `cancelled`, or `expired` when it was reaped; empty while it runs), `lease_shifted`
(`1` once an outage moved the lease's deadline; cleared by the next heartbeat).

:class:`Job` parses the fields a caller needs (``score``, ``seq``, ``cancelled_by_parent`` and
``lease_shifted`` stay in ``Job.raw``). A record whose queue fields cannot be parsed is
*corrupt* (:func:`record_problem`; ``Job.corrupt`` says why): the scripts dead-letter it, lists
show it as ``corrupt``. The idempotency key of a submission is :func:`idempotency_key`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

DEFAULT_MAX_ATTEMPTS = 3


class JobState(str, enum.Enum):
    """The state of a job; members compare equal to (and print as) their plain names."""

    WAITING = "waiting"  # a staged job waiting for its parent to succeed
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # dead-lettered
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    # f"{state}" -> "running", and hash like the plain string so that sets and dicts of states
    # mix with plain strings (Enum would hash the member name)
    __format__ = str.__format__
    __hash__ = str.__hash__


STATES: tuple[str, ...] = tuple(s.value for s in JobState)
ACTIVE_STATES: tuple[str, ...] = tuple(s.value for s in (JobState.WAITING, JobState.QUEUED,
                                                         JobState.RUNNING))
TERMINAL_STATES: tuple[str, ...] = tuple(s for s in STATES if s not in ACTIVE_STATES)


def _state(v: str) -> JobState | str:
    try:
        return JobState(v)
    except ValueError:  # a tampered record: shown as is, never claimed
        return v


def _seconds(v: str) -> float | None:
    # only shown, never computed with: an unreadable timestamp is shown as "-"
    try:
        t = float(v)
    except ValueError:
        return None
    return t if math.isfinite(t) else None


def _int(v: str) -> int | None:
    # a field record_problem checks: an unreadable value takes the default (the record is corrupt)
    return int(v) if _INT.fullmatch(v) else None


def _result(v: str) -> dict[str, Any]:
    try:
        d = json.loads(v)
    except ValueError:
        d = None
    return d if isinstance(d, dict) else {"unparsed": v}


def _links(v: str) -> dict[str, Any] | None:
    try:
        d = json.loads(v)
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def _flag(v: str) -> bool:
    return v == "1"


@dataclass
class Job:
    """A read-only view of one job record (``P job:<id>``)."""

    id: str
    state: JobState | str
    spec_json: str = field(metadata={"key": "spec", "missing": "{}"})
    variant: str = ""
    backbone: str = ""
    name: str = ""
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    priority: int = 0
    created_at: float | None = None
    updated_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    heartbeat_at: float | None = None
    lease_deadline: float | None = None
    retry_at: float | None = None
    worker: str = ""
    error: str = ""
    traceback: str = ""
    result: dict[str, Any] | None = None
    depends_on: str = ""
    init_from: str = ""
    idem_key: str = ""
    run_dir: str = ""
    dashboard: dict[str, str] | None = None  # Ray dashboard links, recorded by the worker
    progress: dict[str, Any] | None = None  # the run's latest progress (epoch k/N, metrics, ETA)
    cancel_requested: bool = False
    cancel_reason: str = ""
    lease: int = 0  # the fencing number of the latest claim (the holder presents it)
    lease_ended: str = ""
    corrupt: str = ""  # why the record cannot be parsed (record_problem), "" when it is sound
    raw: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hash(cls, h: dict[str, str]) -> "Job":
        """Build from the ``HGETALL`` of a job record.

        A missing field takes its default; so does an empty one, except for text fields, which
        are taken as they are (see ``_PARSE`` for how each non-text field is read).
        Never raises: a field that cannot be read takes its default, and ``corrupt`` says why
        the record is unsound (:func:`record_problem`).
        """
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name in ("raw", "corrupt"):
                continue
            v = h.get(f.metadata.get("key", f.name))
            parse = _PARSE.get(f.name)
            parsed = None if v is None or (v == "" and parse is not None) else \
                parse(v) if parse is not None else v
            if parsed is None:
                kw[f.name] = f.metadata.get("missing", "") if f.default is dataclasses.MISSING \
                    else f.default
            else:
                kw[f.name] = parsed
        return cls(**kw, corrupt=record_problem(h) or "", raw=dict(h))

    @property
    def shown_state(self) -> str:
        """The state as lists show it: ``corrupt`` for a record that cannot be parsed."""
        return "corrupt" if self.corrupt else str(self.state)

    @property
    def spec(self):
        """The job's :class:`~fcn_dist.spec.JobSpec`, parsed and validated from its JSON."""
        from fcn_dist.spec import JobSpec

        return JobSpec.from_json(self.spec_json, source=f"job {self.id} spec")

    @property
    def spec_dict(self) -> dict[str, Any]:
        """The spec as a plain dict (no validation; for display)."""
        try:
            return json.loads(self.spec_json)
        except ValueError:
            return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of the record (spec as a dict); a corrupt record has state
        ``corrupt``, its ``stored_state`` and the reason in ``corrupt``."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
             if f.name not in ("raw", "spec_json")}
        d["state"] = self.shown_state
        if self.corrupt:
            d["stored_state"] = str(self.state)
        d["spec"] = self.spec_dict
        return d


# How each non-text field of a record is read (text fields are taken as they are; a value that
# cannot be read takes the field's default).
_PARSE: dict[str, Callable[[str], Any]] = {
    "state": _state,
    "attempts": _int,
    "max_attempts": _int,
    "priority": _int,
    "lease": _int,
    **dict.fromkeys(("created_at", "updated_at", "started_at", "finished_at", "heartbeat_at",
                     "lease_deadline", "retry_at"), _seconds),
    "result": _result,
    "dashboard": _links,
    "progress": _links,
    "cancel_requested": _flag,
}


# The fields the Lua scripts compute with, and their rules: prelude.lua's `problem` checks the
# same (INTEGERS, NUMBERS, COUNTERS there; a test keeps them equal) before a script's first write.
REQUIRED_INTEGERS = ("attempts", "max_attempts", "priority")
REQUIRED_NUMBERS = ("score",)
OPTIONAL_COUNTERS = ("lease",)
_INT = re.compile(r"-?[0-9]{1,15}")  # at most 15 digits: HINCRBY (64-bit) never fails
_NUMBER = re.compile(r"-?[0-9]+\.?[0-9]*")
_COUNTER = re.compile(r"[0-9]{1,15}")


def _shown(v: str | None) -> str:
    return "missing" if v is None else f"'{v[:40]}'"


def record_problem(h: dict[str, str]) -> str | None:
    """Why the job record ``h`` (an ``HGETALL``) cannot be worked with, or None if it can: its
    state is not a state, or a field the queue computes with is missing or not a number."""
    st = h.get("state")
    if st not in STATES:
        return f"state {_shown(st)} is not a job state"
    for names, rule, what in ((REQUIRED_INTEGERS, _INT, "an integer"),
                              (REQUIRED_NUMBERS, _NUMBER, "a number")):
        for f in names:
            v = h.get(f)
            if v is None or not rule.fullmatch(v):
                return f"{f} {_shown(v)} is not {what}"
    for f in OPTIONAL_COUNTERS:
        v = h.get(f)
        if v is not None and not _COUNTER.fullmatch(v):
            return f"{f} {_shown(v)} is not a counter"
    if int(h["max_attempts"]) < 1:
        return "max_attempts must be >= 1"
    if int(h["attempts"]) < 0:
        return "attempts must be >= 0"
    return None


@dataclass(frozen=True)
class Submission:
    """What :meth:`JobQueue.submit` did: the job id, whether it is new, and its state."""

    id: str
    created: bool
    state: str
    variant: str = ""


def idempotency_key(spec_json: str, chain: str = "") -> str:
    """The idempotency key of a spec: sha256 of its canonical JSON (variant included) and its
    position in a staged chain (``""`` for a stand-alone job)."""
    return hashlib.sha256(f"v1\n{spec_json}\n{chain}".encode()).hexdigest()[:32]
