"""Queue memory benchmark: bytes of Redis memory per finished job by key kind, and the memory of
a queue after many jobs with retention on (short) and off (``fcn-bench queue-memory``).

Every job goes through the service's own scripts as a worker drives them (submit with its sweep,
claim, progress, log lines, complete with a result summary shaped like the trainer's). Memory is
``MEMORY USAGE <key> SAMPLES 0`` summed over the benchmark's own key prefix, so other queues on
the same server do not count; the keys are removed afterwards.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import defaultdict
from typing import Any, Callable

from fcn_dist.bench.timing import percentile
from fcn_dist.queue import JobQueue
from fcn_dist.spec import JobSpec

LOG_LINES = 12  # a start line, one per epoch (10), an end line


def _result(job_id: str, variant: str) -> dict[str, Any]:
    """A result summary with the keys (and about the size) of ``fcn_dist.train.trainer``'s."""
    run = f"/data/runs/{job_id}-{variant}"
    return {"run_id": f"{job_id}-{variant}", "job_id": job_id, "variant": variant,
            "backbone": "resnet18", "dataset": "synthetic", "status": "succeeded",
            "miou": 0.612345, "pixel_accuracy": 0.912345, "mean_accuracy": 0.734567,
            "fwiou": 0.845678, "best_checkpoint": f"{run}/checkpoint_000009",
            "run_dir": run, "train_seconds": 61.2, "best_epoch": 9, "best_val_miou": 0.623456,
            "images_per_second": 84.1, "epochs": 10, "params": 11_400_000,
            "gflops_per_image": 2.31, "per_class_iou": [0.81, 0.55, 0.47], "test_split": "test"}


def _one_job(q: JobQueue, spec: JobSpec, lat: list[float]) -> None:
    t0 = time.perf_counter()
    q.submit(spec)
    lat.append(time.perf_counter() - t0)
    job = q.claim("bench-worker", lease_seconds=60)
    q.set_progress(job.id, "bench-worker", {"epoch": 10, "epochs": 10, "step": 8, "steps": 8,
                                             "miou": 0.62, "images_per_second": 84.1,
                                             "eta_seconds": 0.0}, lease=job.lease)
    q.append_logs(job.id, [f"[{job.id} {job.variant}] epoch {k}/10: train loss 0.4321, val mIoU "
                           f"0.6{k:02d}, pixel acc 0.91, 84.1 img/s, 6.1s, ETA {60 - 6 * k}s"
                           for k in range(LOG_LINES)])
    q.complete(job.id, "bench-worker", _result(job.id, job.variant), lease=job.lease)


def _kind(q: JobQueue, key: str) -> str:
    """``job``, ``hist``, ``logs``, ``children`` (per job) or the name of a shared structure."""
    rest = key[len(q.prefix):]
    return rest.split(":", 1)[0] if ":" in rest and rest.split(":", 1)[0] in (
        "job", "hist", "logs", "children") else rest


def memory_by_kind(q: JobQueue) -> dict[str, int]:
    """Bytes (``MEMORY USAGE ... SAMPLES 0``) of the queue's keys, summed per key kind."""
    out: dict[str, int] = defaultdict(int)
    keys = list(q.redis.scan_iter(match=q.prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        with q.redis.pipeline(transaction=False) as p:
            for k in keys[i:i + 500]:
                p.execute_command("MEMORY", "USAGE", k, "SAMPLES", 0)
            for k, b in zip(keys[i:i + 500], p.execute()):
                out[_kind(q, k)] += int(b or 0)
    return dict(out)


def _drop(q: JobQueue) -> None:
    keys = list(q.redis.scan_iter(match=q.prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        q.redis.delete(*keys[i:i + 500])


def _run(redis_url: str, jobs: int, retention: str, samples: int,
         say: Callable[[str], None]) -> dict[str, Any]:
    q = JobQueue(redis_url, prefix=f"fcnbench:{uuid.uuid4().hex[:12]}:", retention=retention)
    try:
        q.ping()
        lat: list[float] = []
        curve = []
        t0 = time.perf_counter()
        every = max(1, jobs // samples)
        for i in range(jobs):
            _one_job(q, JobSpec(name=f"bench{i}", seed=i), lat)
            if (i + 1) % every == 0 or i + 1 == jobs:
                mem = sum(memory_by_kind(q).values())
                curve.append({"jobs": i + 1, "bytes": mem})
                say(f"  retention {retention}: {i + 1} jobs, {mem / 1e6:.2f} MB")
        seconds = time.perf_counter() - t0
        kinds = memory_by_kind(q)
        return {"retention": retention, "jobs": jobs, "seconds": seconds, "prefix": q.prefix,
                "bytes": sum(kinds.values()), "bytes_by_kind": kinds,
                "records_left": int(q.redis.zcard(q.key("jobs"))),
                "events_left": int(q.redis.xlen(q.key("events"))),
                "submit_ms_p50": 1e3 * percentile(lat, 50), "submit_ms_p95": 1e3 * percentile(lat, 95),
                "curve": curve}
    finally:
        with contextlib.suppress(Exception):
            _drop(q)
        q.close()


def bench_queue_memory(redis_url: str | None = None, jobs: int = 10_000, per_job: int = 500,
                       retention: str = "1s", samples: int = 10,
                       log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Bytes per finished job by key kind (``per_job`` jobs kept forever), then ``jobs`` jobs
    with retention ``retention`` and with ``never``: total bytes, records and events left."""
    log(f"per-job memory: {per_job} finished jobs, retention never")
    base = _run(redis_url, per_job, "never", 1, log)
    per_kind = {k: v / per_job for k, v in sorted(base["bytes_by_kind"].items())}
    log(f"{jobs} jobs, retention {retention} and never")
    on = _run(redis_url, jobs, retention, samples, log)
    off = _run(redis_url, jobs, "never", samples, log)
    return {"per_job_bytes": base["bytes"] / per_job, "per_job_bytes_by_kind": per_kind,
            "per_job_sample": per_job, "retention_on": on, "retention_off": off,
            "log_lines_per_job": LOG_LINES}


def format_queue_memory(res: dict[str, Any]) -> str:
    """The figures as two small tables."""
    from fcn_dist.report.tables import render

    rows = [[k, f"{v:,.0f}"] for k, v in res["per_job_bytes_by_kind"].items()]
    rows.append(["total", f"{res['per_job_bytes']:,.0f}"])
    a = render(["KEY KIND", "BYTES PER FINISHED JOB"], rows)
    runs = [res["retention_on"], res["retention_off"]]
    b = render(["RETENTION", "JOBS", "MEMORY (MB)", "RECORDS LEFT", "EVENTS LEFT",
                "SUBMIT p50/p95 (ms)", "SECONDS"],
               [[r["retention"], f"{r['jobs']:,}", f"{r['bytes'] / 1e6:.2f}",
                 f"{r['records_left']:,}", f"{r['events_left']:,}",
                 f"{r['submit_ms_p50']:.2f} / {r['submit_ms_p95']:.2f}", f"{r['seconds']:.1f}"]
                for r in runs])
    return (f"Redis memory per finished job ({res['per_job_sample']} jobs, "
            f"{res['log_lines_per_job']} log lines each, MEMORY USAGE by key kind):\n{a}\n"
            f"After the jobs (submit with its sweep, claim, progress, logs, complete):\n{b}")
