"""What an operator reads: progress lines, the live queue table, the dashboard hint (issue 20)."""

from __future__ import annotations

import io
import json
import time

from click.testing import CliRunner

from fcn_dist.train.progress import Console, StepProgress, eta_seconds, read_progress


def _metrics(epoch: int, seconds: float = 10.0) -> dict:
    return {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.6, "miou": 0.25 * epoch,
            "pixel_accuracy": 0.8, "images_per_second": 12.5, "epoch_seconds": seconds}


def test_rank0_progress_file_and_the_plain_console(tmp_path):
    """Rank 0's progress.json holds the step and each finished epoch; a non-terminal console
    prints exactly one line per finished epoch, with the ETA from the epochs so far."""
    sp = StepProgress(tmp_path, "run-8s", epochs=3, steps=5, every=0.0)
    out = io.StringIO()
    console = Console(prefix="[job 8s] ", stream=out)
    sp.start_epoch(1)
    sp.step(1, 2)
    state = read_progress(tmp_path)
    assert (state["epoch"], state["step"], state["steps"], state["done"]) == (1, 2, 5, [])
    console(state)
    assert out.getvalue() == ""  # nothing finished yet, and no bar off a terminal
    sp.end_epoch(_metrics(1))
    console(read_progress(tmp_path))
    sp.start_epoch(2)
    console(read_progress(tmp_path))  # the same finished epoch is not printed again
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[job 8s] epoch 1/3: train loss 0.5000, val mIoU 0.2500, pixel acc 0.8000")
    assert "12.5 img/s" in lines[0] and "ETA 20s" in lines[0]  # 2 epochs left x 10 s
    assert not list(tmp_path.glob(".progress*"))  # replaced atomically, no temp file left


def test_eta_counts_the_epoch_under_way():
    now = time.time()
    state = {"epochs": 4, "epoch": 2, "done": [_metrics(1, 30.0)], "epoch_started": now - 10}
    assert abs(eta_seconds(state) - (3 * 30 - 10)) < 1
    assert eta_seconds({"epochs": 4, "epoch": 1, "done": []}) is None
    assert eta_seconds({"epochs": 1, "epoch": 1, "done": [_metrics(1)]}) == 0.0


def test_watch_shows_the_progress_a_worker_publishes(redis_url, redis_prefix):
    """fcn-jobs watch --once: the running job's epoch k/N, steps, val mIoU, img/s, ETA, worker
    and attempts, from what the worker published; a worker that lost the job cannot publish."""
    from fcn_dist.cli.jobs import main
    from fcn_dist.queue import JobQueue
    from fcn_dist.spec import JobSpec

    q = JobQueue(redis_url, prefix=redis_prefix)
    jid = q.submit(JobSpec(name="watched", backbone="resnet18")).id
    job = q.claim("w1")
    assert job.id == jid
    assert q.set_progress(jid, "w1", {"epoch": 2, "epochs": 5, "step": 3, "steps": 9,
                                      "miou": 0.4321, "images_per_second": 7.25,
                                      "eta_seconds": 125}, lease=job.lease)
    assert not q.set_progress(jid, "intruder", {"epoch": 9}, lease=job.lease)
    assert not q.set_progress(jid, "w1", {"epoch": 9}, lease=job.lease + 1)  # not its lease
    assert q.get(jid).progress["epoch"] == 2
    r = CliRunner().invoke(main, ["--redis-url", redis_url, "--prefix", redis_prefix, "watch", "--once"])
    assert r.exit_code == 0, r.output
    row = next(ln for ln in r.output.splitlines() if ln.startswith(jid))
    for cell in ("running", "2/5 (3/9 steps)", "0.4321", "7.2", "2m05s", "w1", "1/3"):
        assert cell in row, (cell, row)
    shown = CliRunner().invoke(main, ["--redis-url", redis_url, "--prefix", redis_prefix, "show", jid])
    assert "epoch 2/5, step 3/9" in shown.output
    listed = CliRunner().invoke(main, ["--redis-url", redis_url, "--prefix", redis_prefix, "list", "--json"])
    assert json.loads(listed.output)[0]["progress"]["eta_seconds"] == 125


def test_dashboard_hint_names_the_token(tmp_path, monkeypatch):
    from fcn_dist.monitoring import dashboard_access_hint

    token = tmp_path / "auth_token"
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert "ray get-auth-token" in dashboard_access_hint()
    token.write_text("secret\n")
    hint = dashboard_access_hint()
    assert str(token) in hint and "secret" not in hint


def test_terminal_console_shows_a_bar_per_epoch_then_its_line():
    out = io.StringIO()
    console = Console(stream=out, live=True)
    base = {"epochs": 2, "steps": 4, "epoch_started": time.time()}
    console({**base, "epoch": 1, "step": 1, "done": []})
    assert console._bar is not None  # a live bar while epoch 1 runs
    console({**base, "epoch": 1, "step": 4, "done": [_metrics(1)]})
    assert console._bar is None and "epoch 1/2: train loss" in out.getvalue()
    console.close()


def test_fcn_train_prints_its_own_lines_and_none_of_rays(tmp_path):
    """A real fcn-train run (its own local Ray, one tiny epoch) as a user sees it on a pipe:
    the start line, the epoch line and the result; no Ray internals (issue 20)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from fcn_dist.data import prepare

    prepare("synthetic", tmp_path / "data" / "syn", count=24, size=(32, 32), overwrite=True)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: quiet\ndata: syn\nvariant: 32s\nbackbone: resnet18\n"
                    "backbone_weights: null\nepochs: 1\nbatch_size: 4\ncrop_size: [32, 32]\n"
                    "num_workers: 1\nuse_gpu: 'false'\nsteps_per_epoch: 2\n")
    env = {**os.environ, "FCN_DATA": str(tmp_path / "data"), "FCN_STORE": str(tmp_path / "store"),
           "FCN_RUNS": str(tmp_path / "runs"), "RAY_ADDRESS": ""}
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "fcn_dist.cli.train", "--spec", str(spec)],
                       cwd=root, env=env, capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "epoch 1/1: train loss" in out and "succeeded" in out, out[-3000:]
    for noise in ("TrainingReport(", "State Transition", "Ray Data", "RayDeprecationWarning",
                  "Traceback"):
        assert noise not in out, f"{noise!r} in fcn-train's output:\n{out[-3000:]}"
    assert len(out.splitlines()) <= 12, out
