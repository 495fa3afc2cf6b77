"""``fcn-bench train``: training through the service against a plain single-process loop.

The same model, data, batch, crop and threads, trained two ways, alternated in one run so a
machine whose speed drifts slows both alike:

* **service**: :func:`fcn_dist.train.run` (a Ray Train run, the spec's data loader, transforms,
  metrics, a checkpoint and an epoch row every epoch). Its images/s is the steady training
  rate the service reports (epoch 1 left out when there are more); its wall-clock rate counts
  every second of the run, start-up, validation and checkpoints included.
* **plain**: a loop over the train split decoded once into tensors in memory, the same
  augmentation per sample on the trainer's threads, the same model, AdamW, cross-entropy and
  gradient clipping (the spec's), in
  the precision and layout the service's policy picks (:mod:`fcn_dist.perf`), so only the
  service's own costs differ.

Utilisation: FLOPs of one training step (forward + backward, counted by
``torch.utils.flop_counter`` at the crop size) times steps/s, over a GEMM peak measured in the
same run at the dtype the step computes in.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

from fcn_dist.bench.timing import gemm_peak, machine_info
from fcn_dist.spec import JobSpec, size2

__all__ = ["format_train_table", "plain_loop", "run_train_bench", "service_run", "train_flops"]


def _threads() -> int:
    from fcn_dist.perf import physical_cores

    return int(os.environ.get("FCN_TRAIN_THREADS") or 0) or physical_cores()


def _model(spec: JobSpec, num_classes: int) -> torch.nn.Module:
    from fcn_dist.models import create_model

    torch.manual_seed(spec.seed)
    return create_model(spec.model_name, num_classes, backbone_weights=None,
                        upsample=spec.upsample, skip_scale=spec.skip_scale)


def train_flops(spec: JobSpec, num_classes: int) -> float:
    """FLOPs of one training step on one image at the crop size (forward + backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    h, w = size2(spec.crop_size)
    model = _model(spec, num_classes).train()
    x = torch.randn(2, 3, h, w)
    y = torch.randint(0, num_classes, (2, h, w))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 2


def plain_loop(spec: JobSpec, data_dir: str, *, steps: int, ignore_index: int) -> dict[str, Any]:
    """``steps`` optimizer steps of the plain loop; per-step seconds by part."""
    from fcn_dist.data import ShardDataset
    from fcn_dist.data.transforms import to_tv, train_transform
    from fcn_dist.perf import prepare_for_training, training_settings

    torch.set_num_threads(_threads())
    ds = ShardDataset(data_dir, "train")
    held = [tuple(t.as_subclass(torch.Tensor) for t in to_tv(*ds.raw(i))) for i in range(len(ds))]
    augment = train_transform(spec.crop_size, ignore_index, scale_range=tuple(spec.scale_range))
    model = _model(spec, ds.manifest.num_classes).train()
    settings = training_settings(torch.device("cpu"), spec.amp)  # the service's precision policy
    prepare_for_training(model, settings)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    g = torch.Generator().manual_seed(spec.seed)
    parts: dict[str, list[float]] = {"data": [], "forward_backward": [], "optimizer": []}
    order: list[int] = []
    t_start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        if len(order) < spec.batch_size:
            order += torch.randperm(len(held), generator=g).tolist()
        idx, order = order[:spec.batch_size], order[spec.batch_size:]
        pairs = [augment(*held[i]) for i in idx]
        x, y = settings.batch(torch.stack([p[0] for p in pairs])), torch.stack([p[1] for p in pairs])
        t1 = time.perf_counter()
        with settings.autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, ignore_index=ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:  # the spec's recipe, not a service cost
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        t2 = time.perf_counter()
        opt.step()
        loss.item()  # the loop reads its loss every step, as the service does
        t3 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
            parts[k].append(v)
    total = time.perf_counter() - t_start
    steady = {k: statistics.median(v[1:] or v) for k, v in parts.items()}
    timed = [sum(p) for p in zip(*parts.values())][1:]  # the first step (warm-up) left out
    return {"images_per_second": spec.batch_size * len(timed) / sum(timed),
            "step_seconds": statistics.median(timed),
            "breakdown_seconds": steady, "steps": steps, "wall_seconds": total,
            "threads": torch.get_num_threads(), "train_images": len(held)}


def service_run(spec: JobSpec, work: str) -> dict[str, Any]:
    """One run through :func:`fcn_dist.train.run`; its epoch rows' figures."""
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    store = tempfile.mkdtemp(prefix="store-", dir=work)
    os.environ["FCN_STORE"] = store  # the run's rows go to a store of its own
    t0 = time.perf_counter()
    result = run(spec, run_dir=tempfile.mkdtemp(prefix="run-", dir=work))
    wall = time.perf_counter() - t0
    rows = sorted(ResultsStore(store).epochs().to_pylist(), key=lambda r: r["epoch"])
    steady = rows[1:] or rows
    ips = statistics.median(r["images_per_second"] for r in steady)
    step_s = statistics.median(r["step_seconds"] for r in steady if r.get("step_seconds"))
    steps = spec.steps_per_epoch
    per_epoch = steps * spec.batch_size * spec.num_workers  # images

    def split(r: dict[str, Any]) -> dict[str, float]:
        train_s = per_epoch / r["images_per_second"]  # the epoch's training time
        return {"first_batch_wait": train_s - steps * r["step_seconds"],  # pipeline (re)start
                "validation_checkpoint_report": r["epoch_seconds"] - train_s}

    per = [split(r) for r in steady if r.get("step_seconds") and r.get("images_per_second")]
    data_s = result.get("data_seconds")
    return {"images_per_second": ips, "step_seconds": step_s,
            "breakdown_seconds": {"data_wait": data_s,
                                  "step_compute": step_s - data_s if data_s is not None else None},
            "per_epoch_seconds": {k: statistics.median(p[k] for p in per) for k in per[0]}
            if per else {},
            "wall_seconds": wall,
            "wall_images_per_second": per_epoch * spec.epochs / wall,
            "epoch_seconds": [r["epoch_seconds"] for r in rows],
            # Ray start-up (first job), input checks, Ray Train set-up, the final scoring
            "outside_epochs_seconds": wall - sum(r["epoch_seconds"] for r in rows),
            "status": result.get("status"), "data_loader": spec.data_loader}


def run_train_bench(spec: JobSpec, *, repeats: int = 2, plain_steps: int | None = None,
                    say=lambda s: None) -> dict[str, Any]:
    """``repeats`` pairs (plain, service), who goes first alternating; figures as a dict."""
    from fcn_dist.data import read_manifest
    from fcn_dist.perf import training_settings

    data_dir = str(spec.data_dir())
    manifest = read_manifest(data_dir)
    if not spec.steps_per_epoch:
        raise ValueError("fcn-bench train needs steps_per_epoch (--set steps_per_epoch=N)")
    steps = plain_steps or spec.steps_per_epoch * max(1, spec.epochs - 1)
    res: dict[str, Any] = {"machine": machine_info(), "spec": spec.to_dict(), "plain": [],
                           "service": [], "threads": _threads()}
    with tempfile.TemporaryDirectory(prefix="fcn-bench-train-") as work:
        for rep in range(repeats):
            for kind in (("plain", "service") if rep % 2 == 0 else ("service", "plain")):
                say(f"pair {rep + 1}/{repeats}: {kind} ...")
                if kind == "plain":
                    res["plain"].append(plain_loop(spec, data_dir, steps=steps,
                                                   ignore_index=manifest.ignore_index))
                else:
                    res["service"].append(service_run(spec, work))
                say(f"  {res[kind][-1]['images_per_second']:.2f} images/s")
    service = statistics.median(r["images_per_second"] for r in res["service"])
    plain = statistics.median(r["images_per_second"] for r in res["plain"])
    res.update(service_images_per_second=service, plain_images_per_second=plain,
               ratio=service / plain)
    # utilisation of the training step, as for inference: FLOP/s over a GEMM peak of this run
    dtype = training_settings(torch.device("cpu"), spec.amp).amp_dtype or torch.float32
    peak = gemm_peak(dtype)["gflops"] * 1e9
    flops = train_flops(spec, manifest.num_classes)
    res.update(train_gflops_per_image=flops / 1e9, gemm_peak_gflops=peak / 1e9,
               gemm_dtype=str(dtype)[6:],
               service_utilisation=service * flops / peak, plain_utilisation=plain * flops / peak)
    return res


def format_train_table(res: dict[str, Any]) -> str:
    """The figures as a few lines of text."""
    def med(kind: str, key: str) -> float | None:
        vals = [r[key] for r in res[kind] if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def f(v: Any, spec: str = ".2f") -> str:
        return "n/a" if v is None else format(v, spec)

    sp = res["spec"]
    lines = [f"{sp['variant']} {sp['backbone']}, crop {sp['crop_size']}, batch {sp['batch_size']}, "
             f"{res['threads']} threads, {res['machine']['cpu']}",
             f"{'':14}{'images/s':>10}{'step s':>9}{'util':>8}",
             f"{'service':14}{f(res['service_images_per_second']):>10}"
             f"{f(med('service', 'step_seconds'), '.3f'):>9}{f(res['service_utilisation'], '.1%'):>8}",
             f"{'plain loop':14}{f(res['plain_images_per_second']):>10}"
             f"{f(med('plain', 'step_seconds'), '.3f'):>9}{f(res['plain_utilisation'], '.1%'):>8}",
             f"ratio service/plain {res['ratio']:.2f}  (GEMM peak {res['gemm_peak_gflops']:.0f} "
             f"GFLOP/s {res['gemm_dtype']}; {res['train_gflops_per_image']:.1f} GFLOP per image "
             "per training step)"]
    pb = {k: statistics.median(r["breakdown_seconds"][k] for r in res["plain"])
          for k in res["plain"][0]["breakdown_seconds"]}
    sb = res["service"][0]["breakdown_seconds"]
    lines.append("plain step: " + ", ".join(f"{k} {v:.3f} s" for k, v in pb.items()))
    lines.append("service step: " + ", ".join(f"{k} {f(v, '.3f')} s" for k, v in sb.items())
                 + "; per epoch: " + ", ".join(f"{k} {v:.2f} s" for k, v in
                                               res["service"][0]["per_epoch_seconds"].items())
                 + f"; outside epochs {f(med('service', 'outside_epochs_seconds'), '.1f')} s; "
                 f"{f(med('service', 'wall_images_per_second'))} images/s wall-clock")
    return "\n".join(lines)
