"""The GPU check: the service's training step and inference path on one accelerator, measured.

Run by ``benchmarks/gpu_check.sh`` on a machine that may have only Python with torch,
torchvision, torchmetrics, pyarrow, click and pyyaml (no Ray, no Redis: nothing imported here
needs them). It trains FCN-8s VGG16 on synthetic shards with the per-worker loop's own step
(:func:`fcn_dist.train.step.train_step`: the precision policy — bf16 autocast on a GPU that
has it — channels_last, grad clipping, fused AdamW, DDP over ``torch.distributed`` with
NCCL and world size 1), checks that the loss falls, and prints as JSON the training and
inference images/s and their utilisation (MFU) against a bf16 matmul peak measured in the same
run. ``--dry-run`` does the same at toy sizes on whatever device there is (the tests run it
on a CPU with gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

IGNORE_INDEX = 255


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batches(data_dir: str, crop: int, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` augmented training batches, decoded once and held in memory: the check times
    the accelerator's step, not PNG decoding on the host."""
    from fcn_dist.data import ShardDataset
    from fcn_dist.data.transforms import train_transform

    ds = ShardDataset(data_dir, "train", transform=train_transform(crop, IGNORE_INDEX))
    out = []
    for b in range(count):
        items = [ds[(b * batch + i) % len(ds)] for i in range(batch)]
        out.append((torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])))
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_check(*, model_name: str = "fcn8s_vgg16", size: int = 512, batch: int = 8,
              steps: int = 300, warmup: int = 10, infer_iters: int = 20, device: str | None = None,
              gemm_sizes: tuple[int, ...] = (4096, 8192), work: str | None = None,
              log=lambda s: None) -> dict[str, Any]:
    """Train ``steps`` steps and time inference; returns the figures (see the module doc)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    from fcn_dist.bench.model import flops_per_image
    from fcn_dist.bench.timing import gemm_peak
    from fcn_dist.data import prepare
    from fcn_dist.models import create_model
    from fcn_dist.perf import optimize_for_inference, precision_for
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.step import make_step_state, train_step

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    work = work or tempfile.mkdtemp(prefix="fcn-gpu-check-")
    data_dir = os.path.join(work, "synthetic")
    if not os.path.exists(os.path.join(data_dir, "manifest.json")):
        prepare("synthetic", data_dir, count=max(16, 4 * batch), size=(size, size), overwrite=True)
    log(f"data: {data_dir}; device {dev}; torch.distributed backend {backend}")
    pool = _batches(data_dir, size, batch, count=4)

    torch.distributed.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}",
                                         rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_model(model_name, 3)
        spec = JobSpec(backbone=model.backbone_name, lr=1e-4, epochs=1, batch_size=batch,
                       amp="auto")
        wrap = (lambda m: DDP(m, device_ids=[dev.index or 0])) if dev.type == "cuda" else DDP
        st = make_step_state(model, spec, device=dev, steps_per_epoch=steps + warmup,
                             ignore_index=IGNORE_INDEX, wrap=wrap)
        losses, times = [], []
        for i in range(warmup + steps):
            x, y = pool[i % len(pool)]
            t = time.perf_counter()
            out = train_step(st, x, y)
            loss = float(out.loss_sum / out.norm.clamp_min(1))  # a host sync each step, as the loop
            times.append(time.perf_counter() - t)
            losses.append(loss)
            if i % 50 == 0:
                log(f"step {i}: loss {loss:.4f}")
    finally:
        torch.distributed.destroy_process_group()
    step_s = statistics.median(times[warmup:])
    k = max(1, min(20, steps // 5))
    first, last = statistics.mean(losses[:k]), statistics.mean(losses[-k:])

    prec = precision_for(dev, "auto")
    fast = optimize_for_inference(st.bare, dev, dtype=prec.dtype)
    x = pool[0][0].to(dev)
    for _ in range(2):
        fast(x)
    _sync(dev)
    t = time.perf_counter()
    for _ in range(infer_iters):
        fast(x)
    _sync(dev)
    infer_s = (time.perf_counter() - t) / infer_iters

    fwd = flops_per_image(create_model(model_name, 3).to(dev), size, dev)["total"]
    peak = gemm_peak(torch.bfloat16, dev, gemm_sizes)["gflops"] * 1e9
    train_ips, infer_ips = batch / step_s, batch / infer_s
    return {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__, "backend": backend, "model": model_name, "size": size,
        "batch": batch, "steps": steps, "precision": str(prec.dtype)[6:],
        "channels_last": st.settings.channels_last,
        "loss_first": first, "loss_last": last, "loss_fell": last < first,
        "train_images_per_second": train_ips, "train_step_seconds": step_s,
        "inference_images_per_second": infer_ips,
        "forward_gflops_per_image": fwd / 1e9, "bf16_matmul_peak_tflops": peak / 1e12,
        # a training step is forward + backward (twice the forward's FLOPs)
        "train_mfu": 3 * fwd * train_ips / peak, "inference_mfu": fwd * infer_ips / peak,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fcn8s_vgg16")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--device", default=None)
    p.add_argument("--dry-run", action="store_true", help="toy sizes (a CPU test of the script)")
    p.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    kw: dict[str, Any] = {"model_name": a.model, "size": a.size, "batch": a.batch,
                          "steps": a.steps, "device": a.device}
    if a.dry_run:
        kw.update(size=64, batch=2, steps=4, warmup=1, infer_iters=1, gemm_sizes=(256,))
    res = run_check(**kw, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = json.dumps(res, indent=2, sort_keys=True)
    print(text)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(text + "\n")
    return 0 if res["loss_fell"] or a.dry_run else 1


if __name__ == "__main__":
    sys.exit(main())
