"""One training step and what it is made of: loss, optimizer, LR schedule, precision.

:func:`make_step_state` builds everything a step needs from a spec; :func:`train_step` runs one
step. The per-worker loop and ``fcn-bench model`` both call these, so the benchmark times the
step the service runs (same precision policy, layout, grad scaler, clipping, fused optimizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fcn_dist.models import param_groups
from fcn_dist.perf import TrainingSettings, fused_optimizer_ok, prepare_for_training, training_settings
from fcn_dist.spec import JobSpec


def dist_ready() -> bool:
    """Whether a torch.distributed process group is up (Ray Train's DDP set-up)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (a no-op in a single process)."""
    if dist_ready():
        torch.distributed.all_reduce(t)
    return t


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


def build_optimizer(model: nn.Module, spec: JobSpec) -> torch.optim.Optimizer:
    """AdamW (default) or SGD with momentum; no weight decay on biases and norm parameters;
    the fused implementation where the parameters' device has it."""
    groups = param_groups(model, spec.weight_decay)
    fused = fused_optimizer_ok(groups)  # one pass per tensor instead of a dozen elementwise ops
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=spec.lr, fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, spec: JobSpec,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The LR schedule, stepped once per optimizer step: linear warm-up over
    ``spec.warmup_epochs``, then cosine to 0, poly (power 0.9) to 0, or constant."""
    from torch.optim import lr_scheduler as S

    total = max(1, spec.epochs * steps_per_epoch)
    warmup = min(total - 1, int(round(spec.warmup_epochs * steps_per_epoch)))
    span = max(1, total - warmup)
    if spec.schedule == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=span, eta_min=0.0)
    elif spec.schedule == "poly":
        main = S.PolynomialLR(optimizer, total_iters=span, power=0.9)
    else:
        main = S.ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = S.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
    return S.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


@dataclass
class StepState:
    """What a training step needs; built once per run by :func:`make_step_state`."""

    model: nn.Module  # what the forward pass calls (DDP-wrapped under several ranks)
    bare: nn.Module  # the model itself (state dicts, BatchNorm buffers, evaluation)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    settings: TrainingSettings  # device, autocast dtype, layout, grad scaler (the precision policy)
    ignore_index: int
    class_weight: torch.Tensor | None = None
    grad_clip: float | None = None


def make_step_state(model: nn.Module, spec: JobSpec, *, device: torch.device, steps_per_epoch: int,
                    ignore_index: int, class_weights: list[float] | None = None,
                    wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> StepState:
    """Place ``model`` on ``device`` in the layout the precision policy picks, ``wrap`` it
    (``ray.train.torch.prepare_model`` for DDP), and build its optimizer, schedule and scaler."""
    settings = training_settings(device, spec.amp)
    prepare_for_training(model, settings)
    wrapped = wrap(model)
    bare = wrapped.module if hasattr(wrapped, "module") else wrapped
    optimizer = build_optimizer(bare, spec)
    weight = (torch.tensor(class_weights, dtype=torch.float32, device=device)
              if class_weights else None)
    return StepState(model=wrapped, bare=bare, optimizer=optimizer,
                     scheduler=build_scheduler(optimizer, spec, steps_per_epoch),
                     scaler=torch.amp.GradScaler(device.type, enabled=settings.use_grad_scaler),
                     settings=settings, ignore_index=ignore_index, class_weight=weight,
                     grad_clip=spec.grad_clip)


@dataclass
class StepOutput:
    """One step's outcome, identical on every rank (its loss sums are the global ones)."""

    logits: torch.Tensor  # this rank's logits (detached)
    target: torch.Tensor  # this rank's labels on the device
    loss_sum: torch.Tensor  # float64, summed over ranks
    norm: torch.Tensor  # float64, summed over ranks
    finite: bool  # False: a rank's loss was NaN/inf and no update was made
    stop: bool  # rank 0 asked every rank to stop after this step


def train_step(st: StepState, x: torch.Tensor, y: torch.Tensor, *, stop: bool = False) -> StepOutput:
    """Forward (autocast), fp32 loss, one tiny all-reduce so every rank takes the same decision
    (go on, stop, or fail on a non-finite loss) at the same step, then backward, clipping,
    optimizer and LR-schedule step.

    The loss backpropagated is the mean over every valid pixel of every rank's batch (the
    all-reduced normaliser), so a DDP step equals one process stepping on all batches at once."""
    device = st.settings.device
    x = st.settings.batch(x)
    y = y.to(device, non_blocking=True)
    with st.settings.autocast():
        logits = st.model(x)
    loss_sum, norm = segmentation_loss(logits, y, st.ignore_index, st.class_weight)
    flags = torch.stack([loss_sum.detach().double(), norm.detach().double(),
                         (~torch.isfinite(loss_sum.detach())).double(),
                         torch.tensor(float(stop), dtype=torch.float64, device=device)])
    all_reduce(flags)
    out = StepOutput(logits=logits.detach(), target=y, loss_sum=flags[0], norm=flags[1],
                     finite=bool(flags[2] == 0), stop=bool(flags[3] > 0))
    if out.finite:
        # normalise by the GLOBAL valid-pixel count (or class weight): DDP averages the ranks'
        # gradients, so world * local sum / global norm makes that average the gradient of the
        # global per-pixel mean, whatever share of ignore pixels each rank's crops hold
        world = torch.distributed.get_world_size() if dist_ready() else 1
        scale = world / out.norm.clamp_min(1e-12)
        optimizer_step(loss_sum * scale.to(loss_sum.dtype), st.bare, st.optimizer, st.scaler,
                       st.grad_clip)
        st.scheduler.step()
    return out


def optimizer_step(loss: torch.Tensor, model: nn.Module, optimizer, scaler, grad_clip: float | None) -> None:
    """Backward (through the AMP grad scaler), optional global-norm clipping, optimizer step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
