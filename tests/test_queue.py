"""The job queue against the real Redis: claim/lease/heartbeat, retries, dead letters, cancel,
staged chains, idempotency, and worker processes killed, stopped or cut off from Redis.

Queue semantics use trivial job functions (``fcn_dist.queue.demo:run`` in worker subprocesses);
no training runs here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from fcn_dist.errors import QueueError, SpecError
from fcn_dist.queue import Interrupted, JobQueue, LeaseLost, Worker, is_interruption
from fcn_dist.spec import JobSpec
from _helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers
def mkspec(name: str = "job", variant: str = "8s", **kw) -> JobSpec:
    """A spec without model validation (queue semantics do not need the models package)."""
    return JobSpec(name=name, variant=variant, **kw)


@pytest.fixture
def queue(redis_url, redis_prefix):
    q = JobQueue(redis_url, prefix=redis_prefix, backoff_base=0.05, backoff_max=0.2)
    yield q
    q.close()




def start_thread_worker(q: JobQueue, run_fn, **kw) -> tuple[Worker, threading.Thread]:
    kw.setdefault("lease_seconds", 2.0)
    kw.setdefault("heartbeat_seconds", 0.2)
    kw.setdefault("poll_interval", 0.02)
    kw.setdefault("until_empty", True)
    w = Worker(q, run_fn, **kw)
    t = threading.Thread(target=w.run, daemon=True)
    t.start()
    return w, t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_cmd(prefix: str, url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fcn_dist.cli.worker", "--redis-url", url, "--prefix", prefix,
            "--run-fn", "fcn_dist.queue.demo:run", "--poll-interval", "0.05",
            "--retry-backoff", "0.05", *extra]


def demo_env(record: Path, sleep: float = 0.0, **more: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "FCN_DEMO_RECORD": str(record),
            "FCN_DEMO_SLEEP": str(sleep), "PYTHONPATH": str(ROOT), **more}


def records(path: Path) -> Counter:
    if not path.exists():
        return Counter()
    return Counter(tuple(ln.split()[:2]) for ln in path.read_text().splitlines() if ln.strip())


class RedisServer:
    """A private redis-server (AOF on, optional password) in a temp dir, restartable."""

    def __init__(self, tmp: Path, *extra: str):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server binary not available")
        self.exe, self.tmp, self.extra = exe, tmp, extra
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.tmp),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, 10, "redis-server to start")

    def _up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the AOF and exits
            self.proc.wait(10)
        self.proc = None


# --------------------------------------------------------------------------- records and scripts
def test_every_lua_script_is_loaded_and_registered(queue):
    from importlib.resources import files

    from fcn_dist.queue.redis_queue import _SCRIPTS, _lua_sources

    shipped = {p.name for p in (files("fcn_dist.queue") / "lua").iterdir() if p.name.endswith(".lua")}
    assert shipped == {f"{n}.lua" for n in _SCRIPTS} | {"prelude.lua"}
    prelude = (files("fcn_dist.queue") / "lua" / "prelude.lua").read_text()
    assert set(_lua_sources()) == set(queue._scripts) == set(_SCRIPTS)
    for name, src in _lua_sources().items():
        assert src.startswith(prelude) and src.splitlines()[len(prelude.splitlines())].startswith("-- ARGV:")
    queue.pending()  # a script runs (redis-py loads it on first use)
    assert queue.redis.script_exists(queue._scripts["pending"].sha) == [True]


def test_job_record_fields_are_parsed_from_the_hash():
    from fcn_dist.queue import ACTIVE_STATES, STATES, TERMINAL_STATES, Job, JobState

    assert STATES == ("waiting", "queued", "running", "succeeded", "failed", "cancelled")
    assert ACTIVE_STATES == ("waiting", "queued", "running")
    assert TERMINAL_STATES == ("succeeded", "failed", "cancelled")
    h = {"id": "abc", "state": "running", "spec": '{"epochs": 2}', "variant": "16s", "attempts": "2",
         "max_attempts": "", "priority": "-5", "created_at": "12.5", "retry_at": "", "heartbeat_at": "x",
         "result": '{"miou": 0.5}', "dashboard": "{not json", "cancel_requested": "1", "error": "",
         "worker": "w1", "score": "7"}
    job = Job.from_hash(h)
    assert job == Job(id="abc", state="running", spec_json='{"epochs": 2}', variant="16s", attempts=2,
                      max_attempts=3, priority=-5, created_at=12.5, result={"miou": 0.5},
                      cancel_requested=True, worker="w1",
                      corrupt="max_attempts '' is not an integer", raw=h)  # shown as corrupt
    assert job.state is JobState.RUNNING and job.state == "running" and f"{job.state}" == "running"
    assert job.state in {"running"} and job.state in ACTIVE_STATES
    assert Job.from_hash({"result": "{bad"}).result == {"unparsed": "{bad"}
    empty = Job.from_hash({})
    assert (empty.id, empty.state, empty.spec_json, empty.result) == ("", "", "{}", None)
    assert Job.from_hash({"state": "bogus"}).state == "bogus"  # a tampered record, shown as is
    d = job.to_dict()
    assert type(d["state"]) is str and d["spec"] == {"epochs": 2}
    assert "raw" not in d and "spec_json" not in d and list(d)[:2] == ["id", "state"]


# --------------------------------------------------------------------------- basics
def test_submit_claim_complete_records_everything(queue):
    sub = queue.submit(mkspec("basic", "32s"), priority=3, max_attempts=2)
    assert sub.created and sub.state == "queued"
    job = queue.get(sub.id)
    assert job.state == "queued" and job.variant == "32s" and job.max_attempts == 2
    assert job.spec_dict["name"] == "basic"  # stored as JSON, not pickle
    assert queue.resolve(sub.id[:6]) == sub.id

    claimed = queue.claim("w1", lease_seconds=5)
    assert claimed.id == sub.id and claimed.state == "running" and claimed.attempts == 1
    assert claimed.worker == "w1" and claimed.lease_deadline > time.time()
    assert queue.claim("w2", 5) is None  # exactly one worker holds it
    lease = claimed.lease
    assert queue.heartbeat(sub.id, "w1", 5, lease=lease) == "ok"
    assert queue.heartbeat(sub.id, "w2", 5, lease=lease) == "lost"  # owner-checked
    with pytest.raises(LeaseLost):
        queue.complete(sub.id, "w2", {}, lease=lease)
    queue.complete(sub.id, "w1", {"miou": 0.5, "best_checkpoint": "/ckpt"}, lease=lease)
    queue.complete(sub.id, "w1", {"miou": 0.5}, lease=lease)  # repeat after a lost reply: harmless
    job = queue.get(sub.id)
    assert job.state == "succeeded" and job.result["miou"] == 0.5 and job.finished_at
    hist = queue.history(sub.id)
    assert [h["to"] for h in hist if h["event"] != "fenced"] == ["queued", "running", "succeeded"]
    assert [h["worker"] for h in hist if h["event"] == "fenced"] == ["w2"]  # the refused call, noted
    assert [e["to"] for e in queue.events(job_id=sub.id) if e["event"] != "fenced"] == \
        ["queued", "running", "succeeded"]
    c = queue.counts()
    assert c["succeeded"] == 1 and c["queued"] == 0 and c["running"] == 0 and c["total"] == 1
    with pytest.raises(QueueError, match="unknown job"):
        queue.get("doesnotexist")


def test_priority_then_fifo(queue):
    low1 = queue.submit(mkspec("low1")).id
    high = queue.submit(mkspec("high"), priority=10).id
    low2 = queue.submit(mkspec("low2")).id
    neg = queue.submit(mkspec("neg"), priority=-5).id
    order = [queue.claim("w", 5).id for _ in range(4)]
    assert order == [high, low1, low2, neg]
    with pytest.raises(QueueError, match="priority"):
        queue.submit(mkspec("x"), priority=10**6)


def test_two_workers_twenty_jobs_each_runs_exactly_once(queue):
    ids = [queue.submit(mkspec(f"j{i}")).id for i in range(20)]
    ran: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run_fn(job, should_stop):
        with lock:
            ran.append((job.id, threading.current_thread().name))
        time.sleep(0.01)
        return {"ok": True}

    workers = [start_thread_worker(queue, run_fn, worker_id=f"w{i}") for i in range(2)]
    for _, t in workers:
        t.join(30)
        assert not t.is_alive()
    assert Counter(j for j, _ in ran) == Counter({i: 1 for i in ids})
    assert {queue.get(i).state for i in ids} == {"succeeded"}
    assert all(w.processed > 0 for w, _ in workers)  # both took part
    assert queue.counts()["succeeded"] == 20


# --------------------------------------------------------------------------- leases
def test_expired_lease_is_reclaimed_and_the_attempt_counts(queue):
    jid = queue.submit(mkspec("orphan"), max_attempts=3).id
    assert queue.claim("ghost", lease_seconds=0.3).id == jid  # claims, never heartbeats
    assert queue.reap() == []
    time.sleep(0.45)
    assert queue.reap() == [jid]
    job = queue.get(jid)
    assert job.state == "queued" and job.attempts == 1
    assert queue.heartbeat(jid, "ghost", 5, lease=1) == "lost"  # the ghost learns it lost the job

    seen = []
    w, t = start_thread_worker(queue, lambda job, stop: seen.append(job.attempts) or {})
    t.join(10)
    assert seen == [2]
    job = queue.get(jid)
    assert job.state == "succeeded" and job.worker == w.id
    assert "lease_expired" in [h["event"] for h in queue.history(jid)]


def test_lease_expiring_too_often_dead_letters(queue):
    jid = queue.submit(mkspec("flaky-host"), max_attempts=2).id
    for _ in range(2):
        assert queue.claim("ghost", lease_seconds=0.1).id == jid
        time.sleep(0.15)
        assert queue.reap() == [jid]
    job = queue.get(jid)
    assert job.state == "failed" and "lease expired" in job.error and "ghost" in job.error
    assert [j.id for j in queue.dead_letters()] == [jid]


def test_heartbeat_keeps_a_long_job_alive(queue):
    jid = queue.submit(mkspec("long")).id

    def run_fn(job, should_stop):
        time.sleep(1.2)  # 3x the lease
        return {}

    other_reaps = []
    w, t = start_thread_worker(queue, run_fn, lease_seconds=0.4, heartbeat_seconds=0.1)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        other_reaps += queue.reap()
        time.sleep(0.05)
    t.join(10)
    assert other_reaps == []
    job = queue.get(jid)
    assert job.state == "succeeded" and job.attempts == 1


# --------------------------------------------------------------------------- failures
def test_poison_job_retries_with_backoff_then_dead_letters(queue):
    poison = queue.submit(mkspec("poison"), max_attempts=3).id
    good = [queue.submit(mkspec(f"good{i}")).id for i in range(3)]
    attempts = []

    def run_fn(job, should_stop):
        if job.name == "poison":
            attempts.append(time.monotonic())
            raise RuntimeError("boom: always fails")
        return {"ok": 1}

    w, t = start_thread_worker(queue, run_fn)
    t.join(20)
    assert not t.is_alive()
    job = queue.get(poison)
    assert job.state == "failed" and job.attempts == 3
    assert job.error == "RuntimeError: boom: always fails"
    assert "RuntimeError" in job.traceback and "run_fn" in job.traceback
    assert [j.id for j in queue.dead_letters()] == [poison]
    assert len(attempts) == 3
    gaps = [b - a for a, b in zip(attempts, attempts[1:])]
    assert gaps[0] >= 0.045 and gaps[1] >= 0.095  # backoff 0.05 s, then 0.1 s
    events = [h["event"] for h in queue.history(poison)]
    assert events.count("retry_scheduled") == 2 and events[-1] == "failed"
    assert all(queue.get(g).state == "succeeded" for g in good)  # others unaffected

    # retry: back to queued with attempts reset and off the dead-letter list
    assert queue.retry(poison) == "queued"
    job = queue.get(poison)
    assert job.state == "queued" and job.attempts == 0 and job.error == ""
    assert queue.dead_letters() == []
    with pytest.raises(QueueError, match="only failed or cancelled"):
        queue.retry(poison)


def test_backoff_holds_the_retry_back(redis_url, redis_prefix):
    q = JobQueue(redis_url, prefix=redis_prefix, backoff_base=0.5, backoff_max=5)
    jid = q.submit(mkspec("slow-retry")).id
    j = q.claim("w", 5)
    assert q.fail(jid, "w", "transient", lease=j.lease) == "queued"
    job = q.get(jid)
    assert job.retry_at and job.retry_at > time.time()
    assert q.claim("w", 5) is None  # still backing off
    assert q.counts()["delayed"] == 1 and q.pending()["next_due"] > 0.2
    time.sleep(0.55)
    assert q.claim("w", 5).id == jid


def test_user_errors_are_not_retried(queue):
    jid = queue.submit(mkspec("badspec"), max_attempts=5).id

    def run_fn(job, should_stop):
        raise SpecError("spec: field 'epochs': must be >= 1")

    w, t = start_thread_worker(queue, run_fn)
    t.join(10)
    job = queue.get(jid)
    assert job.state == "failed" and job.attempts == 1 and "epochs" in job.error


def test_retry_policy():
    from fcn_dist.errors import DataError, TrainingError, WeightsError
    from fcn_dist.queue.worker import is_retryable

    assert not is_retryable(SpecError("x")) and not is_retryable(DataError("shard 3 is corrupt"))
    assert not is_retryable(WeightsError("x"))
    assert is_retryable(TrainingError("training failed: worker died")) and is_retryable(OSError())
    from fcn_dist.train import NonFiniteLossError

    assert not is_retryable(NonFiniteLossError("non-finite training loss at epoch 2, step 7"))


def test_interruption_releases_without_counting_the_attempt(queue):
    jid = queue.submit(mkspec("interrupted")).id
    started = threading.Event()

    def run_fn(job, should_stop):
        started.set()
        while not should_stop():
            time.sleep(0.01)
        raise Interrupted("saved a checkpoint and stopped")

    w, t = start_thread_worker(queue, run_fn, until_empty=False)
    started.wait(5)
    w.request_stop("test stop")
    t.join(10)
    job = queue.get(jid)
    assert job.state == "queued" and job.attempts == 0 and w.outcomes == [(jid, "released")]
    assert queue.history(jid)[-1]["event"] == "released"

    class TrainInterrupted(Interrupted):  # e.g. fcn_dist.train.Interrupted
        pass

    class Lookalike(Exception):
        pass

    Lookalike.__name__ = "Interrupted"  # a type check, not a name check
    assert is_interruption(TrainInterrupted()) and is_interruption(KeyboardInterrupt())
    assert not is_interruption(Lookalike()) and not is_interruption(RuntimeError())


# --------------------------------------------------------------------------- cancel
def test_cancel_queued_and_running(queue):
    queued = queue.submit(mkspec("q")).id
    assert queue.cancel(queued) == "cancelled"
    job = queue.get(queued)
    assert job.state == "cancelled" and queue.claim("w", 5) is None
    assert queue.cancel(queued) == "cancelled"  # idempotent

    running = queue.submit(mkspec("r")).id
    started = threading.Event()
    stopped_by = []

    def run_fn(job, should_stop):
        started.set()
        while not should_stop():
            time.sleep(0.01)
        stopped_by.append(job.id)
        raise Interrupted("stopped")

    w, t = start_thread_worker(queue, run_fn, heartbeat_seconds=0.1)
    started.wait(5)
    assert queue.cancel(running, "user changed their mind") == "cancelling"
    assert queue.get(running).cancel_requested
    t.join(10)
    assert stopped_by == [running]
    job = queue.get(running)
    assert job.state == "cancelled" and "changed their mind" in job.error
    assert queue.cancel(running) == "cancelled"


# --------------------------------------------------------------------------- idempotency
def test_idempotent_resubmission_and_force(queue):
    spec = mkspec("idem", "16s")
    a = queue.submit(spec)
    b = queue.submit(spec)
    assert b.id == a.id and not b.created
    assert queue.submit(mkspec("idem", "8s")).id != a.id  # another variant is another job
    c = queue.submit(spec, force=True)
    assert c.created and c.id != a.id
    # running still counts as active
    claimed = queue.claim("w", 5)
    assert queue.submit(spec).id in (a.id, c.id)
    queue.complete(claimed.id, "w", {}, lease=claimed.lease)
    # once finished, the key is cleared (when it pointed at the finished job)
    for _ in range(3):
        j = queue.claim("w", 5)
        if j:
            queue.complete(j.id, "w", {}, lease=j.lease)
    d = queue.submit(spec)
    assert d.created and d.id not in (a.id, c.id)


# --------------------------------------------------------------------------- staged chains
def test_staged_chain_runs_in_order_with_parent_checkpoints(queue):
    subs = queue.submit_variants(mkspec("chain"), ["8s", "32s", "16s"], staged=True)
    assert [s.variant for s in subs] == ["32s", "16s", "8s"]
    assert [s.state for s in subs] == ["queued", "waiting", "waiting"]
    assert queue.get(subs[1].id).depends_on == subs[0].id
    again = queue.submit_variants(mkspec("chain"), ["32s", "16s", "8s"], staged=True)
    assert [s.id for s in again] == [s.id for s in subs] and not any(s.created for s in again)

    ran = []

    def run_fn(job, should_stop):
        ran.append((job.variant, job.init_from))
        return {"best_checkpoint": f"/ckpt/{job.variant}"}

    workers = [start_thread_worker(queue, run_fn) for _ in range(2)]
    for _, t in workers:
        t.join(20)
    assert ran == [("32s", ""), ("16s", "/ckpt/32s"), ("8s", "/ckpt/16s")]
    assert all(queue.get(s.id).state == "succeeded" for s in subs)


def test_failed_parent_cancels_children_and_retry_revives_them(queue):
    subs = queue.submit_variants(mkspec("chain2"), ["32s", "16s", "8s"], staged=True, max_attempts=1)
    j = queue.claim("w", 5)
    assert queue.fail(j.id, "w", "out of memory", lease=j.lease) == "failed"
    c16, c8 = queue.get(subs[1].id), queue.get(subs[2].id)
    assert c16.state == "cancelled" and f"parent job {subs[0].id} failed" in c16.error
    assert c8.state == "cancelled" and f"parent job {subs[1].id} was cancelled" in c8.error
    with pytest.raises(QueueError, match="retry the parent"):
        queue.retry(subs[2].id)
    assert queue.retry(subs[0].id) == "queued"
    assert queue.get(subs[1].id).state == "waiting" and queue.get(subs[2].id).state == "waiting"
    # cancel of the head cancels the rest of the chain
    assert queue.cancel(subs[0].id) == "cancelled"
    assert {queue.get(s.id).state for s in subs} == {"cancelled"}
    # a child submitted after its parent succeeded is queued at once with the checkpoint
    p = queue.submit(mkspec("p", "32s"))
    j = queue.claim("w", 5)
    queue.complete(j.id, "w", {"best_checkpoint": "/c/32"}, lease=j.lease)
    child = queue.submit(mkspec("p", "16s"), depends_on=p.id)
    assert child.state == "queued" and queue.get(child.id).init_from == "/c/32"
    with pytest.raises(QueueError, match="unknown parent"):
        queue.submit(mkspec("x"), depends_on="nosuchjob")


# --------------------------------------------------------------------------- logs, worker id
def test_worker_pushes_job_logs(queue, caplog):
    import logging

    caplog.set_level(logging.INFO)
    jid = queue.submit(mkspec("chatty")).id

    def run_fn(job, should_stop):
        logging.getLogger("fcn_dist.train").warning("epoch 1 miou 0.42")
        return {}

    w, t = start_thread_worker(queue, run_fn)
    t.join(10)
    lines = queue.logs(jid)
    assert any("epoch 1 miou 0.42" in ln for ln in lines)
    assert any("succeeded" in ln for ln in lines)
    assert w.id in queue.workers()


# --------------------------------------------------------------------------- worker processes
@pytest.mark.fault
def test_sigterm_puts_the_running_job_back_quickly(queue, redis_url, redis_prefix, tmp_path):
    rec = tmp_path / "runs.txt"
    jid = queue.submit(mkspec("sleepy")).id
    proc = subprocess.Popen(worker_cmd(redis_prefix, redis_url, "--lease-seconds", "10"),
                            env=demo_env(rec, sleep=60), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: queue.get(jid).state == "running", 20, what="job to start")
        wait_for(lambda: records(rec)[("start", jid)] == 1, 5, what="run to start")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: queue.get(jid).state == "queued", 5, what="job to be released")
        assert time.monotonic() - t0 < 5
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = proc.stdout.read()
    job = queue.get(jid)
    assert job.attempts == 0 and queue.history(jid)[-1]["event"] == "released"
    assert "SIGTERM" in out and "released" in out and "Traceback" not in out


@pytest.mark.fault
def test_sigkilled_worker_job_is_reclaimed_and_succeeds_once(queue, redis_url, redis_prefix, tmp_path):
    rec = tmp_path / "runs.txt"
    jid = queue.submit(mkspec("killed")).id
    env = demo_env(rec, sleep=1.0)
    a = subprocess.Popen(worker_cmd(redis_prefix, redis_url, "--lease-seconds", "1.5"), env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: records(rec)[("start", jid)] == 1, 20, what="first run to start")
        a.kill()
        a.wait(5)
    finally:
        if a.poll() is None:
            a.kill()
    assert queue.get(jid).state == "running"  # nobody told the queue
    b = subprocess.run(worker_cmd(redis_prefix, redis_url, "--lease-seconds", "1.5", "--until-empty"),
                       env=env, capture_output=True, text=True, timeout=60)
    assert b.returncode == 0, b.stderr
    job = queue.get(jid)
    assert job.state == "succeeded" and job.attempts == 2
    r = records(rec)
    assert r[("start", jid)] == 2 and r[("done", jid)] == 1
    assert "reaped expired lease" in b.stderr


@pytest.mark.fault
def test_redis_restart_with_aof_loses_nothing(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    prefix = "fcn:"
    rec = tmp_path / "runs.txt"
    q = JobQueue(url, prefix=prefix, backoff_base=0.05)
    ids = [q.submit(mkspec(f"aof{i}")).id for i in range(6)]
    proc = subprocess.Popen(worker_cmd(prefix, url, "--lease-seconds", "8", "--until-empty"),
                            env=demo_env(rec, sleep=0.8), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: q.counts()["running"] == 1, 20, what="a job to run")
        server.stop()  # jobs queued and one running
        time.sleep(2.0)
        server.start()
        assert proc.wait(60) == 0
        states = {i: q.get(i).state for i in ids}
        assert set(states.values()) == {"succeeded"}, states
        r = records(rec)
        assert all(r[("done", i)] == 1 for i in ids), r
        c = q.counts()
        assert c["succeeded"] == 6 and c["ready"] == 0 and c["running_leases"] == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read()
        q.close()
        server.stop()
    assert "redis unavailable, retrying in" in out
    assert "redis reachable again" in out
    assert "Traceback" not in out


@pytest.mark.fault
def test_submitter_waits_for_redis_to_come_back(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    server.stop()
    q = JobQueue(url, prefix="fcn:")

    def submit():
        return q.call_with_retry(lambda: q.submit(mkspec("late")), attempts=6, base=0.2,
                                 on_retry=lambda d, e: notes.append(d))

    notes: list[float] = []
    t = threading.Thread(target=lambda: out.append(submit()))
    out: list = []
    t.start()
    time.sleep(0.5)
    server.start()
    t.join(15)
    try:
        assert out and out[0].created and notes
        assert q.get(out[0].id).state == "queued"
    finally:
        q.close()
        server.stop()


@pytest.mark.fault
def test_password_and_acl_user_urls(tmp_path):
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        q = JobQueue(f"redis://:s3cret@127.0.0.1:{server.port}/0", prefix="fcn:")
        jid = q.submit(mkspec("auth")).id
        j = q.claim("w", 5)
        assert j.id == jid
        q.redis.execute_command("ACL", "SETUSER", "fcn", "on", ">pw-fcn", "~fcn:*", "+@all")
        q2 = JobQueue(f"redis://fcn:pw-fcn@127.0.0.1:{server.port}/0", prefix="fcn:")
        q2.complete(jid, "w", {"ok": 1}, lease=j.lease)
        assert q2.get(jid).state == "succeeded"
        bad = JobQueue(f"redis://:wrong@127.0.0.1:{server.port}/0", prefix="fcn:")
        with pytest.raises(QueueError) as e:
            bad.ping()
        assert "credentials" in str(e.value) and "wrong" not in str(e.value)
        anon = JobQueue(f"redis://127.0.0.1:{server.port}/0", prefix="fcn:")
        with pytest.raises(QueueError, match="credentials"):
            anon.counts()
    finally:
        server.stop()


def test_unreachable_redis_is_a_queue_error():
    q = JobQueue("redis://127.0.0.1:1/0", prefix="fcn:")
    t0 = time.monotonic()
    with pytest.raises(QueueError, match="redis unavailable at redis://127.0.0.1:1/0"):
        q.submit(mkspec("nowhere"))
    assert time.monotonic() - t0 < 5


def test_load_500_jobs_4_workers_each_runs_exactly_once(queue, redis_url, redis_prefix, tmp_path):
    rec = tmp_path / "runs.txt"
    ids = [queue.submit(mkspec(f"load{i}")).id for i in range(500)]
    t0 = time.monotonic()
    procs = [subprocess.Popen(worker_cmd(redis_prefix, redis_url, "--until-empty",
                                         "--log-level", "WARNING"),
                              env=demo_env(rec), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        assert p.wait(120) == 0, p.stderr.read()
    elapsed = time.monotonic() - t0
    r = records(rec)
    done = Counter({k[1]: v for k, v in r.items() if k[0] == "done"})
    assert done == Counter({i: 1 for i in ids})
    assert queue.counts()["succeeded"] == 500
    print(f"500 jobs, 4 worker processes: {elapsed:.1f}s")


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
@pytest.mark.ray
def test_end_to_end_smoke_all_variants_through_the_queue(tmp_path, redis_url, redis_prefix):
    """fcn-submit jobs/smoke.yaml --variant all; fcn-worker --until-empty on a local Ray; three
    finished runs in the Parquet store (minutes on a CPU: run with -m slow)."""
    from fcn_dist.data import prepare
    from fcn_dist.store import ResultsStore

    data, store = tmp_path / "data", tmp_path / "store"
    prepare("synthetic", data / "synthetic", count=48, size=(64, 64))
    env = {**os.environ, "FCN_DATA": str(data), "FCN_STORE": str(store),
           "FCN_RUNS": str(tmp_path / "runs"), "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    common = ["--redis-url", redis_url, "--prefix", redis_prefix]
    sub = subprocess.run([sys.executable, "-m", "fcn_dist.cli.submit", "--spec",
                          str(ROOT / "jobs" / "smoke.yaml"), "--variant", "all", "--set", "epochs=1",
                          "--set", "num_workers=1", "--json", *common],
                         capture_output=True, text=True, env=env, timeout=120)
    assert sub.returncode == 0, sub.stderr
    ids = [x["id"] for x in __import__("json").loads(sub.stdout)]
    w = subprocess.run([sys.executable, "-m", "fcn_dist.cli.worker", "--until-empty",
                        "--lease-seconds", "60", *common],
                       capture_output=True, text=True, env=env, timeout=900)
    q = JobQueue(redis_url, prefix=redis_prefix)
    jobs = [q.get(i) for i in ids]
    assert [j.state for j in jobs] == ["succeeded"] * 3, (w.stderr[-3000:], [j.error for j in jobs])
    assert all(j.result.get("best_checkpoint") and j.run_dir for j in jobs)
    runs = ResultsStore(store).runs().to_pylist()
    assert sorted(r["job_id"] for r in runs) == sorted(ids)


# --------------------------------------------------------------------------- paths from Redis
def test_tampered_run_dir_and_init_from_are_never_used(queue, tmp_path, monkeypatch):
    """A record rewritten in Redis (run_dir=/root/.ssh, init_from outside the parent's run) must
    not steer the worker: the run dir is derived from the job, init_from must be a checkpoint of
    the parent job under FCN_RUNS; the job fails at once naming it, before any training."""
    from fcn_dist.queue.worker import job_paths

    runs = tmp_path / "runs"
    monkeypatch.setenv("FCN_RUNS", str(runs))
    lone = queue.submit(mkspec("tamper", "8s")).id
    queue.redis.hset(queue.key("job", lone), mapping={"run_dir": "/root/.ssh", "init_from": "/root/.ssh/x"})
    with pytest.raises(SpecError, match="has no parent"):
        job_paths(queue.get(lone))
    queue.redis.hset(queue.key("job", lone), "init_from", "")
    assert job_paths(queue.get(lone)) == (str(runs / f"{lone}-8s"), None)
    queue.cancel(lone)

    subs = queue.submit_variants(mkspec("tchain"), ["32s", "16s"], staged=True)
    _, t = start_thread_worker(queue, lambda job, stop: {"best_checkpoint": "/etc/ssh"}, max_jobs=1)
    t.join(10)
    child = queue.get(subs[1].id)
    assert child.state == "queued" and child.init_from == "/etc/ssh"
    _, t = start_thread_worker(queue, None)  # the real job function
    t.join(20)
    child = queue.get(subs[1].id)
    assert child.state == "failed" and child.attempts == 1
    assert "init_from" in child.error and "not a checkpoint of its parent" in child.error
    assert not (runs / f"{subs[1].id}-16s").exists()

    good = runs / f"{subs[0].id}-32s" / "checkpoint_000001"
    queue.redis.hset(queue.key("job", subs[1].id), "init_from", str(good))
    assert job_paths(queue.get(subs[1].id)) == (str(runs / f"{subs[1].id}-16s"), str(good))
    queue.redis.hset(queue.key("job", subs[1].id), "init_from", str(runs / f"{subs[0].id}-32s/../x"))
    with pytest.raises(SpecError, match="not a checkpoint of its parent"):
        job_paths(queue.get(subs[1].id))
