"""fcn-bench (model part): keys and sanity of the figures, no timing asserts."""

from __future__ import annotations

import json
import platform

import pytest
import torch
from click.testing import CliRunner

from fcn_dist.cli.bench import main
from fcn_dist.models import create_model


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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_masks_and_scales_like_nn_dropout(dtype):
    from fcn_dist.models.layers import Dropout

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


def test_gpu_check_dry_run_needs_neither_ray_nor_redis(tmp_path):
    """benchmarks/gpu_check.sh --dry-run on this CPU (gloo, world size 1) with ray and redis
    made unimportable: it trains with the service's step, the loss falls, the figures print."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    block = ("import sys, runpy; sys.modules['ray'] = None; sys.modules['redis'] = None; "
             "sys.argv = ['gpu_check', '--dry-run', '--json', sys.argv[1]]; "
             "runpy.run_module('fcn_dist.bench.gpu_check', run_name='__main__')")
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-c", block, str(out)], cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["backend"] == "gloo" and res["model"] == "fcn8s_vgg16" and res["loss_fell"]
    for k in ("train_images_per_second", "inference_images_per_second", "train_mfu",
              "inference_mfu", "bf16_matmul_peak_tflops"):
        assert res[k] > 0, k
    assert (root / "benchmarks" / "gpu_check.sh").stat().st_mode & 0o111


@pytest.mark.slow
def test_fcn_bench_train_compares_the_service_with_a_plain_loop(tmp_path, ray_session, monkeypatch):
    """fcn-bench train on a tiny synthetic set: one (plain, service) pair, figures in the JSON."""
    from fcn_dist.data import prepare

    prepare("synthetic", tmp_path / "synthetic", count=40, size=(32, 32), overwrite=True)
    monkeypatch.setenv("FCN_RUNS", str(tmp_path / "runs"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: b\ndata: {tmp_path / 'synthetic'}\nvariant: 8s\nbackbone: resnet18\n"
                    "backbone_weights: null\nepochs: 2\nbatch_size: 4\ncrop_size: [32, 32]\n"
                    "eval_size: [32, 32]\nnum_workers: 1\nuse_gpu: 'false'\n")
    out = tmp_path / "train.json"
    r = CliRunner().invoke(main, ["train", "--spec", str(spec), "--set", "steps_per_epoch=3",
                                  "--repeats", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["service"][0]["status"] == "succeeded" and len(res["plain"]) == 1
    for k in ("service_images_per_second", "plain_images_per_second", "ratio",
              "service_utilisation", "plain_utilisation", "train_gflops_per_image"):
        assert res[k] > 0, k
    assert set(res["plain"][0]["breakdown_seconds"]) == {"data", "forward_backward", "optimizer"}
    assert "ratio service/plain" in r.output
