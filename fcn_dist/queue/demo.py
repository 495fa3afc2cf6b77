"""A stand-in job function for tests, smoke checks and queue benchmarks (no training).

``fcn-worker --run-fn fcn_dist.queue.demo:run`` runs it instead of a Ray Train job. It is
configured through environment variables so that worker subprocesses can be steered:

- ``FCN_DEMO_RECORD``: a file to which one line ``start <job id> <pid>`` is appended when a run
  starts and ``done <job id> <pid>`` when it succeeds (appends of short lines are atomic).
- ``FCN_DEMO_SLEEP``: seconds each run "trains" (checking ``should_stop`` every 20 ms).
- ``FCN_DEMO_FAIL``: comma-separated job names that always fail (``*`` = every job).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from fcn_dist.errors import Interrupted


def _record(kind: str, job_id: str) -> None:
    path = os.environ.get("FCN_DEMO_RECORD")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {job_id} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


def run(job, should_stop: Callable[[], bool]) -> dict[str, Any]:
    """Pretend to train ``job``; returns a result summary with a fake ``best_checkpoint``."""
    _record("start", job.id)
    end = time.monotonic() + float(os.environ.get("FCN_DEMO_SLEEP", "0") or 0)
    while time.monotonic() < end:
        if should_stop():
            raise Interrupted(f"job {job.id} stopped")
        time.sleep(0.02)
    failing = {x.strip() for x in os.environ.get("FCN_DEMO_FAIL", "").split(",") if x.strip()}
    if "*" in failing or job.name in failing:
        raise RuntimeError(f"demo job {job.name} always fails")
    _record("done", job.id)
    return {"status": "ok", "job_id": job.id, "variant": job.variant,
            "init_from": job.init_from or None, "best_checkpoint": f"demo://{job.id}/best"}
