"""Sharded data: sources -> Parquet shards + manifest, checks, transforms, readers."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fcn_dist.data import ShardDataset, load, prepare, read_manifest, verify
from fcn_dist.data import shards as shards_mod
from fcn_dist.data import synthetic
from fcn_dist.data.transforms import IMAGENET_MEAN, eval_transform, train_transform
from fcn_dist.errors import DataError

from data_fixtures import FOLDER_CLASSES, make_folder, make_pets

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
if not CAMVID.is_dir():
    CAMVID = Path("/work/shared/data/camvid")


def _labels(ds: ShardDataset) -> list[np.ndarray]:
    return [ds.raw(i)[1] for i in range(len(ds))]


# --------------------------------------------------------------------------- pets
@pytest.fixture(scope="module")
def pets_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pets_src")
    return make_pets(root)


def test_pets_fixture_matches_torchvision_layout(pets_root):
    from torchvision.datasets import OxfordIIITPet

    ds = OxfordIIITPet(str(pets_root["root"]), split="test", target_types="segmentation", download=False)
    assert len(ds) == pets_root["test"]
    assert Image.open(ds._segs[0]).mode == "L"


def test_pets_prepare_offline(pets_root, tmp_path):
    s = prepare("pets", tmp_path / "pets", root=pets_root["root"], val_fraction=0.2, seed=3)
    odd = pets_root["odd"]
    assert s["skipped"] == {"corrupt_image": 1, "missing_label": 1, "size_mismatch": 1}
    assert s["converted"] == {"CMYK": 1, "L": 1, "RGBA": 1}
    assert any(odd["corrupt"] in e for e in s["skipped_examples"]["corrupt_image"])
    total = pets_root["trainval"] + pets_root["test"]
    assert s["kept"] == total - 3 == sum(s["splits"].values())
    m = read_manifest(tmp_path / "pets")
    assert m.classes == ["pet", "background", "border"] and m.ignore_index == 255
    assert list(m.splits) == ["train", "val", "test"]
    # val: 20% of each breed's trainval ids (5 each -> 1 each), carved before skipping
    val = ShardDataset(tmp_path / "pets", "val")
    assert len({i.rsplit("_", 1)[0] for i in val.ids}) == len(val.ids) <= 2
    test = ShardDataset(tmp_path / "pets", "test")
    assert {i for i in test.ids} <= {n for n in pets_root["names"] if int(n.rsplit("_", 1)[1]) >= 105}
    # trimap 1,2,3 -> 0,1,2 and labels kept at original size
    train = ShardDataset(tmp_path / "pets", "train")
    for i in range(len(train)):
        img, lab = train.raw(i)
        assert img.mode == "RGB" and lab.shape == (img.height, img.width)
        assert set(np.unique(lab).tolist()) == {0, 1, 2}
    # a valid RGB JPEG is stored byte for byte
    normal = next(n for n in train.ids if n not in pets_root["odd"].values())
    src = (pets_root["root"] / "oxford-iiit-pet" / "images" / f"{normal}.jpg").read_bytes()
    assert train._row(train.ids.index(normal))["image"] == src
    # same seed, same val split
    s2 = prepare("pets", tmp_path / "pets2", root=pets_root["root"], val_fraction=0.2, seed=3)
    assert ShardDataset(tmp_path / "pets2", "val").ids == val.ids and s2["splits"] == s["splits"]


def test_pets_ignore_border(pets_root, tmp_path):
    prepare("pets", tmp_path / "p", root=pets_root["root"] / "oxford-iiit-pet", ignore_border=True)
    m = read_manifest(tmp_path / "p")
    assert m.classes == ["pet", "background"] and m.num_classes == 2
    vals = set(np.unique(np.concatenate([x.ravel() for x in _labels(ShardDataset(tmp_path / "p", "train"))])).tolist())
    assert vals == {0, 1, 255}


def test_pets_missing_offline_is_clear(tmp_path):
    with pytest.raises(DataError, match="images.tar.gz.*annotations.tar.gz") as e:
        prepare("pets", tmp_path / "out", root=tmp_path / "nothing")
    assert str(tmp_path / "nothing" / "oxford-iiit-pet") in str(e.value)
    assert not (tmp_path / "out").exists()


def test_pets_download_offline_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets.oxford_iiit_pet as tvpets

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvpets, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match="cannot download.*images.tar.gz"):
        prepare("pets", tmp_path / "out", root=tmp_path / "dl", download=True)


# --------------------------------------------------------------------------- folder
def test_folder_colour_labels(tmp_path):
    fx = make_folder(tmp_path / "src", classes_format="yaml")
    s = prepare("folder", tmp_path / "out", root=tmp_path / "src", val_fraction=0.3, seed=1)
    assert s["kept"] == fx["kept"]
    assert s["skipped"] == {"label_unknown_colour": 1, "missing_label": 1}
    assert s["orphan_labels"] == 1 and s["converted"] == {"P": 1}
    m = read_manifest(tmp_path / "out")
    assert m.classes == FOLDER_CLASSES["names"] and m.palette == FOLDER_CLASSES["palette"]
    seen = 0
    for split in ("train", "val"):
        ds = ShardDataset(tmp_path / "out", split)
        for i, id_ in enumerate(ds.ids):
            np.testing.assert_array_equal(ds.raw(i)[1], fx["index_maps"][id_])  # colour -> index, white -> 255
            seen += 1
    assert seen == fx["kept"] and s["splits"]["val"] == 2


def test_folder_index_labels_and_out_of_range(tmp_path):
    root = tmp_path / "src"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.json").write_text(json.dumps({"names": ["a", "b"]}))
    for name, lab in (("ok", [[0, 1], [255, 1]]), ("bad", [[0, 7], [1, 1]])):
        Image.new("RGB", (2, 2)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.array(lab, np.uint8)).save(root / "labels" / f"{name}.png")
    s = prepare("folder", tmp_path / "out", root=root, val_fraction=0)
    assert s["kept"] == 1 and s["skipped"] == {"label_out_of_range": 1}
    with pytest.raises(DataError, match="bad.*label_out_of_range"):
        prepare("folder", tmp_path / "strict", root=root, strict=True)
    assert not (tmp_path / "strict").exists()


def test_folder_errors(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "classes.json").write_text('{"names": ["a"]}')
    with pytest.raises(DataError, match="no images"):
        prepare("folder", tmp_path / "o1", root=tmp_path / "empty")
    (tmp_path / "nocls" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"classes file missing.*nocls/classes\.json"):
        prepare("folder", tmp_path / "o2", root=tmp_path / "nocls")
    with pytest.raises(DataError, match="missing.json: not found"):
        prepare("folder", tmp_path / "o3", root=tmp_path / "nocls", classes_file=tmp_path / "missing.json")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "classes.json").write_text('{"names": ["a"]}')
    with pytest.raises(DataError, match="empty"):
        prepare("folder", tmp_path / "o4", root=tmp_path / "bare")


# --------------------------------------------------------------------------- synthetic
def test_synthetic_deterministic(tmp_path):
    a, la = synthetic.generate(5, seed=7, size=(64, 80))
    b, lb = synthetic.generate(5, seed=7, size=(64, 80))
    c, _ = synthetic.generate(5, seed=8, size=(64, 80))
    assert a.shape == (64, 80, 3) and la.shape == (64, 80)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    s1 = prepare("synthetic", tmp_path / "s1", count=20, size=(64, 64), seed=7, shard_size=8)
    prepare("synthetic", tmp_path / "s2", count=20, size=(64, 64), seed=7, shard_size=8)
    prepare("synthetic", tmp_path / "s3", count=20, size=(64, 64), seed=8, shard_size=8)
    m1, m2, m3 = (read_manifest(tmp_path / n) for n in ("s1", "s2", "s3"))
    sha = lambda m: [s["sha256"] for v in m.shards.values() for s in v]  # noqa: E731
    assert sha(m1) == sha(m2) != sha(m3)
    assert s1["splits"] == {"train": 16, "val": 2, "test": 2}
    assert [s["rows"] for s in m1.shards["train"]] == [8, 8]
    labels = np.stack(_labels(ShardDataset(tmp_path / "s1", "train")))
    assert set(np.unique(labels).tolist()) == {0, 1, 2}
    frac = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert frac.min() > 0.05  # every class well represented


def test_synthetic_shape_classes(tmp_path):
    prepare("synthetic", tmp_path / "s", count=12, size=(48, 48), shape_classes=True, val_fraction=0, test_fraction=0)
    m = read_manifest(tmp_path / "s")
    assert m.num_classes == 5 and m.classes[-1] == "border"
    assert set(np.unique(np.stack(_labels(ShardDataset(tmp_path / "s", "train")))).tolist()) <= set(range(5))


# --------------------------------------------------------------------------- shards, manifest, atomicity
def test_shard_dataset_and_max_size(tmp_path):
    prepare("synthetic", tmp_path / "s", count=6, size=(64, 96), max_size=48, val_fraction=0, test_fraction=0)
    ds = ShardDataset(tmp_path / "s", "train")
    # train rows are stored in a seeded shuffled order (not by name), the same on every prepare
    assert len(ds) == 6 and sorted(ds.ids) == [f"syn-{i:06d}" for i in range(6)]
    assert ds.ids != sorted(ds.ids)
    prepare("synthetic", tmp_path / "s2", count=6, size=(64, 96), max_size=48, val_fraction=0, test_fraction=0)
    assert ShardDataset(tmp_path / "s2", "train").ids == ds.ids
    img, lab = ds.raw(2)
    assert img.size == (48, 32) and lab.shape == (32, 48)
    x, y = ds[2]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 48)
    assert y.dtype == torch.int64 and y.shape == (32, 48)
    assert torch.equal(y, torch.from_numpy(lab.astype(np.int64)))
    loader = torch.utils.data.DataLoader(
        ShardDataset(tmp_path / "s", "train", transform=train_transform(24, 255)), batch_size=3
    )
    xb, yb = next(iter(loader))
    assert xb.shape == (3, 3, 24, 24) and yb.shape == (3, 24, 24)


def test_atomic_prepare(tmp_path, monkeypatch):
    out = tmp_path / "ds"
    prepare("synthetic", out, count=10, size=(32, 32))
    before = (out / "manifest.json").read_text()
    with pytest.raises(DataError, match="already exists"):
        prepare("synthetic", out, count=10, size=(32, 32))
    calls = {"n": 0}
    real = shards_mod.ShardWriter._flush

    def crash(self, split):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(self, split)

    monkeypatch.setattr(shards_mod.ShardWriter, "_flush", crash)
    with pytest.raises(RuntimeError, match="disk on fire"):
        prepare("synthetic", out, count=10, size=(32, 32), seed=9, overwrite=True, shard_size=4)
    assert (out / "manifest.json").read_text() == before  # old dataset intact
    verify(out, sha256=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temp dirs left behind
    with pytest.raises(RuntimeError):
        calls["n"] = 0
        prepare("synthetic", tmp_path / "new", count=10, size=(32, 32), shard_size=4)
    assert not (tmp_path / "new").exists()
    # a half-written dir (no manifest) is not a dataset
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "train-00000.parquet").write_bytes(b"x")
    with pytest.raises(DataError, match="manifest.json: missing"):
        ShardDataset(tmp_path / "half", "train")


def test_checksum_and_size_errors(tmp_path):
    out = tmp_path / "ds"
    prepare("synthetic", out, count=10, size=(32, 32), shard_size=4, val_fraction=0, test_fraction=0)
    shard = out / "train-00001.parquet"
    assert verify(out, sha256=True)["rows"] == 10
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different content
    shard.write_bytes(bytes(data))
    verify(out)  # cheap check passes: sizes and row counts unchanged
    with pytest.raises(DataError, match="train-00001.parquet: sha256 mismatch"):
        verify(out, sha256=True)
    with pytest.raises(DataError, match="train-00001.parquet: sha256"):
        ShardDataset(out, "train", sha256=True)
    shard.write_bytes(bytes(data[:-10]))
    with pytest.raises(DataError, match="train-00001.parquet: .* bytes, manifest says"):
        ShardDataset(out, "train")
    shard.unlink()
    with pytest.raises(DataError, match="train-00001.parquet: missing"):
        load(out, "train")
    with pytest.raises(DataError, match="no split 'nope'"):
        verify(out, "nope")


def test_row_count_mismatch(tmp_path):
    out = tmp_path / "ds"
    prepare("synthetic", out, count=8, size=(32, 32), val_fraction=0, test_fraction=0)
    m = json.loads((out / "manifest.json").read_text())
    shard = out / m["shards"]["train"][0]["file"]
    t = pq.read_table(shard).slice(0, 5)
    pq.write_table(t, shard)
    m["shards"]["train"][0]["bytes"] = shard.stat().st_size
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match=f"{shard.name}: 5 rows, manifest says 8"):
        verify(out)


# --------------------------------------------------------------------------- transforms
def test_label_transforms_never_interpolate():
    rng = np.random.default_rng(0)
    values = {0, 3, 7}
    # blocky label with sharp edges between distant values: bilinear would invent 1, 2, 4, 5...
    label = np.kron(rng.choice(sorted(values), size=(6, 9)), np.ones((7, 5), int))
    image = rng.integers(0, 255, size=(*label.shape, 3), dtype=np.uint8)
    torch.manual_seed(0)
    t = train_transform((40, 40), ignore_index=255, scale_range=(0.3, 2.5))
    padded = False
    for _ in range(30):
        x, y = t(image, label)
        assert x.shape == (3, 40, 40) and x.dtype == torch.float32
        assert y.shape == (40, 40) and y.dtype == torch.int64
        got = set(torch.unique(y).tolist())
        assert got <= values | {255}, got
        padded |= 255 in got
    assert padded  # small scales pad with the ignore index
    for size in ((17, 23), (100, 31)):
        x, y = eval_transform(size)(image, label)
        assert x.shape == (3, *size) and set(torch.unique(y).tolist()) <= values
    x, y = eval_transform(None)(image, label)
    assert y.shape == label.shape and torch.equal(y, torch.from_numpy(label))
    # ImageNet normalisation: a black image maps to -mean/std
    x, _ = eval_transform(None)(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4), int))
    assert torch.allclose(x[:, 0, 0], torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, (0.229, 0.224, 0.225))]))


# --------------------------------------------------------------------------- Ray Data
@pytest.mark.ray
def test_ray_load(ray_session, tmp_path):
    out = tmp_path / "ds"
    prepare("synthetic", out, count=10, size=(40, 48), val_fraction=0.2, test_fraction=0, shard_size=4)
    ds = load(out, "train", mode="train", crop_size=(32, 32), seed=0, batch_size=4)
    batches = list(ds.iter_torch_batches(batch_size=4))
    assert sum(b["image"].shape[0] for b in batches) == 8
    b = batches[0]
    assert b["image"].dtype == torch.float32 and b["image"].shape[1:] == (3, 32, 32)
    assert b["label"].dtype == torch.int64 and b["label"].shape[1:] == (32, 32)
    assert set(torch.unique(torch.cat([x["label"].ravel() for x in batches])).tolist()) <= {0, 1, 2, 255}
    ev = load(out, "val", mode="eval", crop_size=(32, 32), eval_size=(40, 48))
    rows = list(ev.iter_torch_batches(batch_size=8))
    assert rows[0]["image"].shape == (2, 3, 40, 48)
    ref = ShardDataset(out, "val")
    assert sorted(map(tuple, rows[0]["label"].reshape(2, -1).tolist())) == sorted(
        tuple(ref[i][1].ravel().tolist()) for i in range(2)
    )


# --------------------------------------------------------------------------- CamVid
@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared CamVid not present")
def test_camvid(tmp_path):
    s = prepare("camvid", tmp_path / "camvid", root=CAMVID)
    assert s["splits"] == {"train": 367, "val": 101} and s["skipped"] == {}
    m = read_manifest(tmp_path / "camvid")
    assert m.num_classes == 11 and m.ignore_index == 11
    verify(tmp_path / "camvid", sha256=True)
    ds = ShardDataset(tmp_path / "camvid", "val")
    seen = set()
    for i in range(0, len(ds), 10):
        img, lab = ds.raw(i)
        assert img.size == (480, 360) and lab.shape == (360, 480)
        seen |= set(np.unique(lab).tolist())
    assert seen <= set(range(12)) and 11 in seen
    # stored JPEGs are the source bytes
    src = (CAMVID / "val" / "images" / f"{ds.ids[0]}.jpg").read_bytes()
    assert ds._row(0)["image"] == src


# --------------------------------------------------------------------------- CLI
def test_cli(tmp_path, monkeypatch):
    from fcn_dist.cli.data import main

    monkeypatch.setenv("FCN_DATA", str(tmp_path))
    r = CliRunner().invoke(main, ["prepare", "synthetic", "--count", "10", "--size", "32x40", "--shard-size", "5"])
    assert r.exit_code == 0, r.output
    assert "splits:  train 8, val 1, test 1" in r.output and "skipped: 0" in r.output
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "synthetic"), "--sha256"])
    assert r.exit_code == 0 and "10 rows" in r.output and "sha256 verified" in r.output
    r = CliRunner().invoke(main, ["info", str(tmp_path / "synthetic")])
    assert r.exit_code == 0 and "background, shape, border" in r.output
    r = CliRunner().invoke(main, ["prepare", "synthetic", "--out", str(tmp_path / "j"), "--count", "5", "--json"])
    assert json.loads(r.output)["kept"] == 5
    r = CliRunner().invoke(main, ["prepare", "folder", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "error:" in r.output


def test_decoded_images_become_tensors_without_a_non_writable_array_warning():
    """A decoded shard image is writable, so the transforms' torch.from_numpy does not warn
    (the warning printed once per Ray Data worker)."""
    import warnings

    from fcn_dist.data.shards import decode_image_array, encode_png
    from fcn_dist.data.transforms import train_transform

    img = decode_image_array(encode_png(Image.new("RGB", (20, 16))))
    assert img.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x, y = train_transform(8, 255)(img, np.zeros((16, 20), np.uint8))
    assert x.shape == (3, 8, 8) and y.shape == (8, 8)


# --------------------------------------------------------- label/image alignment (issue 17.2)
def _stripes(rng: np.random.Generator, n: int) -> np.ndarray:
    """A 1-D label of stripes 6-12 px wide alternating 0 / 3 (a random start)."""
    out, x, v = np.zeros(n, np.int64), 0, int(rng.integers(2)) * 3
    while x < n:
        w = int(rng.integers(6, 13))
        out[x:x + w], x, v = v, x + w, 3 - v
    return out


def _edge_offsets(image_line: np.ndarray, label_line: np.ndarray) -> np.ndarray:
    """Label edge minus image edge (px) for every edge of the image's 50% crossing."""
    a, b = image_line[:-1], image_line[1:]
    m = np.nonzero((a - 127.5) * (b - 127.5) < 0)[0]
    img = m + (127.5 - a[m]) / (b[m] - a[m]) + 0.5  # in pixel-boundary coordinates
    img = img[(img > 3) & (img < len(image_line) - 3)]  # away from the border
    lab = np.nonzero(label_line[:-1] != label_line[1:])[0] + 1.0
    d = lab[None, :] - img[:, None]
    got = d[np.arange(len(img)), np.abs(d).argmin(1)]
    assert np.abs(got).max() <= 1.5, "a label edge more than 1.5 px from its image edge"
    return got


def _resize_paths(n_in: int, n_out: int, h_out: int, axis: int):
    """The real resizes a label meets: eval resize (plain and normalised), train random scale,
    and `fcn-data prepare --max-size`. Each: (uint8 image (h, w, 3), label) -> (h, w) arrays."""
    from fcn_dist.data.sources import Candidate, _process
    from fcn_dist.data.shards import decode_image_array, decode_label
    from fcn_dist.data.transforms import Preprocessing, denormalize

    size = (h_out, n_out) if axis == 1 else (n_out, h_out)

    def plain(t):
        def run(image, label):
            x, y = t(image, label)
            return x[0].numpy().astype(float), y.numpy()
        return run

    def normalised(image, label):
        x, y = Preprocessing(size).transform()(image, label)
        return denormalize(x)[0].numpy() * 255.0, y.numpy()

    def prepared(image, label):
        row, _ = _process(Candidate("train", "x", image, label), 4, 255, max_size=n_out)
        return decode_image_array(row["image"])[..., 0].astype(float), decode_label(row["label"])

    paths = {
        "eval_transform": plain(eval_transform(size, normalize=False)),
        "Preprocessing": normalised,
        "train_transform": plain(train_transform(size, 255, scale_range=(1.0, 1.0), hflip=0,
                                                 jitter=0, normalize=False)),
    }
    if n_out < n_in:  # prepare only ever shrinks
        paths["prepare --max-size"] = prepared
    return paths


@pytest.mark.parametrize("n_in,n_out", [(500, 256), (180, 97), (100, 173), (333, 128)])
def test_resized_labels_stay_on_their_image(n_in: int, n_out: int):
    """An image drawn from its own 0/3 label, both resized by a non-integer factor through every
    real resize: label edges sit on the image's edges (mean offset < 0.05 px; legacy NEAREST:
    0.5 px at 500 -> 256) and the label holds only its own values. (Exact factors such as
    200 -> 100 put half the edges on a tie that any nearest-neighbour breaks one way: 0.25 px.)"""
    torch.manual_seed(0)
    rng = np.random.default_rng(n_in * 1000 + n_out)
    h_in = 24
    h_out = int(h_in * n_out / n_in)  # <= so that the long side sets train's scale
    images = -(-400 * 9 // n_in)  # about 400 edges per path and axis
    for axis in (1, 0):
        offsets: dict[str, list[np.ndarray]] = {}
        paths = _resize_paths(n_in, n_out, h_out, axis)
        for _ in range(images):
            line = _stripes(rng, n_in)
            label = np.tile(line, (h_in, 1)) if axis == 1 else np.tile(line[:, None], (1, h_in))
            image = np.repeat(np.where(label == 3, 255, 0).astype(np.uint8)[..., None], 3, axis=2)
            for name, resize in paths.items():
                img, lab = resize(image, label)
                assert img.shape[axis] == lab.shape[axis] == n_out, name
                assert set(np.unique(lab).tolist()) <= {0, 3}, name
                img_line = img.mean(axis=1 - axis)  # stripes: every line is the same
                lab_line = lab[lab.shape[0] // 2] if axis == 1 else lab[:, lab.shape[1] // 2]
                offsets.setdefault(name, []).append(_edge_offsets(img_line, lab_line))
        for name, parts in offsets.items():
            d = np.concatenate(parts)
            assert len(d) > 300, (name, len(d))
            assert abs(d.mean()) < 0.05, (name, axis, round(float(d.mean()), 3))


def test_shard_dataset_keeps_decoded_pairs_within_its_budget(tmp_path, monkeypatch):
    """keep_decoded: the same pairs come back from memory (not re-read from the shards), up to
    the byte budget; a pickled copy (a DataLoader worker) starts empty."""
    import pickle

    from fcn_dist.config import decoded_cache_bytes
    from fcn_dist.data import ShardDataset, prepare

    out = tmp_path / "syn"
    prepare("synthetic", out, count=12, size=(16, 16), overwrite=True)
    pair_bytes = 16 * 16 * 3 + ShardDataset(out, "train").raw(0)[1].nbytes
    ds = ShardDataset(out, "train", keep_decoded=3 * pair_bytes)
    first = [ds.raw(i) for i in range(len(ds))]
    assert sorted(ds._decoded) == [0, 1, 2] and ds._decoded_bytes == 3 * pair_bytes
    again = ds.raw(1)
    assert again[0] is first[1][0] and again[1] is first[1][1]  # from memory
    assert ds.raw(len(ds) - 1)[0] is not first[-1][0]  # over budget: decoded anew
    assert np.array_equal(np.asarray(ds.raw(len(ds) - 1)[0]), np.asarray(first[-1][0]))
    x0, y0 = ds[1]
    x1, y1 = ds[1]
    assert x0.shape == x1.shape and torch.equal(y0, y1)  # transforms never write into the cache
    assert pickle.loads(pickle.dumps(ds))._decoded == {}
    monkeypatch.setenv("FCN_DECODED_CACHE_MB", "1.5")
    assert decoded_cache_bytes() == int(1.5 * 2**20)
    monkeypatch.setenv("FCN_DECODED_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="FCN_DECODED_CACHE_MB"):
        decoded_cache_bytes()
