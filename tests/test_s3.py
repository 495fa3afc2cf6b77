"""Object storage: data, runs and results on s3:// against a real S3 server (moto's standalone
server, started here on 127.0.0.1; the code under test talks S3 over HTTP to it, nothing is
mocked in this process)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcn_dist import fs as fsio

MOTO = Path(sys.executable).with_name("moto_server")
pytestmark = pytest.mark.skipif(not MOTO.exists() and shutil.which("moto_server") is None,
                                reason="needs moto_server: pip install 'moto[server]'")
BUCKET = "fcn-test"
KEY, SECRET = "testing-key", "testing-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")  # the AWS_* settings are this module's only
def s3(tmp_path_factory):
    """A moto S3 server on a free port with one bucket; the AWS_* settings point at it (dummy
    credentials, also as a credentials file that the Ray workers find through the forwarded
    AWS_SHARED_CREDENTIALS_FILE)."""
    port = _free_port()
    exe = str(MOTO) if MOTO.exists() else shutil.which("moto_server")
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    creds = log.parent / "credentials"
    creds.write_text(f"[default]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_SHARED_CREDENTIALS_FILE": str(creds),
           "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fsio.forget_filesystems()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto_server did not start: " + log.read_text()[-500:])
                time.sleep(0.1)
        import boto3

        boto3.client("s3").create_bucket(Bucket=BUCKET)
        yield {"endpoint": endpoint, "bucket": BUCKET, "port": port}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        fsio.forget_filesystems()


@pytest.fixture
def prefix(s3):
    """A fresh prefix in the bucket for one test."""
    return f"s3://{BUCKET}/t-{uuid.uuid4().hex[:8]}"


def _keys(uri: str) -> list[str]:
    import boto3

    u = fsio.Uri(uri)
    out = boto3.client("s3").list_objects_v2(Bucket=u.bucket, Prefix=u.key).get("Contents", [])
    # (pyarrow leaves a "dir/" marker object where it deleted a prefix's last file)
    return sorted(o["Key"][len(u.key) + 1:] for o in out if not o["Key"].endswith("/"))


def _one_line(result, code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in result.output, err
    return err


def _epoch(run: str, e: int, miou: float = 0.5) -> dict:
    return {"run_id": run, "epoch": e, "variant": "8s", "backbone": "resnet18",
            "dataset": "synthetic", "miou": miou, "train_loss": 1.0 / (e + 1)}


def _run(run: str, variant: str, miou: float) -> dict:
    return {"run_id": run, "variant": variant, "backbone": "resnet18", "dataset": "synthetic",
            "status": "succeeded", "miou": miou, "pixel_accuracy": 0.9, "class_names": ["a", "b"],
            "per_class_iou": {"a": miou, "b": miou}}


# --------------------------------------------------------------------------- settings
def test_settings_accept_uris_and_confine_specs_to_the_root(s3, monkeypatch, tmp_path):
    """FCN_DATA/FCN_STORE/FCN_RUNS take s3:// URIs; a spec's data/store must lie under the
    root's bucket and prefix (another bucket, a sibling prefix, a local path are refused);
    local paths stay the default."""
    from fcn_dist import config
    from fcn_dist.errors import SpecError
    from fcn_dist.spec import JobSpec

    monkeypatch.setenv("FCN_DATA", f"s3://{BUCKET}/data")
    monkeypatch.setenv("FCN_STORE", f"s3://{BUCKET}/store")
    monkeypatch.delenv("FCN_RUNS", raising=False)
    assert str(config.runs_path()) == f"s3://{BUCKET}/store/ray"
    spec = JobSpec.from_dict({"data": "syn", "store": "team-a"})
    assert str(spec.data_dir()) == f"s3://{BUCKET}/data/syn"
    assert str(spec.store_dir()) == f"s3://{BUCKET}/store/team-a"
    assert str(JobSpec.from_dict({"data": f"s3://{BUCKET}/data/x"}).data_dir()) == f"s3://{BUCKET}/data/x"
    for data in (f"s3://{BUCKET}/database/x", f"s3://other/data/x", "/etc", "../x"):
        with pytest.raises(SpecError, match="data"):
            JobSpec.from_dict({"data": data}).data_dir()
    with pytest.raises(SpecError, match="store"):
        JobSpec.from_dict({"store": f"s3://{BUCKET}/elsewhere"})
    monkeypatch.setenv("FCN_DATA", str(tmp_path))  # a local root refuses URIs
    with pytest.raises(SpecError, match="outside"):
        JobSpec.from_dict({"data": f"s3://{BUCKET}/data/x"}).data_dir()
    monkeypatch.delenv("FCN_STORE")
    assert config.store_path() == Path("results").resolve()


def test_masked_hides_credentials():
    uri = "s3://AKIAXXXX:supersecret@bkt/p?endpoint_override=h:9000&secret_key=s2"
    text = fsio.masked(uri)
    assert "supersecret" not in text and "s2" not in text and "AKIAXXXX" not in text
    assert text.startswith("s3://***@bkt/p") and "endpoint_override=h:9000" in text


# --------------------------------------------------------------------------- results store
def test_store_on_s3_atomic_reads_and_compaction(s3, prefix):
    """Writes are objects under their final names (no temp objects, no rename); an upload in
    flight is invisible to readers; compaction on the bucket keeps every row exactly once."""
    from fcn_dist.store import ResultsStore

    st = ResultsStore(prefix)
    assert st.remote and st.epochs().num_rows == 0  # an empty prefix is an empty store
    for e in range(3):
        st.append_epoch(_epoch("r1", e))
    st.append_epochs([_epoch("r2", e) for e in range(2)])
    st.write_run(_run("r1", "8s", 0.6))
    keys = _keys(prefix)
    assert len(keys) == 5 and all(k.endswith(".parquet") and "/." not in k for k in keys), keys

    # an upload that has not completed is not an object: readers do not see it
    filesystem, path = fsio.resolve(st.table_dir("epochs") / "ep-zz-e00000-inflight.parquet")
    out = filesystem.open_output_stream(path)
    out.write(b"PAR1" + b"\0" * 1000)
    assert sorted(ResultsStore(prefix).epochs().column("run_id").to_pylist()) == ["r1"] * 3 + ["r2"] * 2
    out.close()
    fsio.delete(st.table_dir("epochs") / "ep-zz-e00000-inflight.parquet")

    summary = st.compact("epochs")
    assert summary["rows"] == 5 and summary["files_after"] == 1
    assert [k for k in _keys(prefix) if k.startswith("epochs/")] == [
        "epochs/" + summary["file"].rsplit("/", 1)[1]]
    got = Counter((r["run_id"], r["epoch"]) for r in ResultsStore(prefix).epochs().to_pylist())
    assert got == Counter({("r1", 0): 1, ("r1", 1): 1, ("r1", 2): 1, ("r2", 0): 1, ("r2", 1): 1})
    assert not any(k.endswith(".compact.lock") for k in _keys(prefix))  # the lock is released


def test_remote_compaction_lock_excludes_a_second_compactor(s3, prefix):
    """Two compactors on one bucket: while one holds the lock object, the other skips."""
    from fcn_dist.store import ResultsStore

    a, b = ResultsStore(prefix), ResultsStore(prefix)
    a.REMOTE_LOCK_SETTLE = b.REMOTE_LOCK_SETTLE = 0.2
    for e in range(3):
        a.append_epoch(_epoch("r1", e))
    with a._remote_lock(a.table_dir("epochs"), blocking=False) as held:
        assert held
        assert b.compact("epochs", blocking=False) == {"table": "epochs", "skipped": "locked"}
    assert b.compact("epochs", blocking=False)["rows"] == 3


def test_results_cli_reads_the_bucket(s3, prefix, tmp_path, monkeypatch):
    """compare, runs, epochs, query (DuckDB over the snapshot) and plot read from s3://,
    from a directory that has no local store."""
    from fcn_dist.cli.results import main as cli
    from fcn_dist.store import ResultsStore

    st = ResultsStore(prefix)
    for i, v in enumerate(("32s", "16s", "8s")):
        st.append_epochs([{**_epoch(f"run{v}", e, 0.3 + 0.1 * e), "variant": v} for e in range(2)])
        st.write_run(_run(f"run{v}", v, 0.5 + 0.05 * i))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FCN_STORE", prefix)
    runner = CliRunner()
    r = runner.invoke(cli, ["compare", "--format", "json"])
    assert r.exit_code == 0, r.output
    assert sorted(x["variant"] for x in json.loads(r.output)) == ["16s", "32s", "8s"]
    r = runner.invoke(cli, ["runs", "--store", prefix])
    assert r.exit_code == 0 and "run8s" in r.output, r.output
    r = runner.invoke(cli, ["epochs", "--format", "csv"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 7, r.output
    pytest.importorskip("duckdb")
    r = runner.invoke(cli, ["query", "select variant, max(miou) as m from epochs group by variant "
                                     "order by variant", "--format", "json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 3, r.output
    r = runner.invoke(cli, ["plot", "--out", str(tmp_path / "rep"), "--gallery", "0"])
    assert r.exit_code == 0 and (tmp_path / "rep" / "report.html").is_file(), r.output
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- data
def test_prepare_verify_and_read_shards_on_s3(s3, prefix):
    """fcn-data prepare --out s3://... writes the shards, then the manifest last; verify
    --sha256 and info read from the bucket; ShardDataset reads rows from it; a modified shard
    is named by verify."""
    from fcn_dist.cli.data import main as data_cli
    from fcn_dist.data import ShardDataset, read_manifest

    out = f"{prefix}/syn"
    runner = CliRunner()
    r = runner.invoke(data_cli, ["prepare", "synthetic", "--out", out, "--count", "12",
                                 "--size", "32x32", "--shard-size", "4"])
    assert r.exit_code == 0, r.output
    import boto3

    objs = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=fsio.Uri(out).key)["Contents"]
    by_name = {o["Key"].rsplit("/", 1)[1]: o["LastModified"] for o in objs}
    assert "manifest.json" in by_name and len(by_name) >= 4
    assert by_name["manifest.json"] >= max(by_name.values())  # written last
    r = runner.invoke(data_cli, ["verify", out, "--sha256"])
    assert r.exit_code == 0 and "sha256 verified" in r.output, r.output
    r = runner.invoke(data_cli, ["info", out])
    assert r.exit_code == 0 and "train" in r.output, r.output
    m = read_manifest(out)
    ds = ShardDataset(out, "train")
    assert len(ds) == m.splits["train"] and ds.raw(0)[0].size == (32, 32)

    again = runner.invoke(data_cli, ["prepare", "synthetic", "--out", out, "--count", "4"])
    assert "already exists" in _one_line(again, 2)

    shard = m.shards["train"][0]["file"]
    data = fsio.read_bytes(fsio.Uri(out) / shard)
    mid = len(data) // 2
    fsio.write_bytes(fsio.Uri(out) / shard, data[:mid] + b"corrupted" + data[mid + 9:])  # same size
    r = runner.invoke(data_cli, ["verify", out, "--sha256"])
    err = _one_line(r, 2)
    assert shard in err and "sha256 mismatch" in err, err


# --------------------------------------------------------------------------- bad input
def test_bad_storage_input_is_one_line_naming_the_uri(s3, monkeypatch, tmp_path):
    """A missing bucket, an unreachable endpoint, wrong credentials, a URI outside the root:
    one line naming the URI, credentials masked."""
    from fcn_dist.cli.data import main as data_cli
    from fcn_dist.cli.results import main as results_cli
    from fcn_dist.cli.submit import main as submit_cli

    runner = CliRunner()
    r = runner.invoke(results_cli, ["compare", "--store", "s3://no-such-bucket/x"])
    err = _one_line(r, 1)
    assert "s3://no-such-bucket/" in err and "does not exist" in err, err

    r = runner.invoke(data_cli, ["verify", f"s3://{KEY}:{SECRET}@no-such-bucket/d"])
    err = _one_line(r, 2)
    assert SECRET not in err and KEY not in err and "s3://***@no-such-bucket/" in err, err

    monkeypatch.setenv("FCN_DATA", f"s3://{BUCKET}/data")
    spec = tmp_path / "s.yaml"
    spec.write_text(f"name: s\ndata: s3://{BUCKET}/other/syn\n")
    r = runner.invoke(submit_cli, ["--spec", str(spec), "--variant", "8s", "--redis-url",
                                   "redis://127.0.0.1:1/0"])
    err = _one_line(r, 2)
    assert f"s3://{BUCKET}/other/syn" in err and "outside" in err and "FCN_DATA" in err, err

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    fsio.forget_filesystems()
    try:
        r = runner.invoke(results_cli, ["compare", "--store", f"s3://{BUCKET}/x"])
        err = _one_line(r, 1)
        assert f"s3://{BUCKET}/" in err and "cannot reach the storage endpoint" in err, err
    finally:
        fsio.forget_filesystems()


def test_wrong_credentials_are_one_line(tmp_path):
    """Against a moto server with authentication on (an IAM user of its own): a wrong secret
    is an 'access denied' line naming the URI, never showing the secret."""
    port = _free_port()
    exe = str(MOTO) if MOTO.exists() else shutil.which("moto_server")
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    code = f"""
import os, sys, time, socket, json, boto3
for _ in range(300):
    try: socket.create_connection(("127.0.0.1", {port}), timeout=0.2).close(); break
    except OSError: time.sleep(0.1)
ep = "http://127.0.0.1:{port}"
iam = boto3.client("iam", endpoint_url=ep, region_name="us-east-1",
                   aws_access_key_id="x", aws_secret_access_key="x")
iam.create_user(UserName="u")
iam.put_user_policy(UserName="u", PolicyName="all", PolicyDocument=json.dumps(
    {{"Version": "2012-10-17", "Statement": [{{"Effect": "Allow", "Action": "*", "Resource": "*"}}]}}))
k = iam.create_access_key(UserName="u")["AccessKey"]
boto3.client("s3", endpoint_url=ep, region_name="us-east-1", aws_access_key_id=k["AccessKeyId"],
             aws_secret_access_key=k["SecretAccessKey"]).create_bucket(Bucket="auth")
os.environ.update(AWS_ENDPOINT_URL=ep, AWS_ACCESS_KEY_ID=k["AccessKeyId"],
                  AWS_SECRET_ACCESS_KEY="wrong-secret-value-42", AWS_DEFAULT_REGION="us-east-1",
                  AWS_EC2_METADATA_DISABLED="true")
os.environ.pop("AWS_SHARED_CREDENTIALS_FILE", None)
from fcn_dist.cli.results import main
sys.argv = ["fcn-results", "compare", "--store", "s3://auth/results"]
main()
"""
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    err = r.stderr.strip()
    assert r.returncode == 1 and err.startswith("error: ") and "\n" not in err, r.stderr[-2000:]
    assert "s3://auth/" in err and "access denied" in err and "wrong-secret-value-42" not in err, err


# --------------------------------------------------------------------------- training inputs
@pytest.fixture(scope="module")
def s3_data(s3):
    """A tiny synthetic dataset prepared straight into the bucket (the FCN_DATA root)."""
    from fcn_dist.data import prepare

    root = f"s3://{BUCKET}/data-{uuid.uuid4().hex[:6]}"
    prepare("synthetic", f"{root}/syn", count=24, size=(64, 64), seed=0, shard_size=8)
    assert "manifest.json" in _keys(f"{root}/syn")  # in the bucket, not in a local "s3:" dir
    return root


@pytest.mark.ray
def test_ray_data_reads_the_shards_from_the_bucket(s3, s3_data, ray_session):
    """The Ray Data pipeline reads the split's shards from s3:// through filesystem= in its
    read tasks (which get the store's settings, not a local copy)."""
    from fcn_dist.data import load, read_manifest

    ds = load(f"{s3_data}/syn", "val", mode="eval", crop_size=(64, 64))
    batch = ds.take_batch(100)
    assert batch["image"].shape == (read_manifest(f"{s3_data}/syn").splits["val"], 3, 64, 64)


def test_checkpoint_uris_load_weights_only(s3, s3_data, monkeypatch):
    """init_from and the checkpoint readers take URIs; loading stays weights_only=True, so a
    pickled-code model.pt in the bucket is refused; a URI with no checkpoint is one line."""
    import torch

    from fcn_dist.checkpoint import load_state_dict
    from fcn_dist.errors import SpecError, TrainingError
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.trainer import check_inputs

    ckpt = fsio.Uri(f"s3://{BUCKET}/runs-{uuid.uuid4().hex[:6]}/j1-32s/epoch_0001")
    import io

    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    fsio.write_bytes(ckpt / "model.pt", buf.getvalue())
    assert torch.equal(load_state_dict(str(ckpt))["w"], torch.arange(4.0))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    bad = io.BytesIO()
    torch.save({"w": Evil()}, bad)
    fsio.write_bytes(ckpt.parent / "evil" / "model.pt", bad.getvalue())
    with pytest.raises(TrainingError, match="cannot load model weights safely"):
        load_state_dict(str(ckpt.parent / "evil"))

    monkeypatch.setenv("FCN_DATA", s3_data)
    spec = JobSpec.from_dict({"data": "syn", "variant": "16s", "backbone": "resnet18"})
    inp = check_inputs(spec, run_dir=str(ckpt.parent.parent / "j1-16s"), init_from=str(ckpt),
                       job_id="j1")
    assert inp.init_from == str(ckpt) and isinstance(inp.run_path, fsio.Uri)
    with pytest.raises(SpecError, match="not a checkpoint directory"):
        check_inputs(spec, run_dir=None, init_from=str(ckpt.parent / "nothing"), job_id="j1")


# --------------------------------------------------------------------------- several hosts
@pytest.mark.slow  # minutes: three staged Ray Train jobs, a SIGKILL and a resume (README, Tests)
def test_hosts_without_a_shared_filesystem_share_everything_through_s3(
        s3, redis_url, redis_prefix, tmp_path):
    """Two fcn-workers as on two hosts (each its own working directory and local Ray, no
    common local path: data, runs and store are s3:// URIs) run a staged --variant all chain;
    the first is SIGKILLed once the 32s job has a checkpoint in the bucket; the second reclaims
    that job and resumes it from the bucket's checkpoint, then runs 16s and 8s (init_from: the
    parent's checkpoint URI); fcn-results compare from a third directory shows three runs."""
    import signal

    import boto3

    from _helpers import wait_for
    from fcn_dist.data import prepare
    from fcn_dist.queue import JobQueue
    from fcn_dist.spec import VARIANTS, load_spec
    from test_faults import ProcessGroup, worker_cmd

    t0 = time.monotonic()
    root = f"s3://{BUCKET}/hosts-{uuid.uuid4().hex[:6]}"
    prepare("synthetic", f"{root}/data/synthetic", count=24, size=(64, 64), seed=0)
    hosts = {n: tmp_path / n for n in ("host-a", "host-b", "laptop")}
    for d in hosts.values():
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update({"FCN_DATA": f"{root}/data", "FCN_RUNS": f"{root}/runs",
                "FCN_STORE": f"{root}/store", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0",
                "FCN_METRICS": "0", "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}:"
                                                  f"{Path(__file__).resolve().parent}"})
    q = JobQueue(redis_url, prefix=redis_prefix, backoff_base=0.1, backoff_max=0.5)
    spec = load_spec(Path(__file__).resolve().parents[1] / "jobs" / "smoke.yaml",
                     ["data=synthetic", "epochs=3", "num_workers=1", "batch_size=4",
                      "steps_per_epoch=2", "deterministic=true", "max_failures=0", "amp=off"])
    subs = q.submit_variants(spec, VARIANTS, staged=True)
    first = subs[0].id

    def on_host(host: str, *extra: str) -> list[str]:
        cmd = " ".join(worker_cmd(redis_url, redis_prefix, *extra))
        return ["bash", "-c", f"cd {hosts[host]} && exec {cmd}"]

    snapshot = fsio.Uri(f"{root}/runs/{first}-32s/checkpoint_manager_snapshot.json")

    def checkpointed() -> bool:
        try:
            return "epoch_0001" in fsio.read_text(snapshot)
        except FileNotFoundError:
            return False

    a = ProcessGroup(on_host("host-a"), env, tmp_path / "worker-a.log")
    b = None
    try:
        wait_for(lambda: (a.snapshot(), a.proc.poll() is None or pytest.fail(a.output()[-3000:]),
                          checkpointed())[-1], 600, "the 32s job's first checkpoint in the bucket",
                 interval=0.2)
        a.killpg(signal.SIGKILL)
        a.proc.wait(10)
        wait_for(lambda: not a.live(), 20, "every process of the killed worker to exit")
        assert q.get(first).state == "running"  # nobody told the queue
        b = ProcessGroup(on_host("host-b", "--until-empty"), env, tmp_path / "worker-b.log")
        assert b.wait(1500) == 0, b.output()[-4000:]
        jobs = [q.get(s.id) for s in subs]
        assert [j.state for j in jobs] == ["succeeded"] * 3, [(j.state, j.error) for j in jobs]
        assert jobs[0].attempts == 2 and "reaped expired lease" in b.output()
        assert jobs[1].init_from.startswith(f"{root}/runs/{first}-32s/"), jobs[1].init_from
    finally:
        left = a.cleanup() + (b.cleanup() if b is not None else [])
        q.close()
    assert not left, f"workers left processes behind: {left}"

    from fcn_dist.store import ResultsStore

    rows = ResultsStore(f"{root}/store").epochs(filters={"run_id": f"{first}-32s"}).to_pylist()
    epochs = sorted(r["epoch"] for r in rows)
    assert sorted(set(epochs)) == [1, 2, 3] and epochs.count(1) == 1, epochs  # resumed, not redone
    r = subprocess.run([sys.executable, "-m", "fcn_dist.cli.results", "compare", "--format", "json"],
                       cwd=hosts["laptop"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    assert sorted(x["variant"] for x in got) == sorted(VARIANTS) and len(got) == 3, got
    for d in hosts.values():  # no host kept anything of the service locally
        assert not [p for p in d.rglob("*") if p.is_file()], list(d.rglob("*"))
    leftovers = boto3.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=fsio.Uri(root).key)
    assert any(o["Key"].endswith("/model.pt") for o in leftovers["Contents"])
    print(f"\nseveral-hosts test: {time.monotonic() - t0:.0f}s")


# --------------------------------------------------------------------------- transient errors
class _FlakyProxy:
    """An HTTP proxy in front of the S3 server that answers the first ``fail`` uploads
    (PUT/POST) with 503 SlowDown, as a busy S3 does; everything else is forwarded."""

    def __init__(self, upstream_port: int, fail: int):
        import http.client
        import http.server
        import threading

        proxy = self
        self.fail, self.failed, self.forwarded = fail, 0, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _handle(self):
                if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
                    body = b""
                    while True:
                        n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        body += self.rfile.read(n)
                        self.rfile.readline()
                        if n == 0:
                            break
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command in ("PUT", "POST") and proxy.failed < proxy.fail:
                    proxy.failed += 1
                    msg = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                proxy.forwarded += 1
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                hop = {"expect", "connection", "keep-alive", "transfer-encoding", "content-length"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                self.send_response(r.status)
                for k, v in r.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                length = r.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_transient_s3_errors_during_a_checkpoint_upload_are_retried(s3, tmp_path, monkeypatch):
    """503 SlowDown answers to the first uploads: Ray Train's own checkpoint upload
    (``_upload_to_fs_path`` through the filesystem fcn_dist resolves) and a store write are
    retried by the S3 client and succeed; the checkpoint in the bucket loads."""
    import torch
    from ray.train.v2._internal.execution.storage import _upload_to_fs_path

    from fcn_dist.checkpoint import load_state_dict
    from fcn_dist.store import ResultsStore

    proxy = _FlakyProxy(s3["port"], fail=2)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    fsio.forget_filesystems()
    try:
        local = tmp_path / "epoch_0001"
        local.mkdir()
        torch.save({"w": torch.ones(3)}, local / "model.pt")
        dest = fsio.Uri(f"s3://{BUCKET}/flaky-{uuid.uuid4().hex[:6]}/run/epoch_0001")
        filesystem, path = fsio.resolve(dest)
        _upload_to_fs_path(str(local), filesystem, path)
        assert proxy.failed == 2 and torch.equal(load_state_dict(str(dest))["w"], torch.ones(3))
        proxy.fail += 1
        ResultsStore(str(dest.parent.parent / "store")).write_run(_run("flaky", "8s", 0.5))
        assert proxy.failed == 3
        assert ResultsStore(str(dest.parent.parent / "store")).runs().num_rows == 1
    finally:
        proxy.close()
        fsio.forget_filesystems()


def test_fcn_predict_takes_a_checkpoint_uri(s3, tmp_path):
    """fcn-predict with s3://.../epoch_0001: the same label maps as from the local copy."""
    import numpy as np
    import torch
    from PIL import Image

    from fcn_dist.checkpoint import save_checkpoint
    from fcn_dist.cli.predict import main as predict_cli
    from fcn_dist.models import create_model

    torch.manual_seed(0)
    meta = {"model_name": "fcn8s_resnet18", "num_classes": 3, "classes": ["bg", "shape", "border"],
            "palette": [[0, 0, 0], [220, 20, 60], [255, 255, 255]], "ignore_index": 255,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "eval_size": [48, 48],
            "upsample": "learned", "skip_scale": False, "epoch": 1, "metrics": {}, "spec": {}}
    local = save_checkpoint(tmp_path / "epoch_0001", create_model("fcn8s_resnet18", 3).state_dict(), meta)
    uri = fsio.Uri(f"s3://{BUCKET}/pred-{uuid.uuid4().hex[:6]}/epoch_0001")
    for f in local.iterdir():
        fsio.write_bytes(uri / f.name, f.read_bytes())
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)).save(img)
    runner = CliRunner()
    for ckpt, out in ((str(uri), tmp_path / "from-s3"), (str(local), tmp_path / "local")):
        r = runner.invoke(predict_cli, [ckpt, str(img), "--out", str(out), "--device", "cpu",
                                        "--precision", "off"])
        assert r.exit_code == 0, r.output
    a, b = (np.array(Image.open(d / "a.png")) for d in (tmp_path / "from-s3", tmp_path / "local"))
    assert a.shape == (30, 41) and np.array_equal(a, b)
    r = runner.invoke(predict_cli, [str(uri.parent / "nothing"), str(img), "--out", str(tmp_path / "x")])
    err = _one_line(r)
    assert "nothing" in err and "not a checkpoint directory" in err, err
