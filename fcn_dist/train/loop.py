"""The training loop that runs on every Ray Train worker (one DDP rank each).

Plain PyTorch: Ray Train owns the processes, the process group (gloo on CPU, NCCL on GPU), the
device placement and restarts; this file owns one epoch after another:

    resume (ray.train.get_checkpoint) or stage-init -> prepare_model (DDP) ->
    for each epoch: train steps (AMP, fp32 loss, grad clipping, per-step LR schedule)
                    -> validation on this rank's share of the val split (torchmetrics, synced)
                    -> rank 0 writes the checkpoint + the epoch row; every rank calls report

Agreement between ranks: after each forward pass one tiny all-reduce carries the loss sum, the
valid-pixel count, a non-finite flag and the stop flag, so every rank takes the same decision
at the same step (stop, fail, or go on) and no rank is left waiting in a collective.

Data order: ``data_loader="ray"`` streams this rank's split of a Ray Dataset (fast, not bitwise
repeatable); ``"torch"`` reads the Parquet shards directly in an order seeded by (seed, epoch)
with per-(epoch, rank) seeded augmentation, so a resumed run repeats an uninterrupted one
exactly. ``"auto"`` picks ``torch`` when ``spec.deterministic`` is set.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from fcn_dist.train import checkpoint as ckpt_io
from fcn_dist.train import metrics as M

STOP_FILE = "STOP"  # written into the run dir by the driver when should_stop() says so
SCORE_ATTRIBUTE = "val_miou"  # what CheckpointConfig ranks checkpoints by


# --------------------------------------------------------------------------- small helpers
def _dist() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if _dist():
        torch.distributed.all_reduce(t)
    return t


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31)


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None, use GradScaler)`` for ``amp`` on ``device``.

    auto: bf16 on CUDA when the GPU supports it, else fp16 with a scaler; bf16 on CPUs with
    native bf16 (AVX512-BF16/AMX, via oneDNN), else off.
    """
    if amp == "off":
        return None, False
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16, True
        return torch.bfloat16, False
    # CPU: fp16 autocast has no fast kernels; bf16 only where the CPU has it natively
    try:
        native_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - older builds without the op
        native_bf16 = False
    if amp == "bf16" or (amp in ("auto", "fp16") and native_bf16):
        return torch.bfloat16, False
    return None, False


def autocast(device: torch.device, dtype: torch.dtype | None):
    """An autocast context for ``dtype`` on ``device`` (a no-op when dtype is None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                      weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss sum, normaliser)`` of pixel-wise cross-entropy in fp32.

    The mean loss is ``sum / normaliser`` (normaliser = number of valid pixels, or their total
    class weight); returning both lets a batch with no valid pixel give 0 instead of 0/0 = NaN,
    and lets ranks combine their losses exactly.
    """
    logits = logits.float()  # softmax and loss in fp32 whatever the autocast dtype
    loss_sum = F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = target != ignore_index
    if weight is None:
        norm = valid.sum().to(loss_sum.dtype)
    else:
        norm = weight[target[valid]].sum().to(loss_sum.dtype)
    return loss_sum, norm


class Schedule:
    """LR factor per optimizer step: linear warmup, then poly (power 0.9), cosine or constant."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int = 0, power: float = 0.9):
        self.kind = kind
        self.total_steps = max(1, int(total_steps))
        self.warmup_steps = max(0, int(warmup_steps))
        self.power = power

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        span = max(1, self.total_steps - self.warmup_steps)
        p = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "poly":
            return (1.0 - p) ** self.power
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * p))
        return 1.0


def build_optimizer(model: torch.nn.Module, spec) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum; no weight decay on biases and norm parameters;
    the fused implementation where the parameters' device has it."""
    from fcn_dist.models import param_groups
    from fcn_dist.perf import fused_optimizer_ok

    groups = param_groups(model, spec.weight_decay)
    fused = fused_optimizer_ok(groups)  # one pass per tensor: AdamW ~4x faster on a CPU
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=spec.lr, fused=fused)


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, *, num_classes: int, ignore_index: int,
             batch_size: int = 8, indices: list[int] | None = None, device: Any = "cpu",
             amp_dtype: torch.dtype | None = None, num_workers: int = 0) -> dict[str, Any]:
    """Confusion matrix, loss and metrics of ``model`` over ``dataset`` (``ShardDataset``-like).

    ``indices`` restricts this process to its share. Under ``torch.distributed`` the confusion
    matrix (torchmetrics) and the loss are summed over all ranks, so every rank returns the
    metrics of the whole split: the same numbers as one process evaluating every index.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm_metric = M.confusion_matrix_metric(num_classes, ignore_index, device)
    loss_stats = torch.zeros(2, dtype=torch.float64, device=device)
    idx = list(range(len(dataset))) if indices is None else list(indices)
    if num_workers > 0 and idx:  # decode in background processes (GPU runs); same order
        batches: Any = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, idx), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, pin_memory=device.type == "cuda")
    else:
        batches = (_stack([dataset[i] for i in idx[s:s + batch_size]])
                   for s in range(0, len(idx), batch_size))
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss_sum, norm = segmentation_loss(logits, y, ignore_index)
        loss_stats += torch.stack([loss_sum.double(), norm.double()])
        cm_metric.update(logits.argmax(1), y)
    cm = cm_metric.compute()  # torchmetrics syncs (sums) the matrices of all ranks here
    _all_reduce(loss_stats)
    model.train(was_training)
    cm_np = cm.cpu().numpy()
    out = M.summarize(cm_np)
    out["loss"] = float(loss_stats[0] / loss_stats[1].clamp_min(1))
    out["confusion_matrix"] = cm_np.astype("int64").tolist()
    return out


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


# --------------------------------------------------------------------------- training data
def _torch_batches(dataset, *, epoch: int, seed: int, rank: int, world: int, batch_size: int,
                   skip: int, max_steps: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of one epoch: a (seed, epoch)-seeded permutation, strided by rank.

    Every rank gets the same number of samples (the tail that does not divide evenly is
    dropped for this epoch; the next epoch's permutation drops others).
    """
    n = len(dataset)
    per_rank = n // world
    g = torch.Generator().manual_seed(_epoch_seed(seed, epoch, 0))
    order = torch.randperm(n, generator=g)[: per_rank * world].tolist()
    mine = order[rank::world]
    starts = list(range(0, len(mine), batch_size))
    if max_steps is not None:
        starts = starts[:max_steps]
    for s in starts[skip:]:
        items = [dataset[i] for i in mine[s:s + batch_size]]
        yield torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def _ray_batches(shard, *, batch_size: int, skip: int, max_steps: int | None,
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of one epoch from its Ray Data split (equal rows on every rank).

    Ray Data shuffles blocks, not rows; a local shuffle buffer of a few batches mixes the rows
    of neighbouring blocks so one batch is not a run of near-identical neighbours."""
    it = shard.iter_torch_batches(batch_size=batch_size, drop_last=False,
                                  local_shuffle_buffer_size=4 * batch_size,
                                  dtypes={"image": torch.float32, "label": torch.int64})
    for step, batch in enumerate(it):
        if max_steps is not None and step >= max_steps:
            break
        if step < skip:  # resuming mid-epoch: these steps were trained before the stop
            continue
        yield batch["image"], batch["label"]


class _Turns:
    """Benchmark only: two processes running this loop take strict turns, one step each.

    ``FCN_BENCH_TURNS=<dir>,<me>,<other>``: ``<dir>/<me>`` and ``<dir>/<other>`` are FIFOs; a
    step starts once a byte arrives on ours (a blocking read: no CPU while waiting) and hands
    the turn on by writing one to the other's. ``fcn-bench service`` runs the loop outside Ray
    and inside a Ray Train worker this way, so both are timed under the same machine load,
    step by step. A turn not handed back within ``timeout`` seconds is taken anyway.
    """

    def __init__(self, directory: str, me: str, other: str, timeout: float = 120.0) -> None:
        self._mine = os.open(os.path.join(directory, me), os.O_RDWR)
        self._theirs = os.open(os.path.join(directory, other), os.O_RDWR)
        self.timeout = timeout
        self._waited = 0.0

    @classmethod
    def from_env(cls) -> "_Turns | None":
        value = os.environ.get("FCN_BENCH_TURNS")
        if not value:
            return None
        directory, me, other = value.split(",")
        return cls(directory, me, other)

    def wait(self) -> None:
        import select

        t = time.perf_counter()
        ready, _, _ = select.select([self._mine], [], [], self.timeout)
        if ready:
            os.read(self._mine, 1)
        self._waited += time.perf_counter() - t

    def release(self) -> None:
        os.write(self._theirs, b"x")

    def take_waited(self) -> float:
        waited, self._waited = self._waited, 0.0
        return waited

    def alternate(self, batches: Iterator) -> Iterator:
        """``batches``, each fetched (and then trained on) during our turn."""
        it = iter(batches)
        while True:
            self.wait()
            try:
                item = next(it)
            except StopIteration:
                self.release()
                return
            yield item
            self.release()  # the consumer asked for the next batch: its step is done


def optimizer_step(loss: torch.Tensor, model: torch.nn.Module, optimizer, scaler,
                   grad_clip: float | None) -> None:
    """Backward (through the AMP grad scaler), optional global-norm clipping, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


# --------------------------------------------------------------------------- the loop
def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point; ``config`` is built by :func:`fcn_dist.train.trainer.run`.

    Returns (rank 0 only) ``{"status": "completed"|"stopped"|"failed", ...}``: Ray hands it to
    the driver as ``Result.return_value``.
    """
    import ray.train
    import ray.train.torch

    from fcn_dist.data import ShardDataset
    from fcn_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
    from fcn_dist.models import create_model, stage_init
    from fcn_dist.spec import JobSpec

    spec = JobSpec.from_dict(config["spec"], source=f"job {config['run_id']}")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_rank = ctx.get_local_rank()
    device = ray.train.torch.get_device()
    if isinstance(device, list):  # several GPUs per worker: use the first
        device = device[0]
    run_dir = Path(config["run_dir"])
    stop_file = run_dir / STOP_FILE
    # which process is which rank (operators and the fault-injection tests use it)
    with contextlib.suppress(OSError):
        (run_dir / f".worker-{rank}.pid").write_text(f"{os.getpid()}\n")
    data_dir = config["data_dir"]
    num_classes = int(config["num_classes"])
    ignore_index = int(config["ignore_index"])
    crop = list(spec.crop_size)
    eval_size = list(spec.eval_size or spec.crop_size)
    eval_bs = spec.eval_batch_size or spec.batch_size
    steps_per_epoch = int(config["steps_per_epoch"])

    if device.type == "cpu":
        # Intra-op threads = this node's cores shared by its local workers: more threads than
        # cores (each of 2 workers taking both cores of a 2-core node) makes oneDNN's OpenMP
        # barriers spin against each other. FCN_TRAIN_THREADS overrides.
        from fcn_dist.perf import physical_cores, reuse_freed_memory, set_threads

        set_threads(int(os.environ.get("FCN_TRAIN_THREADS") or 0)
                    or max(1, physical_cores() // max(1, ctx.get_local_world_size())))
        reuse_freed_memory()  # batches' activations reused, not page-faulted in every step
    if spec.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False
    amp_dtype, use_scaler = resolve_amp(spec.amp, device)

    # ---- model: same seed on every rank (DDP also broadcasts rank 0's weights)
    ckpt_io.seed_everything(spec.seed)

    resume = ray.train.get_checkpoint()
    # resuming overwrites every weight: no need to fetch the backbone's pretrained ones again
    weights = None if resume is not None else spec.backbone_weights

    def make_model():
        return create_model(spec.model_name, num_classes, backbone_weights=weights,
                            upsample=spec.upsample, skip_scale=spec.skip_scale)

    if world > 1 and weights == "imagenet":
        # one download per node: local rank 0 fills the torch hub cache, the others wait
        if local_rank == 0:
            model = make_model()
        torch.distributed.barrier()
        if local_rank != 0:
            model = make_model()
    else:
        model = make_model()

    state: dict[str, Any] | None = None
    if resume is not None:
        with resume.as_directory() as d:
            model.load_state_dict(ckpt_io.load_state_dict(d))
            state = ckpt_io.load_train_state(d)
    elif config.get("init_from"):
        stage_init(model, ckpt_io.load_state_dict(config["init_from"]))
    params = sum(p.numel() for p in model.parameters())

    model = ray.train.torch.prepare_model(model)  # device + DDP (when world > 1)
    bare = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(bare, spec)
    warmup_steps = int(round(spec.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, Schedule(spec.schedule, spec.epochs * steps_per_epoch, warmup_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    class_weight = (torch.tensor(config["class_weights"], dtype=torch.float32, device=device)
                    if config.get("class_weights") else None)

    # ---- training state (fresh or restored)
    start_epoch, skip_steps = 1, 0
    totals = {"train_seconds": 0.0, "train_images": 0, "image_seconds": 0.0,
              "best_val_miou": -1.0, "best_epoch": 0}
    rng_restore, progress = None, None
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        totals.update(state.get("totals", {}))
        if state.get("step_in_epoch"):  # stopped mid-epoch: finish that epoch
            start_epoch, skip_steps = int(state["epoch"]), int(state["step_in_epoch"])
            rngs = state.get("rng") or []
            if len(rngs) == world:
                rng_restore = rngs[rank]
            progress = state.get("progress")  # the epoch's loss/metric sums before the stop
        else:
            start_epoch = int(state["epoch"]) + 1

    # ---- data
    if config["data_loader"] == "torch":
        train_ds = ShardDataset(data_dir, "train", transform=train_transform(crop, ignore_index,
                                                                          scale_range=tuple(spec.scale_range)))
        shard = None
    else:
        train_ds = None
        shard = ray.train.get_dataset_shard("train")
    val_ds = ShardDataset(data_dir, config["val_split"], transform=eval_transform(eval_size))
    val_indices = list(range(rank, len(val_ds), world))

    store = None
    if rank == 0 and config.get("store_dir"):
        from fcn_dist.store import ResultsStore

        store = ResultsStore(config["store_dir"])

    meta_base = {
        "model_name": spec.model_name, "variant": spec.variant, "backbone": spec.backbone,
        "num_classes": num_classes, "classes": config["classes"], "palette": config["palette"],
        "ignore_index": ignore_index, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "eval_size": eval_size, "upsample": spec.upsample, "skip_scale": spec.skip_scale,
        "dataset": config["dataset"], "run_id": config["run_id"], "job_id": config.get("job_id"),
        "spec": spec.to_dict(), "params": params,
    }
    ids = {"run_id": config["run_id"], "job_id": config.get("job_id"), "variant": spec.variant,
           "backbone": spec.backbone, "dataset": config["dataset"]}

    def report(epoch: int, step_in_epoch: int, metrics: dict[str, Any],
               progress: dict[str, Any] | None = None) -> None:
        """Rank 0 writes the checkpoint directory; every rank calls ray.train.report."""
        rngs = _gather_rng()
        name = f"epoch_{epoch:04d}" + (f"_step_{step_in_epoch:06d}" if step_in_epoch else "")
        if rank != 0:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=name)
            return
        train_state = {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if use_scaler else {}, "epoch": epoch,
            "step_in_epoch": step_in_epoch, "rng": rngs, "totals": dict(totals),
            "world_size": world, "progress": progress,
        }
        meta = {**meta_base, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "metrics": {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}}
        with tempfile.TemporaryDirectory(prefix="fcn-ckpt-") as tmp:
            ckpt_io.save_checkpoint(tmp, bare.state_dict(), meta, train_state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=name)

    def _gather_rng() -> list[dict[str, Any]]:
        mine = ckpt_io.rng_state()
        if not _dist():
            return [mine]
        out: list[Any] = [None] * world
        torch.distributed.all_gather_object(out, mine)
        return out

    model.train()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, spec.epochs + 1):
        skip = skip_steps if epoch == start_epoch else 0
        prog = progress if skip else None
        t0 = time.perf_counter() - (float(prog["seconds"]) if prog else 0.0)
        if skip and rng_restore is not None:
            ckpt_io.set_rng_state(rng_restore)
        else:
            ckpt_io.seed_everything(_epoch_seed(spec.seed, epoch, rank + 1))
        if train_ds is not None:
            batches = _torch_batches(train_ds, epoch=epoch, seed=spec.seed, rank=rank, world=world,
                                     batch_size=spec.batch_size, skip=skip, max_steps=spec.steps_per_epoch)
        else:
            batches = _ray_batches(shard, batch_size=spec.batch_size, skip=skip,
                                   max_steps=spec.steps_per_epoch)
        train_cm = M.confusion_matrix_metric(num_classes, ignore_index, device)
        loss_stats = torch.zeros(2, dtype=torch.float64, device=device)
        images, step, stopped, failure = 0, skip, False, None
        # wall time of each step, its data fetch included (CPU ops are synchronous and the
        # loss flags below sync the GPU every step): the median is the steady step time that
        # the Ray Train overhead benchmark compares with the same loop run outside Ray
        step_times: list[float] = []
        data_times: list[float] = []  # of which waiting for the batch (loading, decoding)
        t_step = time.perf_counter()
        if prog:  # resuming mid-epoch: the sums so far (global ones, held by rank 0 alone)
            loss_stats += prog["loss_stats"].to(device, torch.float64)  # identical on all ranks
            if rank == 0:
                train_cm.confmat += prog["train_cm"].to(device, train_cm.confmat.dtype)
                images = int(prog["images"])
        turns = _Turns.from_env()
        if turns is not None:
            batches = turns.alternate(batches)
        for x, y in batches:
            if turns is not None:  # time spent waiting for the other process is not ours
                t_step += turns.take_waited()
            data_times.append(time.perf_counter() - t_step)
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            with autocast(device, amp_dtype):
                logits = model(x)
            loss_sum, norm = segmentation_loss(logits, y, ignore_index, class_weight)
            stop_now = 1.0 if (rank == 0 and stop_file.exists()) else 0.0
            flags = torch.stack([loss_sum.detach().double(), norm.detach().double(),
                                 torch.tensor(0.0 if torch.isfinite(loss_sum) else 1.0,
                                              dtype=torch.float64, device=device),
                                 torch.tensor(stop_now, dtype=torch.float64, device=device)])
            _all_reduce(flags)  # every rank now takes the same decision at this step
            if flags[2] > 0:
                failure = (f"non-finite training loss at epoch {epoch}, step {step + 1} "
                           f"(lr {scheduler.get_last_lr()[0]:.3g}); the last good checkpoint is kept")
                break
            optimizer_step(loss_sum / norm.clamp_min(1e-12), bare, optimizer, scaler, spec.grad_clip)
            scheduler.step()
            step += 1
            images += x.shape[0]
            loss_stats += flags[:2]
            train_cm.update(logits.detach().argmax(1), y)
            now = time.perf_counter()
            step_times.append(now - t_step)
            t_step = now
            if flags[3] > 0:
                stopped = True
                break
        train_seconds = time.perf_counter() - t0

        if failure is not None:
            return {"status": "failed", "error": failure, "epoch": epoch} if rank == 0 else None

        img_t = torch.tensor([images], dtype=torch.float64, device=device)
        _all_reduce(img_t)
        train_cm_global = train_cm.compute()  # synced over ranks

        if stopped and step < steps_per_epoch:
            # mid-epoch stop: a checkpoint that resumes at this very step (never the "best"),
            # with the epoch's sums so far so that its epoch row equals an uninterrupted one
            part = {"loss_stats": loss_stats.cpu(), "train_cm": train_cm_global.cpu(),
                    "images": int(img_t.item()), "seconds": train_seconds}
            report(epoch, step, {"epoch": epoch, SCORE_ATTRIBUTE: -1.0, "partial": 1, "step": step},
                   progress=part)
            return _summary("stopped", epoch, totals, world, device) if rank == 0 else None
        totals["train_images"] += int(img_t.item())
        totals["image_seconds"] += train_seconds
        train_summary = M.summarize(train_cm_global.cpu().numpy())

        # BatchNorm running stats drift apart per rank (each updates them with its own batch):
        # take rank 0's, the ones the checkpoint holds, so validation evaluates that model
        if _dist():
            for buf in bare.buffers():
                torch.distributed.broadcast(buf, 0)
        val = evaluate(bare, val_ds, num_classes=num_classes, ignore_index=ignore_index,
                       batch_size=eval_bs, indices=val_indices, device=device, amp_dtype=amp_dtype,
                       num_workers=int(config.get("loader_workers", 0)))
        epoch_seconds = time.perf_counter() - t0
        totals["train_seconds"] += epoch_seconds
        if val["miou"] > totals["best_val_miou"]:
            totals["best_val_miou"], totals["best_epoch"] = float(val["miou"]), epoch
        ips = img_t.item() / train_seconds if train_seconds > 0 else 0.0
        # the first step of an epoch also starts the data iterator (and, in epoch 1, warms up
        # the kernels): the median over the others is the steady-state step
        step_seconds = totals["step_seconds"] = _steady_median(step_times)
        totals["data_seconds"] = _steady_median(data_times)
        metrics = {
            "epoch": epoch, "partial": 0, SCORE_ATTRIBUTE: _finite(val["miou"]),
            "val_pixel_accuracy": val["pixel_accuracy"], "val_mean_accuracy": val["mean_accuracy"],
            "val_fwiou": val["fwiou"], "val_loss": val["loss"],
            "train_loss": float(loss_stats[0] / loss_stats[1].clamp_min(1e-12)),
            "train_miou": train_summary["miou"], "train_pixel_accuracy": train_summary["pixel_accuracy"],
            "lr": float(scheduler.get_last_lr()[0]), "epoch_seconds": epoch_seconds,
            "images_per_second": ips, "step_seconds": _finite(step_seconds),
            "data_seconds": _finite(totals["data_seconds"]), "world_size": world,
        }
        if store is not None:  # before report: a crash in between repeats the row, never loses it
            store.append_epochs([{
                **ids, "epoch": epoch, "train_loss": metrics["train_loss"], "val_loss": val["loss"],
                "miou": val["miou"], "pixel_accuracy": val["pixel_accuracy"],
                "mean_accuracy": val["mean_accuracy"], "fwiou": val["fwiou"],
                "train_miou": train_summary["miou"],
                "train_pixel_accuracy": train_summary["pixel_accuracy"], "lr": metrics["lr"],
                "epoch_seconds": epoch_seconds, "images_per_second": ips,
                "step_seconds": step_seconds if math.isfinite(step_seconds) else None,
                "world_size": world, "device": device.type,
            }])
        if rank == 0:  # Ray metrics endpoint (fcn_epoch_seconds, fcn_images_per_second, ...)
            from fcn_dist import monitoring

            monitoring.record_epoch(config.get("job_id") or config["run_id"], spec.variant,
                                    epoch=epoch, epoch_seconds=epoch_seconds,
                                    images_per_second=ips, val_miou=val["miou"],
                                    train_loss=metrics["train_loss"])
        if rank == 0:  # progress line (the driver shows worker output when Ray logs to it);
            # sys.stdout, not print: Ray Train patches print() and would show the line twice
            sys.stdout.write(
                f"[{config['run_id']}] epoch {epoch}/{spec.epochs}: train loss "
                f"{metrics['train_loss']:.4f}, val loss {val['loss']:.4f}, val mIoU {val['miou']:.4f}, "
                f"pixel acc {val['pixel_accuracy']:.4f} ({epoch_seconds:.1f} s, {ips:.1f} images/s)\n")
            sys.stdout.flush()
        report(epoch, 0, metrics)
        if stopped and epoch < spec.epochs:
            return _summary("stopped", epoch, totals, world, device) if rank == 0 else None

    return _summary("completed", epoch, totals, world, device) if rank == 0 else None


def _steady_median(times: list[float]) -> float:
    """Median of an epoch's per-step times without the first (NaN when there are none)."""
    steady = times[1:] or times
    return statistics.median(steady) if steady else math.nan


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else 0.0


def _summary(status: str, epoch: int, totals: dict[str, Any], world: int, device) -> dict[str, Any]:
    ips = totals["train_images"] / totals["image_seconds"] if totals["image_seconds"] > 0 else 0.0
    return {"status": status, "epoch": epoch, "best_epoch": totals["best_epoch"],
            "best_val_miou": totals["best_val_miou"], "train_seconds": totals["train_seconds"],
            "images_per_second": ips,
            **{k: totals[k] if math.isfinite(totals.get(k, math.nan)) else None
               for k in ("step_seconds", "data_seconds")},
            "world_size": world, "device": device.type}
