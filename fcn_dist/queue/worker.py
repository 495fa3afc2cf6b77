"""The worker daemon: claim a job, run it under a heartbeat, report the outcome, repeat.

One job at a time per worker process: the job's ``run_fn(job, should_stop)`` runs in the main
thread while a heartbeat thread extends the lease every ``heartbeat_seconds``, watches for a
cancel request and pushes the job's log lines to Redis. ``should_stop()`` turns True when the
worker got SIGTERM/SIGINT, the job was cancelled, or the lease was lost; a run that sees it
saves a checkpoint and raises :class:`fcn_dist.errors.Interrupted` (``fcn_dist.train.run``
does so).

Outcomes: a return value -> ``complete`` (the result summary); :class:`Interrupted` or any
exception while the worker is stopping -> ``release`` (back to the queue, attempt not counted;
the next worker resumes from the run directory's checkpoints); a requested cancel ->
``ack_cancel``; any other exception -> ``fail`` (retried with backoff up to the job's
``max_attempts``; an invalid spec, a corrupt shard or unusable weights are not retried).

Redis outages never crash the worker: every queue call is retried with a capped exponential
backoff, logging ``redis unavailable, retrying in Xs`` (or ``redis refused the command`` for an
error reply such as OOM, READONLY or BUSY). The run goes on while Redis is away, and the
heartbeat goes on until the outcome is recorded, so the lease is re-asserted as soon as Redis is
back (the queue's clock does not let an outage expire it). Every call for a job presents the
lease number the claim handed out; when it is stale (the job was reaped and claimed again, even
under the same worker id) the call is refused and the outcome discarded, with a log line.
"""

from __future__ import annotations

import collections
import importlib
import logging
import os
import signal
import socket
import threading
import time
import traceback as tb
import uuid
from typing import Any, Callable

from fcn_dist import fs as fsio
from fcn_dist import monitoring
from fcn_dist.errors import DataError, QueueError, SpecError, WeightsError, is_interruption
from fcn_dist.queue.job import Job
from fcn_dist.queue.redis_queue import JobQueue, LeaseLost, RedisRefused, RedisUnavailable

log = logging.getLogger("fcn_dist.worker")

RunFn = Callable[[Job, Callable[[], bool]], Any]


def is_retryable(exc: BaseException) -> bool:
    """A bad spec, a missing or corrupt data shard and unusable weights fail the job at once
    (retrying cannot help); everything else — a lost Ray node, OOM, a ``TrainingError`` (Ray
    failures reach us wrapped in one), Redis trouble — is retried up to ``max_attempts``, each
    retry resuming from the run directory's checkpoints. An error may also say so itself with
    a ``retryable = False`` class attribute (the trainer's non-finite-loss error does: the same
    spec and checkpoint diverge again)."""
    if getattr(exc, "retryable", True) is False:
        return False
    return not isinstance(exc, (SpecError, DataError, WeightsError))


def job_paths(job: Job) -> tuple[str, str | None]:
    """``(run dir, init_from)`` of a job, never taken on trust from its Redis record: the run
    dir is derived from the job (``<FCN_RUNS>/<job id>-<variant>``: deterministic, so a job
    reclaimed after a crash or released on SIGTERM resumes from its checkpoints); ``init_from``
    must be a checkpoint of the job's parent (staged chains) under FCN_RUNS, and a spec's own
    ``init_from`` a checkpoint under FCN_RUNS. Anything else is a SpecError naming the job."""
    from fcn_dist import config
    from fcn_dist.spec import VARIANTS, confined

    runs = config.runs_path()
    run_dir = str(runs / monitoring.run_name(job.id, job.variant))
    if job.init_from:
        if not job.depends_on:
            raise SpecError(f"job {job.id}: init_from {job.init_from!r} but the job has no parent")
        parent_dirs = {monitoring.run_name(job.depends_on, v) for v in VARIANTS}
        try:
            path = confined("init_from", job.init_from, runs, "FCN_RUNS")
            inside = path.parent != runs and path.relative_to(runs).parts[0] in parent_dirs
        except SpecError:
            inside = False
        if not inside:
            raise SpecError(f"job {job.id}: init_from {job.init_from!r} is not a checkpoint of its "
                            f"parent job {job.depends_on} under {runs}")
        return run_dir, str(path)
    if job.spec.init_from:
        confined("init_from", job.spec.init_from, runs, "FCN_RUNS")
    return run_dir, None


def train_run_fn(job: Job, should_stop: Callable[[], bool], *, ray_address: str | None = None,
                 on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The default job function: one Ray Train run of the job's spec, in the job's own run dir
    (:func:`job_paths`); staged jobs start from their parent's best checkpoint."""
    from fcn_dist import train  # lazy: the training stack is heavy

    run_dir, init_from = job_paths(job)
    return train.run(job.spec, job_id=job.id, run_dir=run_dir, init_from=init_from,
                     should_stop=should_stop, ray_address=ray_address, on_progress=on_progress)


def _result_note(result: dict[str, Any]) -> str:
    """``: <split> mIoU ..., run dir ...`` of a training result summary (empty for others)."""
    if not isinstance(result, dict) or result.get("miou") is None:
        return ""
    def f(v: Any) -> str:
        return "-" if v is None else f"{float(v):.4f}"
    from fcn_dist.store import scored_on

    split = result.get("scored_on") or scored_on(result.get("eval_split"), result.get("eval_is_selection"))
    return (f": {split} mIoU {f(result.get('miou'))}, pixel acc {f(result.get('pixel_accuracy'))}, "
            f"mean acc {f(result.get('mean_accuracy'))}, fwIoU {f(result.get('fwiou'))}; "
            f"run dir {result.get('run_dir') or '-'}")


def load_run_fn(ref: str) -> RunFn:
    """Import a job function given as ``module:function`` (``fcn-worker --run-fn``)."""
    mod_name, sep, attr = ref.partition(":")
    if not sep or not mod_name or not attr:
        raise QueueError(f"--run-fn must look like module:function, got {ref!r}")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise QueueError(f"--run-fn: cannot import {mod_name!r}: {e}") from None
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise QueueError(f"--run-fn: {mod_name!r} has no attribute {attr!r}")
    if not callable(fn):
        raise QueueError(f"--run-fn: {ref!r} is not callable")
    return fn  # type: ignore[return-value]


# threads running or heartbeating a job in this process, so that several in-process workers
# (tests, notebooks) do not collect each other's log lines
_JOB_THREADS: set[int] = set()


class _JobLogHandler(logging.Handler):
    """Buffers the log records emitted while a job runs; the heartbeat thread ships them."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=5000)
        self.threads: set[int] = set()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread not in self.threads and record.thread in _JOB_THREADS:
            return  # another in-process worker's job
        try:
            self.lines.append(self.format(record))
        except Exception:  # never let logging break a run
            pass

    def drain(self) -> list[str]:
        out = []
        while self.lines:
            try:
                out.append(self.lines.popleft())
            except IndexError:
                break
        return out


class _Run:
    """Flags of the job being run, shared with the heartbeat thread."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self.done = threading.Event()  # the outcome is recorded (or given up): heartbeats stop
        self.logs = _JobLogHandler()


class Worker:
    """Takes jobs off a :class:`JobQueue` and runs them, one at a time.

    ``run_fn(job, should_stop) -> result dict`` defaults to :func:`train_run_fn`.
    ``heartbeat_seconds`` defaults to a third of the lease (at most 5 s). ``until_empty``: exit
    when nothing is ready, no retry is waiting out its backoff and no job is running anywhere
    (a running job may still fail and be retried, lose its lease, or release staged children,
    so the worker keeps polling while any runs). ``max_jobs``: exit after that many jobs.
    ``report_timeout``: how long after a stop request the worker keeps trying to record an
    outcome while Redis is away (until then it tries until Redis is back).
    """

    def __init__(self, queue: JobQueue, run_fn: RunFn | None = None, worker_id: str | None = None,
                 *, lease_seconds: float = 30.0, heartbeat_seconds: float | None = None,
                 poll_interval: float = 1.0, max_jobs: int | None = None, until_empty: bool = False,
                 ray_address: str | None = None, redis_backoff_cap: float = 30.0,
                 report_timeout: float | None = None) -> None:
        if lease_seconds <= 0:
            raise QueueError(f"lease_seconds must be > 0, got {lease_seconds}")
        self.queue = queue
        self.id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = float(heartbeat_seconds or min(5.0, self.lease_seconds / 3))
        if self.heartbeat_seconds >= self.lease_seconds:
            raise QueueError("heartbeat_seconds must be shorter than lease_seconds")
        self.poll_interval = float(poll_interval)
        self.max_jobs = max_jobs
        self.until_empty = until_empty
        self.ray_address = ray_address
        self.redis_backoff_cap = redis_backoff_cap
        self.report_timeout = report_timeout or max(60.0, 4 * self.lease_seconds)
        self._queue_errors = 0  # consecutive queue errors of the main loop (its backoff)
        self.run_fn: RunFn = run_fn or self._default_run_fn
        self.processed = 0
        self.outcomes: list[tuple[str, str]] = []  # (job id, outcome) of this worker's jobs
        self._stop = threading.Event()
        self._stop_requested_at = 0.0
        self._redis_down = False
        self._current: _Run | None = None
        self._linked: set[str] = set()  # jobs whose dashboard link was printed

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "stop requested") -> None:
        """Finish (or interrupt) the current job and leave the loop."""
        if not self._stop.is_set():
            log.info("worker %s: %s; stopping", self.id, reason)
            self._stop_requested_at = time.monotonic()
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self._stop.is_set():
            # a second Ctrl-C: stop waiting for the run to save; the job is still released
            raise KeyboardInterrupt
        self.request_stop(f"received {signal.Signals(signum).name}")

    # ------------------------------------------------------------------ redis with backoff
    def _call(self, fn: Callable[[], Any], *, grace: float | None = None,
              stop_on_request: bool = False) -> Any:
        """Run a queue call, retrying with capped exponential backoff while Redis is down or
        refuses commands (OOM, READONLY, BUSY). Once the worker is stopping it gives up at once
        (``stop_on_request``) or ``grace`` seconds after the stop was requested."""

        def give_up() -> bool:
            if not self._stop.is_set():
                return False
            return stop_on_request or (grace is not None
                                       and time.monotonic() > self._stop_requested_at + grace)

        out = self.queue.call_with_retry(fn, base=0.5, cap=self.redis_backoff_cap,
                                         on_retry=self._redis_lost, should_stop=give_up,
                                         refused=True)
        self._redis_back()
        return out

    def _redis_lost(self, delay: float, err: Exception) -> None:
        self._redis_down = True
        what = "redis refused the command" if isinstance(err, RedisRefused) else "redis unavailable"
        log.warning("%s, retrying in %.1fs (%s)", what, delay, err)

    def _redis_back(self) -> None:
        if self._redis_down:
            self._redis_down = False
            log.info("redis reachable again at %s", self.queue.safe_url)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Work until stopped (signal, ``max_jobs``, ``until_empty``); returns jobs handled."""
        installed: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                installed[sig] = signal.signal(sig, self._on_signal)
        log.info("worker %s started on %s (prefix %s, lease %.0fs)", self.id, self.queue.safe_url,
                 self.queue.prefix, self.lease_seconds)
        monitoring.enable_train_state_tracking()
        try:
            while not self._stop.is_set():
                if self.max_jobs is not None and self.processed >= self.max_jobs:
                    log.info("worker %s: handled %d job(s) (--max-jobs); exiting", self.id, self.processed)
                    break
                try:
                    job = self._call(self._reap_and_claim, stop_on_request=True)
                except RedisUnavailable:
                    break  # stopping while Redis is down
                except QueueError as e:  # an error reply we cannot foresee: never die on one
                    self._queue_errors += 1
                    delay = min(self.redis_backoff_cap, 0.5 * 2 ** (self._queue_errors - 1))
                    log.error("queue error, retrying in %.1fs: %s", delay, e)
                    self._stop.wait(delay)
                    continue
                self._queue_errors = 0
                self._record_depth()
                if job is None:
                    if self.until_empty and self._drained():
                        log.info("worker %s: queue is empty; exiting", self.id)
                        break
                    self._stop.wait(self.poll_interval)
                    continue
                self.execute(job)
                self.processed += 1
        finally:
            for sig, old in installed.items():
                signal.signal(sig, old)
        log.info("worker %s stopped after %d job(s)", self.id, self.processed)
        return self.processed

    def _record_depth(self) -> None:
        """Export the queue depth per state to the Ray metrics endpoint (no-op without Ray)."""
        if not monitoring.enabled():
            return
        try:
            monitoring.record_queue_depth(self.queue.counts())
        except Exception as e:  # noqa: BLE001 - metrics never stop the worker
            log.debug("queue depth metric: %s", e)

    def _reap_and_claim(self) -> Job | None:
        reaped = self.queue.reap()
        if reaped:
            log.warning("reaped expired lease(s): %s", ", ".join(reaped))
        return self.queue.claim(self.id, self.lease_seconds)

    def _drained(self) -> bool:
        try:
            p = self._call(self.queue.pending, stop_on_request=True)
        except RedisUnavailable:
            return False
        return p["ready"] == 0 and p["delayed"] == 0 and p["running"] == 0

    # ------------------------------------------------------------------ one job
    def execute(self, job: Job) -> str:
        """Run one claimed job under a heartbeat and report its outcome; returns the outcome
        (``succeeded``, ``queued`` (retry), ``failed``, ``cancelled``, ``released``, ``lost``)."""
        run = _Run(job)
        self._current = run
        root = logging.getLogger()
        root.addHandler(run.logs)
        hb = threading.Thread(target=self._heartbeat_loop, args=(run,), name=f"heartbeat-{job.id}",
                              daemon=True)
        me = threading.get_ident()
        run.logs.threads.add(me)
        _JOB_THREADS.add(me)
        spec = job.spec_dict
        log.info("job %s started: %s %s on %s, backbone %s, attempt %d of %d (lease %d), worker %s%s",
                 job.id, job.name, job.variant, spec.get("data", "?"), job.backbone, job.attempts,
                 job.max_attempts, job.lease, self.id, self._dashboard_note(job))
        monitoring.job_started(job.id, job.variant)
        hb.start()
        if hb.ident is not None:
            run.logs.threads.add(hb.ident)
            _JOB_THREADS.add(hb.ident)

        def should_stop() -> bool:
            return self._stop.is_set() or run.cancel.is_set() or run.lost.is_set()

        result: Any = None
        exc: BaseException | None = None
        t0 = time.monotonic()
        try:
            if job.corrupt:  # the scripts dead-letter such records; never run one
                raise SpecError(f"job {job.id}: corrupt record: {job.corrupt}")
            result = self.run_fn(job, should_stop)
        except BaseException as e:  # noqa: BLE001 - every outcome is reported to the queue
            exc = e
        outcome = "lost"
        try:
            # the heartbeat goes on until the outcome is recorded: a Redis outage while the
            # outcome waits must not let the lease run out
            outcome = self._report(run, result, exc, time.monotonic() - t0)
        finally:
            run.done.set()
            hb.join(timeout=self.heartbeat_seconds + 15)
            monitoring.job_finished(job.id, job.variant, outcome,
                                    result=result if isinstance(result, dict) else None)
            root.removeHandler(run.logs)
            _JOB_THREADS.difference_update(run.logs.threads)
            self._flush_logs(run)
            self._current = None
        self.outcomes.append((job.id, outcome))
        if exc is not None and isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise exc
        return outcome

    def _report(self, run: _Run, result: Any, exc: BaseException | None, seconds: float) -> str:
        job, q, lease = run.job, self.queue, run.job.lease
        grace = self.report_timeout
        try:
            if run.lost.is_set():
                log.warning("job %s: lease %d lost (the job was reaped or claimed again); outcome "
                            "discarded", job.id, lease)
                return "lost"
            if run.cancel.is_set():
                reason = "cancelled while running"
                self._call(lambda: q.ack_cancel(job.id, self.id, reason, lease=lease), grace=grace)
                log.info("job %s cancelled after %.1fs", job.id, seconds)
                return "cancelled"
            if exc is None:
                if not isinstance(result, dict):
                    result = {"value": result}
                self._call(lambda: q.complete(job.id, self.id, result, lease=lease), grace=grace)
                log.info("job %s succeeded in %.1fs%s", job.id, seconds, _result_note(result))
                return "succeeded"
            if is_interruption(exc) or isinstance(exc, SystemExit) or self._stop.is_set():
                out = self._call(lambda: q.release(job.id, self.id, f"worker {self.id} stopping",
                                                   lease=lease), grace=grace)
                if out == "failed":
                    log.error("job %s dead-lettered: its record is corrupt", job.id)
                    return "failed"
                log.info("job %s released back to the queue (%s)", job.id,
                         "worker stopping" if self._stop.is_set() else type(exc).__name__)
                return "cancelled" if out == "cancelled" else "released"
            err = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            tail = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
            retryable = is_retryable(exc)
            state = self._call(lambda: q.fail(job.id, self.id, err, tail, lease=lease,
                                              retryable=retryable), grace=grace)
            if state == "queued":
                log.warning("job %s failed (attempt %d of %d), will be retried: %s", job.id,
                            job.attempts, job.max_attempts, err)
            else:
                log.error("job %s %s: %s", job.id, state, err)
            return state
        except LeaseLost as e:
            log.warning("%s; outcome discarded", e)
            return "lost"
        except RedisUnavailable as e:
            log.error("job %s: could not record the outcome (%s); its lease will expire and the "
                      "job will run again", job.id, e)
            return "lost"

    def _dashboard_note(self, job: Job) -> str:
        links = monitoring.dashboard_links(job.id, job.variant)
        if not links:
            return ""  # Ray is not up yet: the link line follows once it is
        self._linked.add(job.id)
        return (f"; Ray dashboard {links['dashboard']} (Train run {links.get('run_name', '-')}; "
                f"{monitoring.dashboard_access_hint()})")

    def _record_links(self, run: _Run) -> bool:
        """Once Ray is up in this process, store the job's dashboard links in its record."""
        links = monitoring.dashboard_links(run.job.id, run.job.variant)
        if not links:
            return False
        try:
            self.queue.set_dashboard(run.job.id, links)
        except QueueError as e:
            log.debug("dashboard links of job %s: %s", run.job.id, e)
            return False
        if run.job.id not in self._linked:
            self._linked.add(run.job.id)
            log.info("job %s: Ray dashboard %s (Train run %s; %s)", run.job.id, links["dashboard"],
                     links.get("run_name", "-"), monitoring.dashboard_access_hint())
        return True

    def _heartbeat_loop(self, run: _Run) -> None:
        job = run.job
        linked = False
        while not run.done.wait(self.heartbeat_seconds):
            if not linked:
                linked = self._record_links(run)
            try:
                status = self.queue.heartbeat(job.id, self.id, self.lease_seconds, lease=job.lease)
                self._redis_back()
            except RedisUnavailable as e:
                self._redis_lost(self.heartbeat_seconds, e)
                continue
            except Exception as e:  # noqa: BLE001 - keep heartbeating
                log.warning("heartbeat of job %s failed: %s", job.id, e)
                continue
            if status == "ended":  # the outcome is recorded
                break
            if status == "cancel" and not run.cancel.is_set():
                log.info("job %s: cancel requested; stopping the run", job.id)
                run.cancel.set()
            elif status == "lost" and not run.lost.is_set():
                log.warning("job %s: lease %d lost (the job was reaped or claimed again); stopping "
                            "the run", job.id, job.lease)
                run.lost.set()
            self._flush_logs(run)

    def _flush_logs(self, run: _Run) -> None:
        lines = run.logs.drain()
        if not lines:
            return
        try:
            self.queue.append_logs(run.job.id, lines)
        except QueueError:
            for line in reversed(lines):  # keep them for the next try
                run.logs.lines.appendleft(line)

    # ------------------------------------------------------------------ default job function
    def _default_run_fn(self, job: Job, should_stop: Callable[[], bool]) -> dict[str, Any]:
        run_dir = fsio.public(job_paths(job)[0])  # a record never holds a URI's credentials
        if job.run_dir != run_dir:  # shown by fcn-jobs show; never read back as a path
            self._call(lambda: self.queue.set_run_dir(job.id, run_dir), stop_on_request=True)
        return train_run_fn(job, should_stop, ray_address=self.ray_address,
                            on_progress=self._progress_fn(job))

    def _progress_fn(self, job: Job) -> Callable[[dict[str, Any]], None]:
        """Each progress state of the job's run: shown on this worker's output (a line per
        epoch, a live bar on a terminal) and published to the job record (``fcn-jobs watch``)."""
        from fcn_dist.train.progress import Console, eta_seconds

        console = Console(prefix=f"[{job.id} {job.variant}] ")

        def on_progress(state: dict[str, Any]) -> None:
            console(state)
            last = (state.get("done") or [{}])[-1]
            published = {k: state.get(k) for k in ("epoch", "epochs", "step", "steps")}
            published.update({"miou": last.get("miou"), "images_per_second": last.get("images_per_second"),
                              "eta_seconds": eta_seconds(state), "time": state.get("time")})
            try:
                self.queue.set_progress(job.id, self.id, published, lease=job.lease)
            except QueueError as e:  # progress is for watching; never stop the run over it
                log.debug("progress of job %s: %s", job.id, e)

        return on_progress
