"""Results store on a local disk vs on S3 (a moto_server it starts on 127.0.0.1): append latency
of one epoch row and of one run row, and ``compare`` over RUNS runs x EPOCHS epochs, as written
and compacted.

    python benchmarks/bench_store_s3.py [--runs 200] [--epochs 10] [--json out.json]

moto is an in-process Python S3 on the same machine: its per-request cost is not a real S3's
(nor a MinIO's); the figures say what the store's request pattern costs, not the network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _row(run: str, e: int) -> dict:
    return {"run_id": run, "epoch": e, "variant": "8s", "backbone": "resnet18",
            "dataset": "synthetic", "miou": 0.5, "train_loss": 1.0}


def _run(run: str) -> dict:
    return {"run_id": run, "variant": "8s", "backbone": "resnet18", "dataset": "synthetic",
            "status": "succeeded", "miou": 0.5, "class_names": ["a", "b"],
            "per_class_iou": {"a": 0.5, "b": 0.5}}


def measure(root: str, runs: int, epochs: int, latency: int) -> dict:
    from fcn_dist.report import compare
    from fcn_dist.store import ResultsStore

    st = ResultsStore(f"{root}/latency", auto_compact=False)
    ep, rn = [], []
    for i in range(latency):
        t = time.perf_counter()
        st.append_epoch(_row("lat", i))
        ep.append(time.perf_counter() - t)
        t = time.perf_counter()
        st.write_run(_run(f"lat{i}"))
        rn.append(time.perf_counter() - t)
    st = ResultsStore(f"{root}/big", auto_compact=False)
    t = time.perf_counter()
    for r in range(runs):
        st.append_epochs([_row(f"r{r}", e) for e in range(epochs)])
        st.write_run(_run(f"r{r}"))
    out = {"append_epoch_ms_p50": 1e3 * statistics.median(ep),
           "append_epoch_ms_p95": 1e3 * sorted(ep)[int(0.95 * (len(ep) - 1))],
           "write_run_ms_p50": 1e3 * statistics.median(rn),
           "write_seconds": time.perf_counter() - t, "runs": runs, "epoch_rows": runs * epochs}
    for label in ("as_written", "compacted"):
        if label == "compacted":
            t = time.perf_counter()
            st.compact("runs")
            st.compact("epochs")
            out["compact_seconds"] = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            n = len(compare(ResultsStore(f"{root}/big")))
            times.append(time.perf_counter() - t)
        assert n == runs, n
        out[f"compare_seconds_{label}"] = min(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--latency", type=int, default=50)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    port = _free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tempfile.mkdtemp(prefix="fcn-bench-s3-")
    try:
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                          AWS_EC2_METADATA_DISABLED="true")
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3").create_bucket(Bucket="bench")
        res = {"local": measure(tmp, a.runs, a.epochs, a.latency),
               "s3_moto": measure("s3://bench/store", a.runs, a.epochs, a.latency)}
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
