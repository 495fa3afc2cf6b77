"""The job queue on Redis: its keys and the atomic state transitions of job records.

## Redis data model

Every key starts with the queue's prefix `P` (default `fcn:`; `--prefix` / `FCN_REDIS_PREFIX`).
All times are the **Redis server's** clock (`TIME` inside the scripts), so workers on hosts with
skewed clocks agree on lease deadlines. Every state change is one Lua script (atomic on the
server). The keys of one queue are computed inside the scripts from the prefix, so one queue
lives on one Redis node (for Redis Cluster put a hash tag in the prefix, e.g. `{fcn}:`).

| key | type | contents |
|---|---|---|
| `P job:<id>` | hash | the job record (fields below) |
| `P jobs` | zset | every job id, scored by submission sequence (listing order) |
| `P state:<state>` | set | job ids per state (listing and `counts()`) |
| `P ready` | zset | claimable job ids; score `-priority * 2**40 + seq` (high priority first, FIFO within a priority); `ZRANGE 0 0` is the next job |
| `P running` | zset | claimed job ids scored by lease deadline (ms); expired ones are reaped |
| `P delayed` | zset | jobs waiting out a retry backoff, scored by due time (ms); moved to `ready` when due |
| `P dead` | list | dead-lettered job ids (newest first); `fcn-jobs dead`; capped at `FCN_DEAD_MAX` (the oldest beyond it are purged) |
| `P finished` | zset | finished jobs that expire, scored by finish time + the job's `retention` (ms); the sweep purges the due ones |
| `P children:<id>` | set | staged jobs waiting for job `<id>` |
| `P idem` | hash | idempotency key -> job id of the active (waiting/queued/running) job; cleared when it finishes |
| `P chains` | hash | chain key (sha256 of a staged chain's stage specs) -> its job ids, comma-separated; a resubmission while any of them is active returns them |
| `P hist:<id>` | list | state history of a job, JSON entries `{t, event, from, to, reason, worker, attempt}` (last 200) |
| `P logs:<id>` | list | log lines the worker pushed while running the job (last 2000) |
| `P events` | stream | one entry per state change: `job, event, from, to, reason, worker, attempt` (`MAXLEN ~ 10000`) |
| `P workers` | zset | worker id -> last time it claimed or heartbeated (ms) |
| `P seq` | string | submission counter (FIFO order) |
| `P alive` | string | the queue's "last seen alive" clock (ms): when any script last ran |

The fields of a job record (`P job:<id>`) are listed in `fcn_dist.queue.job`, plus `retention`
(seconds it is kept once finished, -1: forever) and `chain_key` (its staged chain, if any). Each
transition is one script in `fcn_dist/queue/lua/` run with `prelude.lua` in front.

### Retention

A finished job (succeeded, failed, cancelled) is kept `retention` seconds (`FCN_RETENTION`,
default `7d`, `never` keeps it; `fcn-submit --retention`, stored per job at submit). Every
submit first runs a sweep (`purge.lua`, bounded: at most 200 jobs): jobs due in `P finished` are
purged with their history, logs and index entries (a parent of live jobs is looked at again an
hour later), the dead-letter list is cut to `FCN_DEAD_MAX` (the oldest go), and events older
than the submitter's retention are trimmed from the stream (which is also capped at ~10000).
`fcn-jobs purge` does the same on demand and also deletes the purged jobs' events at once.

### States and transitions

```
            submit (no parent / parent done)            claim (attempts += 1, lease)
  submit ─────────────────────────────────> queued ──────────────────────────────> running
  (staged child)                               ^  ^                                 │ │ │ │
  ──> waiting ── parent succeeded ─────────────┘  └── fail, attempts < max (backoff  │ │ │ │
        │        (init_from = parent's best         via `delayed`); lease expired ──┘ │ │ │
        │         checkpoint)                        (attempt counts); release        │ │ │
        │                                            (SIGTERM; attempt not counted)   │ │ │
        └── parent failed/cancelled ──> cancelled <── cancel (queued/waiting at once;   │ │ │
                                           ^           running: flag seen at heartbeat)─┘ │ │
                                           │                                              │ │
  retry (attempts reset) <── failed <──────┼── fail with attempts >= max / non-retryable ─┘ │
                           (dead list)     │   lease expired with attempts >= max           │
                                           │                                                │
                          succeeded <──────┼── complete (result summary) ───────────────────┘
```

- `waiting -> queued`: the parent succeeded; the child's `init_from` is the parent's
  `result.best_checkpoint`.
- `waiting|queued -> cancelled`: `cancel`, or the parent failed or was cancelled (the reason names
  the parent; cancellation cascades down the chain).
- `queued -> running`: `claim` (one script: pop the best ready job, lease it, bump `attempts`
  and the job's `lease` number, set `worker`) — a job runs on exactly one worker at a time. A
  queued record that cannot be parsed (`fcn_dist.queue.job.record_problem`) is dead-lettered
  with the reason on the way and the next job is claimed.
- Fencing: `heartbeat`, `complete`, `fail`, `release`, `ack_cancel` and `set_progress` present
  the worker id *and* the lease number that claim handed out; a stale one (an earlier attempt,
  even under the same worker id) is refused (`lost`, `LeaseLost`) and noted as a `fenced`
  event. A repeat of a call that was recorded (its reply lost) answers as the first did.
- `running -> running`: `heartbeat` extends the lease only if the caller still holds it (also
  after its deadline passed, as long as it was not reaped); it answers `cancel` when a cancel
  was requested, `lost` when the job is no longer the caller's.
- Outages: lease time only runs while the queue is seen alive (`P alive`): after a silence of
  more than a second (Redis down, unreachable or refusing writes) the first script moves the
  deadlines of the leases that were live when it began by its length (`lease_resumed` event),
  once per lease until its next heartbeat, so an outage neither expires leases nor charges
  attempts; a lease that missed its heartbeats while Redis was up is reaped as before.
- `running -> queued`: `release` (SIGTERM; the attempt is given back), a retryable `fail` with
  attempts left (after an exponential backoff `base * 2**(attempts-1)`, capped), or `reap` of an
  expired lease (the attempt counts).
- `running -> failed`: `fail` with no attempts left or a non-retryable error, or an expired lease
  with no attempts left; the id goes to `P dead`.
- `running -> succeeded`: `complete` (owner-checked) stores the result summary.
- `running -> cancelled`: the worker saw the cancel flag and stopped (`ack_cancel`), or its lease
  expired while a cancel was pending.
- `failed|cancelled -> queued|waiting`: `retry` resets attempts, takes the id off `P dead`, and
  revives the staged children that were cancelled because of this job.
- Idempotency: `submit` of the same spec JSON (variant included) returns the active job's id
  while it is waiting, queued or running, unless `force`. A staged chain is idempotent as a
  whole (`P chains`): while any of its jobs is active the same stages return the same jobs.
  A submission (a chain, or several variants) is one script: all its jobs are created or none.
- `finished -> (gone)`: `purge` (the sweep, or `fcn-jobs purge`); a job whose parent was
  purged can no longer be retried (the error says so).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import logging
import time
import uuid
from typing import Any, Callable, Iterable, TypeVar
import os
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from fcn_dist import config
from fcn_dist.errors import QueueError
from fcn_dist.queue.job import (DEFAULT_MAX_ATTEMPTS, STATES, TERMINAL_STATES, Job, Submission,
                                idempotency_key)
from fcn_dist.spec import VARIANTS, variant_order

DEFAULT_PREFIX = "fcn:"
PRIORITY_LIMIT = 1000  # |priority| <= 1000 keeps ready-queue scores exact in a double
EVENTS_MAXLEN = 10000
LOG_LINES_MAX = 2000
LOG_LINE_CHARS = 2000
TRACEBACK_CHARS = 4000
ERROR_CHARS = 1000
SWEEP_LIMIT = 200  # jobs one sweep (run at every submit) purges at most: bounded work
PURGE_BATCH = 500  # ids per purge script call (one call blocks Redis for a few ms at most)

T = TypeVar("T")
log = logging.getLogger("fcn_dist.queue")


class RedisUnavailable(QueueError):
    """Redis cannot be reached (refused, timed out, loading); callers may retry with backoff."""


class RedisRefused(RedisUnavailable):
    """Redis answered but refused the command for now (out of memory under ``maxmemory``, a
    read-only replica after a failover, busy running a script, cannot persist): the worker
    backs off and retries as in an outage; one-shot clients (``fcn-submit``) report it."""


class LeaseLost(QueueError):
    """The worker no longer holds the job's lease (it expired and the job was reaped or
    claimed again, possibly under the same worker id): the call was refused."""


# error replies that mean "not now" rather than "never": by redis-py's class (which drops the
# reply's code from the message) or by the code
_REFUSED_TYPES = {redis.exceptions.OutOfMemoryError: "OOM", redis.exceptions.ReadOnlyError: "READONLY",
                  redis.exceptions.MasterDownError: "MASTERDOWN",
                  redis.exceptions.TryAgainError: "TRYAGAIN",
                  redis.exceptions.ClusterDownError: "CLUSTERDOWN"}
_REFUSED_CODES = ("BUSY", "MISCONF", "NOREPLICAS", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")
_REFUSED_HINTS = {
    "OOM": "the server is out of memory under maxmemory: raise it or free keys",
    "READONLY": "a read-only replica: point the URL at the primary",
    "BUSY": "the server is busy running a script",
    "MISCONF": "the server cannot persist its data: see its log",
}


def _refusal(e: redis.exceptions.ResponseError) -> str | None:
    """``"<code> <reply> (<hint>)"`` when ``e`` is a transient refusal, else None."""
    msg = _script_message(str(e))
    code = next((c for t, c in _REFUSED_TYPES.items() if isinstance(e, t)), None)
    if code is not None:
        msg = f"{code} {msg}"
    else:
        code = msg.split(" ", 1)[0]
        if code not in _REFUSED_CODES:
            return None
    hint = _REFUSED_HINTS.get(code)
    return f"{msg} ({hint})" if hint else msg


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --------------------------------------------------------------------------- Lua scripts
# One script per state change; each is run with the shared prelude (the clock, key helpers,
# history/event recording, the cascades) in front. ARGV[1] is always the key prefix.
_SCRIPTS = ("submit", "claim", "heartbeat", "complete", "fail", "release", "ack_cancel", "cancel",
            "retry", "reap", "pending", "progress", "purge", "logs")


@functools.cache
def _lua_sources() -> dict[str, str]:
    """Each script's source with the prelude in front, read once per process."""
    lua = importlib.resources.files("fcn_dist.queue") / "lua"
    prelude = (lua / "prelude.lua").read_text(encoding="utf-8")
    return {name: prelude + (lua / f"{name}.lua").read_text(encoding="utf-8") for name in _SCRIPTS}


def _lease_lost(job_id: str, worker_id: str, lease: int, what: str) -> LeaseLost:
    return LeaseLost(f"job {job_id}: {what} refused: lease {lease} of worker {worker_id} is stale "
                     "(the job was reaped or claimed again)")


def tls_options(url: str, safe_url: str) -> dict[str, Any]:
    """Extra client options of a ``rediss://`` URL: the CA file that verifies the server
    (the URL's ``ssl_ca_certs=``, else ``FCN_REDIS_CA``; neither: the system's CAs). A CA file
    that is not there is a QueueError naming it, before any connection is tried."""
    if urlsplit(url).scheme != "rediss":
        return {}
    in_url = parse_qs(urlsplit(url).query).get("ssl_ca_certs", [None])[0]
    ca = in_url or config.redis_ca()
    if ca and not os.path.isfile(os.path.expanduser(ca)):
        where = "ssl_ca_certs" if in_url else "FCN_REDIS_CA"
        raise QueueError(f"redis at {safe_url}: CA file {ca} ({where}) not found")
    return {"ssl_ca_certs": os.path.expanduser(ca)} if ca and not in_url else {}


def _wrap_redis_errors(fn: Callable[..., T]) -> Callable[..., T]:
    @functools.wraps(fn)
    def inner(self: "JobQueue", *a: Any, **kw: Any) -> T:
        try:
            return fn(self, *a, **kw)
        except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError) as e:
            raise QueueError(f"redis at {self.safe_url} refused the credentials: {e}") from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.BusyLoadingError, OSError) as e:
            raise RedisUnavailable(f"redis unavailable at {self.safe_url}: {_one_line(e)}") from None
        except redis.exceptions.ResponseError as e:
            msg = str(e)
            if "NOAUTH" in msg or "WRONGPASS" in msg or "NOPERM" in msg:
                raise QueueError(f"redis at {self.safe_url} refused the credentials: {msg}") from None
            if "LOADING" in msg:
                raise RedisUnavailable(f"redis unavailable at {self.safe_url}: {msg}") from None
            refused = _refusal(e)
            if refused:
                raise RedisRefused(f"redis at {self.safe_url} refused the command: {refused}") from None
            # errors raised by our scripts: "unknown job X", "job X is running; ..."
            raise QueueError(_script_message(msg)) from None

    return inner


def _script_message(msg: str) -> str:
    # redis prefixes error_reply strings with "ERR " in some versions, sometimes appends context
    msg = msg.strip()
    if msg.startswith("ERR "):
        msg = msg[4:]
    return msg.split(" script: ")[0].split("\n")[0]


def _check_count(what: str, n: int | None) -> None:
    if n is not None and (not isinstance(n, int) or n < 0):
        raise QueueError(f"{what} must be a whole number >= 0, got {n!r}")


def _number(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "") else None
    except ValueError:
        return None


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# --------------------------------------------------------------------------- the queue
class JobQueue:
    """The job queue on Redis (see the module docstring for the data model).

    ``url`` falls back to ``$FCN_REDIS_URL`` (``fcn_dist.config.redis_url``); ``prefix`` isolates
    one queue's keys (tests use one per test). Connection problems raise :class:`RedisUnavailable`
    (a :class:`QueueError`), transient error replies (OOM, READONLY, BUSY) :class:`RedisRefused`
    (a :class:`RedisUnavailable`); callers that should survive them retry with
    :meth:`call_with_retry`.
    """

    def __init__(self, url: str | None = None, prefix: str = DEFAULT_PREFIX, *,
                 socket_timeout: float = 10.0, connect_timeout: float = 3.0,
                 backoff_base: float = 5.0, backoff_max: float = 300.0,
                 retention: str | float | None = None, dead_max: int | str | None = None):
        self.url = config.redis_url(url)
        self.safe_url = redact_url(self.url)
        if not prefix:
            raise QueueError("the queue prefix must not be empty")
        self.prefix = prefix
        self.backoff_base = backoff_base  # seconds before the 2nd attempt; doubles each time
        self.backoff_max = backoff_max
        # resolved when used (a worker never needs them): flag, else FCN_RETENTION / FCN_DEAD_MAX
        self._retention, self._dead_max = retention, dead_max
        try:
            self.redis = redis.Redis.from_url(
                self.url, decode_responses=True, socket_timeout=socket_timeout,
                socket_connect_timeout=connect_timeout, health_check_interval=15,
                retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 2),
                **tls_options(self.url, self.safe_url),
            )
        except ValueError as e:
            raise QueueError(f"invalid redis url {self.safe_url}: {e}") from None
        self._scripts = {name: self.redis.register_script(src)
                         for name, src in _lua_sources().items()}

    def __repr__(self) -> str:
        return f"JobQueue({self.safe_url!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self.redis.close()

    def key(self, *parts: str) -> str:
        """The full Redis key for ``parts`` (``key('job', id)`` -> ``fcn:job:<id>``)."""
        return self.prefix + ":".join(parts)

    def _run(self, script: str, *args: Any) -> Any:
        """Run one of the Lua scripts; the prefix is always its first argument."""
        return self._scripts[script](args=[self.prefix, *args])

    # ------------------------------------------------------------------ connection
    @_wrap_redis_errors
    def ping(self) -> bool:
        """Check the server answers (raises :class:`RedisUnavailable` if not)."""
        return bool(self.redis.ping())

    def call_with_retry(self, fn: Callable[[], T], *, attempts: int | None = None,
                        base: float = 0.5, cap: float = 30.0,
                        on_retry: Callable[[float, Exception], None] | None = None,
                        should_stop: Callable[[], bool] | None = None,
                        refused: bool = False) -> T:
        """Call ``fn`` until it does not raise :class:`RedisUnavailable`, sleeping an exponential
        backoff (``base`` doubling up to ``cap`` seconds) between tries; ``attempts=None`` means
        forever (or until ``should_stop()``). ``on_retry(delay, error)`` is told of each wait.
        A :class:`RedisRefused` is retried only with ``refused=True`` (the worker); else it is
        raised at once (a submitter reports it in one line)."""
        n = 0
        delay = base
        while True:
            try:
                return fn()
            except RedisUnavailable as e:
                if isinstance(e, RedisRefused) and not refused:
                    raise
                n += 1
                if (attempts is not None and n >= attempts) or (should_stop and should_stop()):
                    raise
                if on_retry:
                    on_retry(delay, e)
                end = time.monotonic() + delay
                while time.monotonic() < end:
                    if should_stop and should_stop():
                        raise
                    time.sleep(min(0.2, max(0.0, end - time.monotonic())))
                delay = min(cap, delay * 2)

    # ------------------------------------------------------------------ submit
    def retention(self, value: str | float | None = None) -> float | None:
        """Seconds a finished job is kept (``None``: forever): ``value``, else the queue's
        ``retention``, else ``$FCN_RETENTION``, else 7 days."""
        try:
            return config.retention_seconds(value if value is not None else self._retention)
        except ValueError as e:
            raise QueueError(str(e)) from None

    def dead_max(self) -> int:
        """How many dead-lettered jobs are kept (``dead_max``, else ``$FCN_DEAD_MAX``, else 10,000)."""
        try:
            return config.dead_max(self._dead_max)
        except ValueError as e:
            raise QueueError(str(e)) from None

    @_wrap_redis_errors
    def submit(self, spec, *, priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               depends_on: str | None = None, force: bool = False, chain: str = "",
               job_id: str | None = None, retention: str | float | None = None) -> Submission:
        """Enqueue one job for ``spec`` (a validated :class:`~fcn_dist.spec.JobSpec`).

        With ``depends_on`` the job waits for that job to succeed and then starts from its best
        checkpoint. Idempotent: while a job with the same spec (and ``chain`` position) is
        waiting, queued or running its id is returned with ``created=False``, unless ``force``.
        Once finished, the job is kept ``retention`` (see :meth:`retention`).
        """
        stage = self._stage(spec, priority, max_attempts, idempotency_key(spec.to_json(), chain),
                            job_id)
        return self._submit([stage], chain_key="", depends_on=depends_on or "", force=force,
                            retention=retention)[0]

    @_wrap_redis_errors
    def submit_variants(self, spec, variants: Iterable[str], *, staged: bool = False,
                        priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                        force: bool = False, retention: str | float | None = None
                        ) -> list[Submission]:
        """Submit ``spec`` once per variant, all in one atomic script (every job or none).

        ``staged``: a chain in 32s -> 16s -> 8s order where each job waits for the previous one
        and starts from its best checkpoint. The chain is idempotent as a whole: while any of
        its jobs is waiting, queued or running, the same stages return the same jobs (with
        ``created=False``), unless ``force``. Without ``staged`` each job is idempotent alone.
        """
        variants = list(dict.fromkeys(variants))
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise QueueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if staged:
            variants.sort(key=variant_order)
        # only the variant changes, and it is valid: no need to re-validate the whole spec
        specs = [dataclasses.replace(spec, variant=v) for v in variants]
        if not staged:
            stages = [self._stage(s, priority, max_attempts, idempotency_key(s.to_json()))
                      for s in specs]
            return self._submit(stages, chain_key="", depends_on="", force=force,
                                retention=retention)
        stages = [self._stage(s, priority, max_attempts, "") for s in specs]
        chain_key = idempotency_key("\n".join(st[4] for st in stages), f"staged:{len(stages)}")
        return self._submit(stages, chain_key=chain_key, depends_on="", force=force,
                            retention=retention)

    @staticmethod
    def _stage(spec, priority: int, max_attempts: int, idem: str,
               job_id: str | None = None) -> list[Any]:
        """The script arguments of one job (see ``submit.lua``)."""
        if not (-PRIORITY_LIMIT <= int(priority) <= PRIORITY_LIMIT):
            raise QueueError(f"priority must be in [-{PRIORITY_LIMIT}, {PRIORITY_LIMIT}], got {priority}")
        if int(max_attempts) < 1:
            raise QueueError(f"max_attempts must be >= 1, got {max_attempts}")
        return [job_id or uuid.uuid4().hex[:12], idem, int(priority), int(max_attempts),
                spec.to_json(), spec.variant, spec.name, spec.backbone]

    def _submit(self, stages: list[list[Any]], *, chain_key: str, depends_on: str, force: bool,
                retention: str | float | None) -> list[Submission]:
        keep = self.retention(retention)  # bad settings are refused before anything is written
        self.dead_max()
        self._sweep_quietly()
        args: list[Any] = ["1" if force else "0", chain_key, depends_on,
                           -1 if keep is None else f"{keep:.3f}", len(stages)]
        for st in stages:
            args += st
        out = self._run("submit", *args)
        return [Submission(id=out[i], created=bool(int(out[i + 1])), state=out[i + 2],
                           variant=stages[i // 3][5]) for i in range(0, len(out), 3)]

    # ------------------------------------------------------------------ housekeeping
    @_wrap_redis_errors
    def sweep(self, limit: int = SWEEP_LIMIT) -> dict[str, int]:
        """Purge up to ``limit`` finished jobs whose retention ran out or that fell off the end of
        the dead-letter list (capped at :meth:`dead_max`), and trim events older than the
        queue's retention. Run at every submit; returns what it did."""
        keep = self.retention()
        out = self._run("purge", "sweep", int(limit), self.dead_max(),
                        -1 if keep is None else int(keep * 1000))
        return dict(zip(("purged", "rescheduled", "dead_trimmed", "events_trimmed"),
                        (int(x) for x in out)))

    def _sweep_quietly(self) -> None:
        # housekeeping never stands in the way of a submission: its failure is only logged
        try:
            self.sweep()
        except RedisUnavailable:
            pass  # the submission that follows meets (and reports) the same outage
        except QueueError as e:
            log.warning("queue sweep skipped: %s", e)

    @_wrap_redis_errors
    def purge(self, job_ids: Iterable[str], *, force: bool = False,
              dry_run: bool = False) -> list[dict[str, str]]:
        """Remove jobs with their history, logs, events and index entries. Without ``force``
        active (waiting/queued/running) jobs and parents of active jobs are refused; with it their
        waiting children are cancelled. Returns ``{id, outcome, detail}`` per id, outcome
        ``purged``, ``would purge`` (``dry_run``), ``refused`` or ``unknown``."""
        ids = list(dict.fromkeys(job_ids))
        out: list[dict[str, str]] = []
        for i in range(0, len(ids), PURGE_BATCH):
            flat = self._run("purge", "ids", "1" if force else "0", "1" if dry_run else "0",
                             *ids[i:i + PURGE_BATCH])
            out += [{"id": flat[k], "outcome": flat[k + 1], "detail": flat[k + 2]}
                    for k in range(0, len(flat), 3)]
        return out

    @_wrap_redis_errors
    def select(self, *, state: str | None = None, older_than: float | None = None,
               expired: bool = False) -> list[str]:
        """Ids of the jobs to purge: in ``state``; finished more than ``older_than`` seconds ago
        (server clock); past their retention (``expired``). Criteria combine (all must hold);
        ``older_than`` alone means any finished state."""
        if state is not None and state not in STATES:
            raise QueueError(f"unknown state {state!r}; choose from {', '.join(STATES)}")
        now = self._server_time()
        if expired:
            ids = self.redis.zrangebyscore(self.key("finished"), "-inf", now * 1000)
        else:
            states = [state] if state else list(TERMINAL_STATES if older_than is not None else STATES)
            ids = [i for s in states for i in self.redis.smembers(self.key("state", s))]
        if state is not None and expired:
            members = self.redis.smembers(self.key("state", state))
            ids = [i for i in ids if i in members]
        if older_than is not None:
            with self.redis.pipeline(transaction=False) as p:
                for i in ids:
                    p.hget(self.key("job", i), "finished_at")
                done = p.execute()
            ids = [i for i, t in zip(ids, done) if _number(t) is not None
                   and _number(t) <= now - older_than]
        order = dict(zip(ids, self._seqs(ids)))
        return sorted(ids, key=lambda i: (order[i], i))

    def _server_time(self) -> float:
        sec, usec = self.redis.time()
        return sec + usec / 1e6

    def _seqs(self, ids: list[str]) -> list[float]:
        with self.redis.pipeline(transaction=False) as p:
            for i in ids:
                p.zscore(self.key("jobs"), i)
            return [s if s is not None else float("inf") for s in p.execute()]

    # ------------------------------------------------------------------ worker side
    def _log_corrupt(self, pairs: list[str]) -> None:
        for jid, reason in zip(pairs[::2], pairs[1::2]):
            log.warning("job %s dead-lettered: %s", jid, reason)

    @_wrap_redis_errors
    def claim(self, worker_id: str, lease_seconds: float = 30.0) -> Job | None:
        """Atomically take the best ready job, lease it to ``worker_id`` and count the attempt;
        the job's ``lease`` is the number every later call for it presents. Due delayed retries
        are promoted first; corrupt records met on the way are dead-lettered (and logged).
        ``None`` when nothing is ready."""
        out, corrupt = self._run("claim", worker_id, int(lease_seconds * 1000))
        self._log_corrupt(corrupt)
        if not out:
            return None
        return Job.from_hash(dict(zip(out[::2], out[1::2])))

    @_wrap_redis_errors
    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float = 30.0, *,
                  lease: int) -> str:
        """Extend the lease if ``worker_id`` still holds lease number ``lease`` of the job:
        ``"ok"``, ``"cancel"`` (a cancel was requested: stop the run), ``"lost"`` (the job is no
        longer this lease's) or ``"ended"`` (the holder already reported the outcome)."""
        return self._run("heartbeat", job_id, worker_id, int(lease), int(lease_seconds * 1000))

    @_wrap_redis_errors
    def complete(self, job_id: str, worker_id: str, result: dict[str, Any] | None = None, *,
                 lease: int) -> None:
        """Mark the job succeeded with its JSON result summary; queue its staged children.
        Raises :class:`LeaseLost` if ``lease`` is not the job's current lease."""
        payload = json.dumps(result if result is not None else {}, default=str, sort_keys=True)
        if self._run("complete", job_id, worker_id, int(lease), payload) != "ok":
            raise _lease_lost(job_id, worker_id, lease, "complete")

    @_wrap_redis_errors
    def fail(self, job_id: str, worker_id: str, error: str, traceback: str = "", *,
             lease: int, retryable: bool = True) -> str:
        """Record a failed attempt. Returns ``"queued"`` (a retry after the backoff),
        ``"failed"`` (dead-lettered: no attempts left, not retryable, or a corrupt record) or
        ``"cancelled"``. Raises :class:`LeaseLost` if ``lease`` is not the job's current lease
        (a zombie's fail on a job that was requeued is not recorded)."""
        err = " ".join(str(error).split())[:ERROR_CHARS] or "failed"
        out = self._run("fail", job_id, worker_id, int(lease), err, str(traceback)[-TRACEBACK_CHARS:],
                        int(self.backoff_base * 1000), int(self.backoff_max * 1000),
                        "1" if retryable else "0")
        if out == "lost":
            raise _lease_lost(job_id, worker_id, lease, "fail")
        return out

    @_wrap_redis_errors
    def release(self, job_id: str, worker_id: str, reason: str = "released by worker", *,
                lease: int) -> str:
        """Put a running job back in the ready queue without counting the attempt (SIGTERM).
        Returns ``"ok"``, ``"cancelled"`` (a cancel was pending) or ``"failed"`` (a corrupt
        record, dead-lettered). Raises :class:`LeaseLost`."""
        out = self._run("release", job_id, worker_id, int(lease), reason)
        if out == "lost":
            raise _lease_lost(job_id, worker_id, lease, "release")
        return out

    @_wrap_redis_errors
    def ack_cancel(self, job_id: str, worker_id: str, reason: str = "cancelled", *,
                   lease: int) -> None:
        """The worker stopped a running job because a cancel was requested: mark it cancelled."""
        if self._run("ack_cancel", job_id, worker_id, int(lease), reason) != "ok":
            raise _lease_lost(job_id, worker_id, lease, "cancel acknowledgement")

    @_wrap_redis_errors
    def reap(self, limit: int = 100) -> list[str]:
        """Return jobs whose lease expired to the ready queue (the attempt counts; with no
        attempts left they are dead-lettered) and promote due delayed retries; corrupt records
        met are dead-lettered (and logged). Atomic; every worker calls it in its loop. Returns
        the ids whose lease expired."""
        out, corrupt = self._run("reap", int(limit))
        self._log_corrupt(corrupt)
        return list(out)

    @_wrap_redis_errors
    def set_run_dir(self, job_id: str, run_dir: str) -> None:
        """Record where the job's Ray run and checkpoints live."""
        self.redis.hset(self.key("job", job_id), "run_dir", str(run_dir))

    @_wrap_redis_errors
    def set_dashboard(self, job_id: str, links: dict[str, str]) -> None:
        """Record the Ray dashboard links of the job's run (shown by ``fcn-jobs show``)."""
        self.redis.hset(self.key("job", job_id), "dashboard", json.dumps(links, sort_keys=True))

    @_wrap_redis_errors
    def set_progress(self, job_id: str, worker_id: str, progress: dict[str, Any], *,
                     lease: int) -> bool:
        """Publish a running job's progress (``fcn-jobs watch``/``show``); False when the job
        is no longer this lease's."""
        payload = json.dumps(progress, sort_keys=True, default=str)
        return self._run("progress", job_id, worker_id, int(lease), payload) == "ok"

    @_wrap_redis_errors
    def append_logs(self, job_id: str, lines: Iterable[str]) -> None:
        """Push log lines of a job (capped at the last ``LOG_LINES_MAX``; dropped once the job
        was purged)."""
        lines = [str(x)[:LOG_LINE_CHARS] for x in lines]
        if not lines:
            return
        self._run("logs", job_id, LOG_LINES_MAX, *lines)

    # ------------------------------------------------------------------ user side
    @_wrap_redis_errors
    def cancel(self, job_id: str, reason: str = "cancelled by user") -> str:
        """Cancel a job: waiting/queued -> ``"cancelled"`` at once; running -> ``"cancelling"``
        (the worker sees the flag at its next heartbeat and stops the run). A finished job is
        left alone and its state returned. Staged children are cancelled with a reason."""
        job_id = self.resolve(job_id)
        return self._run("cancel", job_id, reason)

    @_wrap_redis_errors
    def retry(self, job_id: str) -> str:
        """Re-queue a failed (dead-lettered) or cancelled job with attempts reset; its staged
        children cancelled because of it wait for it again. Returns the new state."""
        job_id = self.resolve(job_id)
        return self._run("retry", job_id)

    @_wrap_redis_errors
    def resolve(self, job_id: str) -> str:
        """The full id of a job given its id or a unique prefix of it (at least 4 characters)."""
        job_id = str(job_id).strip()
        if not job_id or any(c in job_id for c in "*?[]\\ \n"):
            raise QueueError(f"invalid job id {job_id!r}")
        if self.redis.exists(self.key("job", job_id)):
            return job_id
        if len(job_id) >= 4:
            matches = [k[len(self.key("job", "")):] for k in
                       self.redis.scan_iter(match=self.key("job", job_id + "*"), count=1000)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise QueueError(f"job id prefix {job_id!r} is ambiguous: {', '.join(sorted(matches)[:5])}")
        raise QueueError(f"unknown job {job_id}")

    @_wrap_redis_errors
    def get(self, job_id: str) -> Job:
        """The job record (raises :class:`QueueError` for an unknown id)."""
        job_id = self.resolve(job_id)
        h = self.redis.hgetall(self.key("job", job_id))
        if not h:
            raise QueueError(f"unknown job {job_id}")
        return Job.from_hash(h)

    @_wrap_redis_errors
    def list(self, state: str | None = None, limit: int | None = None) -> list[Job]:
        """Jobs in submission order (oldest first), optionally only those in ``state``; with
        ``limit`` only the newest ``limit`` of them (0: none)."""
        _check_count("limit", limit)
        if state is not None and state not in STATES:
            raise QueueError(f"unknown state {state!r}; choose from {', '.join(STATES)}")
        ids = self.redis.zrange(self.key("jobs"), 0, -1)
        if state is not None:
            members = self.redis.smembers(self.key("state", state))
            ids = [i for i in ids if i in members]
        if limit is not None:
            ids = ids[max(0, len(ids) - limit):] if limit else []
        return self._jobs(ids)

    def _jobs(self, ids: list[str]) -> list[Job]:
        with self.redis.pipeline(transaction=False) as p:
            for i in ids:
                p.hgetall(self.key("job", i))
            return [Job.from_hash(h) for h in p.execute() if h]

    @_wrap_redis_errors
    def dead_letters(self) -> list[Job]:
        """Dead-lettered jobs, newest first."""
        return self._jobs(self.redis.lrange(self.key("dead"), 0, -1))

    @_wrap_redis_errors
    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's state history, oldest first (an unreadable entry is shown as it is)."""
        out = []
        for x in self.redis.lrange(self.key("hist", job_id), 0, -1):
            try:
                e = json.loads(x)
            except ValueError:
                e = None
            out.append(e if isinstance(e, dict) else {"event": "unreadable", "from": "", "to": "",
                                                    "reason": str(x)[:200]})
        return out

    @_wrap_redis_errors
    def logs(self, job_id: str, tail: int | None = None) -> list[str]:
        """The log lines the worker pushed for the job (the last ``tail`` if given; 0: none)."""
        _check_count("tail", tail)
        if tail == 0:
            return []
        start = -int(tail) if tail is not None else 0
        return self.redis.lrange(self.key("logs", job_id), start, -1)

    @_wrap_redis_errors
    def events(self, count: int = 100, job_id: str | None = None) -> list[dict[str, str]]:
        """The latest ``count`` state-change events, oldest first (``id`` = stream entry id)."""
        _check_count("count", count)
        if count == 0:
            return []
        entries = self.redis.xrevrange(self.key("events"), count=count if job_id is None else None)
        out = [{"id": eid, **fields} for eid, fields in reversed(entries)
               if job_id is None or fields.get("job") == job_id]
        return out[-count:]

    @_wrap_redis_errors
    def counts(self) -> dict[str, int]:
        """Queue depth: jobs per state, plus ``ready``, ``delayed`` (backoff), ``running_leases``,
        ``dead`` and ``total`` (for monitoring)."""
        with self.redis.pipeline(transaction=False) as p:
            for s in STATES:
                p.scard(self.key("state", s))
            p.zcard(self.key("ready"))
            p.zcard(self.key("delayed"))
            p.zcard(self.key("running"))
            p.llen(self.key("dead"))
            p.zcard(self.key("jobs"))
            vals = p.execute()
        out = dict(zip(STATES, vals[: len(STATES)]))
        out.update(zip(("ready", "delayed", "running_leases", "dead", "total"), vals[len(STATES):]))
        return out

    @_wrap_redis_errors
    def pending(self) -> dict[str, float]:
        """What a worker could still get: ``ready``, ``delayed``, ``running`` counts and
        ``next_due`` (seconds until the next delayed retry, -1 if none)."""
        ready, delayed, running, due = self._run("pending")
        return {"ready": int(ready), "delayed": int(delayed), "running": int(running),
                "next_due": (int(due) / 1000.0) if int(due) >= 0 else -1.0}

    @_wrap_redis_errors
    def workers(self, within_seconds: float = 120.0) -> dict[str, float]:
        """Workers seen (claim or heartbeat) in the last ``within_seconds``: id -> last seen."""
        now = time.time()
        rows = self.redis.zrangebyscore(self.key("workers"), (now - within_seconds) * 1000, "+inf",
                                        withscores=True)
        return {w: s / 1000.0 for w, s in rows}
