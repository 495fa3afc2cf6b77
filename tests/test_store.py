"""The Parquet results store: schema, atomic writes, consistent reads, compaction."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fcn_dist.store import (EPOCH_SCHEMA, RUN_SCHEMA, SCHEMA_VERSION, ResultsStore,
                            StoreWarning)


def epoch_row(run_id: str, epoch: int, **kw) -> dict:
    row = dict(run_id=run_id, job_id="job-" + run_id, variant="8s", backbone="resnet18",
               dataset="synthetic", epoch=epoch, train_loss=1.0 / (epoch + 1),
               val_loss=1.1 / (epoch + 1), miou=0.1 * epoch, pixel_accuracy=0.5,
               mean_accuracy=0.4, fwiou=0.45, lr=1e-3, epoch_seconds=2.0,
               images_per_second=30.0, world_size=2, device="cpu")
    row.update(kw)
    return row


def run_row(run_id: str, **kw) -> dict:
    row = dict(run_id=run_id, job_id="job-" + run_id, variant="8s", backbone="resnet18",
               dataset="synthetic", status="succeeded", miou=0.61, pixel_accuracy=0.9,
               mean_accuracy=0.8, fwiou=0.85, per_class_iou={"bg": 0.9, "fg": 0.32},
               class_names=["bg", "fg"], confusion_matrix=np.array([[90, 10], [5, 20]]),
               num_classes=2, params=11_000_000, gflops_per_image=1.5, epochs=3,
               train_seconds=12.5, images_per_second=33.0, best_checkpoint="/x/best",
               spec={"name": "smoke"})
    row.update(kw)
    return row


def keys(tbl: pa.Table) -> list[tuple]:
    return list(zip(tbl.column("run_id").to_pylist(), tbl.column("epoch").to_pylist()))


def test_schemas_are_versioned():
    assert SCHEMA_VERSION >= 1
    for schema, table in ((EPOCH_SCHEMA, b"epochs"), (RUN_SCHEMA, b"runs")):
        assert schema.metadata[b"fcn_dist.schema_version"] == str(SCHEMA_VERSION).encode()
        assert schema.metadata[b"fcn_dist.table"] == table
        assert "schema_version" in schema.names and "run_id" in schema.names
    for col in ("run_id", "job_id", "variant", "backbone", "dataset", "epoch", "train_loss",
                "val_loss", "miou", "pixel_accuracy", "mean_accuracy", "fwiou", "lr",
                "epoch_seconds", "images_per_second", "world_size", "device", "timestamp"):
        assert col in EPOCH_SCHEMA.names
    for col in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "per_class_iou",
                "confusion_matrix", "class_names", "params", "gflops_per_image",
                "train_seconds", "images_per_second", "best_checkpoint", "spec", "versions",
                "status", "started_at", "finished_at"):
        assert col in RUN_SCHEMA.names


def test_write_and_read_roundtrip(tmp_path):
    st = ResultsStore(tmp_path)
    st.append_epochs([epoch_row("r1", 0), epoch_row("r1", 1)])
    st.append_epoch(epoch_row("r1", 2, miou=np.float32(0.25)))
    st.write_run(run_row("r1"))
    ep = st.epochs()
    assert ep.schema.names == EPOCH_SCHEMA.names
    assert sorted(keys(ep)) == [("r1", 0), ("r1", 1), ("r1", 2)]
    assert ep.filter(pa.compute.field("epoch") == 2).column("miou")[0].as_py() == pytest.approx(
        0.25)
    assert ep.column("timestamp").null_count == 0
    (run,) = st.runs().to_pylist()
    assert run["schema_version"] == SCHEMA_VERSION
    assert json.loads(run["per_class_iou"]) == {"bg": 0.9, "fg": 0.32}
    assert run["confusion_matrix"] == [[90, 10], [5, 20]]
    assert json.loads(run["spec"]) == {"name": "smoke"}
    assert "pyarrow" in json.loads(run["versions"])
    assert run["finished_at"] is not None
    # filters and projection
    t = st.epochs(filters={"epoch": [0, 2]}, columns=["epoch", "miou"])
    assert t.column_names == ["epoch", "miou"] and sorted(t.column("epoch").to_pylist()) == [0, 2]
    # each write is a new file, and the tables read with pandas and DuckDB as well
    assert len(list((tmp_path / "epochs").glob("*.parquet"))) == 2
    pd = pytest.importorskip("pandas")
    assert len(pd.read_parquet(tmp_path / "epochs")) == 3
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from read_parquet('{tmp_path}/epochs/*.parquet')").fetchall()
    assert n[0][0] == 3


def test_rejects_unknown_and_missing_columns(tmp_path):
    st = ResultsStore(tmp_path)
    with pytest.raises(ValueError, match="val_miou"):
        st.append_epochs([epoch_row("r", 0, val_miou=0.3)])
    with pytest.raises(ValueError, match="epoch"):
        st.append_epochs([{"run_id": "r"}])
    with pytest.raises(ValueError, match="run_id"):
        st.write_run({"miou": 0.3})
    assert st.epochs().num_rows == 0 and st.runs().num_rows == 0


def test_empty_store_reads_empty_tables(tmp_path):
    st = ResultsStore(tmp_path / "nothing")
    assert st.epochs().num_rows == 0 and st.epochs().schema.names == EPOCH_SCHEMA.names
    assert st.runs(columns=["run_id"]).column_names == ["run_id"]


def test_temp_and_broken_files_are_invisible(tmp_path):
    st = ResultsStore(tmp_path)
    st.append_epochs([epoch_row("r1", 0)])
    good = pq.read_table(next((tmp_path / "epochs").glob("*.parquet")))
    d = tmp_path / "epochs"
    # an in-flight write: a truncated parquet under a dot-temp name, and a stray .tmp
    buf = pa.BufferOutputStream()
    pq.write_table(good, buf)
    data = buf.getvalue().to_pybytes()
    (d / ".tmp-ep-r2-e00000-abc.parquet").write_bytes(data[: len(data) // 2])
    (d / ".tmp-ep-r2-e00000-abc.parquet.partial").write_bytes(data[:10])
    (d / "_SUCCESS").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # temp files are not even warned about
        assert keys(st.epochs()) == [("r1", 0)]
    # a broken *.parquet (not ours, e.g. copied half-way): skipped with a warning, never fatal
    (d / "zz-broken.parquet").write_bytes(data[: len(data) // 2])
    with pytest.warns(StoreWarning, match="zz-broken"):
        assert keys(st.epochs()) == [("r1", 0)]
    assert keys(st.epochs()) == [("r1", 0)]  # remembered: not re-warned, same answer
    with pytest.warns(StoreWarning):  # a new reader warns once too
        assert keys(ResultsStore(tmp_path).epochs(filters={"run_id": "r1"})) == [("r1", 0)]


def test_writer_leaves_no_temp_file_and_never_rewrites(tmp_path):
    st = ResultsStore(tmp_path)
    p1 = st.write_run(run_row("same"))
    p2 = st.write_run(run_row("same", miou=0.7))
    assert p1 != p2 and p1.exists() and p2.exists()
    assert not [n for n in os.listdir(tmp_path / "runs") if n.startswith(".tmp")]
    assert sorted(st.runs().column("miou").to_pylist()) == [0.61, 0.7]


def test_older_schema_versions_are_unified(tmp_path):
    d = tmp_path / "epochs"
    d.mkdir(parents=True)
    # a "version 0" file: fewer columns, int64 epoch, no schema_version column
    pq.write_table(pa.table({"run_id": ["old"], "epoch": pa.array([3], pa.int64()),
                             "miou": [0.2], "train_loss": pa.array([1.5], pa.float32())}),
                   d / "ep-old-e00003-0000.parquet")
    st = ResultsStore(tmp_path)
    st.append_epochs([epoch_row("new", 0)])
    t = st.epochs()
    assert t.schema == EPOCH_SCHEMA.remove_metadata() or t.schema.names == EPOCH_SCHEMA.names
    rows = {r["run_id"]: r for r in t.to_pylist()}
    assert rows["old"]["epoch"] == 3 and rows["old"]["train_loss"] == pytest.approx(1.5)
    assert rows["old"]["val_loss"] is None and rows["new"]["val_loss"] is not None


def test_compaction_never_double_counts(tmp_path):
    st = ResultsStore(tmp_path, auto_compact=False)
    for r in range(5):
        for e in range(4):
            st.append_epoch(epoch_row(f"r{r}", e))
    before = sorted(keys(st.epochs()))
    s = st.compact("epochs")
    assert s["files_before"] == 20 and s["files_after"] == 1 and s["rows"] == 20
    assert sorted(keys(st.epochs())) == before
    # an interrupted compaction: merged file written, sources not yet deleted
    st.append_epoch(epoch_row("r9", 0))
    st.append_epoch(epoch_row("r9", 1))
    d = tmp_path / "epochs"
    srcs = sorted(n for n in os.listdir(d) if n.startswith("ep-"))
    merged = pa.concat_tables([pq.read_table(d / n, schema=EPOCH_SCHEMA) for n in srcs])
    st._write("epochs", merged, "compact",
              metadata={b"fcn_dist.compacted_from": json.dumps(srcs).encode()})
    assert all((d / n).exists() for n in srcs)
    got = keys(ResultsStore(tmp_path).epochs())
    assert len(got) == len(set(got)) == 22
    # the next compaction cleans the leftovers and merges everything
    s = st.compact("epochs")
    assert s["leftovers_removed"] == 2
    assert [n for n in os.listdir(d) if n.endswith(".parquet")] == [os.path.basename(s["file"])]
    assert sorted(keys(st.epochs())) == sorted(before + [("r9", 0), ("r9", 1)])


def test_auto_compaction_keeps_file_count_bounded(tmp_path):
    st = ResultsStore(tmp_path)
    st.AUTO_COMPACT_FILES = {"runs": 8, "epochs": 8}
    for i in range(30):
        st.write_run(run_row(f"r{i:02d}"))
    files = [n for n in os.listdir(tmp_path / "runs") if n.endswith(".parquet")]
    assert len(files) < 12
    assert sorted(st.runs().column("run_id").to_pylist()) == [f"r{i:02d}" for i in range(30)]


def _write_many(root: str, writer: int, rows: int) -> None:
    st = ResultsStore(root)
    for e in range(rows):
        st.append_epoch(epoch_row(f"w{writer}", e))


def test_concurrent_writer_processes(tmp_path):
    n_writers, n_rows = 4, 40
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), w, n_rows))
             for w in range(n_writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    got = Counter(keys(ResultsStore(tmp_path).epochs()))
    assert len(got) == n_writers * n_rows and set(got.values()) == {1}


def test_readers_see_each_row_once_during_writes_and_compactions(tmp_path):
    """Writer threads append, a compactor merges continuously, readers check every snapshot:
    no row twice, never fewer rows than a previous snapshot."""
    n_writers, n_rows = 4, 60
    stop = threading.Event()
    errors: list[str] = []

    def writer(w: int) -> None:
        st = ResultsStore(tmp_path, auto_compact=False)
        for e in range(n_rows):
            st.append_epoch(epoch_row(f"w{w}", e))

    def compactor() -> None:
        st = ResultsStore(tmp_path, auto_compact=False)
        while not stop.is_set():
            st.compact("epochs", include_compacted=bool(np.random.rand() < 0.5))

    def reader() -> None:
        st = ResultsStore(tmp_path)
        last = 0
        while not stop.is_set():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)
                k = keys(st.epochs(columns=["run_id", "epoch"]))
            if len(k) != len(set(k)):
                errors.append(f"duplicates: {len(k) - len(set(k))}")
            if len(k) < last:
                errors.append(f"rows went from {last} to {len(k)}")
            last = max(last, len(k))

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(n_writers)]
    others = [threading.Thread(target=compactor)] + [threading.Thread(target=reader)
                                                     for _ in range(2)]
    for t in writers + others:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in others:
        t.join()
    assert not errors, errors[:5]
    final = Counter(keys(ResultsStore(tmp_path).epochs()))
    assert len(final) == n_writers * n_rows and set(final.values()) == {1}


def test_schema_2_records_the_scored_split_and_schema_1_runs_read_as_unknown(tmp_path):
    """Issue 17.3: runs say which split the final score is on and whether it chose the
    checkpoint; a runs file of schema 1 (without those columns) still reads, as null."""
    from fcn_dist.store import scored_on

    assert SCHEMA_VERSION == 2
    d = tmp_path / "runs"
    d.mkdir(parents=True)
    v1 = pa.schema([f for f in RUN_SCHEMA if f.name not in ("eval_split", "eval_is_selection",
                                                            "eval_size")],
                   metadata={b"fcn_dist.schema_version": b"1", b"fcn_dist.table": b"runs"})
    pq.write_table(pa.Table.from_pylist([{"schema_version": 1, "run_id": "old", "miou": 0.4}],
                                        schema=v1), d / "run-old-0000.parquet")
    st = ResultsStore(tmp_path)
    st.write_run(run_row("new", eval_split="val", eval_is_selection=True, eval_size="native"))
    rows = {r["run_id"]: r for r in st.runs().to_pylist()}
    assert rows["old"]["miou"] == 0.4 and rows["old"]["schema_version"] == 1
    assert rows["old"]["eval_split"] is None and rows["old"]["eval_is_selection"] is None
    assert rows["new"]["schema_version"] == 2 and rows["new"]["eval_size"] == "native"
    assert scored_on(rows["new"]["eval_split"], rows["new"]["eval_is_selection"]) == \
        "val (used for selection)"
    assert scored_on(rows["old"]["eval_split"], rows["old"]["eval_is_selection"]) == "unknown"


def test_listing_a_directory_while_files_come_and_go_keeps_the_files_that_stay(tmp_path):
    """fs.listdir on a local directory while another thread creates and removes files (as a
    compaction removes its sources): the files that stay are listed every time (a file removed
    between the scan and its stat once emptied the whole listing)."""
    import threading

    from fcn_dist import fs as fsio

    kept = {f"kept-{i}.parquet" for i in range(20)}
    for n in kept:
        (tmp_path / n).write_bytes(b"x")
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            p = tmp_path / f"churn-{i % 50}.parquet"
            p.write_bytes(b"y")
            p.unlink()
            i += 1

    th = threading.Thread(target=churn, daemon=True)
    th.start()
    try:
        missing = [kept - {n for n, _ in fsio.listdir(tmp_path)} for _ in range(3000)]
    finally:
        stop.set()
        th.join()
    assert not any(missing), f"{sum(map(bool, missing))} of 3000 listings lost kept files"
