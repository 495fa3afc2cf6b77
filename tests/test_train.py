"""Training on a real local Ray (Train V2 + Data): smoke run, DDP metrics, resume, failures.

Everything is tiny (synthetic 64x64 shapes, resnet18, a few steps): the box has 2 cores
shared with other suites. No Ray mocks: each test runs ``fcn_dist.train.run``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fcn_dist.errors import TrainingError
from fcn_dist.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """40 synthetic 64x64 images: 32 train, 4 val, 4 test."""
    from fcn_dist.data import prepare

    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare("synthetic", out, count=40, size=(64, 64), seed=0)
    return out


@pytest.fixture
def store_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("FCN_STORE", str(root))
    return root


def _spec(data: Path, *overrides: str):
    return load_spec(SMOKE, [f"data={data}", "epochs=2", *overrides])


def _in01(v) -> bool:
    return v is not None and 0.0 <= v <= 1.0


@pytest.mark.ray
def test_two_worker_run_writes_store_rows_and_ddp_metrics_match_single_process(
        ray_session, synthetic, store_root, tmp_path):
    from fcn_dist.data import ShardDataset
    from fcn_dist.data.transforms import eval_transform
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import evaluate, load_checkpoint, run
    from fcn_dist.train.loop import resolve_amp

    spec = _spec(synthetic)  # smoke.yaml: 2 workers, Ray Data input, amp auto
    assert spec.num_workers == 2
    run_dir = tmp_path / "runs" / "smoke-8s"
    res = run(spec, job_id="j1", run_dir=run_dir)
    assert res["status"] == "succeeded" and res["run_id"] == "smoke-8s" and res["job_id"] == "j1"

    store = ResultsStore(store_root)
    epochs = sorted(store.epochs().to_pylist(), key=lambda r: r["epoch"])
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert r["run_id"] == "smoke-8s" and r["world_size"] == 2 and r["device"] == "cpu"
        for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "train_miou"):
            assert _in01(r[k]), (k, r[k])
        assert math.isfinite(r["train_loss"]) and r["images_per_second"] > 0
    runs = store.runs().to_pylist()
    assert len(runs) == 1
    row = runs[0]
    assert row["status"] == "succeeded" and row["num_classes"] == 3
    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert _in01(row[k]), (k, row[k])
        assert res[k] == pytest.approx(row[k])
    assert sum(map(sum, row["confusion_matrix"])) == 4 * 64 * 64  # test split, original size
    assert row["params"] > 1e6 and row["gflops_per_image"] > 0
    assert Path(row["best_checkpoint"]).is_dir()

    # the latest checkpoint is always kept (best + latest); weights_only loading only
    latest = run_dir / "epoch_0002"
    model, meta = load_checkpoint(latest)
    assert meta["epoch"] == 2 and meta["classes"] == ["background", "shape", "border"]
    assert meta["ignore_index"] == 255 and meta["eval_size"] == [64, 64]
    torch.load(latest / "train_state.pt", weights_only=True)

    # DDP-synchronised validation (2 ranks, torchmetrics sync) == one process, same checkpoint
    amp_dtype, _ = resolve_amp(spec.amp, torch.device("cpu"))
    val = ShardDataset(synthetic, "val", transform=eval_transform(meta["eval_size"]))
    single = evaluate(model, val, num_classes=3, ignore_index=255, batch_size=1, amp_dtype=amp_dtype)
    last = epochs[-1]
    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert last[k] == pytest.approx(single[k], abs=1e-9), k
    assert last["val_loss"] == pytest.approx(single["loss"], rel=1e-4)


@pytest.mark.ray
def test_interrupted_run_resumes_to_the_same_result(ray_session, synthetic, store_root, tmp_path):
    """Stopped mid-training (should_stop), restarted on its run dir: bitwise the same weights
    and the same metrics as an uninterrupted run (deterministic CPU settings)."""
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import Interrupted, run
    from fcn_dist.train.checkpoint import load_state_dict

    spec = _spec(synthetic, "epochs=3", "deterministic=true", "amp=off", "steps_per_epoch=3",
                 "batch_size=4")
    store = ResultsStore(store_root)
    full = run(spec, run_dir=tmp_path / "full")

    def after_first_epoch() -> bool:  # "kill" once epoch 1 of this run is on record
        t = store.epochs(filters={"run_id": "cut"})
        return t.num_rows >= 1

    with pytest.raises(Interrupted):
        run(spec, run_dir=tmp_path / "cut", should_stop=after_first_epoch)
    assert not store.runs(filters={"run_id": "cut"}).num_rows
    resumed = run(spec, run_dir=tmp_path / "cut")

    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "best_val_miou"):
        assert resumed[k] == full[k], k
    a = load_state_dict(tmp_path / "full" / "epoch_0003")
    b = load_state_dict(tmp_path / "cut" / "epoch_0003")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = {r["epoch"]: r for r in store.epochs(filters={"run_id": "cut"}).to_pylist()}
    ref = {r["epoch"]: r for r in store.epochs(filters={"run_id": "full"}).to_pylist()}
    assert sorted(rows) == [1, 2, 3]
    assert rows[3]["miou"] == ref[3]["miou"] and rows[3]["train_loss"] == ref[3]["train_loss"]


@pytest.mark.ray
def test_non_finite_loss_stops_with_training_error(ray_session, synthetic, store_root, tmp_path):
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    # plain SGD at lr 9.9 with momentum 0.99 and no clipping diverges within a few steps
    spec = _spec(synthetic, "num_workers=1", "optimizer=sgd", "lr=9.9", "momentum=0.99",
                 "grad_clip=null", "amp=off", "deterministic=true", "max_failures=2")
    with pytest.raises(TrainingError, match=r"non-finite training loss at epoch 1, step \d+"):
        run(spec, run_dir=tmp_path / "nan")
    assert ResultsStore(store_root).runs().num_rows == 0
