"""Issue 17.3 / 17.4: one evaluate() for validation and the final score, at the labels' original
size; eval_size native; the split a score is on is recorded and labelled, never "test" for the
split that chose the checkpoint.

Tiny folder datasets (train/val only, no test split) built here; no Ray except the slow test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcn_dist.spec import JobSpec, load_spec

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"names": ["background", "box", "ring"], "palette": [[0, 0, 0], [250, 0, 0], [0, 0, 250]],
           "ignore_index": 255}


def _folder(root: Path, sizes: list[tuple[int, int]], seed: int = 0) -> Path:
    """images/ + labels/ (index PNGs) of boxes with rings on noise, one image per size."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i, (h, w) in enumerate(sizes):
        lab = np.zeros((h, w), np.uint8)
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = y0 + int(rng.integers(h // 4, h // 2)), x0 + int(rng.integers(w // 4, w // 2))
        lab[max(0, y0 - 2):y1 + 2, max(0, x0 - 2):x1 + 2] = 2
        lab[y0:y1, x0:x1] = 1
        img = rng.integers(0, 60, size=(h, w, 3)).astype(np.uint8)
        img[lab == 1] += np.array([180, 20, 20], np.uint8)
        img[lab == 2] += np.array([20, 20, 180], np.uint8)
        Image.fromarray(img).save(root / "images" / f"im{i:03d}.png")
        Image.fromarray(lab).save(root / "labels" / f"im{i:03d}.png")
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


def _prepare(tmp: Path, name: str, sizes, val_fraction: float = 0.25) -> Path:
    from fcn_dist.data import prepare

    prepare("folder", tmp / name, root=_folder(tmp / f"{name}-src", sizes), val_fraction=val_fraction)
    return tmp / name


@pytest.fixture(scope="module")
def one_size(tmp_path_factory) -> Path:
    """16 images of 40x56: 12 train, 4 val, no test split."""
    return _prepare(tmp_path_factory.mktemp("eval"), "one", [(40, 56)] * 16)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """8 images of two sizes (val holds both)."""
    return _prepare(tmp_path_factory.mktemp("eval"), "mixed",
                    [(40, 56), (36, 44)] * 4, val_fraction=0.5)


def _model():
    from fcn_dist.models import create_model

    torch.manual_seed(0)
    model = create_model("fcn8s_resnet18", 3)
    for p in model.head.parameters():  # a head that predicts something (zero-init scores do not)
        torch.nn.init.normal_(p, 0.0, 0.05)
    return model


def _loop_state(data: Path, eval_size):
    """A rank-0 loop state as set_up builds it (its val data from loop.validation_data)."""
    from fcn_dist.data import read_manifest
    from fcn_dist.train.loop import LoopConfig, RankState, validation_data
    from fcn_dist.train.step import make_step_state

    man = read_manifest(data)
    spec = JobSpec(backbone="resnet18", amp="off", crop_size=[32, 32], batch_size=3)
    cfg = LoopConfig(spec=spec, run_id="r", run_dir="/tmp", data_dir=str(data), dataset=data.name,
                     num_classes=3, classes=list(man.classes), ignore_index=man.ignore_index,
                     val_split="val", steps_per_epoch=1, data_loader="torch", eval_size=eval_size)
    model = _model()
    st = make_step_state(model, spec, device=torch.device("cpu"), steps_per_epoch=1,
                         ignore_index=man.ignore_index)
    pre, val_ds = validation_data(cfg)
    return RankState(cfg=cfg, rank=0, world=1, device=torch.device("cpu"), step=st,
                     preprocessing=pre, val_ds=val_ds), man


def _save(state, man, path: Path) -> Path:
    from fcn_dist.checkpoint import save_checkpoint

    pre = state.preprocessing
    return save_checkpoint(path, state.step.bare.state_dict(), {
        "model_name": "fcn8s_resnet18", "num_classes": 3, "classes": list(man.classes),
        "palette": man.palette, "ignore_index": man.ignore_index, "preprocessing": pre.to_dict(),
        "eval_size": list(pre.size) if pre.size else None, "upsample": "learned"})


@pytest.mark.parametrize("eval_size", [[32, 48], None], ids=["explicit-32x48", "native"])
def test_validation_and_final_score_are_the_same_evaluation(one_size, tmp_path, eval_size):
    """The loop's validate() and evaluate_checkpoint() of that model on the same split give the
    same confusion matrix, at the labels' original size (4 val images of 40x56)."""
    from fcn_dist.train.evaluate import evaluate_checkpoint
    from fcn_dist.train.loop import validate

    state, man = _loop_state(one_size, eval_size)
    val = validate(state)
    final = evaluate_checkpoint(_save(state, man, tmp_path / "ckpt"), one_size, "val",
                                batch_size=3, amp="off", device="cpu")
    assert sum(map(sum, val["confusion_matrix"])) == 4 * 40 * 56  # original size, not eval size
    assert final["confusion_matrix"] == val["confusion_matrix"]
    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert final[k] == val[k], k
    assert 0.0 < val["miou"] < 1.0
    assert final["eval_size"] == ("native" if eval_size is None else "32x48")
    assert final["images"] == 4 and final["split"] == "val"


def test_native_evaluation_of_images_of_different_sizes(mixed):
    """Native: every image at its own size; images of different sizes are batched apart, and
    the result does not depend on the batch size."""
    from fcn_dist.data.transforms import Preprocessing
    from fcn_dist.train.evaluate import evaluate, scoring_dataset

    ds = scoring_dataset(mixed, "val", Preprocessing(None))
    sizes = [tuple(ds.raw(i)[1].shape) for i in range(len(ds))]
    assert len(set(sizes)) == 2
    model = _model()
    a = evaluate(model, ds, num_classes=3, ignore_index=255, batch_size=4)
    b = evaluate(model, ds, num_classes=3, ignore_index=255, batch_size=1)
    assert sum(map(sum, a["confusion_matrix"])) == sum(h * w for h, w in sizes)
    assert a["confusion_matrix"] == b["confusion_matrix"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_eval_size_default_is_native_when_val_and_test_images_share_one_size(one_size, mixed,
                                                                             tmp_path):
    from fcn_dist.train.trainer import check_inputs

    def decided(data, **fields):
        spec = JobSpec(name="e", data=str(data), crop_size=[32, 32], **fields)
        return check_inputs(spec, run_dir=tmp_path / "run", init_from=None, job_id=None)

    inp = decided(one_size)
    assert inp.eval_size is None  # native: all val images are 40x56
    assert inp.eval_split == "val" and inp.eval_is_selection  # no test split
    assert decided(mixed).eval_size == (32, 32)  # two sizes: crop_size, as before
    assert decided(mixed, eval_size="native").eval_size is None
    assert decided(one_size, eval_size=[48, 64]).eval_size == (48, 64)


def test_eval_size_native_in_specs(tmp_path):
    assert load_spec(ROOT / "jobs" / "camvid.yaml").eval_size == "native"
    spec = load_spec(ROOT / "jobs" / "pets.yaml", ["eval_size=native"])
    assert spec.eval_size == "native" and JobSpec.from_json(spec.to_json()).eval_size == "native"
    assert load_spec(ROOT / "jobs" / "pets.yaml", ["eval_size=96"]).eval_size == [96, 96]
    from fcn_dist.errors import SpecError

    with pytest.raises(SpecError, match=r"field 'eval_size': must be .* or native, got 'nativ'"):
        JobSpec.from_dict({"eval_size": "nativ"})


def test_a_selection_split_is_never_called_test():
    """The one label (store.scored_on) and every line that prints a final score."""
    from fcn_dist.cli.jobs import _score_line
    from fcn_dist.cli.train import format_result
    from fcn_dist.queue.worker import _result_note
    from fcn_dist.store import scored_on

    assert scored_on("val", True) == "val (used for selection)"
    assert scored_on("test", False) == "test"
    assert scored_on(None, None) == "unknown"  # a row of schema 1
    result = {"run_id": "r", "variant": "8s", "backbone": "resnet18", "dataset": "camvid",
              "status": "succeeded", "miou": 0.5, "pixel_accuracy": 0.8, "mean_accuracy": 0.6,
              "fwiou": 0.7, "best_epoch": 3, "best_val_miou": 0.5, "train_seconds": 10.0,
              "best_checkpoint": "/c", "eval_split": "val", "eval_is_selection": True,
              "eval_size": "native", "scored_on": "val (used for selection)"}
    for text in (_score_line(result), _result_note(result), format_result(result)):
        assert "val (used for selection)" in text and "mIoU 0.5000" in text, text
        assert "test" not in text


@pytest.mark.slow  # a Ray Train run (~1 min on 2 cores): pytest -m slow tests/test_eval.py
@pytest.mark.ray
def test_best_epoch_val_miou_equals_the_final_score_without_a_test_split(
        ray_session, one_size, tmp_path, monkeypatch):
    """No test split: the final score is on val, the split that chose the checkpoint, so it
    must equal the best epoch's val mIoU (old code: val at eval_size against resized labels,
    the final score at the original size: they differed). Labelled so in the row and summary."""
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    monkeypatch.setenv("FCN_STORE", str(tmp_path / "store"))
    spec = load_spec(ROOT / "jobs" / "smoke.yaml", [f"data={one_size}", "epochs=2", "amp=off",
                                                    "eval_size=[32, 48]", "batch_size=4"])
    res = run(spec, run_dir=tmp_path / "runs" / "sel-8s")
    epochs = {r["epoch"]: r["miou"] for r in ResultsStore(tmp_path / "store").epochs().to_pylist()}
    assert res["miou"] == pytest.approx(res["best_val_miou"], abs=1e-9)
    assert res["best_val_miou"] == pytest.approx(epochs[res["best_epoch"]], abs=1e-9)
    assert res["eval_split"] == "val" and res["eval_is_selection"] is True
    assert res["scored_on"] == "val (used for selection)" and res["eval_size"] == "32x48"
    (row,) = ResultsStore(tmp_path / "store").runs().to_pylist()
    assert row["eval_split"] == "val" and row["eval_is_selection"] is True
    assert sum(map(sum, row["confusion_matrix"])) == 4 * 40 * 56  # the labels' original size


def test_fcn_jobs_show_says_which_split_the_score_is_on(redis_url, redis_prefix):
    """The score line of `fcn-jobs show` for a finished job (real Redis)."""
    from click.testing import CliRunner

    from fcn_dist.cli import jobs as jobs_cli
    from fcn_dist.queue import JobQueue

    q = JobQueue(redis_url, prefix=redis_prefix)
    try:
        jid = q.submit(JobSpec(name="sel", variant="8s")).id
        job = q.claim("w", 5)
        assert job.id == jid
        q.complete(jid, "w", {"miou": 0.5, "pixel_accuracy": 0.8, "best_epoch": 3,
                              "best_val_miou": 0.5, "eval_split": "val", "eval_is_selection": True,
                              "scored_on": "val (used for selection)"})
    finally:
        q.close()
    r = CliRunner().invoke(jobs_cli.main, ["--redis-url", redis_url, "--prefix", redis_prefix,
                                           "show", jid])
    assert r.exit_code == 0, r.output
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("score ")]
    assert line.split(None, 1)[1] == ("val (used for selection): mIoU 0.5000, pixel acc 0.8000 "
                                      "(best epoch 3, val mIoU 0.5000)")
