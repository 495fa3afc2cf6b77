"""Timing helpers: best-of and percentile timings, GEMM peak, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["gemm_peak", "machine_info", "percentile", "sync", "time_calls"]


def sync(device: torch.device | str) -> None:
    """Wait for queued device work (CUDA); a no-op on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank."""
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(q / 100 * (len(v) - 1)))))]


def time_calls(fn: Callable[[], Any], iters: int, warmup: int = 1,
               device: torch.device | str = "cpu") -> list[float]:
    """Seconds per call of ``fn`` for ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def gemm_peak(dtype: torch.dtype, device: torch.device | str = "cpu",
              sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 3) -> dict[str, Any]:
    """Best square-GEMM GFLOP/s over ``sizes`` (best of ``repeats`` each) in ``dtype``.

    The honest peak to compare a model against: the same library (MKL/oneDNN/cuBLAS), the same
    threads, the same load on the machine at the same time.
    """
    by_size: dict[str, float] = {}
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        times = time_calls(lambda: torch.mm(a, b), iters=repeats, warmup=1, device=device)
        by_size[str(n)] = 2.0 * n ** 3 / min(times) / 1e9
    return {"gflops": max(by_size.values()), "by_size": by_size, "dtype": str(dtype)[6:]}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """CPU/GPU model, cores, threads, load average, bf16 support, torch version."""
    from fcn_dist.perf import cpu_supports_bf16, physical_cores

    device = torch.device(device)
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": physical_cores(),
        "threads": torch.get_num_threads(),
        "cpu_bf16_native": cpu_supports_bf16(),
        "torch": torch.__version__,
        "device": device.type,
    }
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def summarize(values: list[float]) -> dict[str, float]:
    """min/median/max of a list (for the JSON)."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}
