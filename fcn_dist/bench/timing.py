"""Timing helpers: best-of and percentile timings, GEMM peak, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["gemm_call", "gemm_peak", "machine_info", "percentile", "sync", "time_calls"]


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


def gemm_call(kind: str, n: int, dtype: torch.dtype, device: torch.device | str = "cpu"
              ) -> tuple[Callable[[], Any], float]:
    """A GEMM of about ``n`` x ``n`` x ``n`` and its FLOPs: ``kind`` ``"mm"`` (``torch.mm``:
    MKL/oneDNN/cuBLAS) or ``"onednn_conv"`` (CPU: the same product as a 1x1 convolution through
    oneDNN with pre-packed weights, :class:`~fcn_dist.perf.ConvReLU` without ReLU; rows
    ``n // 64`` x 8 x 8, channels_last: the kernels a model's convolutions run on)."""
    if kind == "mm":
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        return (lambda: torch.mm(a, b)), 2.0 * n ** 3
    if kind != "onednn_conv":
        raise ValueError(f"unknown GEMM kind {kind!r}")
    from fcn_dist.perf import ConvReLU

    conv = ConvReLU(torch.nn.Conv2d(n, n, 1, bias=False), relu=False).to(device, dtype).eval()
    rows = max(1, n // 64)
    x = torch.randn(rows, n, 8, 8, device=device).to(dtype).contiguous(
        memory_format=torch.channels_last)

    def call() -> Any:
        with torch.inference_mode():
            return conv(x)

    return call, 2.0 * rows * 64 * n * n


def gemm_peak(dtype: torch.dtype, device: torch.device | str = "cpu",
              sizes: tuple[int, ...] = (1024, 2048, 4096), repeats: int = 3) -> dict[str, Any]:
    """Best GEMM GFLOP/s over ``sizes`` (best of ``repeats`` each) in ``dtype``.

    The honest peak to compare a model against: the same libraries, the same threads, the same
    load on the machine at the same time. On a CPU both ``torch.mm`` and oneDNN's 1x1
    convolution (pre-packed weights) are timed and the faster counts: on a 2-core Zen 4,
    ``torch.mm`` bf16 reached 355-381 GFLOP/s where oneDNN's convolution GEMM reached 371-414,
    and the model's 3x3 convolutions ran at up to 437, so ``torch.mm`` alone would flatter the
    model's utilisation. ``by_size`` keys are ``"<n>"`` (mm) and ``"onednn_conv<n>"``;
    ``best`` is ``[kind, n]`` of the fastest, for re-timing it later (:func:`gemm_call`).
    """
    kinds = ["mm"] + (["onednn_conv"] if torch.device(device).type == "cpu" else [])
    by_size: dict[str, float] = {}
    best: list[Any] = ["mm", sizes[0]]
    for n in sizes:
        for kind in kinds:
            try:
                fn, flops = gemm_call(kind, n, dtype, device)
            except RuntimeError:  # e.g. a dtype oneDNN's convolution lacks on this CPU
                continue
            times = time_calls(fn, iters=repeats, warmup=1, device=device)
            key = str(n) if kind == "mm" else f"{kind}{n}"
            by_size[key] = flops / min(times) / 1e9
            if by_size[key] >= max(by_size.values()):
                best = [kind, n]
    return {"gflops": max(by_size.values()), "by_size": by_size, "best": best,
            "dtype": str(dtype)[6:]}


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
