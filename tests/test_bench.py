"""fcn-bench (model part) and fcn_dist.perf: keys and sanity of the figures, no timing asserts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from fcn_dist.cli.bench import main
from fcn_dist.models import create_model
from fcn_dist.perf import (
    ConvReLU,
    FrozenBackboneFCN,
    fast_dtype,
    optimize_for_inference,
    training_settings,
)


def test_fcn_bench_model_json(tmp_path):
    out = tmp_path / "out.json"
    r = CliRunner().invoke(main, [
        "model", "fcn32s_resnet18", "--size", "64", "--batch", "2", "--iters", "1",
        "--train-iters", "1", "--latency-iters", "1", "--gemm-sizes", "128",
        "--no-memory", "--device", "cpu", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "img/s" in r.output
    res = json.loads(out.read_text())
    for key in ("inference_images_per_second", "latency_ms_p50", "latency_ms_p95",
                "gflops_per_image", "utilisation", "bound_images_per_second",
                "train_images_per_second_full", "train_images_per_second_frozen",
                "baseline_fp32_images_per_second", "speedup_vs_fp32_eager"):
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    assert res["gemm"]["float32"]["gflops"] > 0
    assert res["sizes"][0]["size"] == 64
    assert set(res["training"]) == {"fast_frozen", "fast_full", "fp32_frozen", "fp32_full"}
    # ResNet-18 FCN-32s at 64x64: ~1.8 GFLOP/img at 224 scaled by pixels, well under 1
    assert 0.05 < res["gflops_per_image"] < 1.0


def test_fcn_bench_rejects_bad_sizes():
    r = CliRunner().invoke(main, ["model", "fcn32s_resnet18", "--sizes", "64,x"])
    assert r.exit_code == 2


def test_memory_probe_subprocess():
    from fcn_dist.bench.model import memory_probe

    mem = memory_probe({"model": "fcn32s_resnet18", "num_classes": 3, "size": 64, "batch": 1,
                        "mode": "fast_infer"})
    assert "error" not in mem, mem
    assert mem["peak_rss_mb"] > mem["base_rss_mb"] > 0


_FAULTS_SCRIPT = """
import resource, torch
from fcn_dist.perf import reuse_freed_memory
on = reuse_freed_memory()
faults = []
for _ in range(16):  # 64 MB each: above glibc's largest dynamic mmap threshold (32 MB)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(64 << 18)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
print(on, sum(faults[-6:]) / 6)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_reuse_freed_memory_stops_page_faults_on_big_blocks():
    """A freed 64 MB block is reused, not faulted in again page by page (16,384 4-KiB pages
    on every allocation with glibc's default); FCN_MALLOC_REUSE=0 keeps the default. The heap
    takes a few allocations to settle (aligned blocks), so the last 6 of 16 are counted.
    Fresh processes: the setting is process-wide."""
    seen = {}
    for flag in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True,
                             text=True, check=True, env={**os.environ, "FCN_MALLOC_REUSE": flag})
        on, faults = out.stdout.split()
        assert on == ("True" if flag == "1" else "False"), out.stdout
        seen[flag] = float(faults)
    assert seen["1"] < 100, seen
    assert seen["0"] > 1000 or seen["0"] > 20 * max(seen["1"], 1), seen  # 2 MB pages (THP): fewer


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_allocator_ablation_times_each_setting_in_its_own_process():
    """The two halves really differ: the subprocess of the default run has reuse off, the
    other on (a probe that ignored the setting would time the same thing twice)."""
    from fcn_dist.bench.model import _allocator_ablation

    res = _allocator_ablation("fcn32s_resnet18", 3, 64, 2, None, 1, rounds=1)
    assert set(res) == {"glibc default malloc", "freed memory kept for reuse"}, res
    assert res["glibc default malloc"]["malloc_reuse"] is False, res
    assert res["freed memory kept for reuse"]["malloc_reuse"] is True, res
    for v in res.values():
        assert v["images_per_second"] > 0 and v["peak_rss_mb"] > 0, res


@pytest.mark.parametrize("name", ["fcn8s_vgg16", "fcn8s_resnet18", "fcn8s_mobilenet_v3_small"])
def test_optimize_for_inference_matches_fp32(name):
    torch.manual_seed(0)
    model = create_model(name, 3)
    for p in model.head.parameters():  # score layers start at zero: make the output non-trivial
        torch.nn.init.normal_(p, 0.0, 0.01)
    model.eval()
    x = torch.randn(2, 3, 80, 96)
    with torch.no_grad():
        ref = model(x)
    fast32 = optimize_for_inference(model, "cpu", dtype=torch.float32)
    assert any(isinstance(m, ConvReLU) for m in fast32.modules())
    y = fast32(x)
    assert y.dtype == torch.float32 and y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    fast = optimize_for_inference(model, "cpu", dtype=torch.bfloat16)
    err = (fast(x) - ref).abs().max() / ref.abs().max()
    assert err < 0.05
    assert next(model.parameters()).dtype == torch.float32  # the original is untouched


def test_conv_relu_packs_weights_per_input_shape():
    # oneDNN's packed layout depends on the input shape (fc7 packed for batch 1 ran 18x slower
    # on batch 8): packs are kept per shape, the two most recent, and dropped on a new weight
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 1)
    layer = ConvReLU(conv).eval()
    shapes = [(1, 16, 7, 7), (4, 16, 7, 7), (1, 16, 9, 5)]
    xs = [torch.randn(s) for s in shapes]
    with torch.inference_mode():
        for x in xs[:2] + xs[:2]:
            torch.testing.assert_close(layer(x), torch.relu(conv(x)), rtol=1e-5, atol=1e-5)
        assert sorted(k[3] for k in layer._packs) == sorted(shapes[:2])
        layer(xs[0])  # now the most recent: the next new shape evicts shapes[1]
        torch.testing.assert_close(layer(xs[2]), torch.relu(conv(xs[2])), rtol=1e-5, atol=1e-5)
        assert [k[3] for k in layer._packs] == [shapes[0], shapes[2]]
    with torch.no_grad():
        conv.weight.mul_(-1.0)  # a new weight version: the old packs are stale
    with torch.inference_mode():
        torch.testing.assert_close(layer(xs[0]), torch.relu(conv(xs[0])), rtol=1e-5, atol=1e-5)
    assert [k[3] for k in layer._packs] == [shapes[0]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_masks_and_scales_like_nn_dropout(dtype):
    from fcn_dist.perf import Dropout

    x = torch.randn(4, 64, 7, 9).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    drop = Dropout(0.3).train()
    torch.manual_seed(5)
    y = drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), y)  # the torch generator: a seed repeats the mask
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    kept = y != 0
    frac = kept.float().mean().item()
    assert abs(frac - 0.7) < 0.02, frac  # 16,128 elements: 5 standard deviations
    scale = (y[kept].float() / x[kept].float())
    torch.testing.assert_close(scale, torch.full_like(scale, 1 / 0.7), rtol=1e-2, atol=0)
    y.float().sum().backward()
    torch.testing.assert_close(x.grad.float(), kept.float() / 0.7, rtol=1e-2, atol=0)
    assert torch.equal(drop.eval()(x), x)  # eval: identity
    assert not torch.equal(Dropout(0.5).train()(torch.ones(64)), torch.ones(64))


def test_gemm_peak_takes_the_faster_of_mm_and_onednn_convolution():
    from fcn_dist.bench.timing import gemm_call, gemm_peak

    res = gemm_peak(torch.float32, "cpu", (128, 256), repeats=1)
    assert set(res["by_size"]) == {"128", "256", "onednn_conv128", "onednn_conv256"}
    assert res["gflops"] == max(res["by_size"].values())
    kind, n = res["best"]
    assert res["by_size"][str(n) if kind == "mm" else f"{kind}{n}"] == res["gflops"]
    # the convolution GEMM: (128 // 64) x 8 x 8 = 128 rows, 128 x 128 weights
    fn, flops = gemm_call("onednn_conv", 128, torch.float32)
    out = fn()
    assert out.shape == (2, 128, 8, 8) and flops == 2.0 * 128 ** 3


def test_inference_model_runs_big_batches_in_chunks_with_the_same_logits(monkeypatch):
    torch.manual_seed(0)
    model = create_model("fcn8s_resnet18", 3)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, 0.0, 0.01)
    fast = optimize_for_inference(model.eval(), "cpu", dtype=torch.float32)
    x = torch.randn(5, 3, 64, 64)
    whole = fast(x)
    calls = []
    fast.model.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    monkeypatch.setattr(fast, "max_pixels", 2 * 64 * 64)  # two images per call
    chunked = fast(x)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


def test_frozen_backbone_trains_head_only():
    torch.manual_seed(0)
    model = create_model("fcn32s_resnet18", 3)
    settings = training_settings("cpu", amp="off")
    net = FrozenBackboneFCN(model, settings).train()
    params = list(net.parameters())
    assert params and all(p.requires_grad for p in params)
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    x = torch.randn(2, 3, 64, 64)
    logits = net(x)
    assert logits.shape == (2, 3, 64, 64)
    logits.float().sum().backward()
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    assert set(net.state_dict()) == set(model.state_dict())


def test_fast_dtype_off_is_fp32():
    assert fast_dtype("cpu", "off") == torch.float32
    # fp32 training on a CPU stays NCHW (channels_last is slower there); bf16 goes NHWC
    assert training_settings("cpu", amp="off").channels_last is False
    assert training_settings("cpu", amp="bf16").channels_last is True


def test_turns_make_two_loops_alternate_step_by_step(tmp_path):
    """The Ray Train overhead benchmark's step alternation (a loop hook): two loops over
    their batches take strict turns, and the time spent waiting for the other is reported."""
    import os
    import pickle
    import threading
    import time

    from fcn_dist.bench.turns import StepTurns

    for name in ("a", "b"):
        os.mkfifo(tmp_path / name)
    ta = pickle.loads(pickle.dumps(StepTurns(tmp_path, "a", "b")))  # as Ray ships it to a worker
    tb = StepTurns(str(tmp_path), "b", "a")
    os.write(os.open(tmp_path / "a", os.O_RDWR), b"x")  # a starts
    order: list[str] = []

    def loop(turns, name):
        for step in turns.wrap_batches(range(4)):
            order.append(f"{name}{step}")
            time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(t, n)) for t, n in ((tb, "b"), (ta, "a"))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    assert tb.take_waited() >= 0.01 and tb.take_waited() == 0.0


def test_train_loop_optimizers_are_fused_on_cpu():
    from types import SimpleNamespace

    from fcn_dist.perf import fused_optimizer_ok
    from fcn_dist.train.step import build_optimizer

    model = create_model("fcn32s_resnet18", 3)
    for name in ("adamw", "sgd"):
        spec = SimpleNamespace(optimizer=name, lr=1e-3, weight_decay=1e-4, momentum=0.9)
        opt = build_optimizer(model, spec)
        assert opt.defaults["fused"] is True, name
    assert not fused_optimizer_ok([])
    assert not fused_optimizer_ok([torch.zeros(3, dtype=torch.int64)])
