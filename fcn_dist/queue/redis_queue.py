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
| `P dead` | list | dead-lettered job ids (newest first); `fcn-jobs dead` |
| `P children:<id>` | set | staged jobs waiting for job `<id>` |
| `P idem` | hash | idempotency key -> job id of the active (waiting/queued/running) job; cleared when it finishes |
| `P hist:<id>` | list | state history of a job, JSON entries `{t, event, from, to, reason, worker, attempt}` (last 200) |
| `P logs:<id>` | list | log lines the worker pushed while running the job (last 2000) |
| `P events` | stream | one entry per state change: `job, event, from, to, reason, worker, attempt` (`MAXLEN ~ 10000`) |
| `P workers` | zset | worker id -> last time it claimed or heartbeated (ms) |
| `P seq` | string | submission counter (FIFO order) |

The fields of a job record (`P job:<id>`) are listed in `fcn_dist.queue.job`. Each transition
is one script in `fcn_dist/queue/lua/` run with `prelude.lua` in front.

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
- `queued -> running`: `claim` (one script: pop the best ready job, lease it, bump `attempts`,
  set `worker`) — a job runs on exactly one worker at a time.
- `running -> running`: `heartbeat` extends the lease only if the caller still owns the job; it
  answers `cancel` when a cancel was requested, `lost` when the job is no longer the caller's.
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
- Idempotency: `submit` of the same spec JSON (variant included) and chain position returns the
  active job's id while it is waiting, queued or running, unless `force`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
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
from fcn_dist.queue.job import DEFAULT_MAX_ATTEMPTS, STATES, Job, Submission, idempotency_key
from fcn_dist.spec import VARIANTS, variant_order

DEFAULT_PREFIX = "fcn:"
PRIORITY_LIMIT = 1000  # |priority| <= 1000 keeps ready-queue scores exact in a double
EVENTS_MAXLEN = 10000
LOG_LINES_MAX = 2000
LOG_LINE_CHARS = 2000
TRACEBACK_CHARS = 4000
ERROR_CHARS = 1000

T = TypeVar("T")


class RedisUnavailable(QueueError):
    """Redis cannot be reached (refused, timed out, loading); callers may retry with backoff."""


class LeaseLost(QueueError):
    """The worker no longer owns the job (its lease expired and another worker took it)."""


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
            "retry", "reap", "pending", "progress")


@functools.cache
def _lua_sources() -> dict[str, str]:
    """Each script's source with the prelude in front, read once per process."""
    lua = importlib.resources.files("fcn_dist.queue") / "lua"
    prelude = (lua / "prelude.lua").read_text(encoding="utf-8")
    return {name: prelude + (lua / f"{name}.lua").read_text(encoding="utf-8") for name in _SCRIPTS}


def _lease_lost(job_id: str, worker_id: str) -> LeaseLost:
    return LeaseLost(f"job {job_id} is no longer leased to worker {worker_id}")


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
            # errors raised by our scripts: "unknown job X", "job X is running; ..."
            raise QueueError(_script_message(msg)) from None

    return inner


def _script_message(msg: str) -> str:
    # redis prefixes error_reply strings with "ERR " in some versions, sometimes appends context
    msg = msg.strip()
    if msg.startswith("ERR "):
        msg = msg[4:]
    return msg.split(" script: ")[0].split("\n")[0]


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


# --------------------------------------------------------------------------- the queue
class JobQueue:
    """The job queue on Redis (see the module docstring for the data model).

    ``url`` falls back to ``$FCN_REDIS_URL`` (``fcn_dist.config.redis_url``); ``prefix`` isolates
    one queue's keys (tests use one per test). Connection problems raise :class:`RedisUnavailable`
    (a :class:`QueueError`); callers that should survive a Redis restart retry with
    :meth:`call_with_retry`.
    """

    def __init__(self, url: str | None = None, prefix: str = DEFAULT_PREFIX, *,
                 socket_timeout: float = 10.0, connect_timeout: float = 3.0,
                 backoff_base: float = 5.0, backoff_max: float = 300.0):
        self.url = config.redis_url(url)
        self.safe_url = redact_url(self.url)
        if not prefix:
            raise QueueError("the queue prefix must not be empty")
        self.prefix = prefix
        self.backoff_base = backoff_base  # seconds before the 2nd attempt; doubles each time
        self.backoff_max = backoff_max
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
                        should_stop: Callable[[], bool] | None = None) -> T:
        """Call ``fn`` until it does not raise :class:`RedisUnavailable`, sleeping an exponential
        backoff (``base`` doubling up to ``cap`` seconds) between tries; ``attempts=None`` means
        forever (or until ``should_stop()``). ``on_retry(delay, error)`` is told of each wait."""
        n = 0
        delay = base
        while True:
            try:
                return fn()
            except RedisUnavailable as e:
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
    @_wrap_redis_errors
    def submit(self, spec, *, priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
               depends_on: str | None = None, force: bool = False, chain: str = "",
               job_id: str | None = None) -> Submission:
        """Enqueue one job for ``spec`` (a validated :class:`~fcn_dist.spec.JobSpec`).

        With ``depends_on`` the job waits for that job to succeed and then starts from its best
        checkpoint. Idempotent: while a job with the same spec (and ``chain`` position) is
        waiting, queued or running its id is returned with ``created=False``, unless ``force``.
        """
        if not (-PRIORITY_LIMIT <= int(priority) <= PRIORITY_LIMIT):
            raise QueueError(f"priority must be in [-{PRIORITY_LIMIT}, {PRIORITY_LIMIT}], got {priority}")
        if int(max_attempts) < 1:
            raise QueueError(f"max_attempts must be >= 1, got {max_attempts}")
        spec_json = spec.to_json()
        jid = job_id or uuid.uuid4().hex[:12]
        idem = idempotency_key(spec_json, chain)
        out = self._run("submit", jid, idem, "1" if force else "0", int(priority), int(max_attempts),
                        depends_on or "", spec_json, spec.variant, spec.name, spec.backbone, "")
        return Submission(id=out[0], created=bool(int(out[1])), state=out[2], variant=spec.variant)

    def submit_variants(self, spec, variants: Iterable[str], *, staged: bool = False,
                        priority: int = 0, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                        force: bool = False) -> list[Submission]:
        """Submit ``spec`` once per variant. ``staged``: a chain in 32s -> 16s -> 8s order where
        each job waits for the previous one and starts from its best checkpoint."""
        variants = list(dict.fromkeys(variants))
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise QueueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
        if staged:
            variants.sort(key=variant_order)
        subs: list[Submission] = []
        parent: str | None = None
        for i, v in enumerate(variants):
            # only the variant changes, and it is valid: no need to re-validate the whole spec
            s = dataclasses.replace(spec, variant=v)
            chain = ""
            if staged and parent is not None:
                chain = f"after:{parent}"  # a new parent job means a new chain
            sub = self.submit(s, priority=priority, max_attempts=max_attempts,
                              depends_on=parent if staged else None, force=force, chain=chain)
            subs.append(sub)
            parent = sub.id
        return subs

    # ------------------------------------------------------------------ worker side
    @_wrap_redis_errors
    def claim(self, worker_id: str, lease_seconds: float = 30.0) -> Job | None:
        """Atomically take the best ready job, lease it to ``worker_id`` and count the attempt.
        Due delayed retries are promoted first. ``None`` when nothing is ready."""
        out = self._run("claim", worker_id, int(lease_seconds * 1000))
        if not out:
            return None
        return Job.from_hash(dict(zip(out[::2], out[1::2])))

    @_wrap_redis_errors
    def heartbeat(self, job_id: str, worker_id: str, lease_seconds: float = 30.0) -> str:
        """Extend the lease if ``worker_id`` still owns the job: ``"ok"``, ``"cancel"`` (a cancel
        was requested: stop the run) or ``"lost"`` (the job is no longer this worker's)."""
        return self._run("heartbeat", job_id, worker_id, int(lease_seconds * 1000))

    @_wrap_redis_errors
    def complete(self, job_id: str, worker_id: str, result: dict[str, Any] | None = None) -> None:
        """Mark the job succeeded with its JSON result summary; queue its staged children.
        Raises :class:`LeaseLost` if the worker no longer owns the job."""
        payload = json.dumps(result if result is not None else {}, default=str, sort_keys=True)
        if self._run("complete", job_id, worker_id, payload) != "ok":
            raise _lease_lost(job_id, worker_id)

    @_wrap_redis_errors
    def fail(self, job_id: str, worker_id: str, error: str, traceback: str = "", *,
             retryable: bool = True) -> str:
        """Record a failed attempt. Returns ``"queued"`` (a retry after the backoff),
        ``"failed"`` (dead-lettered: no attempts left or not retryable) or ``"cancelled"``.
        Raises :class:`LeaseLost` if the worker no longer owns the job."""
        err = " ".join(str(error).split())[:ERROR_CHARS] or "failed"
        out = self._run("fail", job_id, worker_id, err, str(traceback)[-TRACEBACK_CHARS:],
                        int(self.backoff_base * 1000), int(self.backoff_max * 1000),
                        "1" if retryable else "0")
        if out == "lost":
            raise _lease_lost(job_id, worker_id)
        return out

    @_wrap_redis_errors
    def release(self, job_id: str, worker_id: str, reason: str = "released by worker") -> str:
        """Put a running job back in the ready queue without counting the attempt (SIGTERM).
        Returns ``"ok"`` or ``"cancelled"`` (a cancel was pending). Raises :class:`LeaseLost`."""
        out = self._run("release", job_id, worker_id, reason)
        if out == "lost":
            raise _lease_lost(job_id, worker_id)
        return out

    @_wrap_redis_errors
    def ack_cancel(self, job_id: str, worker_id: str, reason: str = "cancelled") -> None:
        """The worker stopped a running job because a cancel was requested: mark it cancelled."""
        if self._run("ack_cancel", job_id, worker_id, reason) != "ok":
            raise _lease_lost(job_id, worker_id)

    @_wrap_redis_errors
    def reap(self, limit: int = 100) -> list[str]:
        """Return jobs whose lease expired to the ready queue (the attempt counts; with no
        attempts left they are dead-lettered) and promote due delayed retries. Atomic; every
        worker calls it in its loop. Returns the ids handled."""
        return list(self._run("reap", int(limit)) or [])

    @_wrap_redis_errors
    def set_run_dir(self, job_id: str, run_dir: str) -> None:
        """Record where the job's Ray run and checkpoints live."""
        self.redis.hset(self.key("job", job_id), "run_dir", str(run_dir))

    @_wrap_redis_errors
    def set_dashboard(self, job_id: str, links: dict[str, str]) -> None:
        """Record the Ray dashboard links of the job's run (shown by ``fcn-jobs show``)."""
        self.redis.hset(self.key("job", job_id), "dashboard", json.dumps(links, sort_keys=True))

    @_wrap_redis_errors
    def set_progress(self, job_id: str, worker_id: str, progress: dict[str, Any]) -> bool:
        """Publish a running job's progress (``fcn-jobs watch``/``show``); False when the job
        is no longer this worker's."""
        payload = json.dumps(progress, sort_keys=True, default=str)
        return self._run("progress", job_id, worker_id, payload) == "ok"

    @_wrap_redis_errors
    def append_logs(self, job_id: str, lines: Iterable[str]) -> None:
        """Push log lines of a job (capped at the last ``LOG_LINES_MAX``)."""
        lines = [str(x)[:LOG_LINE_CHARS] for x in lines]
        if not lines:
            return
        k = self.key("logs", job_id)
        with self.redis.pipeline(transaction=True) as p:
            p.rpush(k, *lines)
            p.ltrim(k, -LOG_LINES_MAX, -1)
            p.execute()

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
        """Jobs in submission order (oldest first), optionally only those in ``state``."""
        if state is not None and state not in STATES:
            raise QueueError(f"unknown state {state!r}; choose from {', '.join(STATES)}")
        ids = self.redis.zrange(self.key("jobs"), 0, -1)
        if state is not None:
            members = self.redis.smembers(self.key("state", state))
            ids = [i for i in ids if i in members]
        if limit is not None:
            ids = ids[-limit:]
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
        """The job's state history, oldest first."""
        return [json.loads(x) for x in self.redis.lrange(self.key("hist", job_id), 0, -1)]

    @_wrap_redis_errors
    def logs(self, job_id: str, tail: int | None = None) -> list[str]:
        """The log lines the worker pushed for the job (the last ``tail`` if given)."""
        start = -int(tail) if tail else 0
        return self.redis.lrange(self.key("logs", job_id), start, -1)

    @_wrap_redis_errors
    def events(self, count: int = 100, job_id: str | None = None) -> list[dict[str, str]]:
        """The latest ``count`` state-change events, oldest first (``id`` = stream entry id)."""
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
