"""fcn-results: compare, query, plot and report.html over a small store."""

from __future__ import annotations

import csv
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fcn_dist.cli.results import main as cli
from fcn_dist.errors import FcnError
from fcn_dist.store import ResultsStore
from fcn_dist.report import compare, format_compare, plot, query

CLASSES = ["background", "pet", "border"]
PALETTE = [[0, 0, 0], [200, 30, 30], [30, 200, 30]]


def _fill(root, data_dir="/nonexistent") -> ResultsStore:
    """Two tiny finished runs (FCN-32s, FCN-8s) with three epochs each."""
    st = ResultsStore(root)
    for k, (variant, miou) in enumerate((("32s", 0.5123), ("8s", 0.6456))):
        rid = f"{variant}run0-{k:04d}-aaaa"
        st.append_epochs([dict(run_id=rid, variant=variant, backbone="resnet18",
                               dataset="synthetic", epoch=e, train_loss=1.0 / (e + 1),
                               val_loss=1.2 / (e + 1), miou=miou * (e + 1) / 3,
                               train_miou=miou * (e + 1.2) / 3, pixel_accuracy=0.8 + e / 100,
                               train_pixel_accuracy=0.81 + e / 100) for e in range(3)])
        st.write_run(dict(
            run_id=rid, job_id=f"job{k}", variant=variant, backbone="resnet18",
            dataset="synthetic", status="succeeded", miou=miou, pixel_accuracy=0.9 + k / 50,
            mean_accuracy=0.7 + k / 10, fwiou=0.82 + k / 100,
            per_class_iou=dict(zip(CLASSES, [0.9, miou, miou - 0.2])), class_names=CLASSES,
            confusion_matrix=[[90 + k, 5, 5], [10, 80, 10], [20, 10, 70 + k]],
            num_classes=3, params=11_000_000 + 1000 * k, gflops_per_image=1.25 + k,
            train_seconds=61.0 + 30 * k, images_per_second=50.0 - 10 * k,
            best_checkpoint=f"/ckpt/{variant}", spec={"data": data_dir, "variant": variant}))
    return st


@pytest.fixture
def store(tmp_path):
    return _fill(tmp_path / "store")


def test_compare_values_equal_the_store(store):
    rows = compare(store)
    assert [r["variant"] for r in rows] == ["32s", "8s"]
    stored = {r["run_id"]: r for r in store.runs().to_pylist()}
    for r in rows:
        s = stored[r["run_id"]]
        for key in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "params",
                    "gflops_per_image", "train_seconds", "images_per_second", "backbone",
                    "dataset"):
            assert r[key] == s[key], key
    best32, best8 = rows[0]["best"], rows[1]["best"]
    assert set(best8) == {"miou", "pixel_accuracy", "mean_accuracy", "fwiou"}
    assert set(best32) == {"params", "gflops_per_image", "train_seconds", "images_per_second"}
    assert compare(store, dataset="other") == []
    assert [r["variant"] for r in compare(store, backbone="resnet18", variant="8s")] == ["8s"]


def test_compare_formats(store):
    rows = compare(store)
    table = format_compare(rows, "table")
    assert "0.6456*" in table and "0.5123 " in table and "1m01s*" in table
    assert "32s" in table.splitlines()[2] and "8s" in table.splitlines()[3]
    md = format_compare(rows, "markdown")
    assert md.startswith("| variant |") and "| 0.6456* |" in md
    parsed = list(csv.DictReader(io.StringIO(format_compare(rows, "csv"))))
    assert [float(r["miou"]) for r in parsed] == [0.5123, 0.6456]
    assert parsed[1]["best"].split(";")[0] == "miou"
    js = json.loads(format_compare(rows, "json"))
    assert js[1]["miou"] == 0.6456 and "miou" in js[1]["best"]
    with pytest.raises(FcnError):
        format_compare(rows, "xml")


def test_compare_shows_every_run_and_dedupes_rewrites(store):
    st = store
    st.write_run(dict(run_id="8sbis-0000", variant="8s", backbone="resnet18",
                      dataset="synthetic", miou=0.7))
    st.write_run(dict(run_id="8sbis-0000", variant="8s", backbone="resnet18",
                      dataset="synthetic", miou=0.71))  # rewritten final row: latest wins
    rows = compare(st)
    assert [r["variant"] for r in rows] == ["32s", "8s", "8s"]
    assert [r["miou"] for r in rows if r["run_id"] == "8sbis-0000"] == [0.71]


def test_query_returns_rows(store):
    pytest.importorskip("duckdb")
    t = query(store, "select variant, count(*) as n, max(miou) as best from epochs "
                     "group by variant order by variant")
    assert t.to_pylist() == [{"variant": "32s", "n": 3, "best": pytest.approx(0.5123)},
                             {"variant": "8s", "n": 3, "best": pytest.approx(0.6456)}]
    t = query(store, "select r.variant, per_class_iou->>'pet' as pet, count(e.epoch) as n "
                     "from runs r join epochs e using (run_id) group by all order by 1")
    assert t.num_rows == 2 and float(t.column("pet")[1].as_py()) == pytest.approx(0.6456)
    with pytest.raises(FcnError, match="query failed"):
        query(store, "select nope from runs")


class FakeShards:
    """Stands in for fcn_dist.data.ShardDataset (same raw/len/manifest interface)."""

    sizes = [(37, 53), (64, 48), (20, 30)]

    def __init__(self, root, split):
        if split != "test":
            raise FileNotFoundError(split)
        self.manifest = SimpleNamespace(classes=CLASSES, palette=PALETTE, ignore_index=255)

    def __len__(self):
        return len(self.sizes)

    def raw(self, i):
        w, h = self.sizes[i]
        rng = np.random.default_rng(i)
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        label = rng.integers(0, 3, (h, w)).astype(np.uint8)
        label[0, :] = 255
        return img, label


def fake_predictor(path):
    def predict(image):
        w, h = image.size
        return np.full((h, w), 1 if "8s" in path else 2, dtype=np.int64)
    return predict


def test_plot_writes_every_file(tmp_path):
    st = _fill(tmp_path / "store", data_dir=str(tmp_path))
    out = tmp_path / "report"
    res = plot(st, out, gallery=2, predict_fn=fake_predictor, dataset_fn=FakeShards)
    assert res["gallery_skipped"] is None
    for name in ("curves", "per_class_iou", "confusion", "gallery", "report"):
        assert (out / (name + (".html" if name == "report" else ".png"))).stat().st_size > 1000
    # overlays keep each image's size
    for i in range(2):
        w, h = FakeShards.sizes[i]
        for f in out.glob(f"overlays/{i:03d}_*.png"):
            assert Image.open(f).size == (w, h)
    assert len(list(out.glob("overlays/*.png"))) == 2 * (1 + 2)
    # a pixel predicted "pet" by FCN-8s is blended with the pet colour
    ov = np.asarray(Image.open(next(out.glob("overlays/000_fcn8s_*.png"))))
    img = np.asarray(FakeShards("x", "test").raw(0)[0], dtype=np.float32)
    expect = (0.45 * img + 0.55 * np.array(PALETTE[1])).clip(0, 255)
    assert np.abs(ov.astype(np.float32) - expect).max() <= 1.0
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "0.6456" in html
    assert "src=\"http" not in html  # opens offline


def test_plot_without_predictor_skips_gallery_clearly(store, tmp_path):
    res = plot(store, tmp_path / "r", gallery=2)
    assert {"curves", "per_class_iou", "confusion", "report"} <= set(res["files"])
    assert res["gallery_skipped"]
    assert "gallery skipped" in (tmp_path / "r" / "report.html").read_text()
    with pytest.raises(FcnError, match="no runs"):
        plot(ResultsStore(tmp_path / "empty"), tmp_path / "r2")


def test_plot_gallery_with_real_checkpoints(tmp_path):
    """The gallery through the real Segmenter (untrained checkpoints) and ShardDataset."""
    pytest.importorskip("fcn_dist.predict")
    torch = pytest.importorskip("torch")
    from fcn_dist.data import ShardDataset, prepare, read_manifest
    from fcn_dist.models import create_model
    from fcn_dist.checkpoint import save_checkpoint

    data = tmp_path / "data" / "synthetic"
    prepare("synthetic", data, count=40, size=(40, 56))
    man = read_manifest(data)
    st = ResultsStore(tmp_path / "store")
    torch.manual_seed(0)
    for variant in ("32s", "8s"):
        name = f"fcn{variant}_resnet18"
        ckpt = save_checkpoint(tmp_path / "ckpt" / variant,
                               create_model(name, man.num_classes).state_dict(),
                               {"model_name": name, "num_classes": man.num_classes,
                                "classes": man.classes, "palette": man.palette,
                                "ignore_index": man.ignore_index, "eval_size": None})
        st.write_run(dict(run_id=f"g-{variant}", variant=variant, backbone="resnet18",
                          dataset="synthetic", miou=0.5, class_names=man.classes,
                          per_class_iou=[0.5] * man.num_classes,
                          confusion_matrix=np.eye(man.num_classes, dtype=int) * 10,
                          best_checkpoint=str(ckpt)))
    out = tmp_path / "report"
    res = plot(st, out, gallery=2, data_dir=data)
    assert res["gallery_skipped"] is None, res["gallery_skipped"]
    assert (out / "gallery.png").stat().st_size > 1000
    split = "test" if man.splits.get("test") else "val"
    ds = ShardDataset(data, split)
    assert len(ds) >= 2
    for i in range(2):
        size = ds.raw(i)[0].size
        files = sorted(out.glob(f"overlays/{i:03d}_*.png"))
        assert len(files) == 3 and all(Image.open(f).size == size for f in files)


def test_cli(store):
    runner = CliRunner()
    root = str(store.root)
    r = runner.invoke(cli, ["compare", "--store", root])
    assert r.exit_code == 0 and "0.6456*" in r.output
    r = runner.invoke(cli, ["compare", "--store", root, "--format", "json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 2
    r = runner.invoke(cli, ["compare", "--store", root, "--format", "csv", "--dataset", "synthetic"])
    assert r.exit_code == 0 and len(list(csv.DictReader(io.StringIO(r.output)))) == 2
    r = runner.invoke(cli, ["compare", "--store", root, "--dataset", "nope"])
    assert r.exit_code == 1 and "error: no finished runs" in r.output
    r = runner.invoke(cli, ["runs", "--store", root])
    assert r.exit_code == 0 and "8srun0" in r.output
    r = runner.invoke(cli, ["epochs", "--store", root, "--format", "csv"])
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 7
    r = runner.invoke(cli, ["compact", "--store", root])
    assert r.exit_code == 0 and "epochs: 2 -> 1" in r.output
    assert len(compare(ResultsStore(root))) == 2
    if pytest.importorskip("duckdb"):
        r = runner.invoke(cli, ["query", "--store", root, "select count(*) as n from epochs",
                                "--format", "json"])
        assert r.exit_code == 0 and json.loads(r.output) == [{"n": 6}]
        r = runner.invoke(cli, ["query", "--store", root, "select bad from runs"])
        assert r.exit_code == 1 and r.output.startswith("error: query failed")


def test_a_score_on_the_selection_split_is_labelled_so_everywhere(tmp_path):
    """Issue 17.3: compare (table, markdown, csv, json), report.html and the CLI say which
    split each final score is on; a score on the split that chose the checkpoint reads
    "val (used for selection)", a row of schema 1 "unknown"; none calls it test."""
    st = ResultsStore(tmp_path / "store")
    for rid, variant, split, sel, miou in (("a-32s", "32s", "val", True, 0.41),
                                           ("a-8s", "8s", "val", True, 0.52),
                                           ("b-8s", "8s", None, None, 0.6)):
        st.write_run(dict(run_id=rid, variant=variant, backbone="resnet18", dataset="camvid",
                          status="succeeded", miou=miou, eval_split=split,
                          eval_is_selection=sel, eval_size="native", class_names=CLASSES,
                          per_class_iou=[miou] * 3, confusion_matrix=np.eye(3, dtype=int) * 9))
    rows = {r["run_id"]: r for r in compare(st)}
    assert rows["a-8s"]["scored_on"] == "val (used for selection)"
    assert rows["b-8s"]["scored_on"] == "unknown"
    # runs on another split (or unknown) do not compete for "best" with the val runs
    assert "miou" in rows["a-8s"]["best"] and "miou" not in rows["b-8s"]["best"]
    table = format_compare(list(rows.values()), "table")
    assert "scored on" in table.splitlines()[0]
    assert table.count("val (used for selection)") == 2
    md = format_compare(list(rows.values()), "markdown")
    assert "| val (used for selection) |" in md and "| scored on |" in md
    parsed = list(csv.DictReader(io.StringIO(format_compare(list(rows.values()), "csv"))))
    assert {r["eval_split"] for r in parsed} == {"val", ""}
    js = json.loads(format_compare(list(rows.values()), "json"))
    assert {r["scored_on"] for r in js} == {"val (used for selection)", "unknown"}
    cells = table.splitlines()[:-1] + md.split("\n\n")[0].splitlines()  # not the footnotes
    assert not [line for line in cells if "test" in line.lower()]
    res = plot(st, tmp_path / "report", gallery=0, dataset="camvid")
    html = (tmp_path / "report" / "report.html").read_text()
    assert "val (used for selection)" in html and "Test metrics" not in html
    assert ">test<" not in html.lower() and "(test)" not in html.lower()
    assert res["files"]["report"]
    r = CliRunner().invoke(cli, ["compare", "--store", str(st.root)])
    assert r.exit_code == 0 and "val (used for selection)" in r.output
    r = CliRunner().invoke(cli, ["runs", "--store", str(st.root)])
    assert r.exit_code == 0 and "eval_is_selection" in r.output.splitlines()[0]
