"""fcn-submit, fcn-jobs and fcn-worker against the real Redis: output, idempotency, and one-line
errors (no tracebacks) for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fcn_dist.cli import jobs as jobs_cli
from fcn_dist.queue import JobQueue

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def spec_file(tmp_path):
    p = tmp_path / "tiny.yaml"
    p.write_text("name: tiny\ndata: synthetic\nepochs: 1\nbatch_size: 2\ncrop_size: [64, 64]\n")
    return p


@pytest.fixture
def queue(redis_url, redis_prefix):
    q = JobQueue(redis_url, prefix=redis_prefix)
    yield q
    q.close()


def one_line_error(result, code: int | None = None) -> str:
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in result.output
    return err


# --------------------------------------------------------------------------- fcn-submit
def test_submit_all_variants_idempotent_force_json(cli, queue, spec_file):
    submit, _ = cli
    r = submit("--spec", str(spec_file), "--variant", "all", "--set", "epochs=2", "--priority", "5")
    assert r.exit_code == 0, r.output
    ids = r.stdout.split()
    assert len(ids) == 3
    jobs = [queue.get(i) for i in ids]
    assert [j.variant for j in jobs] == ["32s", "16s", "8s"]
    assert all(j.state == "queued" and j.priority == 5 and j.spec_dict["epochs"] == 2 for j in jobs)
    assert jobs[1].spec.model_name == "fcn16s_vgg16"  # stored as JSON, read back validated

    again = submit("--spec", str(spec_file), "--variant", "all", "--set", "epochs=2", "--json")
    assert again.exit_code == 0, again.output
    rows = json.loads(again.stdout)
    assert [x["id"] for x in rows] == ids and not any(x["created"] for x in rows)

    forced = submit("--spec", str(spec_file), "--variant", "32s", "--set", "epochs=2", "--force")
    assert forced.exit_code == 0 and forced.stdout.split()[0] not in ids
    assert queue.counts()["queued"] == 4


def test_submit_staged_chain_and_backbone(cli, queue, spec_file):
    submit, _ = cli
    r = submit("--spec", str(spec_file), "--variant", "all", "--staged", "--backbone", "resnet18",
               "--max-attempts", "5", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [(x["variant"], x["state"]) for x in rows] == [("32s", "queued"), ("16s", "waiting"), ("8s", "waiting")]
    j16 = queue.get(rows[1]["id"])
    assert j16.depends_on == rows[0]["id"] and j16.backbone == "resnet18" and j16.max_attempts == 5


@pytest.mark.parametrize("content, args, needle", [
    ("name: t\nepochs: 0\n", [], "epochs"),
    ("name: t\nbogus_field: 1\n", [], "bogus_field"),
    ("name: t\n", ["--backbone", "alexnet"], "backbone"),
    ("name: t\n", ["--variant", "4s"], "variant"),
    ("name: t\n", ["--set", "lr=fast"], "lr"),
    ("name: ../../etc\n", [], "name"),
    (": : not yaml [\n", [], "YAML"),
])
def test_submit_bad_input_is_one_line(cli, tmp_path, content, args, needle):
    submit, _ = cli
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    r = submit("--spec", str(p), *args)
    err = one_line_error(r, 2)
    assert needle in err


def test_submit_missing_spec_file(cli, tmp_path):
    submit, _ = cli
    err = one_line_error(submit("--spec", str(tmp_path / "nope.yaml")), 2)
    assert "not found" in err


def test_submit_unreachable_redis_real_entry_point(spec_file):
    r = subprocess.run([sys.executable, "-m", "fcn_dist.cli.submit", "--spec", str(spec_file),
                        "--redis-url", "redis://:hunter2@127.0.0.1:1/0"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error: redis unavailable at redis://:***@127.0.0.1:1/0")
    assert all(ln.startswith("redis unavailable, retrying in") for ln in lines[:-1]) and lines[:-1]
    assert "Traceback" not in r.stderr and "hunter2" not in r.stderr and r.stdout == ""


# --------------------------------------------------------------------------- fcn-jobs
def test_jobs_list_show_cancel_retry_logs_dead(cli, queue, spec_file):
    submit, jobs = cli
    ids = submit("--spec", str(spec_file), "--variant", "all").stdout.split()
    r = jobs("list")
    assert r.exit_code == 0 and all(i in r.stdout for i in ids)
    assert jobs("list", "--state", "running").stdout.strip() == "no jobs in state running"
    one_line_error(jobs("list", "--state", "exploded"))

    # run the 32s job to failure -> dead letter
    j = queue.claim("w-test", 5)
    queue.append_logs(j.id, ["epoch 1: loss 0.9", "epoch 2: loss nan"])
    queue.fail(j.id, "w-test", "TrainingError: non-finite loss at epoch 2", "Traceback...\nTrainingError",
               lease=j.lease, retryable=False)
    r = jobs("show", j.id[:8])
    assert r.exit_code == 0
    for needle in ("state      failed", "non-finite loss", "history", "claimed", "spec", '"epochs": 1'):
        assert needle in r.stdout, needle
    shown = json.loads(jobs("show", j.id, "--json").stdout)
    assert shown["state"] == "failed" and shown["history"][-1]["to"] == "failed"
    assert jobs("logs", j.id).stdout.splitlines() == ["epoch 1: loss 0.9", "epoch 2: loss nan"]
    assert jobs("logs", j.id, "--tail", "1").stdout.splitlines() == ["epoch 2: loss nan"]
    assert j.id in jobs("dead").stdout
    assert json.loads(jobs("dead", "--json").stdout)[0]["id"] == j.id

    r = jobs("retry", j.id)
    assert r.exit_code == 0 and r.stdout.strip() == f"{j.id} queued"
    assert jobs("dead").stdout.strip() == "no dead-lettered jobs"

    r = jobs("cancel", ids[1])
    assert r.exit_code == 0 and "cancelled" in r.stdout
    err = one_line_error(jobs("retry", ids[2]), 1)
    assert "only failed or cancelled" in err
    stats = json.loads(jobs("stats", "--json").stdout)
    assert stats["queued"] == 2 and stats["cancelled"] == 1
    ev = jobs("events", "--job", j.id)
    assert ev.exit_code == 0 and "retried" in ev.stdout


def test_jobs_unknown_id_and_unreachable_redis(cli):
    _, jobs = cli
    for cmd in ("show", "cancel", "retry", "logs"):
        err = one_line_error(jobs(cmd, "no-such-job"), 1)
        assert "unknown job no-such-job" in err
    r = CliRunner().invoke(jobs_cli.main, ["--redis-url", "redis://127.0.0.1:1/0", "list"])
    assert "redis unavailable" in one_line_error(r, 1)


def test_cancel_of_a_finished_job_says_so(cli, queue, spec_file):
    submit, jobs = cli
    jid = submit("--spec", str(spec_file), "--variant", "8s").stdout.split()[0]
    j = queue.claim("w", 5)
    queue.complete(j.id, "w", {"miou": 0.1}, lease=j.lease)
    err = one_line_error(jobs("cancel", jid), 1)
    assert "already succeeded" in err


# --------------------------------------------------------------------------- fcn-worker
def worker(redis_url, redis_prefix, *args, env=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "fcn_dist.cli.worker", "--redis-url", redis_url,
                           "--prefix", redis_prefix, "--poll-interval", "0.05", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def test_worker_cli_until_empty_and_max_jobs(cli, queue, spec_file, redis_url, redis_prefix):
    submit, jobs = cli
    ids = submit("--spec", str(spec_file), "--variant", "all", "--staged").stdout.split()
    r = worker(redis_url, redis_prefix, "--run-fn", "fcn_dist.queue.demo:run", "--max-jobs", "1")
    assert r.returncode == 0, r.stderr
    assert [queue.get(i).state for i in ids] == ["succeeded", "queued", "waiting"]
    r = worker(redis_url, redis_prefix, "--run-fn", "fcn_dist.queue.demo:run", "--until-empty")
    assert r.returncode == 0, r.stderr
    assert "queue is empty; exiting" in r.stderr
    final = [queue.get(i) for i in ids]
    assert all(j.state == "succeeded" for j in final)
    assert final[2].init_from == f"demo://{ids[1]}/best"
    assert any("succeeded" in ln for ln in jobs("logs", ids[2]).stdout.splitlines())


def test_worker_cli_bad_run_fn_and_auth_are_one_line(redis_url, redis_prefix):
    r = worker(redis_url, redis_prefix, "--run-fn", "no_such_module:run", "--until-empty")
    assert r.returncode == 1 and r.stderr.strip().startswith("error: --run-fn: cannot import")
    assert "Traceback" not in r.stderr
    r = worker(redis_url, redis_prefix, "--lease-seconds", "1", "--heartbeat-seconds", "2")
    assert r.returncode != 0 and "error: heartbeat_seconds must be shorter" in r.stderr


def test_submit_refuses_an_empty_val_split_naming_it(cli, tmp_path, monkeypatch):
    """A folder dataset whose val fraction rounds to no image: fcn-submit refuses it (the
    worker would score NaN and pick a checkpoint on nothing), before Redis is contacted."""
    from data_fixtures import make_folder
    from fcn_dist.data.sources import prepare

    make_folder(tmp_path / "src", n=3)
    prepare("folder", tmp_path / "data" / "few", root=tmp_path / "src", val_fraction=0.05)
    monkeypatch.setenv("FCN_DATA", str(tmp_path / "data"))
    p = tmp_path / "s.yaml"
    p.write_text("name: few\ndata: few\n")
    submit, _ = cli
    err = one_line_error(submit("--spec", str(p)), 2)
    assert "val_split" in err and "'val'" in err and "empty" in err
    p.write_text("name: few\ndata: few\nval_split: train\ntest_split: holdout\n")
    err = one_line_error(submit("--spec", str(p)), 2)
    assert "test_split" in err and "holdout" in err


@pytest.mark.parametrize("data, needle", [
    ("../../../../etc", "leaves the prepared-data root"),
    ("/etc", "is outside"),
    ("~/.ssh", "is outside"),
])
def test_submit_confines_data_under_fcn_data(cli, tmp_path, monkeypatch, data, needle):
    monkeypatch.setenv("FCN_DATA", str(tmp_path / "data"))
    p = tmp_path / "s.yaml"
    p.write_text(f"name: conf\ndata: '{data}'\n")
    submit, _ = cli
    err = one_line_error(submit("--spec", str(p)), 2)
    assert "data" in err and needle in err


@pytest.mark.parametrize("content, needle", [
    ("name: \"x\\n\"\n", "name"),
    ("name: t\n1: 2\n", "field names must be strings"),
    ("name: t\ndata: '" + "\U0001F600" * 4000 + "'\nstore: '" + "\U0001F600" * 4000 + "'\n",
     "stored JSON"),
])
def test_submit_refuses_what_the_worker_would(cli, tmp_path, content, needle):
    p = tmp_path / "s.yaml"
    p.write_text(content, encoding="utf-8")
    assert p.stat().st_size < 64 * 1024
    submit, _ = cli
    err = one_line_error(submit("--spec", str(p)), 2)
    assert needle in err


def test_duplicate_submit_says_which_settings_it_did_not_apply(cli, queue, spec_file):
    submit, _ = cli
    first = submit("--spec", str(spec_file), "--variant", "32s", "--priority", "1")
    assert first.exit_code == 0, first.output
    again = submit("--spec", str(spec_file), "--variant", "32s", "--priority", "7", "--max-attempts", "9")
    assert again.exit_code == 0 and again.stdout.split() == first.stdout.split()
    note = [ln for ln in again.stderr.splitlines() if ln.startswith("note:")]
    assert len(note) == 1 and "--priority 7 not applied (it keeps 1)" in note[0]
    assert "--max-attempts 9 not applied (it keeps 3)" in note[0]
    job = queue.get(first.stdout.split()[0])
    assert job.priority == 1 and job.max_attempts == 3
    same = submit("--spec", str(spec_file), "--variant", "32s", "--priority", "1")
    assert "note:" not in same.stderr
