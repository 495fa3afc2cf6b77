"""Parquet results-store benchmark: write latency per epoch row, compare time over a big store.

Writes N runs (default 10,000) with E epochs each (default 10 -> 100,000 epoch rows), one file
per epoch append and one file per run (the shape a real store has before compaction), then
times ``compare`` and a full epochs read before and after ``ResultsStore.compact``.
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
from fcn_dist.store.report import compare, format_compare

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


def _write_chunk(args) -> list[float]:
    root, lo, hi, epochs = args
    store = ResultsStore(root)
    lat = []
    for i in range(lo, hi):
        for e in range(epochs):
            t0 = time.perf_counter()
            store.append_epochs([_epoch_row(i, e)])
            lat.append(time.perf_counter() - t0)
        store.write_run(_run_row(i, epochs))
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
    ap.add_argument("--epoch-files", type=int, default=10_000,
                    help="write epochs as this many files (the rest of the rows are appended "
                         "in batches per run); the latency figure uses single-row appends")
    a = ap.parse_args(argv)
    root = a.dir or tempfile.mkdtemp(prefix="fcn-bench-store-")
    try:
        store = ResultsStore(root)
        # 1) single-row append latency, measured on a sample of runs written one epoch per file
        sample_runs = max(1, min(a.runs, a.epoch_files // max(1, a.epochs)))
        t0 = time.perf_counter()
        chunks = [(root, lo, min(sample_runs, lo + 50), a.epochs)
                  for lo in range(0, sample_runs, 50)]
        with ProcessPoolExecutor(a.procs) as ex:
            lat = [x for part in ex.map(_write_chunk, chunks) for x in part]
        # 2) the rest of the runs: one epochs file per run (all epochs) + one run file
        for i in range(sample_runs, a.runs):
            store.append_epochs([_epoch_row(i, e) for e in range(a.epochs)])
            store.write_run(_run_row(i, a.epochs))
        write_s = time.perf_counter() - t0
        lat.sort()
        n_ep_files = len(store.files("epochs"))
        n_run_files = len(store.files("runs"))
        print(f"store: {root}")
        print(f"wrote {a.runs} runs, {a.runs * a.epochs} epoch rows in {write_s:.1f} s "
              f"({n_ep_files} epoch files, {n_run_files} run files)")
        print(f"append_epochs (1 row, fsync) latency: p50 {1e3 * statistics.median(lat):.2f} ms, "
              f"p95 {1e3 * lat[int(0.95 * (len(lat) - 1))]:.2f} ms  (n={len(lat)}, "
              f"{a.procs} writer processes)")

        def report(label: str) -> None:
            fresh = lambda: ResultsStore(root)  # noqa: E731  (no warm caches between runs)
            tc = _time(lambda: compare(fresh()))
            tf = _time(lambda: format_compare(compare(fresh()), "table"))
            te = _time(lambda: fresh().epochs(), repeat=1)
            rows = len(compare(fresh()))
            print(f"[{label}] compare over {rows} runs: {tc * 1e3:.0f} ms "
                  f"(+ table formatting {max(0.0, tf - tc) * 1e3:.0f} ms); "
                  f"full epochs read ({fresh().epochs().num_rows} rows): {te * 1e3:.0f} ms")

        report("uncompacted")
        t0 = time.perf_counter()
        s1 = store.compact("runs")
        s2 = store.compact("epochs")
        print(f"compact: runs {s1['files_before']} -> {s1['files_after']} files, epochs "
              f"{s2['files_before']} -> {s2['files_after']} files in "
              f"{time.perf_counter() - t0:.1f} s")
        report("compacted")
    finally:
        if a.dir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
