"""Parquet results-store benchmark: write latency per epoch row, compare time over a big store.

Times single-row ``append_epochs`` calls (p50/p95/max, automatic compaction included), then
writes N runs (default 10,000) with E epochs each (default 10 -> 100,000 epoch rows) as one
epochs file and one run file per run with automatic compaction off (20,000 files: the worst
case), and times ``compare`` and a full epochs read before and after ``ResultsStore.compact``.
Prints figures; never asserts a time.

    .venv/bin/python benchmarks/bench_store.py [--runs 10000] [--epochs 10] [--dir /tmp/x]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from fcn_dist.store import ResultsStore
from fcn_dist.report import compare, format_compare

VARIANTS = ("32s", "16s", "8s")
CLASSES = ["background", "pet", "border"]


def _epoch_row(i: int, e: int) -> dict:
    r = random.Random(i * 1000 + e)
    v = VARIANTS[i % 3]
    return dict(run_id=f"run{i:06d}", job_id=f"job{i:06d}", variant=v, backbone="vgg16",
                dataset="pets", epoch=e, train_loss=r.random(), val_loss=r.random(),
                miou=r.random(), pixel_accuracy=r.random(), mean_accuracy=r.random(),
                fwiou=r.random(), lr=1e-3, epoch_seconds=30.0, images_per_second=100.0,
                world_size=2, device="cpu")


def _run_row(i: int, epochs: int) -> dict:
    r = random.Random(i)
    return dict(run_id=f"run{i:06d}", job_id=f"job{i:06d}", variant=VARIANTS[i % 3],
                backbone="vgg16", dataset="pets", name="pets", status="succeeded",
                miou=r.random(), pixel_accuracy=r.random(), mean_accuracy=r.random(),
                fwiou=r.random(), per_class_iou={c: r.random() for c in CLASSES},
                class_names=CLASSES, confusion_matrix=[[r.randrange(10**6) for _ in CLASSES]
                                                       for _ in CLASSES],
                num_classes=3, params=134_000_000, gflops_per_image=50.7, epochs=epochs,
                best_epoch=epochs - 1, train_seconds=3600.0, images_per_second=100.0,
                world_size=2, device="cpu", best_checkpoint=f"/runs/run{i:06d}/best",
                spec=json.dumps({"name": "pets", "variant": VARIANTS[i % 3]}),
                versions='{"torch": "x"}',
                started_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc),
                finished_at=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))


def _write_runs(args) -> None:
    """Write runs [lo, hi): one epochs file (all its epochs) and one run file per run."""
    root, lo, hi, epochs = args
    store = ResultsStore(root, auto_compact=False)  # the raw, uncompacted worst case
    for i in range(lo, hi):
        store.append_epochs([_epoch_row(i, e) for e in range(epochs)])
        store.write_run(_run_row(i, epochs))


def _append_latency(root: str, n: int) -> list[float]:
    """Single-row append_epochs latency (write + fsync + rename + automatic compaction)."""
    store = ResultsStore(root)
    lat = []
    for k in range(n):
        t0 = time.perf_counter()
        store.append_epochs([_epoch_row(k // 10, k % 10)])
        lat.append(time.perf_counter() - t0)
    return lat


def _time(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--dir", default=None, help="store root (default: a temp dir, removed)")
    ap.add_argument("--procs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--latency-rows", type=int, default=2000,
                    help="single-row appends timed for the latency figure")
    a = ap.parse_args(argv)
    root = a.dir or tempfile.mkdtemp(prefix="fcn-bench-store-")
    try:
        store = ResultsStore(root, auto_compact=False)
        lat = sorted(_append_latency(os.path.join(root, "latency"), a.latency_rows))
        print(f"append_epochs, 1 row per call (fsync + rename, automatic compaction every "
              f"{ResultsStore.AUTO_COMPACT_FILES['epochs']} files): "
              f"p50 {1e3 * statistics.median(lat):.2f} ms, "
              f"p95 {1e3 * lat[int(0.95 * (len(lat) - 1))]:.2f} ms, "
              f"max {1e3 * lat[-1]:.1f} ms (n={len(lat)})")
        t0 = time.perf_counter()
        step = max(1, a.runs // (a.procs * 8))
        chunks = [(root, lo, min(a.runs, lo + step), a.epochs) for lo in range(0, a.runs, step)]
        with ProcessPoolExecutor(a.procs) as ex:
            list(ex.map(_write_runs, chunks))
        write_s = time.perf_counter() - t0
        n_ep_files = len(store.files("epochs"))
        n_run_files = len(store.files("runs"))
        print(f"store: {root}")
        print(f"wrote {a.runs} runs, {a.runs * a.epochs} epoch rows in {write_s:.1f} s with "
              f"{a.procs} processes ({n_ep_files} epoch files, {n_run_files} run files)")

        def report(label: str) -> None:
            fresh = lambda: ResultsStore(root)  # noqa: E731  (no warm caches between runs)
            tc = _time(lambda: compare(fresh()))
            rows = compare(fresh())
            tf = _time(lambda: format_compare(rows, "table"))
            te = _time(lambda: fresh().epochs(), repeat=1)
            print(f"[{label}] compare over {len(rows)} runs: {tc * 1e3:.0f} ms "
                  f"(+ table formatting {tf * 1e3:.0f} ms); "
                  f"full epochs read ({fresh().epochs().num_rows} rows): {te * 1e3:.0f} ms")

        report("uncompacted")
        t0 = time.perf_counter()
        s1 = store.compact("runs")
        s2 = store.compact("epochs")
        print(f"compact: runs {s1['files_before']} -> {s1['files_after']} files, epochs "
              f"{s2['files_before']} -> {s2['files_after']} files in "
              f"{time.perf_counter() - t0:.1f} s")
        report("compacted")
        # steady state with automatic compaction: up to AUTO_COMPACT_FILES - 1 small files
        extra = ResultsStore.AUTO_COMPACT_FILES["runs"] - 1
        _write_runs((root, a.runs, a.runs + extra, a.epochs))
        report(f"compacted + {extra} new run files (worst case with automatic compaction)")
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
