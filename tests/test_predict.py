"""Inference round trip: a self-describing checkpoint -> Segmenter / fcn-predict label maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fcn_dist.errors import TrainingError

PALETTE = [[0, 0, 0], [220, 20, 60], [255, 255, 255]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A checkpoint directory as training writes it (random resnet18 FCN-8s, 3 classes)."""
    from fcn_dist.models import create_model
    from fcn_dist.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("fcn8s_resnet18", 3)
    meta = {"model_name": "fcn8s_resnet18", "num_classes": 3, "classes": ["bg", "shape", "border"],
            "palette": PALETTE, "ignore_index": 255, "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225], "eval_size": [48, 48], "upsample": "learned",
            "skip_scale": False, "epoch": 1, "metrics": {}, "spec": {}}
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "epoch_0001", model.state_dict(), meta)


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_segmenter_label_maps_at_original_size(checkpoint, tmp_path):
    from fcn_dist.predict import Segmenter
    from fcn_dist.train import load_checkpoint

    seg = Segmenter.from_checkpoint(checkpoint, device="cpu")
    arr = _image(37, 71, 1)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    by_array = seg.predict(arr)
    assert by_array.shape == (37, 71) and by_array.dtype == np.int64
    assert set(np.unique(by_array)) <= {0, 1, 2}
    np.testing.assert_array_equal(seg.predict(Image.fromarray(arr)), by_array)
    np.testing.assert_array_equal(seg.predict(str(path)), by_array)
    # mixed sizes in one batch
    a, b = seg.predict_batch([_image(20, 30, 2), _image(90, 17, 3)])
    assert a.shape == (20, 30) and b.shape == (90, 17)

    # the same as doing it by hand: resize to eval_size, normalise, upsample logits bilinearly
    model, meta = load_checkpoint(checkpoint)
    x = torch.from_numpy(np.array(Image.fromarray(arr).resize((48, 48), Image.BILINEAR))).permute(2, 0, 1)
    x = (x.float() / 255 - torch.tensor(meta["mean"]).view(3, 1, 1)) / torch.tensor(meta["std"]).view(3, 1, 1)
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(x[None]), size=(37, 71), mode="bilinear")
    np.testing.assert_array_equal(logits.argmax(1)[0].numpy(), by_array)


def test_fcn_predict_writes_palette_pngs_at_original_sizes(checkpoint, tmp_path):
    from fcn_dist.cli.predict import main

    inp = tmp_path / "in"
    (inp / "sub").mkdir(parents=True)
    sizes = {"one": (30, 41), "two": (64, 20), "three": (25, 25)}
    Image.fromarray(_image(*sizes["one"], 1)).save(inp / "one.jpg")
    Image.fromarray(_image(*sizes["two"], 2)).save(inp / "two.png")
    Image.fromarray(_image(*sizes["three"], 3)).save(inp / "sub" / "three.png")
    (inp / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, [str(checkpoint), str(inp), str(inp / "sub" / "*.png"),
                                  "--out", str(out), "--overlay"])
    assert r.exit_code == 0, r.output
    assert "wrote 3 label map(s)" in r.output
    for stem, (h, w) in sizes.items():
        im = Image.open(out / f"{stem}.png")
        assert im.mode == "P" and im.size == (w, h)
        assert im.getpalette()[:9] == [c for rgb in PALETTE for c in rgb]
        assert set(np.unique(np.asarray(im))) <= {0, 1, 2}
        assert Image.open(out / f"{stem}_overlay.png").size == (w, h)

    bad = CliRunner().invoke(main, [str(checkpoint), str(tmp_path / "missing.jpg"), "--out", str(out)])
    assert bad.exit_code == 1 and "error:" in bad.output and "missing.jpg" in bad.output


def test_checkpoints_load_weights_only(checkpoint, tmp_path):
    """A model.pt that needs unpickling of arbitrary objects is refused, not executed."""
    import shutil

    from fcn_dist.train import load_checkpoint

    torch.load(checkpoint / "model.pt", weights_only=True)  # plain tensors
    evil = tmp_path / "evil"
    shutil.copytree(checkpoint, evil)
    torch.save({"x": Path("/etc/passwd")}, evil / "model.pt")  # a non-tensor object
    with pytest.raises(TrainingError, match="cannot load model weights safely"):
        load_checkpoint(evil)
    with pytest.raises(TrainingError, match="not a checkpoint"):
        load_checkpoint(tmp_path)
