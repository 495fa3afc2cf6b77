"""The training loop that runs on every Ray Train worker (one DDP rank each).

Plain PyTorch: Ray Train owns the processes, the process group (gloo on CPU, NCCL on GPU), the
device placement and restarts; this file owns one epoch after another::

    state = set_up(cfg)                        # resume or stage-init, DDP, optimizer, data
    for epoch in ...:
        part = train_one_epoch(state, epoch)   # steps (fcn_dist.train.step.train_step)
        val = validate(state)                  # this rank's share of val, metrics synced
        save_and_report(state, epoch, ...)     # rank 0: checkpoint + epoch row; all: report

Agreement between ranks: every step ends in one tiny all-reduce carrying the loss sums, a
non-finite flag and the stop flag, so every rank takes the same decision at the same step.

Data order: ``data_loader="ray"`` streams this rank's split of a Ray Dataset (fast, not bitwise
repeatable); ``"torch"`` reads the Parquet shards directly in an order seeded by (seed, epoch)
with per-(epoch, rank) seeded augmentation, so a resumed run repeats an uninterrupted one
exactly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from fcn_dist import checkpoint as ckpt_io
from fcn_dist import fs as fsio
from fcn_dist.errors import FcnError
from fcn_dist.data.transforms import Preprocessing
from fcn_dist.spec import JobSpec, size2
from fcn_dist.train import metrics as M
from fcn_dist.train.evaluate import evaluate, scoring_dataset
from fcn_dist.train.hooks import LoopHooks
from fcn_dist.train.progress import StepProgress
from fcn_dist.train.step import StepState, dist_ready, make_step_state, all_reduce, train_step

STOP_FILE = "STOP"  # written into the run dir by the driver when should_stop() says so
SCORE_ATTRIBUTE = "miou"  # the val mIoU: what CheckpointConfig ranks checkpoints by


@dataclass
class LoopConfig:
    """Everything a worker needs besides the spec, decided once by the driver
    (:func:`fcn_dist.train.trainer.run`). Travels to the workers as ``train_loop_config``."""

    spec: JobSpec
    run_id: str
    run_dir: str
    data_dir: str
    dataset: str
    num_classes: int
    classes: list[str]
    ignore_index: int
    val_split: str
    steps_per_epoch: int  # optimizer steps per epoch on each rank
    data_loader: str  # "ray" | "torch"
    eval_size: list[int] | None = None  # network input [h, w] at validation; None = native
    palette: list[list[int]] | None = None
    job_id: str | None = None
    store_dir: str | None = None
    init_from: str | None = None
    class_weights: list[float] | None = None
    loader_workers: int = 0  # validation decoding processes
    hooks: LoopHooks = field(default_factory=LoopHooks)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopConfig":
        spec = JobSpec.from_dict(d["spec"], source=f"job {d['run_id']}")
        return cls(**{**d, "spec": spec, "hooks": d.get("hooks") or LoopHooks()})


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, rank)."""
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**31)


@dataclass
class RankState:
    """One rank's run: its place in the job, the step state, data, and counters to resume."""

    cfg: LoopConfig
    rank: int
    world: int
    device: torch.device
    step: StepState
    preprocessing: Preprocessing
    val_ds: Any
    train_ds: Any = None  # ShardDataset (data_loader "torch") ...
    shard: Any = None  # ... or this rank's Ray Data split ("ray")
    store: Any = None  # the results store (rank 0)
    shown: StepProgress | None = None  # progress.json for the driver (rank 0)
    params: int = 0
    start_epoch: int = 1
    skip_steps: int = 0  # resuming mid-epoch: steps of start_epoch already trained
    rng_restore: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None  # the interrupted epoch's sums
    totals: dict[str, Any] = field(default_factory=lambda: {
        "train_seconds": 0.0, "train_images": 0, "image_seconds": 0.0,
        "best_val_miou": -1.0, "best_epoch": 0})

    @property
    def spec(self) -> JobSpec:
        return self.cfg.spec


# --------------------------------------------------------------------------- set-up
def set_up(cfg: LoopConfig) -> RankState:
    """This rank's device and threads, the model (resumed, stage-initialised or fresh, then
    DDP), optimizer, schedule, data, and the training state of a checkpoint to resume."""
    import ray.train
    import ray.train.torch

    from fcn_dist.data import ShardDataset
    from fcn_dist.data.transforms import train_transform

    spec = cfg.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if isinstance(device, list):  # several GPUs per worker: use the first
        device = device[0]
    cfg.hooks.on_start(rank, fsio.location(cfg.run_dir))
    if device.type == "cpu":
        # Intra-op threads = this node's cores shared by its local workers: more threads than
        # cores makes oneDNN's OpenMP barriers spin against each other. FCN_TRAIN_THREADS overrides.
        from fcn_dist.perf import physical_cores, reuse_freed_memory, set_threads

        set_threads(int(os.environ.get("FCN_TRAIN_THREADS") or 0)
                    or max(1, physical_cores() // max(1, ctx.get_local_world_size())))
        reuse_freed_memory()  # batches' activations reused, not page-faulted in every step
    if spec.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        torch.backends.cudnn.benchmark = False

    resume = ray.train.get_checkpoint()
    model = _build_model(cfg, pretrained=resume is None, local_rank=ctx.get_local_rank(), world=world)
    train_state = None
    if resume is not None:
        with resume.as_directory() as d:
            model.load_state_dict(ckpt_io.load_state_dict(d))
            train_state = ckpt_io.load_train_state(d)
    elif cfg.init_from:
        from fcn_dist.models import stage_init

        stage_init(model, ckpt_io.load_state_dict(cfg.init_from))
    params = sum(p.numel() for p in model.parameters())
    step = make_step_state(model, spec, device=device, steps_per_epoch=cfg.steps_per_epoch,
                           ignore_index=cfg.ignore_index, class_weights=cfg.class_weights,
                           wrap=ray.train.torch.prepare_model)  # device + DDP (world > 1)

    pre, val_ds = validation_data(cfg)
    state = RankState(cfg=cfg, rank=rank, world=world, device=device, step=step,
                      preprocessing=pre, params=params, val_ds=val_ds)
    if cfg.data_loader == "torch":
        from fcn_dist.config import decoded_cache_bytes

        state.train_ds = ShardDataset(cfg.data_dir, "train", transform=train_transform(
            spec.crop_size, cfg.ignore_index, scale_range=tuple(spec.scale_range)),
            keep_decoded=decoded_cache_bytes())
    else:
        state.shard = ray.train.get_dataset_shard("train")
    if rank == 0 and cfg.store_dir:
        from fcn_dist.store import ResultsStore

        state.store = ResultsStore(cfg.store_dir)
    if rank == 0:
        state.shown = StepProgress(cfg.run_dir, cfg.run_id, spec.epochs, cfg.steps_per_epoch)
    if train_state is not None:
        _restore(state, train_state)
    return state


def validation_data(cfg: LoopConfig) -> tuple[Preprocessing, Any]:
    """The run's preprocessing (``cfg.eval_size``, None = native; saved in every checkpoint)
    and its val split as :func:`~fcn_dist.train.evaluate.evaluate` scores it."""
    pre = Preprocessing(size2(cfg.eval_size) if cfg.eval_size else None)
    return pre, scoring_dataset(cfg.data_dir, cfg.val_split, pre)


def _build_model(cfg: LoopConfig, *, pretrained: bool, local_rank: int, world: int) -> torch.nn.Module:
    """The spec's model, the same on every rank (same seed; DDP also broadcasts rank 0's).
    A resumed run overwrites every weight, so pretrained weights are fetched only when fresh."""
    from fcn_dist.models import create_model

    spec = cfg.spec
    weights = spec.backbone_weights if pretrained else None

    def make() -> torch.nn.Module:
        ckpt_io.seed_everything(spec.seed)
        return create_model(spec.model_name, cfg.num_classes, backbone_weights=weights,
                            upsample=spec.upsample, skip_scale=spec.skip_scale)

    if world > 1 and weights == "imagenet":
        # one download per node: local rank 0 fills the torch hub cache, the others wait
        model = make() if local_rank == 0 else None
        torch.distributed.barrier()
        return model if model is not None else make()
    return make()


def _restore(state: RankState, saved: dict[str, Any]) -> None:
    """Optimizer, schedule, scaler and counters of a checkpoint; where to start again."""
    st = state.step
    st.optimizer.load_state_dict(saved["optimizer"])
    st.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        st.scaler.load_state_dict(saved["scaler"])
    state.totals.update(saved.get("totals", {}))
    if saved.get("step_in_epoch"):  # stopped mid-epoch: finish that epoch
        state.start_epoch, state.skip_steps = int(saved["epoch"]), int(saved["step_in_epoch"])
        rngs = saved.get("rng") or []
        if len(rngs) == state.world:
            state.rng_restore = rngs[state.rank]
        state.progress = saved.get("progress")
    else:
        state.start_epoch = int(saved["epoch"]) + 1


# --------------------------------------------------------------------------- training
@dataclass
class EpochTrain:
    """What one epoch of training steps left behind (global sums, identical on every rank)."""

    steps: int  # steps of this epoch done, including those before a resume
    images: int  # over all ranks
    started: float  # perf_counter at the epoch's start (earlier when resumed mid-epoch)
    seconds: float  # of training steps
    loss_stats: torch.Tensor  # (loss sum, normaliser) over all ranks
    confusion: torch.Tensor  # global training confusion matrix
    step_seconds: float  # median steady step time (NaN when there is none)
    data_seconds: float  # of which waiting for the batch
    stopped: bool = False
    failure: str | None = None

    @property
    def loss(self) -> float:
        return float(self.loss_stats[0] / self.loss_stats[1].clamp_min(1e-12))


def _batches(state: RankState, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    spec = state.spec
    if state.train_ds is not None:
        return _torch_batches(state.train_ds, epoch=epoch, seed=spec.seed, rank=state.rank,
                              world=state.world, batch_size=spec.batch_size, skip=skip,
                              max_steps=spec.steps_per_epoch)
    return _ray_batches(state.shard, batch_size=spec.batch_size, skip=skip,
                        max_steps=spec.steps_per_epoch)


def train_one_epoch(state: RankState, epoch: int) -> EpochTrain:
    """The epoch's training steps (the rest of it when resuming mid-epoch)."""
    cfg, device, hooks = state.cfg, state.device, state.cfg.hooks
    skip = state.skip_steps if epoch == state.start_epoch else 0
    prog = state.progress if skip else None
    if skip and state.rng_restore is not None:
        ckpt_io.set_rng_state(state.rng_restore)
    else:
        ckpt_io.seed_everything(epoch_seed(state.spec.seed, epoch, state.rank + 1))
    t0 = time.perf_counter() - (float(prog["seconds"]) if prog else 0.0)
    train_cm = M.confusion_matrix_metric(cfg.num_classes, cfg.ignore_index, device)
    loss_stats = torch.zeros(2, dtype=torch.float64, device=device)
    images = 0
    if prog:  # the epoch's sums before the stop (global ones, held by rank 0 alone)
        loss_stats += prog["loss_stats"].to(device, torch.float64)  # identical on all ranks
        if state.rank == 0:
            train_cm.confmat += prog["train_cm"].to(device, train_cm.confmat.dtype)
            images = int(prog["images"])
    stop_requested = StopFile(cfg.run_dir) if state.rank == 0 else (lambda: False)
    step, stopped = skip, False
    if state.shown is not None:
        state.shown.start_epoch(epoch, step)
    # wall time of each step, its data fetch included (CPU ops are synchronous and the loss
    # flags sync the GPU every step): the median is the steady step time
    step_times: list[float] = []
    data_times: list[float] = []
    t_step = time.perf_counter()
    for x, y in hooks.wrap_batches(_batches(state, epoch, skip)):
        t_step += hooks.take_waited()  # time a pacing hook held us is not ours
        data_times.append(time.perf_counter() - t_step)
        out = train_step(state.step, x, y, stop=stop_requested())
        if not out.finite:
            lr = state.step.scheduler.get_last_lr()[0]
            return EpochTrain(step, images, t0, 0.0, loss_stats, train_cm.confmat, math.nan, math.nan,
                              failure=f"non-finite training loss at epoch {epoch}, step {step + 1} "
                                      f"(lr {lr:.3g}); the last good checkpoint is kept")
        step += 1
        images += x.shape[0]
        loss_stats += torch.stack([out.loss_sum, out.norm])
        train_cm.update(out.logits.argmax(1), out.target)
        now = time.perf_counter()
        step_times.append(now - t_step)
        t_step = now
        if state.shown is not None:
            state.shown.step(epoch, step)
        if out.stop:
            stopped = True
            break
    seconds = time.perf_counter() - t0
    img_t = all_reduce(torch.tensor([images], dtype=torch.float64, device=device))
    return EpochTrain(step, int(img_t.item()), t0, seconds, loss_stats, train_cm.compute(),
                      _steady_median(step_times), _steady_median(data_times), stopped=stopped)


class StopFile:
    """Whether the driver asked the run to stop: the STOP file in the run dir. Checked every
    step locally; on object storage at most once a second (a request per step would cost more
    than a small step), and a failed check is a "no", never the end of the run."""

    def __init__(self, run_dir: str):
        self.loc = fsio.location(run_dir) / STOP_FILE
        self.every = 0.0 if isinstance(self.loc, Path) else 1.0
        self._next = 0.0

    def __call__(self) -> bool:
        if self.every:
            now = time.monotonic()
            if now < self._next:
                return False
            self._next = now + self.every
        try:
            return fsio.exists(self.loc)
        except FcnError:
            return False


def _torch_batches(dataset, *, epoch: int, seed: int, rank: int, world: int, batch_size: int,
                   skip: int, max_steps: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's batches of one epoch: a (seed, epoch)-seeded permutation, strided by rank.

    Every rank gets the same number of samples (the tail that does not divide evenly is
    dropped for this epoch; the next epoch's permutation drops others).
    """
    n = len(dataset)
    per_rank = n // world
    g = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
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


# --------------------------------------------------------------------------- validation
def validate(state: RankState) -> dict[str, Any]:
    """Metrics of the whole val split (each rank scores its share; the sums are synced), by
    the same :func:`~fcn_dist.train.evaluate.evaluate` as the final score: at the labels'
    original size. The val loss is weighted by the run's class weights, as the training loss is."""
    bare = state.step.bare
    # BatchNorm running stats drift apart per rank (each updates them with its own batch):
    # take rank 0's, the ones the checkpoint holds, so validation evaluates that model
    if dist_ready():
        for buf in bare.buffers():
            torch.distributed.broadcast(buf, 0)
    spec = state.spec
    return evaluate(bare, state.val_ds, num_classes=state.cfg.num_classes,
                    ignore_index=state.cfg.ignore_index,
                    batch_size=spec.eval_batch_size or spec.batch_size,
                    indices=list(range(state.rank, len(state.val_ds), state.world)),
                    device=state.device, amp_dtype=state.step.settings.amp_dtype,
                    num_workers=state.cfg.loader_workers, class_weight=state.step.class_weight,
                    class_names=state.cfg.classes)


def epoch_metrics(state: RankState, epoch: int, part: EpochTrain, val: dict[str, Any],
                  epoch_seconds: float) -> dict[str, Any]:
    """THE metrics of an epoch: what ``ray.train.report`` sends, the checkpoint's meta holds,
    the store's epoch row has (plus the run's ids) and the progress line prints."""
    train = M.summarize(part.confusion.cpu().numpy())
    ips = part.images / part.seconds if part.seconds > 0 else 0.0
    return {
        "epoch": epoch, "train_loss": part.loss, "val_loss": val["loss"],
        "miou": val["miou"], "pixel_accuracy": val["pixel_accuracy"],
        "mean_accuracy": val["mean_accuracy"], "fwiou": val["fwiou"],
        "train_miou": train["miou"], "train_pixel_accuracy": train["pixel_accuracy"],
        "lr": float(state.step.scheduler.get_last_lr()[0]), "epoch_seconds": epoch_seconds,
        "images_per_second": ips, "step_seconds": _finite_or_none(part.step_seconds),
        "data_seconds": _finite_or_none(part.data_seconds), "world_size": state.world,
        "device": state.device.type,
    }


# --------------------------------------------------------------------------- checkpoints
def save_and_report(state: RankState, epoch: int, step_in_epoch: int, metrics: dict[str, Any],
                    progress: dict[str, Any] | None = None) -> None:
    """Rank 0 writes the checkpoint directory; every rank calls ``ray.train.report``.

    ``step_in_epoch`` > 0 marks a mid-epoch stop: a checkpoint that resumes at that step, with
    the epoch's sums so far (``progress``), never ranked as the best."""
    import ray.train

    rngs = _gather_rng(state.world)
    name = f"epoch_{epoch:04d}" + (f"_step_{step_in_epoch:06d}" if step_in_epoch else "")
    reported = {**{k: _finite(v) if isinstance(v, float) else v for k, v in metrics.items()},
                "partial": 1 if step_in_epoch else 0}
    if state.rank != 0:
        ray.train.report(reported, checkpoint=None, checkpoint_dir_name=name)
        return
    st, cfg, spec = state.step, state.cfg, state.spec
    train_state = {
        "optimizer": st.optimizer.state_dict(), "scheduler": st.scheduler.state_dict(),
        "scaler": st.scaler.state_dict() if st.settings.use_grad_scaler else {}, "epoch": epoch,
        "step_in_epoch": step_in_epoch, "rng": rngs, "totals": dict(state.totals),
        "world_size": state.world, "progress": progress,
    }
    meta = {
        "model_name": spec.model_name, "variant": spec.variant, "backbone": spec.backbone,
        "num_classes": cfg.num_classes, "classes": cfg.classes, "palette": cfg.palette,
        "ignore_index": cfg.ignore_index, "preprocessing": state.preprocessing.to_dict(),
        "eval_size": list(state.preprocessing.size) if state.preprocessing.size else None,
        "upsample": spec.upsample,
        "skip_scale": spec.skip_scale, "dataset": cfg.dataset, "run_id": cfg.run_id,
        "job_id": cfg.job_id, "spec": spec.to_dict(), "params": state.params,
        "epoch": epoch, "step_in_epoch": step_in_epoch,
        "metrics": {k: v for k, v in reported.items() if not isinstance(v, (dict, list))},
    }
    with tempfile.TemporaryDirectory(prefix="fcn-ckpt-") as tmp:
        ckpt_io.save_checkpoint(tmp, st.bare.state_dict(), meta, train_state)
        ray.train.report(reported, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=name)


def _gather_rng(world: int) -> list[dict[str, Any]]:
    mine = ckpt_io.rng_state()
    if not dist_ready():
        return [mine]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, mine)
    return out


# --------------------------------------------------------------------------- the loop
def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point; ``config`` is a :class:`LoopConfig` as a dict.

    Returns (rank 0 only) ``{"status": "completed"|"stopped"|"failed", ...}``: Ray hands it to
    the driver as ``Result.return_value``.
    """
    state = set_up(LoopConfig.from_dict(config))
    cfg, spec, totals = state.cfg, state.spec, state.totals
    state.step.model.train()
    epoch = state.start_epoch - 1
    for epoch in range(state.start_epoch, spec.epochs + 1):
        part = train_one_epoch(state, epoch)
        if part.failure is not None:
            return {"status": "failed", "error": part.failure, "epoch": epoch} if state.rank == 0 else None
        if part.stopped and part.steps < cfg.steps_per_epoch:
            progress = {"loss_stats": part.loss_stats.cpu(), "train_cm": part.confusion.cpu(),
                        "images": part.images, "seconds": part.seconds}
            save_and_report(state, epoch, part.steps, {"epoch": epoch, SCORE_ATTRIBUTE: -1.0,
                                                       "step": part.steps}, progress=progress)
            return _summary("stopped", epoch, state)
        totals["train_images"] += part.images
        totals["image_seconds"] += part.seconds
        val = validate(state)
        t_epoch = time.perf_counter() - part.started
        totals["train_seconds"] += t_epoch
        if val["miou"] > totals["best_val_miou"]:
            totals["best_val_miou"], totals["best_epoch"] = float(val["miou"]), epoch
        totals["step_seconds"], totals["data_seconds"] = part.step_seconds, part.data_seconds
        metrics = epoch_metrics(state, epoch, part, val, t_epoch)
        if state.rank == 0:
            _record_epoch(state, metrics)
        save_and_report(state, epoch, 0, metrics)
        if part.stopped and epoch < spec.epochs:
            return _summary("stopped", epoch, state)
    return _summary("completed", epoch, state)


def _record_epoch(state: RankState, metrics: dict[str, Any]) -> None:
    """Rank 0: the epoch row (before the report: a crash in between repeats the row, never
    loses it), the Ray metrics endpoint and the driver's progress file."""
    from fcn_dist import monitoring

    cfg = state.cfg
    ids = {"run_id": cfg.run_id, "job_id": cfg.job_id, "variant": state.spec.variant,
           "backbone": state.spec.backbone, "dataset": cfg.dataset}
    if state.store is not None:
        from fcn_dist.store import EPOCH_SCHEMA

        state.store.append_epochs([{**ids, **{k: v for k, v in metrics.items()
                                              if k in EPOCH_SCHEMA.names}}])
    monitoring.record_epoch(cfg.job_id or cfg.run_id, state.spec.variant, epoch=metrics["epoch"],
                            epoch_seconds=metrics["epoch_seconds"],
                            images_per_second=metrics["images_per_second"],
                            val_miou=metrics["miou"], train_loss=metrics["train_loss"])
    if state.shown is not None:
        state.shown.end_epoch(metrics)


def _steady_median(times: list[float]) -> float:
    """Median of an epoch's per-step times without the first (NaN when there are none)."""
    steady = times[1:] or times
    return statistics.median(steady) if steady else math.nan


def _finite(v: float) -> float:
    return float(v) if math.isfinite(v) else 0.0


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _summary(status: str, epoch: int, state: RankState) -> dict[str, Any] | None:
    if state.rank != 0:
        return None
    t = state.totals
    ips = t["train_images"] / t["image_seconds"] if t["image_seconds"] > 0 else 0.0
    return {"status": status, "epoch": epoch, "best_epoch": t["best_epoch"],
            "best_val_miou": t["best_val_miou"], "train_seconds": t["train_seconds"],
            "images_per_second": ips,
            **{k: t[k] if math.isfinite(t.get(k, math.nan)) else None
               for k in ("step_seconds", "data_seconds")},
            "world_size": state.world, "device": state.device.type}
