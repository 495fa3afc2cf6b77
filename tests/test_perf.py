"""fcn_dist.perf: the precision policy (CPU flags faked both ways, CUDA faked, no GPU needed),
the inference path against float32 eager, the frozen-backbone model, malloc reuse."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from fcn_dist.models import create_model
from fcn_dist.perf import (
    ConvReLU,
    FrozenBackboneFCN,
    Precision,
    fast_dtype,
    optimize_for_inference,
    precision_for,
    training_settings,
)
from fcn_dist.perf import hardware

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32
NATIVE_BF16 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"})
# AVX-512 without its bf16 extension (Skylake-X, Ice Lake): oneDNN runs bf16 there, emulated
AVX512_ONLY = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512dq"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.fixture
def cpu(monkeypatch):
    """Fake the CPU: ``cpu(flags, mkldnn_bf16=True)``; caches cleared around each test."""

    def fake(flags: frozenset[str], mkldnn_bf16: bool = True) -> None:
        monkeypatch.setattr(hardware, "cpu_flags", lambda: flags)
        # what loop.resolve_amp used to ask: true on any AVX-512 CPU
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: mkldnn_bf16)
        hardware.cpu_supports_bf16.cache_clear()

    monkeypatch.delenv("FCN_CPU_BF16", raising=False)
    hardware.cpu_supports_bf16.cache_clear()
    yield fake
    hardware.cpu_supports_bf16.cache_clear()


# amp mode -> compute dtype on a CPU with / without native bf16: never fp16 on a CPU
CPU_POLICY = {
    "auto": (BF16, FP32),
    "off": (FP32, FP32),
    "bf16": (BF16, BF16),
    "fp16": (BF16, FP32),
}


@pytest.mark.parametrize("amp", sorted(CPU_POLICY))
@pytest.mark.parametrize("flags", [NATIVE_BF16, AVX512_ONLY, AVX2_ONLY],
                         ids=["avx512_bf16", "avx512_only", "avx2"])
def test_cpu_precision_follows_the_native_bf16_flags(cpu, amp, flags):
    cpu(flags)  # oneDNN says bf16 works everywhere here: the flags decide
    p = precision_for("cpu", amp)
    want = CPU_POLICY[amp][0 if "avx512_bf16" in flags else 1]
    assert p == Precision(torch.device("cpu"), want)
    assert p.autocast_dtype == (None if want == FP32 else want)
    assert p.grad_scaler is False
    assert fast_dtype("cpu", amp) == want
    settings = training_settings("cpu", amp)
    assert (settings.amp_dtype, settings.use_grad_scaler) == (p.autocast_dtype, False)


def test_amx_counts_as_native_bf16(cpu):
    cpu(AVX2_ONLY | {"amx_bf16"})
    assert precision_for("cpu").dtype == BF16


@pytest.mark.parametrize("env, flags, want", [("1", AVX2_ONLY, BF16), ("1", AVX512_ONLY, BF16),
                                              ("0", NATIVE_BF16, FP32)])
def test_fcn_cpu_bf16_overrides_the_flags(cpu, monkeypatch, env, flags, want):
    cpu(flags)
    monkeypatch.setenv("FCN_CPU_BF16", env)
    assert precision_for("cpu", "auto").dtype == want
    assert precision_for("cpu", "fp16").dtype == want
    assert precision_for("cpu", "bf16").dtype == BF16  # forced either way
    assert precision_for("cpu", "off").dtype == FP32


@pytest.mark.parametrize("mkldnn_bf16", [True, False])
def test_without_cpu_flags_onednn_is_asked(cpu, mkldnn_bf16):
    cpu(frozenset(), mkldnn_bf16=mkldnn_bf16)  # no /proc/cpuinfo (not Linux)
    assert precision_for("cpu").dtype == (BF16 if mkldnn_bf16 else FP32)


@pytest.mark.parametrize("gpu_bf16", [True, False])
def test_cuda_precision(monkeypatch, gpu_bf16):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: gpu_bf16)
    want = {"auto": BF16 if gpu_bf16 else FP16, "off": FP32, "bf16": BF16, "fp16": FP16}
    for amp, dtype in want.items():
        p = precision_for("cuda", amp)  # no tensor is made: no GPU needed
        assert p.device == torch.device("cuda") and p.dtype == dtype, amp
        assert p.grad_scaler is (dtype == FP16), amp
        assert p.autocast_dtype == (None if dtype == FP32 else dtype), amp
        assert fast_dtype("cuda:0", amp) == dtype, amp


def test_unknown_amp_mode_is_refused():
    with pytest.raises(ValueError, match="amp: unknown mode 'fp8'"):
        precision_for("cpu", "fp8")


def test_precision_autocast(cpu):
    a = torch.randn(4, 4)
    with Precision(torch.device("cpu"), BF16).autocast():
        assert (a @ a).dtype == BF16
    with Precision(torch.device("cpu"), FP32).autocast():
        assert (a @ a).dtype == FP32
    cpu(AVX2_ONLY)
    with training_settings("cpu", "bf16").autocast():
        assert (a @ a).dtype == BF16


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
