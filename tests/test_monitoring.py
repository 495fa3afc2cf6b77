"""fcn_dist.monitoring: names, links, no-op safety, and the real thing — a local Ray head with the
dashboard (token auth) and a metrics export port, read over HTTP.

The Ray head here is its own (not the shared ``ray_session``): it needs the dashboard. It is a
``ray start --head --block`` subprocess in its own session with a private temp dir, a private
token (``RAY_AUTH_TOKEN``, so ~/.ray is not touched) and free ports, and is stopped by pid and by
temp dir — never with a machine-wide ``ray stop``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fcn_dist import monitoring

REPO = Path(__file__).resolve().parents[1]
RAY_BIN = Path(sys.executable).with_name("ray")


# ------------------------------------------------------------------ unit: no Ray needed

def test_run_name_is_stable_safe_and_says_which_job():
    name = monitoring.run_name("j20261125-ab12", "8s")
    assert name == "j20261125-ab12-8s"
    assert monitoring.run_name("j20261125-ab12", "fcn8s") == name
    assert monitoring.run_name("j20261125-ab12", "8s") == name  # stable: resume finds it
    weird = monitoring.run_name("a b/../c:d", "16s")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", weird) and "16s" in weird
    assert len(monitoring.run_name("x" * 500, "32s")) <= 100
    assert monitoring.run_name(None, None) == "adhoc"
    assert monitoring.run_name("x" * 500, "32s").endswith("-32s")  # the variant survives


def test_run_name_matches_the_trainers_default_run_dir():
    """Ray Train names a run after its directory: keep both conventions the same."""
    from fcn_dist.train.trainer import default_run_dir
    from fcn_dist.spec import JobSpec

    spec = JobSpec(variant="16s")
    assert default_run_dir(spec, "j42").name == monitoring.run_name("j42", spec.variant)


def test_dashboard_url_prefers_user_env(monkeypatch):
    monkeypatch.setenv("FCN_DASHBOARD_URL", "localhost:18265/")
    assert monitoring.dashboard_url() == "http://localhost:18265"
    links = monitoring.dashboard_links("j1", "8s")
    assert links["dashboard"] == "http://localhost:18265"
    assert links["run_name"] == "j1-8s"
    assert links["train_runs"].endswith("/api/train/v2/runs/v1")


def test_auth_headers_from_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_AUTH_TOKEN", "tok-env")
    assert monitoring.auth_headers() == {"Authorization": "Bearer tok-env"}
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    (tmp_path / "t").write_text("tok-file\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert monitoring.auth_token() == "tok-file"


def test_everything_is_a_noop_without_ray():
    """In a fresh interpreter (no ray.init): nothing raises, nothing is created, Ray stays off."""
    code = textwrap.dedent("""
        import os
        for k in ("FCN_DASHBOARD_URL", "RAY_OVERRIDE_DASHBOARD_URL", "RAY_ADDRESS"):
            os.environ.pop(k, None)
        import ray
        from fcn_dist import monitoring as m
        assert not m.enabled()
        m.record_queue_depth({"queued": 3, "running": 1})
        m.job_started("j1", "8s"); m.job_finished("j1", "8s", "succeeded")
        m.record_epoch("j1", "8s", epoch=1, epoch_seconds=2.0, images_per_second=3.0, val_miou=0.5)
        m.record_epoch(None, None)
        assert m._metrics is None and not ray.is_initialized()
        assert m.dashboard_url() is None and m.dashboard_links("j1") == {}
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]


def test_metrics_off_switch(monkeypatch):
    monkeypatch.setenv("FCN_METRICS", "0")
    assert not monitoring.enabled()


# ------------------------------------------------------------------ a local head with a dashboard

def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _pids_of_dir(temp_dir: str) -> list[int]:
    """Pids of the processes whose command line names ``temp_dir`` (this test's Ray only)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp_dir + "/" in args or temp_dir + " " in args or args.rstrip().endswith(temp_dir):
            pids.append(int(proc.name))
    return pids


def _stop_head(proc: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM the head's process group, then SIGKILL whatever of this temp dir is left (Ray's
    GCS and raylet take >10 s to honour SIGTERM; this cluster is throwaway)."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for pid in _pids_of_dir(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and (proc.poll() is None or _pids_of_dir(temp_dir)):
            time.sleep(0.2)
        if proc.poll() is not None and not _pids_of_dir(temp_dir):
            return


def _get(url: str, headers: dict[str, str] | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:  # not up (yet)
        return 0, str(e)


class Head:
    """Where the test's Ray head lives."""

    def __init__(self, temp_dir: str, gcs: int, dashboard: int, metrics: int, token: str):
        self.temp_dir, self.token = temp_dir, token
        self.address = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dashboard}"
        self.metrics = f"http://127.0.0.1:{metrics}/metrics"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("FCN_DASHBOARD_URL", "RAY_OVERRIDE_DASHBOARD_URL", "RAY_AUTH_TOKEN_PATH"):
            env.pop(k, None)
        env.update(RAY_ADDRESS=self.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token,
                   RAY_metrics_report_interval_ms="1000", RAY_TRAIN_ENABLE_STATE_TRACKING="1",
                   RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
        return env

    def api(self, path: str, auth: bool = True) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return _get(self.dashboard + path, headers)

    def scrape(self) -> str:
        return _get(self.metrics)[1]


@pytest.fixture(scope="module")
def ray_head():
    temp_dir = tempfile.mkdtemp(prefix="fcnm", dir="/tmp")  # short: unix socket paths
    gcs, dash, metrics, agent, client = _free_ports(5)
    head = Head(temp_dir, gcs, dash, metrics, secrets.token_hex(16))
    cmd = [str(RAY_BIN), "start", "--head", "--block", "--port", str(gcs), "--temp-dir", temp_dir,
           "--include-dashboard=true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--metrics-export-port", str(metrics), "--dashboard-agent-listen-port", str(agent),
           "--ray-client-server-port", str(client), "--num-cpus", "4",
           "--object-store-memory", str(256 * 1024 * 1024), "--disable-usage-stats"]
    log = open(Path(temp_dir) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=head.env(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("ray start exited:\n" + (Path(temp_dir) / "head.log").read_text()[-3000:])
            if head.api("/api/gcs_healthz", auth=False)[0] == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail("dashboard did not come up:\n" + (Path(temp_dir) / "head.log").read_text()[-3000:])
        yield head
    finally:
        _stop_head(proc, temp_dir)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


DRIVER = textwrap.dedent("""
    import json, sys, ray
    from fcn_dist import monitoring as m

    ray.init(log_to_driver=False)          # RAY_ADDRESS + RAY_AUTH_MODE/RAY_AUTH_TOKEN from env
    # what the queue worker does
    m.record_queue_depth({"queued": 4, "running": 1, "failed": 2})
    m.job_started("fcnmon-job1", "8s")
    m.job_finished("fcnmon-job1", "8s", "succeeded", result={"miou": 0.7})
    m.job_started("fcnmon-job2", "16s")    # still running

    # what rank 0 of the training loop does, in a Ray actor like a Train worker
    @ray.remote(num_cpus=0)
    class Rank0:
        def epoch(self):
            m.record_epoch("fcnmon-job1", "8s", epoch=3, epoch_seconds=12.5,
                           images_per_second=42.0, val_miou=0.625, train_loss=0.5)
            return m.dashboard_url()

    actor = Rank0.remote()
    info = {"driver_url": m.dashboard_url(), "actor_url": ray.get(actor.epoch.remote()),
            "links": m.dashboard_links("fcnmon-job1", "8s")}
    print("READY " + json.dumps(info), flush=True)
    sys.stdin.read()                       # stay alive (and exported) until the test is done
""")


def _wait_metrics(head: Head, needles: list[str], timeout: float = 45) -> str:
    deadline = time.time() + timeout
    text = ""
    while time.time() < deadline:
        text = head.scrape()
        if all(n in text for n in needles):
            return text
        time.sleep(1)
    missing = [n for n in needles if n not in text]
    fcn_lines = "\n".join(line for line in text.splitlines() if "fcn_" in line)
    pytest.fail(f"metrics {missing} not on {head.metrics}; fcn lines:\n{fcn_lines}")


def _metric_value(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} with {labels}")


def test_dashboard_api_and_custom_metrics(ray_head):
    """Custom metrics from a driver and an actor reach the node's Prometheus endpoint; the
    dashboard API needs the token and lists the driver's job; dashboard_url() is right in both
    processes."""
    t0 = time.time()
    # the dashboard API is behind token auth in Ray 2.60
    assert ray_head.api("/api/jobs/", auth=False)[0] == 401

    driver = subprocess.Popen([sys.executable, "-c", DRIVER], env=ray_head.env(), cwd=REPO,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while not line.startswith("READY"):
            line = driver.stdout.readline()
            if not line and driver.poll() is not None:
                pytest.fail("driver failed:\n" + driver.stderr.read()[-3000:])
        info = json.loads(line.split(" ", 1)[1])
        assert info["driver_url"] == ray_head.dashboard
        assert info["actor_url"] == ray_head.dashboard  # Ray's own get_dashboard_url() is wrong here
        assert info["links"]["dashboard"] == ray_head.dashboard
        assert info["links"]["ray_job"].startswith(ray_head.dashboard + "/#/jobs/")
        assert info["links"]["run_name"] == "fcnmon-job1-8s"

        text = _wait_metrics(ray_head, [
            "ray_fcn_queue_jobs{", "ray_fcn_jobs_running{", "ray_fcn_jobs_started_total{",
            "ray_fcn_jobs_finished_total{", "ray_fcn_val_miou{", "ray_fcn_train_images_per_second{",
            "ray_fcn_train_epoch_seconds{", "ray_fcn_train_epoch_duration_seconds_bucket{",
            "ray_fcn_train_epoch{", "ray_fcn_train_loss{",
        ])
        names = sorted({ln.split("{")[0] for ln in text.splitlines() if ln.startswith("ray_fcn_")})
        print("custom metrics:", " ".join(names))
        assert _metric_value(text, "ray_fcn_queue_jobs", state="queued") == 4
        assert _metric_value(text, "ray_fcn_queue_jobs", state="failed") == 2
        assert _metric_value(text, "ray_fcn_jobs_running", variant="16s") == 1
        assert _metric_value(text, "ray_fcn_jobs_running", variant="8s") == 0
        finished = [ln for ln in text.splitlines()
                    if ln.startswith("ray_fcn_jobs_finished") and 'status="succeeded"' in ln]
        assert finished and float(finished[0].rsplit(" ", 1)[1]) == 1, finished
        # rank 0's last epoch (actor) and the worker's final result (driver): one series each
        mious = sorted(float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
                       if ln.startswith("ray_fcn_val_miou{") and 'job_id="fcnmon-job1"' in ln)
        assert mious == [0.625, 0.7], mious
        assert _metric_value(text, "ray_fcn_train_images_per_second", job_id="fcnmon-job1") == 42
        assert _metric_value(text, "ray_fcn_train_epoch_seconds", job_id="fcnmon-job1") == 12.5
        assert _metric_value(text, "ray_fcn_train_epoch", job_id="fcnmon-job1") == 3

        # the node (reported by its agent a few seconds after start) and the driver's job
        deadline = time.time() + 30
        while True:
            status, body = ray_head.api("/nodes?view=summary")
            assert status == 200, body[:500]
            if json.loads(body)["data"]["summary"] or time.time() > deadline:
                break
            time.sleep(1)
        assert len(json.loads(body)["data"]["summary"]) == 1, body[:500]
        status, body = ray_head.api("/api/jobs/")
        assert status == 200
        jobs = json.loads(body)
        assert any(j.get("type") == "DRIVER" and j.get("status") == "RUNNING" for j in jobs), jobs
    finally:
        if driver.poll() is None:
            driver.stdin.close()
            try:
                driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                driver.kill()
    print(f"dashboard+metrics check: {time.time() - t0:.1f}s")


# ------------------------------------------------------------------ a smoke job in the dashboard

SMOKE = textwrap.dedent("""
    import json, os, sys
    from fcn_dist.spec import JobSpec
    from fcn_dist.train import run
    spec = JobSpec.from_yaml(sys.argv[1], overrides=sys.argv[3:])
    result = run(spec, job_id=sys.argv[2], run_dir=os.environ["FCN_TEST_RUN_DIR"])
    print("RESULT " + json.dumps(result, default=str), flush=True)
""")



@pytest.mark.slow
def test_smoke_job_shows_in_dashboard_and_metrics(ray_head, tmp_path):
    """A smoke training job on the local head: its Ray Train run is named after the job in the
    dashboard's train API, and its epoch metrics are on the metrics endpoint."""
    from fcn_dist.data import prepare
    from fcn_dist.spec import JobSpec

    spec = JobSpec.from_yaml(REPO / "jobs" / "smoke.yaml")
    data_root = tmp_path / "data"
    data_dir = spec.data_dir(data_root)
    if not data_dir.exists():
        assert spec.data == "synthetic" or "synthetic" in str(spec.data), spec.data
        prepare("synthetic", data_dir, count=24, size=(64, 64))
    job_id = "fcnmon-smoke1"
    name = monitoring.run_name(job_id, spec.variant)
    env = ray_head.env()
    env.update(FCN_DATA=str(data_root), FCN_STORE=str(tmp_path / "store"),
               FCN_RUNS=str(tmp_path / "runs"), FCN_TEST_RUN_DIR=str(tmp_path / "runs" / name))
    t0 = time.time()
    # Scrape while the job runs: a Train worker's series leave the endpoint seconds after the
    # worker exits, so after the run there is nothing left to find.
    proc = subprocess.Popen([sys.executable, "-c", SMOKE, str(REPO / "jobs" / "smoke.yaml"),
                             job_id, "epochs=2"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    fcn_lines: list[str] = []
    try:
        while proc.poll() is None and time.time() - t0 < 540:
            for ln in ray_head.scrape().splitlines():
                if ln.startswith("ray_fcn_") and job_id in ln:
                    seen.add(ln.split("{")[0])
                    fcn_lines.append(ln)
            time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-4000:]
    result = json.loads(next(ln for ln in stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["job_id"] == job_id and result["status"]

    status, body = ray_head.api("/api/train/v2/runs/v1")
    assert status == 200, body[:1000]
    runs = json.loads(body).get("train_runs", [])
    assert any(r.get("name") == name for r in runs), [r.get("name") for r in runs]

    print(f"smoke job {time.time() - t0:.1f}s; job metrics seen while it ran: {sorted(seen)}")
    missing = {"ray_fcn_val_miou", "ray_fcn_train_epoch_seconds",
               "ray_fcn_train_images_per_second"} - seen
    assert not missing, (f"{sorted(missing)} never exported for job {job_id}: rank 0 of the "
                         "training loop must call fcn_dist.monitoring.record_epoch(job_id, "
                         f"variant, ...) each epoch; fcn lines: {fcn_lines[-10:]}")
