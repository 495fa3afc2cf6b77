"""Model benchmark: inference/training throughput, latency, memory, FLOPs, utilisation.

Every figure is measured side by side in one run: the plain float32 eager model (the
baseline) and the optimised paths of :mod:`fcn_dist.perf`; utilisation is achieved FLOP/s
over a square-GEMM peak measured in the same run, in the same dtype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fcn_dist.bench.timing import (
    gemm_call,
    gemm_peak,
    machine_info,
    percentile,
    sync,
    time_calls,
)
from fcn_dist.models import create_model, freeze_backbone, param_groups
from fcn_dist.perf import (
    FrozenBackboneFCN,
    fast_dtype,
    optimize_for_inference,
    reuse_freed_memory,
    set_threads,
    training_settings,
)

__all__ = [
    "flops_per_image",
    "format_model_table",
    "kernel_breakdown",
    "memory_probe",
    "run_model_bench",
    "train_step_fn",
]

IGNORE_INDEX = 255


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def flops_per_image(model: nn.Module, size: int, device: torch.device | str = "cpu"
                    ) -> dict[str, float]:
    """Forward FLOPs for one ``size`` x ``size`` image (``torch.utils.flop_counter``).

    Returns ``total`` and a split by top-level part (``backbone.features``, ``backbone.fc6``,
    ``head`` ...), in FLOPs (2 per multiply-add).
    """
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=3)
    with torch.no_grad(), counter:
        model(x)
    model.train(was)
    flat: dict[str, float] = {}
    for mod, counts in counter.get_flop_counts().items():
        part = mod.split(".", 1)[1] if "." in mod else ""
        flat[part] = float(sum(counts.values()))
    # VGG's forward walks ``features`` layer by layer, so the Sequential itself never shows:
    # what the backbone's children do not account for is reported as "backbone (conv layers)"
    parts = {k: v for k, v in flat.items() if k.count(".") == 1 and k.startswith("backbone.")}
    rest = flat.get("backbone", 0.0) - sum(parts.values())
    if rest > 0.001 * flat.get("backbone", 1.0):
        parts["backbone (conv layers)"] = rest
    parts["head"] = flat.get("head", 0.0)
    return {"total": float(counter.get_total_flops()), "parts": parts}


def train_step_fn(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                  y: torch.Tensor, autocast: Callable[[], Any] | None = None
                  ) -> Callable[[], float]:
    """One training step as the train loop does it: forward (autocast), fp32 loss, AdamW."""
    import contextlib

    ctx = autocast or contextlib.nullcontext

    def step() -> float:
        with ctx():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def _build(name: str, num_classes: int, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes).to(device)


def _training_case(model: nn.Module, mode: str, device: torch.device, batch: int, size: int,
                   num_classes: int) -> Callable[[], float]:
    """A step closure for ``mode`` in fp32_full, fp32_frozen, fast_full, fast_frozen."""
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch, size, size), device=device)
    frozen = mode.endswith("frozen")
    model.train()
    if mode.startswith("fp32"):
        if frozen:
            freeze_backbone(model)
        # the plain-PyTorch baseline: torch.optim's default (unfused) AdamW
        opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-4)
        return train_step_fn(model, opt, x, y)
    # the service's own step (fcn_dist.train.step): precision policy, layout, grad scaler,
    # clipping, fused optimizer, LR schedule, exactly as the per-worker loop runs it
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.step import make_step_state, train_step

    spec = JobSpec(lr=1e-4, weight_decay=1e-4, epochs=1000)
    net = FrozenBackboneFCN(model, training_settings(device, spec.amp)).train() if frozen else model
    st = make_step_state(net, spec, device=device, steps_per_epoch=1000, ignore_index=IGNORE_INDEX)

    def step() -> float:
        out = train_step(st, x, y)
        return float(out.loss_sum / out.norm.clamp_min(1))

    return step


def memory_probe(config: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Peak memory of one configuration, run in a fresh subprocess (CPU: max RSS).

    ``config``: model, num_classes, size, batch, mode (``fp32_infer``, ``fast_infer``,
    ``fp32_full``, ``fast_full``, ``fp32_frozen``, ``fast_frozen``), device. Returns
    ``peak_rss_mb`` (the process's peak RSS from just before the model is built — weights,
    activations, allocator — plus what the libraries already held: the peak is reset after
    the imports through ``/proc/self/clear_refs``), ``base_rss_mb`` (RSS after the imports)
    and ``delta_mb`` (peak minus base: what the configuration itself costs).
    """
    cmd = [sys.executable, "-m", "fcn_dist.bench.memprobe", json.dumps(config)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        err = (getattr(e, "stderr", "") or "").strip().splitlines()[-1:] or [str(e)]
        return {"error": err[0][:300]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_memory_case(config: dict[str, Any]) -> dict[str, Any]:
    """Run ``config`` once in this process (called by the probe subprocess)."""
    import gc
    import resource

    def rss_now() -> float:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def peak_now() -> float:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    device = torch.device(config.get("device", "cpu"))
    set_threads(config.get("threads"))
    if config.get("reuse_memory", True) is False:
        os.environ["FCN_MALLOC_REUSE"] = "0"  # this fresh process: glibc's default malloc
    # as the product does (optimize_for_inference, train loop); False where turned off above
    reused = reuse_freed_memory() if device.type == "cpu" else False
    timing: dict[str, Any] = {}
    gc.collect()
    base = rss_now()
    try:  # reset the peak RSS (VmHWM) so import-time peaks do not count; Linux >= 4.0
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        pass
    mode, size, batch = config["mode"], int(config["size"]), int(config["batch"])
    model = _build(config["model"], int(config["num_classes"]), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if mode.endswith("infer"):
        x = torch.randn(batch, 3, size, size, device=device)
        if mode == "fast_infer":
            fast = optimize_for_inference(model, device, inplace=True)
            del model  # a predictor keeps only the optimised model
            gc.collect()
            call: Callable[[], Any] = lambda: fast(x)  # noqa: E731
        else:
            model.eval()

            def call() -> Any:
                with torch.inference_mode():
                    return model(x)
        call()
        n = int(config.get("time_iters") or 0)
        if n:  # optional timing (the allocator ablation): best of n, page faults per call
            faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            t = time_calls(call, n, warmup=0, device=device)
            faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / n
            timing = {"images_per_second": batch / min(t), "page_faults_per_call": faults,
                      "malloc_reuse": reused}
    else:
        step = _training_case(model, mode, device, batch, size, int(config["num_classes"]))
        step()
        step()  # the optimizer state exists from the first step on
    sync(device)
    peak = peak_now()
    out = {"peak_rss_mb": peak, "base_rss_mb": base, "delta_mb": peak - base, **timing}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def kernel_breakdown(fn: Callable[[], Any]) -> dict[str, float]:
    """Fraction of CPU self time per op family in one call of ``fn`` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    fam: dict[str, float] = {}
    total = 0.0
    for ev in prof.key_averages():
        t = float(ev.self_cpu_time_total)
        total += t
        name = ev.key
        if "conv" in name and "transpose" not in name and "slow_conv_transpose" not in name:
            k = "convolution"
        elif "transpose" in name:
            k = "transposed convolution (upsampling)"
        elif "pool" in name:
            k = "max pool"
        elif name in ("aten::relu", "aten::relu_", "aten::clamp_min", "aten::clamp_min_"):
            k = "relu"
        elif name in ("aten::copy_", "aten::_to_copy", "aten::to", "aten::contiguous",
                      "aten::clone"):
            k = "copies / casts"
        else:
            k = "other"
        fam[k] = fam.get(k, 0.0) + t
    return {k: v / total for k, v in sorted(fam.items(), key=lambda kv: -kv[1])} if total else {}


def _infer_case(model: nn.Module, fast: nn.Module | None, batch: int, size: int,
                device: torch.device) -> tuple[Callable[[], Any], Callable[[], Any]]:
    x = torch.randn(batch, 3, size, size, device=device)

    def base() -> Any:
        with torch.inference_mode():
            return model(x)

    return base, (lambda: fast(x)) if fast is not None else base


def _ablation(model: nn.Module, dev: torch.device, dtype: torch.dtype, batch: int, size: int,
              iters: int, probe: Callable[[str], None], fast_kind: str) -> dict[str, float]:
    """Each speed setting added one at a time, timed round robin (best of ``iters``)."""
    import contextlib
    import copy

    x = torch.randn(batch, 3, size, size, device=dev)
    xcl = x.contiguous(memory_format=torch.channels_last)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    low = copy.deepcopy(model).to(dtype=dtype, memory_format=torch.channels_last).eval()
    amp = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype != torch.float32 else (
        contextlib.nullcontext)

    def run(m: nn.Module, inp: torch.Tensor, ctx: Callable[[], Any] = contextlib.nullcontext
            ) -> Callable[[], Any]:
        def f() -> Any:
            with torch.inference_mode(), ctx():
                return m(inp)
        return f

    cases = {
        "fp32 eager (NCHW)": run(model, x),
        "fp32 channels_last": run(cl, xcl),
        f"{fast_kind} autocast, channels_last": run(cl, xcl, amp),
        f"{fast_kind} weights, channels_last": run(low, xcl.to(dtype)),
        f"{fast_kind} weights, channels_last, fused conv+ReLU (optimize_for_inference)":
            (lambda fm=optimize_for_inference(model, dev, dtype=dtype): fm(x)),
    }
    best = {k: float("inf") for k in cases}
    for f in cases.values():
        f()  # warm-up (weight packing, autocast caches)
    for _ in range(max(2, iters)):
        for k, f in cases.items():
            best[k] = min(best[k], time_calls(f, 1, warmup=0, device=dev)[0])
        probe(fast_kind)
    return {k: batch / v for k, v in best.items()}


def _allocator_ablation(name: str, num_classes: int, size: int, batch: int,
                        threads: int | None, iters: int, rounds: int = 2) -> dict[str, Any]:
    """Optimised inference with freed memory kept for reuse (:func:`reuse_freed_memory`) and
    with glibc's default malloc: a process-wide setting, so each is timed in fresh
    subprocesses, ``rounds`` alternated pairs; best img/s of each and page faults per call."""
    out: dict[str, Any] = {}
    for _ in range(rounds):
        for label, reuse in (("glibc default malloc", False), ("freed memory kept for reuse", True)):
            r = memory_probe({"model": name, "num_classes": num_classes, "size": size,
                              "batch": batch, "mode": "fast_infer", "device": "cpu",
                              "threads": threads, "reuse_memory": reuse,
                              "time_iters": max(3, iters)})
            if "error" in r:
                return {"error": r["error"]}
            prev = out.get(label)
            if prev is None or r["images_per_second"] > prev["images_per_second"]:
                out[label] = {k: r[k] for k in ("images_per_second", "page_faults_per_call",
                                                "peak_rss_mb", "malloc_reuse")}
    return out


def run_model_bench(
    name: str = "fcn8s_vgg19",
    *,
    sizes: Sequence[int] = (224,),
    batch: int = 8,
    num_classes: int = 3,
    device: str | None = None,
    iters: int = 3,
    train_iters: int = 2,
    latency_iters: int = 10,
    gemm_sizes: Sequence[int] = (1024, 2048, 4096),
    baseline: bool = True,
    training: bool = True,
    memory: bool = True,
    compile: bool = False,
    profile: bool = True,
    ablation: bool = False,
    threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``name``; the first of ``sizes`` is the main configuration.

    Returns a JSON-able dict: top-level figures for the main size (``inference_images_per_second``
    and the rest, see ``benchmarks/README.md``) and ``sizes``: per-size inference figures.
    """
    say = log or (lambda s: None)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_threads(threads)
    if dev.type == "cpu":
        reuse_freed_memory()  # as the product does; --ablation times it against the default
    sizes = [int(s) for s in sizes]
    main_size = sizes[0]
    dtype = fast_dtype(dev)
    res: dict[str, Any] = {
        "model": name, "batch": batch, "size": main_size, "sizes_benchmarked": sizes,
        "num_classes": num_classes, "dtype": _dtype_name(dtype),
        "machine": machine_info(dev), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()),
    }
    t_start = time.perf_counter()

    # ---- GEMM peaks (same run, same threads, both dtypes). The sweep runs first; then one
    # GEMM is timed after every timed model call (interleaved), and utilisation divides by the
    # best GEMM seen in the whole run: under a varying machine load a peak measured only at
    # the start would be unfair either way.
    say("GEMM peak ...")
    gemm = {"float32": gemm_peak(torch.float32, dev, tuple(gemm_sizes))}
    if dtype != torch.float32:
        gemm[_dtype_name(dtype)] = gemm_peak(dtype, dev, tuple(gemm_sizes))
    res["gemm"] = gemm
    peak = {k: v["gflops"] * 1e9 for k, v in gemm.items()}
    # the fastest GEMM of the sweep (torch.mm or oneDNN's 1x1 convolution), re-timed later
    probes = {k: gemm_call(v["best"][0], int(v["best"][1]), getattr(torch, k), dev)
              for k, v in gemm.items()}

    def probe(kind: str) -> None:
        fn, flops = probes[kind]
        t = time_calls(fn, iters=1, warmup=0, device=dev)[0]
        peak[kind] = max(peak[kind], flops / t)

    def timed(fn: Callable[[], Any], n: int, kind: str, warmup: int = 1) -> list[float]:
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(max(1, n)):
            out += time_calls(fn, 1, warmup=0, device=dev)
            probe(kind)
        return out

    fast_kind = _dtype_name(dtype)
    model = _build(name, num_classes, dev).eval()
    res["params"] = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    fast = optimize_for_inference(model, dev, compile=compile)
    res["optimize_seconds"] = time.perf_counter() - t0

    per_size: list[dict[str, Any]] = []
    for size in sizes:
        say(f"inference {size}x{size} ...")
        fl = flops_per_image(model, size, dev)
        row: dict[str, Any] = {"size": size, "gflops_per_image": fl["total"] / 1e9,
                               "gflops_parts": {k: v / 1e9 for k, v in fl["parts"].items()}}
        base_fn, fast_fn = _infer_case(model, fast, batch, size, dev)
        t = timed(fast_fn, iters, fast_kind, warmup=2 if compile else 1)
        ips = batch / min(t)
        row.update(inference_images_per_second=ips,
                   inference_images_per_second_median=batch / percentile(t, 50),
                   ms_per_megapixel=1e3 / ips / (size * size / 1e6),
                   achieved_gflops=ips * fl["total"] / 1e9)
        if baseline and size == main_size:
            say(f"baseline fp32 eager {size}x{size} ...")
            tb = timed(base_fn, iters, "float32")
            bips = batch / min(tb)
            row.update(baseline_fp32_images_per_second=bips, speedup_vs_fp32_eager=ips / bips)
        say(f"latency batch 1 {size}x{size} ...")
        _, lat_fn = _infer_case(model, fast, 1, size, dev)
        n_lat = latency_iters if size <= 512 else max(3, latency_iters // 3)
        lt = timed(lat_fn, n_lat, fast_kind, warmup=2)
        row.update(latency_ms_p50=1e3 * percentile(lt, 50), latency_ms_p95=1e3 * percentile(lt, 95))
        if profile and size == main_size and dev.type == "cpu":
            row["kernel_time_fraction"] = kernel_breakdown(fast_fn)
        if memory:
            say(f"memory batch 1 {size}x{size} (subprocess) ...")
            mem = memory_probe({"model": name, "num_classes": num_classes, "size": size,
                                "batch": 1, "mode": "fast_infer", "device": dev.type,
                                "threads": threads})
            row["memory_batch1_inference"] = mem
        per_size.append(row)
    res["sizes"] = per_size
    if ablation:
        say(f"ablation {main_size}x{main_size} (round robin) ...")
        res["ablation_images_per_second"] = _ablation(model, dev, dtype, batch, main_size,
                                                      iters, probe, fast_kind)
        if dev.type == "cpu":
            say(f"allocator ablation {main_size}x{main_size} (fresh subprocesses) ...")
            res["allocator_ablation"] = _allocator_ablation(name, num_classes, main_size, batch,
                                                            threads, iters)
    # ---- training (main size)
    if training:
        train: dict[str, Any] = {}
        modes = ["fast_frozen", "fast_full"] + (["fp32_frozen", "fp32_full"] if baseline else [])
        for mode in modes:
            say(f"training step {mode} {main_size}x{main_size} ...")
            m = _build(name, num_classes, dev)
            step = _training_case(m, mode, dev, batch, main_size, num_classes)
            t = timed(step, train_iters, fast_kind if mode.startswith("fast") else "float32")
            train[mode] = {"images_per_second": batch / min(t), "step_seconds": min(t)}
            del m, step
        res["training"] = train
        res["train_images_per_second_frozen"] = train["fast_frozen"]["images_per_second"]
        res["train_images_per_second_full"] = train["fast_full"]["images_per_second"]
        if baseline:
            res["train_speedup_frozen_vs_fp32"] = (train["fast_frozen"]["images_per_second"]
                                                   / train["fp32_frozen"]["images_per_second"])
            res["train_speedup_full_vs_fp32"] = (train["fast_full"]["images_per_second"]
                                                 / train["fp32_full"]["images_per_second"])

    # ---- peak memory of the main configurations (fresh subprocess each)
    if memory:
        mem: dict[str, Any] = {}
        cases = ["fast_infer"] + (["fast_frozen", "fast_full"] if training else [])
        for mode in cases:
            say(f"memory {mode} batch {batch} (subprocess) ...")
            mem[mode] = memory_probe({"model": name, "num_classes": num_classes,
                                      "size": main_size, "batch": batch, "mode": mode,
                                      "device": dev.type, "threads": threads})
        res["memory"] = mem
        res["peak_memory_mb"] = {k: v.get("peak_rss_mb") for k, v in mem.items()}
    # utilisation against the best GEMM of the whole run (both dtypes), training included
    for row in per_size:
        row["utilisation"] = row["achieved_gflops"] * 1e9 / peak[fast_kind]
        row["bound_images_per_second"] = peak[fast_kind] / (row["gflops_per_image"] * 1e9)
        if "baseline_fp32_images_per_second" in row:
            row["baseline_fp32_utilisation"] = (row["baseline_fp32_images_per_second"]
                                                * row["gflops_per_image"] * 1e9 / peak["float32"])
    main = per_size[0]
    for k in ("gflops_per_image", "inference_images_per_second", "latency_ms_p50",
              "latency_ms_p95", "utilisation", "achieved_gflops", "bound_images_per_second",
              "baseline_fp32_images_per_second", "baseline_fp32_utilisation",
              "speedup_vs_fp32_eager", "kernel_time_fraction", "gflops_parts"):
        if k in main:
            res[k] = main[k]
    if len(per_size) > 1:
        mpp = [r["ms_per_megapixel"] for r in per_size]
        res["ms_per_megapixel_max_over_min"] = max(mpp) / min(mpp)

    if training:
        # full fine-tuning: about 3x the forward FLOPs (forward, grad input, grad weight)
        res["train_full_utilisation"] = (3 * res["gflops_per_image"] * 1e9
                                         * res["train_images_per_second_full"] / peak[fast_kind])
    res["gemm_peak_gflops"] = {k: v / 1e9 for k, v in peak.items()}
    res["machine"]["load_average_end"] = machine_info(dev).get("load_average")
    res["bench_seconds"] = time.perf_counter() - t_start
    return res


def _fmt(v: Any, spec: str = ".2f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, (int, float)) else str(v)


def format_model_table(res: dict[str, Any]) -> str:
    """A plain-text table of a :func:`run_model_bench` result."""
    m = res["machine"]
    lines = [
        f"{res['model']}  batch {res['batch']}  device {m['device']} "
        f"({m.get('gpu') or m['cpu']}, {m['cores']} cores, threads {m['threads']}, "
        f"bf16 native {m['cpu_bf16_native']})  torch {m['torch']}",
        f"load average start {m.get('load_average')}  end {m.get('load_average_end')}",
        "GEMM peak (best in the run, interleaved with the model timings): " + ", ".join(
            f"{k} {v:.0f} GFLOP/s" for k, v in res["gemm_peak_gflops"].items())
        + "  (start-of-run sweep: " + ", ".join(
            f"{k} {v['gflops']:.0f} by {v.get('best', ['mm'])[0]} {v.get('best', ['', ''])[1]}"
            for k, v in res["gemm"].items()) + ")",
        f"optimised dtype {res['dtype']}; params {res['params'] / 1e6:.1f} M",
        "",
        f"{'size':>6} {'GFLOP/img':>10} {'img/s':>8} {'bound':>8} {'util':>6} {'ms/MPix':>9} "
        f"{'p50 ms':>9} {'p95 ms':>9} {'b1 RSS MB':>10} {'fp32 img/s':>10} {'speedup':>8}",
    ]
    for r in res["sizes"]:
        mem = (r.get("memory_batch1_inference") or {}).get("peak_rss_mb")
        lines.append(
            f"{r['size']:>6} {r['gflops_per_image']:>10.1f} {r['inference_images_per_second']:>8.2f} "
            f"{r['bound_images_per_second']:>8.2f} {r['utilisation']:>6.0%} "
            f"{r['ms_per_megapixel']:>9.0f} {r['latency_ms_p50']:>9.0f} {r['latency_ms_p95']:>9.0f} "
            f"{_fmt(mem, '.0f'):>10} {_fmt(r.get('baseline_fp32_images_per_second')):>10} "
            f"{_fmt(r.get('speedup_vs_fp32_eager')):>8}")
    if "training" in res:
        lines += ["", f"training step, {res['size']}x{res['size']} batch {res['batch']}:"]
        names = {"fast_frozen": f"frozen backbone ({res['dtype']}, fused)",
                 "fast_full": (f"full fine-tuning ({res['dtype']} autocast, channels_last)"
                               if res["dtype"] != "float32" else "full fine-tuning (fp32 NCHW)"),
                 "fp32_frozen": "frozen backbone (fp32 eager)",
                 "fp32_full": "full fine-tuning (fp32 eager)"}
        for k, v in res["training"].items():
            lines.append(f"  {names.get(k, k):<48} {v['images_per_second']:>7.2f} img/s")
    if "peak_memory_mb" in res:
        lines += ["", "peak RSS (MB, fresh process each, batch "
                  f"{res['batch']}): " + ", ".join(f"{k} {_fmt(v, '.0f')}"
                                                   for k, v in res["peak_memory_mb"].items())]
    if res.get("ablation_images_per_second"):
        lines += ["", f"inference ablation, {res['size']}x{res['size']} batch {res['batch']} "
                  "(round robin, best of each):"]
        base = next(iter(res["ablation_images_per_second"].values()))
        for k, v in res["ablation_images_per_second"].items():
            lines.append(f"  {k:<72} {v:>7.2f} img/s  x{v / base:.2f}")
    alloc = res.get("allocator_ablation") or {}
    if "error" in alloc:
        lines.append(f"allocator ablation failed: {alloc['error']}")
    elif alloc:
        lines += ["", "inference, freed memory kept for reuse vs glibc's default malloc "
                  "(fresh processes, alternated; best of each):"]
        base = next(iter(alloc.values()))["images_per_second"]
        for k, v in alloc.items():
            lines.append(f"  {k:<34} {v['images_per_second']:>7.2f} img/s  "
                         f"x{v['images_per_second'] / base:.2f}  page faults per batch "
                         f"{v['page_faults_per_call']:,.0f}  peak RSS {v['peak_rss_mb']:.0f} MB")
    if res.get("kernel_time_fraction"):
        lines.append("optimised inference time by kernel: " + ", ".join(
            f"{k} {v:.0%}" for k, v in res["kernel_time_fraction"].items()))
    if res.get("gflops_parts"):
        tot = res["gflops_per_image"]
        lines.append("FLOPs by part: " + ", ".join(
            f"{k} {v / tot:.0%}" for k, v in res["gflops_parts"].items()))
    return "\n".join(lines)
