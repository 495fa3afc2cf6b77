"""The queue at its edges (issue 18.1-18.4), against real Redis servers: corrupt job records,
Redis error replies that are not connection errors, outages longer than the lease, and fencing
of stale leases. No mocks: the shared Redis for record tampering and fencing, a private
redis-server (started by the test on a free port) for OOM, READONLY, BUSY and restarts.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from fcn_dist.cli import jobs as jobs_cli
from fcn_dist.cli import submit as submit_cli
from fcn_dist.queue import JobQueue, LeaseLost, Worker
from _helpers import wait_for
from test_queue import RedisServer, demo_env, mkspec, start_thread_worker, worker_cmd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def queue(redis_url, redis_prefix):
    q = JobQueue(redis_url, prefix=redis_prefix, backoff_base=0.05, backoff_max=0.2)
    yield q
    q.close()


def jobs_cli_run(url: str, prefix: str, *args: str):
    return CliRunner().invoke(jobs_cli.main, ["--redis-url", url, "--prefix", prefix, *args])


def ok_run(job, should_stop):
    return {"name": job.name, "attempt": job.attempts}


# --------------------------------------------------------------------------- 1. corrupt records
def test_record_rules_are_the_same_in_python_and_lua():
    """prelude.lua's `problem` and job.record_problem check the same fields by the same rules."""
    from importlib.resources import files

    from fcn_dist.queue import job

    lua = (files("fcn_dist.queue") / "lua" / "prelude.lua").read_text()

    def lua_list(name: str) -> tuple[str, ...]:
        body = re.search(rf"local {name} = {{([^}}]*)}}", lua).group(1)
        return tuple(re.findall(r"'(\w+)'", body))

    assert lua_list("INTEGERS") == job.REQUIRED_INTEGERS
    assert lua_list("NUMBERS") == job.REQUIRED_NUMBERS
    assert lua_list("COUNTERS") == job.OPTIONAL_COUNTERS
    states = re.search(r"local STATES = {([^}]*)}", lua).group(1)
    assert tuple(re.findall(r"(\w+) = true", states)) == job.STATES
    assert re.search(r"local DIGITS = (\d+)", lua).group(1) == "15" and "{1,15}" in job._INT.pattern

    sound = {"state": "queued", "attempts": "0", "max_attempts": "3", "priority": "-2",
             "score": "2199023255553", "lease": "4", "created_at": "abc"}  # a timestamp is only shown
    assert job.record_problem(sound) is None
    for field, value, why in [("max_attempts", "abc", "is not an integer"),
                              ("attempts", "1.5", "is not an integer"),
                              ("attempts", "9" * 20, "is not an integer"),  # HINCRBY would fail
                              ("priority", None, "missing is not an integer"),
                              ("score", "1e3", "is not a number"), ("lease", "-1", "is not a counter"),
                              ("state", "exploded", "is not a job state"),
                              ("max_attempts", "0", "must be >= 1")]:
        h = {**sound, field: value} if value is not None else {k: v for k, v in sound.items() if k != field}
        assert why in job.record_problem(h) and field in job.record_problem(h)
        j = job.Job.from_hash(h)  # never raises; a corrupt record is shown as such
        assert j.corrupt and j.shown_state == "corrupt" and j.to_dict()["state"] == "corrupt"


@pytest.mark.parametrize("field", ["max_attempts", "attempts", "priority", "score"])
def test_corrupt_queued_record_is_dead_lettered_and_the_worker_carries_on(queue, field, caplog):
    """A queued record with a field set to "abc": claim dead-letters it with the reason (nothing
    half-written), the worker runs the next jobs; list/show say corrupt; once the operator fixes
    the field, retry runs it."""
    bad = queue.submit(mkspec("bad")).id
    good = [queue.submit(mkspec(f"good{i}")).id for i in range(2)]
    ts = queue.submit(mkspec("odd-timestamp")).id
    queue.redis.hset(queue.key("job", bad), field, "abc")
    queue.redis.hset(queue.key("job", ts), "created_at", "abc")  # only shown: the job still runs
    caplog.set_level(logging.WARNING, logger="fcn_dist")
    w, t = start_thread_worker(queue, ok_run)
    t.join(20)
    assert not t.is_alive() and w.processed == 3, w.outcomes
    assert {queue.get(i).state for i in good + [ts]} == {"succeeded"}
    job = queue.get(bad)
    assert job.state == "failed" and job.corrupt and job.shown_state == "corrupt"
    kind = "a number" if field == "score" else "an integer"
    assert job.error == f"corrupt record: {field} 'abc' is not {kind}"
    assert queue.redis.hget(queue.key("job", bad), "attempts") == ("abc" if field == "attempts" else "0")
    assert [j.id for j in queue.dead_letters()] == [bad]
    assert queue.counts()["running_leases"] == 0 and queue.counts()["ready"] == 0
    assert f"job {bad} dead-lettered: corrupt record: {field}" in caplog.text

    url, prefix = queue.url, queue.prefix
    r = jobs_cli_run(url, prefix, "list")
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith(bad))
    assert " corrupt " in row and "abc" in row
    assert next(ln for ln in r.stdout.splitlines() if ln.startswith(ts)).split()[1] == "succeeded"
    r = jobs_cli_run(url, prefix, "show", bad)
    assert r.exit_code == 0, r.output
    assert "state      corrupt" in r.stdout and f"corrupt    {field} 'abc'" in r.stdout
    assert jobs_cli_run(url, prefix, "show", ts).exit_code == 0
    assert jobs_cli_run(url, prefix, "list", "--json").exit_code == 0

    r = jobs_cli_run(url, prefix, "retry", bad)  # refused, naming the field, until it is fixed
    assert r.exit_code == 1 and f"corrupt record ({field} 'abc'" in r.stderr
    fixed = {"max_attempts": "3", "attempts": "0", "priority": "0", "score": "1"}[field]
    queue.redis.hset(queue.key("job", bad), field, fixed)
    r = jobs_cli_run(url, prefix, "retry", bad)
    assert r.exit_code == 0 and r.stdout.split() == [bad, "queued"], r.output
    w, t = start_thread_worker(queue, ok_run)
    t.join(20)
    assert queue.get(bad).state == "succeeded" and not queue.get(bad).corrupt


def test_corrupt_running_record_reap_and_fail_never_die(queue):
    """A running record whose attempts/max_attempts were tampered with: reap dead-letters it
    (and still requeues the other expired lease in the same call); a worker whose job's record
    is corrupted mid-run records the failure as a dead letter and takes the next job."""
    a = queue.submit(mkspec("a")).id
    b = queue.submit(mkspec("b")).id
    assert queue.claim("ghost", lease_seconds=0.2).id == a
    assert queue.claim("ghost", lease_seconds=0.2).id == b
    queue.redis.hset(queue.key("job", a), "max_attempts", "abc")
    time.sleep(0.3)
    assert sorted(queue.reap()) == sorted([a, b])
    ja, jb = queue.get(a), queue.get(b)
    assert ja.state == "failed" and ja.error.startswith("corrupt record: max_attempts 'abc'")
    assert "lease of worker ghost expired" in ja.error
    assert jb.state == "queued" and jb.attempts == 1
    assert queue.counts()["running_leases"] == 0

    c = queue.submit(mkspec("c")).id

    def run_fn(job, should_stop):
        if job.name == "b":
            queue.redis.hset(queue.key("job", job.id), "attempts", "x1")  # tampered mid-run
            raise RuntimeError("boom")
        return {}

    w, t = start_thread_worker(queue, run_fn)
    t.join(20)
    assert not t.is_alive() and dict(w.outcomes) == {b: "failed", c: "succeeded"}
    jb = queue.get(b)
    assert jb.state == "failed" and jb.error.startswith("corrupt record: attempts 'x1'")
    assert "RuntimeError: boom" in jb.error


def test_list_and_show_survive_a_corrupt_record_anywhere(queue):
    ids = [queue.submit(mkspec(f"j{i}")).id for i in range(3)]
    queue.redis.hset(queue.key("job", ids[1]), mapping={"priority": "high", "result": "7",
                                                       "progress": "[1]", "dashboard": "null"})
    queue.redis.rpush(queue.key("hist", ids[1]), "{not json")
    r = jobs_cli_run(queue.url, queue.prefix, "list")
    assert r.exit_code == 0 and [ln.split()[1] for ln in r.stdout.splitlines()[2:]] == \
        ["queued", "corrupt", "queued"], r.output
    r = jobs_cli_run(queue.url, queue.prefix, "show", ids[1])
    assert r.exit_code == 0 and "priority   high" in r.stdout and "unreadable" in r.stdout, r.output
    assert jobs_cli_run(queue.url, queue.prefix, "watch", "--once").exit_code == 0


# --------------------------------------------------------------------------- 2. error replies
@pytest.mark.fault
def test_worker_rides_out_oom_readonly_and_busy_replies(tmp_path, caplog):
    """OOM under maxmemory (idle, then while a job runs and ends), a read-only replica and a busy
    script refuse a worker's queue calls for a while: it logs a line per retry, backs off, stays
    alive, and records each outcome once the server accepts writes again."""
    server = RedisServer(tmp_path, "--busy-reply-threshold", "100")
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    q = JobQueue(url, prefix="fcn:")
    admin = redis.Redis(port=server.port)
    caplog.set_level(logging.INFO, logger="fcn_dist")
    gates: dict[str, threading.Event] = {}

    def run_fn(job, should_stop):
        gates[job.name].wait(20)
        return {}

    w = Worker(q, run_fn, "w-edge", lease_seconds=5, heartbeat_seconds=0.3, poll_interval=0.05,
               redis_backoff_cap=0.4)
    t = threading.Thread(target=w.run, daemon=True)
    busy: list[threading.Thread] = []

    def start_busy() -> None:
        busy.append(threading.Thread(target=_busy_script, args=(server.port,), daemon=True))
        busy[-1].start()
        time.sleep(0.3)

    try:
        t.start()
        admin.config_set("maxmemory", 1)  # idle: reap/claim refused
        time.sleep(1.0)
        assert t.is_alive() and "redis refused the command, retrying in" in caplog.text
        assert "OOM command not allowed" in caplog.text and "out of memory" in caplog.text
        admin.config_set("maxmemory", 0)
        kinds = [("oom", lambda: admin.config_set("maxmemory", 1), lambda: admin.config_set("maxmemory", 0),
                  "OOM"),
                 ("readonly", lambda: admin.replicaof("127.0.0.1", 1), lambda: admin.replicaof("NO", "ONE"),
                  "READONLY You can't write"),
                 ("busy", start_busy, admin.script_kill, "BUSY Redis is busy")]
        for name, refuse, accept, needle in kinds:
            gates[name] = threading.Event()
            jid = q.submit(mkspec(name)).id
            wait_for(lambda: q.get(jid).state == "running", 10, f"{name} to run")
            caplog.clear()
            refuse()
            gates[name].set()  # the run ends while its outcome cannot be recorded
            time.sleep(1.2)
            assert t.is_alive() and jid not in dict(w.outcomes), name
            assert needle in caplog.text and "redis refused the command, retrying in" in caplog.text
            accept()
            wait_for(lambda: jid in dict(w.outcomes), 15, f"the outcome of {name}")
            assert dict(w.outcomes)[jid] == "succeeded" and q.get(jid).state == "succeeded"
            assert q.get(jid).attempts == 1
        assert "Traceback" not in caplog.text
    finally:
        w.request_stop()
        t.join(15)
        for b in busy:
            b.join(5)
        q.close()
        server.stop()


def _busy_script(port: int) -> None:
    with pytest.raises(redis.exceptions.ResponseError, match="killed"):
        redis.Redis(port=port, socket_timeout=30).eval("while true do end", 0)


@pytest.mark.fault
def test_submitter_gives_one_clear_line_for_oom_and_readonly(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    spec = tmp_path / "tiny.yaml"
    spec.write_text("name: tiny\ndata: synthetic\nepochs: 1\n")
    admin = redis.Redis(port=server.port)
    try:
        for refuse, needle in [(lambda: admin.config_set("maxmemory", 1), "OOM command not allowed"),
                               (lambda: admin.replicaof("127.0.0.1", 1), "READONLY You can't write")]:
            refuse()
            r = CliRunner().invoke(submit_cli.main, ["--spec", str(spec), "--redis-url", url])
            assert r.exit_code == 1, r.output
            err = r.stderr.strip()
            assert "\n" not in err and "Traceback" not in r.output, err
            assert err.startswith(f"error: redis at {url} refused the command: {needle}"), err
            admin.config_set("maxmemory", 0)
            admin.replicaof("NO", "ONE")
        assert admin.dbsize() == 0  # nothing was half-submitted
    finally:
        server.stop()


# --------------------------------------------------------------------------- 3. long outages
@pytest.mark.fault
def test_outage_longer_than_the_lease_expires_nothing_and_charges_nothing(tmp_path):
    """A worker runs a job on its only attempt with a 3 s lease; Redis is shut down for 5 s
    (AOF on) while the run goes on and ends; after the restart a competing reaper reaps at
    once and keeps reaping: the lease is not expired, no attempt is charged, the worker
    re-asserts its lease and records the outcome, the job ran once."""
    server = RedisServer(tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    q = JobQueue(url, prefix="fcn:")
    reaper = JobQueue(url, prefix="fcn:")
    jid = q.submit(mkspec("through-the-outage"), max_attempts=1).id
    runs: list[int] = []

    def run_fn(job, should_stop):
        runs.append(job.attempts)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            if should_stop():
                raise RuntimeError("stopped: the lease was lost")
            time.sleep(0.05)
        return {"ok": 1}

    w = Worker(q, run_fn, "holder", lease_seconds=3, heartbeat_seconds=0.5, poll_interval=0.05,
               redis_backoff_cap=1.0, max_jobs=1)
    t = threading.Thread(target=w.run, daemon=True)
    reaped: list[str] = []
    try:
        t.start()
        wait_for(lambda: runs, 10, "the job to start")
        time.sleep(0.5)
        server.stop()
        time.sleep(5.0)  # longer than the lease; the run ends meanwhile
        server.start()
        end = time.monotonic() + 4.0
        while time.monotonic() < end and t.is_alive():
            reaped += reaper.call_with_retry(reaper.reap, attempts=20, base=0.05)
            time.sleep(0.05)
        t.join(15)
        job = q.get(jid)
        events = [h["event"] for h in q.history(jid)]
        assert reaped == [] and "lease_expired" not in events, (reaped, events)
        assert job.state == "succeeded" and job.attempts == 1 and runs == [1], (job.state, job.error)
        assert w.outcomes == [(jid, "succeeded")]
        assert "lease_resumed" in events
    finally:
        w.request_stop()
        t.join(10)
        q.close()
        reaper.close()
        server.stop()


def test_a_dead_workers_lease_still_runs_out_after_a_quiet_spell(queue):
    """The outage clock does not keep zombies alive: a lease whose holder never heartbeats is
    moved at most once by a silence, then reaped."""
    jid = queue.submit(mkspec("zombie")).id
    assert queue.claim("dead", lease_seconds=0.5).id == jid
    time.sleep(1.3)  # a silence longer than a second: the lease is moved once
    assert queue.reap() == []
    time.sleep(1.3)  # silent again, but the holder never heartbeated: not moved again
    assert queue.reap() == [jid]
    events = [h["event"] for h in queue.history(jid)]
    assert events.count("lease_resumed") == 1 and events[-1] == "lease_expired"


# --------------------------------------------------------------------------- 4. fencing
def test_stale_leases_are_refused_even_under_the_same_worker_id(queue):
    jid = queue.submit(mkspec("fenced")).id
    first = queue.claim("w", lease_seconds=0.2)
    time.sleep(0.3)
    assert queue.reap() == [jid]
    # a zombie's fail on the requeued job is refused, not "recorded"
    with pytest.raises(LeaseLost, match="fail refused: lease 1 of worker w is stale"):
        queue.fail(jid, "w", "zombie error", lease=first.lease)
    second = queue.claim("w", lease_seconds=5)  # the same worker id, attempt 2
    assert second.id == jid and second.attempts == 2 and second.lease == first.lease + 1
    old = first.lease
    assert queue.heartbeat(jid, "w", 5, lease=old) == "lost"
    assert not queue.set_progress(jid, "w", {"epoch": 1}, lease=old)
    for call in (lambda: queue.complete(jid, "w", {"attempt": 1}, lease=old),
                 lambda: queue.fail(jid, "w", "late", lease=old),
                 lambda: queue.release(jid, "w", lease=old),
                 lambda: queue.ack_cancel(jid, "w", lease=old)):
        with pytest.raises(LeaseLost):
            call()
    job = queue.get(jid)
    assert job.state == "running" and job.attempts == 2 and job.result is None and job.error == ""
    assert queue.heartbeat(jid, "w", 5, lease=second.lease) == "ok"
    queue.complete(jid, "w", {"attempt": 2}, lease=second.lease)
    queue.complete(jid, "w", {"attempt": 2}, lease=second.lease)  # a repeat after a lost reply
    with pytest.raises(LeaseLost):
        queue.complete(jid, "w", {"attempt": 1}, lease=old)
    assert queue.get(jid).result == {"attempt": 2}
    assert queue.heartbeat(jid, "w", 5, lease=second.lease) == "ended"
    fenced = [h for h in queue.history(jid) if h["event"] == "fenced"]
    assert len(fenced) == 6 and all("stale lease 1" in h["reason"] for h in fenced)

    # a repeated fail after a lost reply answers as the first did; a zombie's does not
    k = queue.submit(mkspec("retried")).id
    j = queue.claim("w", 5)
    assert queue.fail(k, "w", "transient", lease=j.lease) == "queued"
    assert queue.fail(k, "w", "transient", lease=j.lease) == "queued"
    assert [h["event"] for h in queue.history(k)].count("retry_scheduled") == 1


@pytest.mark.fault
def test_reused_worker_id_late_complete_does_not_overwrite_the_next_attempt(tmp_path, redis_url,
                                                                          redis_prefix):
    """Two fcn-worker processes with the same --worker-id: the first is frozen (SIGSTOP) past its
    lease, the job is reaped and the second runs attempt 2; the first wakes up after its run
    "finished": its late complete is refused and logged, attempt 2's result stands."""
    mod = tmp_path / "edge_run.py"
    mod.write_text(
        "import os, time\n"
        "def run(job, should_stop):\n"
        "    end = time.monotonic() + float(os.environ['EDGE_SLEEP'])\n"
        "    while time.monotonic() < end:\n"
        "        time.sleep(0.02)\n"  # ignores should_stop: a zombie that finishes regardless
        "    return {'attempt': job.attempts, 'pid': os.getpid()}\n")
    q = JobQueue(redis_url, prefix=redis_prefix)
    jid = q.submit(mkspec("reused-id")).id
    env = {**demo_env(tmp_path / "rec.txt"), "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"}

    def worker(sleep: str) -> subprocess.Popen:
        cmd = worker_cmd(redis_prefix, redis_url, "--worker-id", "same", "--lease-seconds", "1",
                         "--max-jobs", "1")
        cmd[cmd.index("fcn_dist.queue.demo:run")] = "edge_run:run"
        return subprocess.Popen(cmd, env={**env, "EDGE_SLEEP": sleep}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    a = worker("1.5")
    b = None
    try:
        wait_for(lambda: q.get(jid).state == "running", 30, "worker A to claim")
        os.kill(a.pid, 19)  # SIGSTOP: A's run and heartbeats freeze
        wait_for(lambda: q.reap() == [jid], 10, "A's lease to expire", interval=0.1)
        b = worker("4")
        wait_for(lambda: q.get(jid).attempts == 2, 30, "worker B to claim attempt 2")
        os.kill(a.pid, 18)  # SIGCONT: A's run is over; it reports at once
        a_out = a.communicate(timeout=30)[0]
        assert q.get(jid).state == "running", a_out  # A's complete did not land
        b_out = b.communicate(timeout=60)[0]
        job = q.get(jid)
        assert job.state == "succeeded" and job.result["attempt"] == 2, (job.result, a_out, b_out)
        assert job.result["pid"] == b.pid
        assert "lease 1" in a_out and ("refused" in a_out or "lost" in a_out), a_out
        assert "Traceback" not in a_out + b_out
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                os.kill(p.pid, 18)
                p.kill()
        q.close()
