"""Queue housekeeping against the real Redis (issue 18, points 6 and 8): staged resubmission and
atomic submits, retention and the sweep at every submit, the capped dead-letter list,
``fcn-jobs purge``, and what ``--limit 0`` / ``--tail 0`` / ``--json`` print."""

from __future__ import annotations

import json
import time
import socket
import threading
from urllib.parse import urlsplit

import pytest
import redis
from click.testing import CliRunner

from fcn_dist import config
from fcn_dist.cli import submit as submit_cli
from fcn_dist.errors import QueueError
from fcn_dist.queue import JobQueue
from fcn_dist.spec import JobSpec


def mkspec(name: str = "job", variant: str = "8s", **kw) -> JobSpec:
    return JobSpec(name=name, variant=variant, **kw)


@pytest.fixture
def queue(redis_url, redis_prefix, monkeypatch):
    for var in ("FCN_RETENTION", "FCN_DEAD_MAX"):
        monkeypatch.delenv(var, raising=False)
    q = JobQueue(redis_url, prefix=redis_prefix, backoff_base=0.05, backoff_max=0.2)
    yield q
    q.close()


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip().splitlines()[-1]
    assert err.startswith("error: ") and "Traceback" not in result.output, result.output
    return err


def keys_of(q: JobQueue, job_id: str) -> list[str]:
    """Every key or index entry that still names ``job_id``."""
    r = q.redis
    found = [k for k in (q.key("job", job_id), q.key("hist", job_id), q.key("logs", job_id),
                         q.key("children", job_id)) if r.exists(k)]
    for z in ("jobs", "ready", "running", "delayed", "finished"):
        if r.zscore(q.key(z), job_id) is not None:
            found.append(z)
    found += [f"state:{s}" for s in ("waiting", "queued", "running", "succeeded", "failed",
                                     "cancelled") if r.sismember(q.key("state", s), job_id)]
    if job_id in r.lrange(q.key("dead"), 0, -1):
        found.append("dead")
    if any(f.get("job") == job_id for _, f in r.xrange(q.key("events"))):
        found.append("events")
    return found


def run_one(q: JobQueue, result: dict | None = None, worker: str = "w"):
    j = q.claim(worker, 30)
    assert j is not None
    q.append_logs(j.id, [f"{j.id} epoch 1/1"])
    q.complete(j.id, worker, result or {"best_checkpoint": f"/ckpt/{j.variant}"}, lease=j.lease)
    return j


# --------------------------------------------------------------------------- 6: staged chains
def test_staged_resubmission_while_the_chain_is_live_creates_nothing(queue):
    subs = queue.submit_variants(mkspec("chain"), ["32s", "16s", "8s"], staged=True)
    assert run_one(queue).id == subs[0].id  # 32s succeeded
    running = queue.claim("w2", 30)
    assert running.id == subs[1].id  # 16s running
    again = queue.submit_variants(mkspec("chain"), ["32s", "16s", "8s"], staged=True)
    assert [(s.id, s.created, s.state) for s in again] == [
        (subs[0].id, False, "succeeded"), (subs[1].id, False, "running"), (subs[2].id, False, "waiting")]
    assert queue.redis.zcard(queue.key("jobs")) == 3
    # once the whole chain is finished, the same stages are a new chain
    queue.complete(subs[1].id, "w2", {"best_checkpoint": "/ckpt/16s"}, lease=running.lease)
    run_one(queue)
    fresh = queue.submit_variants(mkspec("chain"), ["32s", "16s", "8s"], staged=True)
    assert all(s.created for s in fresh) and {s.id for s in fresh}.isdisjoint(s.id for s in subs)
    assert [s.state for s in fresh] == ["queued", "waiting", "waiting"]
    # another set of stages is another chain; force makes a new one even while live
    assert queue.submit_variants(mkspec("chain"), ["32s", "16s"], staged=True)[0].created
    forced = queue.submit_variants(mkspec("chain"), ["32s", "16s", "8s"], staged=True, force=True)
    assert all(s.created for s in forced)


class CuttingProxy:
    """A TCP proxy in front of the real Redis that goes down for good (drops every connection,
    refuses new ones) when its clients send their ``cut_at``-th EVALSHA: Redis lost mid-submit."""

    def __init__(self, host: str, port: int, cut_at: int):
        self.target, self.cut_at, self.seen = (host, port), cut_at, 0
        self.lock = threading.Lock()
        self.socks: list[socket.socket] = []
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.create_connection(self.target)
            self.socks += [c, u]
            threading.Thread(target=self._pump, args=(c, u, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                return
            if not data:
                return
            if from_client:
                with self.lock:
                    self.seen += data.count(b"EVALSHA")
                    if self.seen >= self.cut_at:
                        self.down()
                        return
            try:
                dst.sendall(data)
            except OSError:
                return

    def down(self) -> None:
        for s in [self.srv, *self.socks]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


@pytest.mark.parametrize("cut_at", [2, 3])
def test_a_redis_failure_mid_submit_leaves_the_whole_chain_or_nothing(redis_url, redis_prefix, cut_at):
    u = urlsplit(redis_url)
    direct = redis.Redis.from_url(redis_url)
    proxy = CuttingProxy(u.hostname or "127.0.0.1", u.port or 6379, cut_at)
    q = JobQueue(f"redis://127.0.0.1:{proxy.port}{u.path}", prefix=redis_prefix,
                 socket_timeout=2, connect_timeout=0.5)
    for script in q._scripts.values():  # loaded: each script call is exactly one EVALSHA
        direct.script_load(script.script)
    try:
        subs = q.submit_variants(mkspec("atomic"), ["32s", "16s", "8s"], staged=True)
    except QueueError:
        subs = None
    finally:
        proxy.down()
    ids = [i.decode() for i in direct.zrange(redis_prefix + "jobs", 0, -1)]
    assert len(ids) in (0, 3), f"a partial chain was left behind: {len(ids)} of 3 jobs"
    if subs is not None:
        assert [s.id for s in subs] == ids
    if ids:
        deps = [direct.hget(f"{redis_prefix}job:{i}", "depends_on").decode() for i in ids]
        assert deps == ["", ids[0], ids[1]]
    direct.close()


def test_a_bad_stage_is_refused_inside_the_script_before_any_write(queue):
    def stage(jid: str, variant: str, priority="0", max_attempts="3"):
        return [jid, "", priority, max_attempts, mkspec("bad", variant).to_json(), variant, "bad", "resnet18"]

    for bad in (stage("c8", "8s", max_attempts="x"), stage("c8", "8s", priority="5000"),
                stage("c32", "8s"), stage("c 8", "8s")):
        with pytest.raises(redis.exceptions.ResponseError, match="stage 3"):
            queue._run("submit", "0", "chainkey", "", "-1", 3, *stage("c32", "32s"),
                       *stage("c16", "16s"), *bad)
        # nothing but the queue's liveness clock (every script notes that Redis was up)
        assert [k for k in queue.redis.scan_iter(match=queue.prefix + "*")
                if k != queue.key("alive")] == []
    # an id that already exists is refused, never overwritten
    a = queue.submit(mkspec("dup"), job_id="dupjob")
    with pytest.raises(QueueError, match="already exists"):
        queue.submit(mkspec("other"), job_id="dupjob", force=True)
    assert queue.get(a.id).name == "dup" and queue.redis.zcard(queue.key("jobs")) == 1


# --------------------------------------------------------------------------- 8: output limits
def test_list_limit_zero_prints_nothing_and_negative_is_a_usage_error(cli, queue):
    _, jobs = cli
    for i in range(3):
        queue.submit(mkspec(f"l{i}"))
    r = jobs("list", "--limit", "0")
    assert r.exit_code == 0 and r.stdout == "", r.output
    assert json.loads(jobs("list", "--limit", "0", "--json").stdout) == []
    assert [j["name"] for j in json.loads(jobs("list", "--limit", "2", "--json").stdout)] == ["l1", "l2"]
    assert len(json.loads(jobs("list", "--limit", "10", "--json").stdout)) == 3
    err = one_line_error(jobs("list", "--limit", "-1"), 2)
    assert "--limit" in err
    with pytest.raises(QueueError, match="limit"):
        queue.list(limit=-1)


def test_logs_tail_zero_and_json_events_json(cli, queue):
    _, jobs = cli
    sub = queue.submit(mkspec("lg"))
    queue.append_logs(sub.id, ["one", "two", "three"])
    r = jobs("logs", sub.id, "--tail", "0")
    assert r.exit_code == 0 and r.stdout == "", r.output
    assert jobs("logs", sub.id, "--tail", "2").stdout.splitlines() == ["two", "three"]
    assert json.loads(jobs("logs", sub.id, "--json").stdout) == ["one", "two", "three"]
    assert json.loads(jobs("logs", sub.id, "--tail", "1", "--json").stdout) == ["three"]
    one_line_error(jobs("logs", sub.id, "--tail", "-1"), 2)
    evs = json.loads(jobs("events", "--json").stdout)
    assert [(e["job"], e["event"], e["to"]) for e in evs] == [(sub.id, "submitted", "queued")]
    assert isinstance(evs[0]["t"], float) and evs[0]["id"]
    assert jobs("events", "--count", "0").stdout == ""
    assert json.loads(jobs("events", "--count", "0", "--json").stdout) == []


# --------------------------------------------------------------------------- 8: retention
def test_finished_jobs_expire_with_all_their_keys_at_the_next_submit(queue, monkeypatch):
    monkeypatch.setenv("FCN_RETENTION", "0s")
    parent = queue.submit(mkspec("old", "32s"))
    done = run_one(queue)
    assert done.id == parent.id and queue.redis.exists(queue.key("logs", done.id))
    time.sleep(0.01)  # retention 0 s: events of the sweep's own millisecond would be kept
    later = queue.submit(mkspec("new"))  # sweeps first
    assert keys_of(queue, done.id) == []
    assert queue.redis.hlen(queue.key("idem")) == 1  # only the new job's
    assert keys_of(queue, later.id) == [queue.key("job", later.id), queue.key("hist", later.id),
                                        "jobs", "ready", "state:queued", "events"]
    # a job submitted under `never` is kept; one submitted under 0s still goes
    run_one(queue)  # `new` (0s)
    monkeypatch.setenv("FCN_RETENTION", "never")
    kept = queue.submit(mkspec("newer"))
    assert run_one(queue).id == kept.id
    queue.submit(mkspec("newest"))
    # the record and its indexes go; the stream is trimmed by the submitter's retention (never
    # now), so the events wait for that or for the stream's length cap
    assert keys_of(queue, later.id) == ["events"]
    assert queue.get(kept.id).state == "succeeded" and "events" in keys_of(queue, kept.id)


def test_the_sweep_is_bounded_and_spares_parents_of_live_jobs(queue, monkeypatch):
    monkeypatch.setenv("FCN_RETENTION", "0")
    chain = queue.submit_variants(mkspec("keep"), ["32s", "16s"], staged=True)
    run_one(queue)  # 32s succeeded
    assert queue.claim("w", 30).id == chain[1].id  # 16s running: 32s is the parent of a live job
    specs = [mkspec(f"n{i}", seed=i) for i in range(250)]
    for s in specs:
        queue.submit(s)
    for _ in specs:
        run_one(queue)
    # the first of those submits found the 32s due and kept it: looked at again in an hour
    now_ms = queue.redis.time()[0] * 1000 + 1000  # seconds truncated: round up
    assert 3500e3 < queue.redis.zscore(queue.key("finished"), chain[0].id) - now_ms <= 3600e3
    first, second = queue.sweep(), queue.sweep()
    assert (first["purged"], second["purged"]) == (200, 50)
    assert queue.get(chain[0].id).state == "succeeded"
    assert [s.created for s in queue.submit_variants(mkspec("keep"), ["32s", "16s"], staged=True)] \
        == [False, False]
    assert queue.sweep()["purged"] == 0


def test_the_dead_letter_list_is_capped(queue, monkeypatch):
    monkeypatch.setenv("FCN_RETENTION", "never")
    monkeypatch.setenv("FCN_DEAD_MAX", "3")
    ids = [queue.submit(mkspec(f"d{i}"), max_attempts=1).id for i in range(5)]
    for _ in ids:
        j = queue.claim("w", 30)
        assert queue.fail(j.id, "w", "boom", lease=j.lease) == "failed"
    assert queue.redis.llen(queue.key("dead")) == 5
    queue.submit(mkspec("trigger"))
    assert queue.redis.lrange(queue.key("dead"), 0, -1) == ids[:1:-1]  # newest first
    # gone but for their events (left to the stream's trimming: retention never here)
    assert keys_of(queue, ids[0]) == keys_of(queue, ids[1]) == ["events"]
    assert queue.redis.zcard(queue.key("jobs")) == 4


def test_retry_of_a_job_whose_parent_was_purged_errors_clearly(queue):
    p, c = queue.submit_variants(mkspec("orphan"), ["32s", "16s"], staged=True, max_attempts=1)
    run_one(queue)
    j = queue.claim("w", 30)
    queue.fail(j.id, "w", "boom", lease=j.lease)
    queue.redis.delete(queue.key("job", p.id))  # what a purge does to the parent's record
    with pytest.raises(QueueError, match=f"parent job {p.id} was purged"):
        queue.retry(c.id)
    assert queue.get(c.id).state == "failed"


def test_purge_ids_dry_run_refusals_force_and_selections(cli, queue):
    _, jobs = cli
    a = queue.submit(mkspec("a", "8s"))
    run_one(queue)
    chain = queue.submit_variants(mkspec("pc"), ["32s", "16s", "8s"], staged=True)
    run_one(queue)  # pc 32s succeeded, 16s queued, 8s waiting
    b = queue.submit(mkspec("b", "8s"))

    r = jobs("purge", a.id, "--dry-run")
    assert r.exit_code == 0 and r.stdout == f"would purge {a.id} (succeeded)\n"
    assert queue.get(a.id).state == "succeeded"
    r = jobs("purge", a.id[:6], "--json")
    assert json.loads(r.stdout) == [{"id": a.id, "outcome": "purged", "detail": "succeeded"}]
    assert keys_of(queue, a.id) == []
    one_line_error(jobs("show", a.id), 1)

    r = jobs("purge", b.id, chain[0].id)
    err = one_line_error(r, 1)
    assert "2 job(s) refused" in err and "--force" in err
    assert f"refused {b.id}: job {b.id} is queued; cancel it first or use --force" in r.stdout
    assert f"parent of live job(s) {chain[1].id}" in r.stdout
    assert queue.get(b.id).state == "queued" and queue.get(chain[0].id).state == "succeeded"

    # --force on the middle of the chain: its waiting child can never start, so it is cancelled
    r = jobs("purge", "--force", chain[1].id)
    assert r.exit_code == 0, r.output
    c8 = queue.get(chain[2].id)
    assert c8.state == "cancelled" and f"parent job {chain[1].id} was purged" in c8.error
    with pytest.raises(QueueError, match="was purged"):
        queue.retry(chain[2].id)

    # selections: --state, --older-than (finished states only), --expired
    r = jobs("purge", "--older-than", "0s", "--dry-run", "--json")
    assert {x["id"] for x in json.loads(r.stdout)} == {chain[0].id, chain[2].id}
    r = jobs("purge", "--state", "cancelled")
    assert r.exit_code == 0 and r.stdout.startswith(f"purged {chain[2].id}")
    assert jobs("purge", "--older-than", "1d").stdout == ""  # nothing that old
    assert jobs("purge", "--expired").exit_code == 0  # retention 7d: nothing expired
    assert queue.get(chain[0].id).state == "succeeded" and queue.get(b.id).state == "queued"

    for args in ((), (b.id, "--state", "queued"), ("--older-than", "soon"), ("--state", "x")):
        one_line_error(jobs("purge", *args), 2 if args != ("--state", "x") else 1)
    one_line_error(jobs("purge", "nosuchjob"), 1)


def test_a_forced_purge_of_a_running_job_loses_its_worker_the_lease(queue):
    sub = queue.submit(mkspec("run"))
    j = queue.claim("w", 30)
    assert queue.purge([sub.id]) == [{"id": sub.id, "outcome": "refused",
                                      "detail": f"job {sub.id} is running; cancel it first or use --force"}]
    assert queue.purge([sub.id], force=True)[0]["outcome"] == "purged"
    assert queue.heartbeat(j.id, "w", lease=j.lease) == "lost"
    queue.append_logs(j.id, ["a late line from the worker"])  # never recreates a logs key
    assert keys_of(queue, sub.id) == []


# --------------------------------------------------------------------------- 8: settings
def test_durations_and_settings(monkeypatch):
    assert config.parse_duration("90s") == 90 and config.parse_duration("7d") == 7 * 86400
    assert config.parse_duration("1.5h") == 5400 and config.parse_duration("12") == 12
    assert config.retention_seconds("never") is None
    for bad in ("-1s", "soon", "7 days", ""):
        with pytest.raises(ValueError, match="--x"):
            config.parse_duration(bad, "--x")
    monkeypatch.setenv("FCN_DEAD_MAX", "-5")
    with pytest.raises(ValueError, match="FCN_DEAD_MAX"):
        config.dead_max()
    assert config.dead_max(7) == 7


def test_submit_retention_flag_and_env(cli, queue, monkeypatch, tmp_path):
    submit, _ = cli
    spec = tmp_path / "r.yaml"
    spec.write_text("name: ret\ndata: synthetic\nepochs: 1\n")
    out = submit("--spec", str(spec), "--variant", "8s", "--retention", "2h")
    assert out.exit_code == 0, out.output
    assert queue.redis.hget(queue.key("job", out.stdout.strip()), "retention") == "7200.000"
    out = submit("--spec", str(spec), "--variant", "16s", "--retention", "never")
    assert queue.redis.hget(queue.key("job", out.stdout.strip()), "retention") == "-1"
    out = submit("--spec", str(spec), "--variant", "32s")
    assert queue.redis.hget(queue.key("job", out.stdout.strip()), "retention") == "604800.000"
    assert "--retention" in one_line_error(submit("--spec", str(spec), "--retention", "soon"), 2)
    monkeypatch.setenv("FCN_RETENTION", "bogus")  # refused before Redis is contacted
    r = CliRunner().invoke(submit_cli.main, ["--spec", str(spec), "--redis-url", "redis://127.0.0.1:1"])
    assert "FCN_RETENTION" in one_line_error(r, 2)
    monkeypatch.setenv("FCN_RETENTION", "1d")
    monkeypatch.setenv("FCN_DEAD_MAX", "lots")
    assert "FCN_DEAD_MAX" in one_line_error(submit("--spec", str(spec), "--force"), 1)


# --------------------------------------------------------------------------- the benchmark
def test_queue_memory_benchmark_tiny(redis_url):
    from fcn_dist.bench.queue_memory import bench_queue_memory, format_queue_memory

    res = bench_queue_memory(redis_url, jobs=30, per_job=5, retention="0s", samples=2)
    kinds = res["per_job_bytes_by_kind"]
    assert kinds["job"] > 1000 and kinds["hist"] > 0 and kinds["logs"] > 0
    on, off = res["retention_on"], res["retention_off"]
    assert off["records_left"] == 30 and on["records_left"] <= 2 and on["bytes"] < off["bytes"] / 5
    assert "BYTES PER FINISHED JOB" in format_queue_memory(res)
    r = redis.Redis.from_url(redis_url)
    assert not any(r.scan_iter(match=on["prefix"] + "*")) and not any(r.scan_iter(match=off["prefix"] + "*"))
    r.close()
