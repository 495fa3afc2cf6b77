"""Facts about the machine (CPU flags, cores) and the process-wide settings they call for."""

from __future__ import annotations

import contextlib
import functools
import os

import torch

__all__ = ["cpu_flags", "cpu_supports_bf16", "physical_cores", "reuse_freed_memory", "set_threads"]


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (``avx512_bf16`` or AMX), so bf16 is faster.

    Without it oneDNN emulates bf16 and it is slower than fp32; ``FCN_CPU_BF16=0/1`` overrides.
    """
    env = os.environ.get("FCN_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    flags = cpu_flags()
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    if not flags:  # not Linux: ask oneDNN
        with contextlib.suppress(Exception):
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return native


def physical_cores() -> int:
    """Cores this process may run on (affinity), the thread count that suits oneDNN/MKL."""
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Intra-op threads = cores available (or ``n``), one inter-op thread; returns the count.

    More threads than cores (the default when several processes share a machine) makes
    oneDNN's OpenMP barriers spin against each other. Ray Train workers should pass their
    ``cpus_per_worker``.
    """
    n = int(n or physical_cores())
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)
    return n


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


@functools.lru_cache(maxsize=None)
def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide); True if it took effect.

    By default glibc serves every block above 32 MB with a fresh ``mmap`` and returns it to the
    kernel on ``free``, so each activation of a big batch is faulted in (and zeroed) page by
    page again on every forward. Raising the mmap and trim thresholds keeps those pages in the
    process, which is what the jemalloc/tcmalloc set-ups of PyTorch's CPU tuning guide achieve;
    here without preloading a library. The cost: the process's RSS stays at its peak instead of
    shrinking after it (figures: ``benchmarks/README.md``, the allocator ablation).

    Only on Linux with glibc (elsewhere: False, nothing changes); ``FCN_MALLOC_REUSE=0`` turns
    it off. Called by :func:`~fcn_dist.perf.optimize_for_inference` (CPU) and by the train
    loop's CPU workers.
    """
    if os.environ.get("FCN_MALLOC_REUSE", "1") == "0" or not _is_glibc():
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # some glibc versions refuse an mmap threshold above HEAP_MAX_SIZE / 2 (32 MB): fall back
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1)


def _is_glibc() -> bool:
    import platform

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
