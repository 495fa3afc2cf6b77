"""ray-cluster.yaml against the installed Ray's cluster-config schema, and the local stack
scripts (cluster/up.sh, add-node.sh, down.sh) brought up and down for real on free ports.

The local-stack tests use their own state dir, Ray temp dir, ports and auth token
(``RAY_AUTH_TOKEN``): they never touch .fcn/, ~/.ray or anybody else's Ray/Redis.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
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
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "ray-cluster.yaml"
CLUSTER = REPO / "cluster"


# ------------------------------------------------------------------ ray-cluster.yaml

@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    assert path.is_file(), f"the installed Ray ships no {path}"
    return json.loads(path.read_text())


def test_config_matches_installed_ray_schema(cluster_config, ray_schema):
    import jsonschema

    jsonschema.validate(cluster_config, ray_schema)


def test_config_passes_ray_up_validation(cluster_config):
    """What `ray up` does before launching anything: fill defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(cluster_config)
    prepared = prepare_config(copy.deepcopy(cluster_config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_schema_catches_mistakes(cluster_config, ray_schema):
    """The check bites: a misspelt top-level field and a fractional GPU count are rejected."""
    import jsonschema

    typo = copy.deepcopy(cluster_config)
    typo["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(typo, ray_schema)
    frac = copy.deepcopy(cluster_config)
    frac["available_node_types"]["gpu_1x"]["resources"]["GPU"] = 0.5
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(frac, ray_schema)


def test_config_describes_the_service(cluster_config):
    cfg = cluster_config
    types = cfg["available_node_types"]
    gpu_types = [t for t, v in types.items() if v["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no GPU worker node type"
    for t in gpu_types:
        assert types[t]["min_workers"] <= types[t]["max_workers"] <= cfg["max_workers"]
    assert types[cfg["head_node_type"]]["resources"].get("GPU", 0) == 0

    setup = "\n".join(cfg["setup_commands"])
    assert "pip install" in setup and "fcn_dist" in setup
    assert "ray[" not in setup or "2.60.0" in setup  # never a different Ray than the package pins

    head = "\n".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "--include-dashboard=true" in head
    assert "--dashboard-port=8265" in head and "--metrics-export-port=" in head
    assert "redis-server" in head and "--appendonly yes" in head and "--port 6380" in head
    assert "fcn-worker" in head
    workers = "\n".join(cfg["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers
    env = "\n".join(cfg["setup_commands"])
    assert "FCN_REDIS_URL=redis://127.0.0.1:6380/0" in env
    assert "RAY_TRAIN_ENABLE_STATE_TRACKING=1" in env
    assert "~/.ray/auth_token" in cfg["file_mounts"]


def test_config_comments_mark_what_users_change():
    text = CONFIG.read_text()
    assert text.count("<-- CHANGE") >= 8
    for field in ("region", "InstanceType", "ImageId", "max_workers", "cluster_name"):
        assert any(field in line and "<-- CHANGE" in line for line in text.splitlines()), field


def test_k8s_manifests_parse():
    kinds = {}
    for path in sorted((CLUSTER / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
                kinds.setdefault(doc["kind"], []).append(doc)
    assert {"RayCluster", "Deployment", "StatefulSet", "Service"} <= kinds.keys()
    (redis_set,) = kinds["StatefulSet"]
    assert "--appendonly" in redis_set["spec"]["template"]["spec"]["containers"][0]["args"]
    (ray,) = kinds["RayCluster"]
    assert ray["spec"]["rayVersion"] == "2.60.0"
    group = ray["spec"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits.get("nvidia.com/gpu") == 1
    (worker,) = kinds["Deployment"]
    assert "fcn-worker" in " ".join(worker["spec"]["template"]["spec"]["containers"][0]["args"])


# ------------------------------------------------------------------ the local stack scripts

def test_scripts_parse():
    for name in ("lib.sh", "up.sh", "down.sh", "add-node.sh"):
        out = subprocess.run(["bash", "-n", str(CLUSTER / name)], capture_output=True, text=True)
        assert out.returncode == 0, f"{name}: {out.stderr}"
    for name in ("up.sh", "down.sh", "add-node.sh"):
        assert os.access(CLUSTER / name, os.X_OK), f"{name} is not executable"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


class Stack:
    def __init__(self, root: Path):
        self.state = root / "state"
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="fcnc", dir="/tmp"))  # short socket paths
        ray_port, dash, metrics, redis_port = _free_ports(4)
        self.token = secrets.token_hex(16)
        self.redis_port, self.dash, self.metrics = redis_port, dash, metrics
        self.env = dict(os.environ)
        for k in ("FCN_STATE", "RAY_ADDRESS", "FCN_REDIS_URL", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(k, None)
        self.env.update(
            FCN_STATE=str(self.state), FCN_RAY_TMP=str(self.ray_tmp), FCN_RAY_PORT=str(ray_port),
            FCN_DASHBOARD_PORT=str(dash), FCN_METRICS_PORT=str(metrics),
            FCN_REDIS_PORT=str(redis_port), FCN_HEAD_CPUS="2", FCN_OBJECT_STORE_MB="200",
            FCN_WORKERS="0", FCN_STOP_GRACE="20", FCN_REDIS_PREFIX="fcn:", RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
        )
        self.address = f"127.0.0.1:{ray_port}"

    def sh(self, script: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        out = subprocess.run(["bash", str(CLUSTER / script), *args], env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, f"{script} {args}: rc {out.returncode}\n{out.stderr[-3000:]}"
        return out

    def ray_pids(self) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if str(self.ray_tmp) in args:
                    pids.append(int(proc.name))
        return pids

    def nodes(self) -> list[dict]:
        status, body = _get(f"http://127.0.0.1:{self.dash}/nodes?view=summary", self.token)
        assert status == 200, body
        return [n for n in json.loads(body)["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]

    def wait_nodes(self, n: int, timeout: float = 60) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            nodes = self.nodes()
            if len(nodes) >= n or time.time() > deadline:
                return nodes
            time.sleep(1)


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    yield s
    # whatever happened, leave nothing running
    subprocess.run(["bash", str(CLUSTER / "down.sh"), "--purge"], env=s.env,
                   capture_output=True, timeout=120)


def _redis(port: int):
    import redis

    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


@pytest.mark.slow
def test_local_stack_up_add_node_down(stack):
    """up.sh: Redis with AOF + Ray head with dashboard/metrics; add-node.sh: a second node with
    its own resources; down.sh: everything stops, the queue data stays on disk."""
    t0 = time.time()
    stack.sh("up.sh")
    env_file = (stack.state / "env").read_text()
    assert f"FCN_REDIS_URL=redis://127.0.0.1:{stack.redis_port}/0" in env_file
    assert f"RAY_ADDRESS={stack.address}" in env_file

    r = _redis(stack.redis_port)
    assert r.config_get("appendonly")["appendonly"] == "yes"
    assert Path(r.config_get("dir")["dir"]).resolve() == (stack.state / "redis").resolve()
    r.set("fcn-cluster-test", "kept")

    # dashboard: public health check, token-protected API; metrics endpoint answers
    assert _get(f"http://127.0.0.1:{stack.dash}/api/gcs_healthz")[0] == 200
    assert _get(f"http://127.0.0.1:{stack.dash}/api/jobs/")[0] == 401
    assert _get(f"http://127.0.0.1:{stack.dash}/api/jobs/", stack.token)[0] == 200
    assert len(stack.wait_nodes(1)) == 1
    status, text = _get(f"http://127.0.0.1:{stack.metrics}/metrics")
    assert status == 200 and "ray_" in text

    # a worker daemon of the stack takes a job from the stack's Redis (stand-in run function)
    stack.env.update(FCN_WORKER_ARGS="--run-fn fcn_dist.queue.demo:run --poll-interval 0.2",
                     PYTHONPATH=str(REPO))
    stack.sh("up.sh", "--workers", "1")  # idempotent: keeps Redis and the head, adds the worker
    assert (stack.state / "pids" / "worker-1.pid").exists()
    from fcn_dist.queue.redis_queue import JobQueue
    from fcn_dist.spec import JobSpec

    q = JobQueue(f"redis://127.0.0.1:{stack.redis_port}/0")  # the stack's own Redis
    job_id = q.submit(JobSpec(name="stack-check", epochs=1)).id
    deadline = time.time() + 60
    while q.get(job_id).state != "succeeded":
        assert time.time() < deadline, (q.get(job_id).state,
                                        (stack.state / "logs" / "worker-1.log").read_text()[-2000:])
        time.sleep(0.5)

    stack.sh("add-node.sh", "--name", "n2", "--num-cpus", "1")
    nodes = stack.wait_nodes(2)
    assert len(nodes) == 2, nodes
    up_s = time.time() - t0

    t1 = time.time()
    stack.sh("down.sh")
    down_s = time.time() - t1
    assert stack.ray_pids() == [], "Ray processes of the stack's temp dir survived down.sh"
    with pytest.raises(Exception):
        _redis(stack.redis_port).ping()
    assert not list((stack.state / "pids").glob("*.pid")), "pid files left behind"
    aof = list((stack.state / "redis").rglob("*.aof"))
    assert aof, "no AOF files in the data folder"

    # the queue data survives: a Redis on the same folder replays the AOF
    port = _free_ports(1)[0]
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                    "--dir", str(stack.state / "redis"), "--appendonly", "yes", "--save", "",
                    "--daemonize", "yes", "--pidfile", str(stack.state / "check.pid")], check=True)
    try:
        deadline = time.time() + 10
        while True:
            try:
                assert _redis(port).get("fcn-cluster-test") == b"kept"
                break
            except Exception:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        _redis(port).shutdown(nosave=True)
    print(f"local stack: up + add-node {up_s:.1f}s, down {down_s:.1f}s")


# ------------------------------------------------------------------ 2-worker job over two nodes

MULTI = textwrap.dedent("""
    import json, sys
    from fcn_dist.spec import JobSpec
    from fcn_dist.train import run
    spec = JobSpec.from_yaml(sys.argv[1], overrides=sys.argv[4:])
    print("RESULT " + json.dumps(run(spec, job_id=sys.argv[2], run_dir=sys.argv[3]), default=str),
          flush=True)
""")



@pytest.mark.slow
def test_two_worker_job_spans_two_nodes(stack, tmp_path):
    """A 2-worker Ray Train job on head (3 CPUs) + added node (3 CPUs) with 2 CPUs per worker:
    one rank per node, so DDP really crosses nodes; it runs to completion."""
    from fcn_dist import monitoring
    from fcn_dist.data import prepare
    from fcn_dist.spec import JobSpec

    spec = JobSpec.from_yaml(REPO / "jobs" / "smoke.yaml")
    data_root = tmp_path / "data"
    if not spec.data_dir(data_root).exists():
        prepare("synthetic", spec.data_dir(data_root), count=24, size=(64, 64))
    stack.env.update(FCN_DATA=str(data_root), FCN_STORE=str(tmp_path / "store"),
                     FCN_RUNS=str(tmp_path / "runs"), RAY_ADDRESS=stack.address,
                     RAY_AUTH_MODE="token", RAY_TRAIN_ENABLE_STATE_TRACKING="1",
                     PYTHONPATH=str(REPO))
    # 3 logical CPUs per node and 2 per rank: the two ranks cannot share a node, and each node
    # keeps 1 CPU for Ray Data's read/map tasks (a rank of 1.5 would leave 0.5: data starves)
    stack.env.update(FCN_HEAD_CPUS="3")
    stack.sh("up.sh")
    stack.sh("add-node.sh", "--name", "n2", "--num-cpus", "3")
    assert len(stack.wait_nodes(2)) == 2

    job_id = "fcncluster-2node"
    name = monitoring.run_name(job_id, spec.variant)
    t0 = time.time()
    try:
        out = subprocess.run(
            [sys.executable, "-c", MULTI, str(REPO / "jobs" / "smoke.yaml"), job_id,
             str(tmp_path / "runs" / name), "num_workers=2", "cpus_per_worker=2", "use_gpu=false",
             "epochs=1", "steps_per_epoch=4"],
            env=stack.env, cwd=REPO, capture_output=True, text=True, timeout=420)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        pytest.fail(f"2-node job did not finish in 420 s; stderr tail:\n{err[-4000:]}")
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["job_id"] == job_id

    status, body = _get(f"http://127.0.0.1:{stack.dash}/api/train/v2/runs/v1", stack.token)
    assert status == 200
    runs = [r for r in json.loads(body)["train_runs"] if r["name"] == name]
    assert runs, f"no train run named {name}"
    nodes = {w["node_id"] for a in runs[-1]["attempts"] for w in a["workers"]}
    assert len(nodes) == 2, f"workers not spread over the two nodes: {nodes}"
    print(f"2-node job: {time.time() - t0:.1f}s")
