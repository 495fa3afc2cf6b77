"""Training: step settings for a device, and a head-only model over a fast frozen backbone.

    settings = training_settings(device, amp="auto")
    model = prepare_for_training(model, settings)           # channels_last
    x = settings.batch(x)                                   # channels_last input
    with settings.autocast(): logits = model(x)

and, for the frozen-backbone configuration (the Keras example's: backbone and fc6/fc7 frozen),
:class:`FrozenBackboneFCN`, which runs the frozen backbone through the inference path of
:mod:`fcn_dist.perf.inference` (bf16, fused, no autograd graph) and trains only the head.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fcn_dist.perf.inference import fuse_conv_bn_relu
from fcn_dist.perf.precision import Precision, precision_for

__all__ = [
    "FrozenBackboneFCN",
    "TrainingSettings",
    "fused_optimizer_ok",
    "prepare_for_training",
    "training_settings",
]


@dataclass(frozen=True)
class TrainingSettings:
    """How the train loop should run a step on a device (see :func:`training_settings`)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = float32
    channels_last: bool
    use_grad_scaler: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for the forward pass (a no-op for float32)."""
        return Precision(self.device, self.amp_dtype or torch.float32).autocast()

    def batch(self, x: Tensor) -> Tensor:
        """An input batch on the device, channels_last when that is the setting."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def training_settings(device: torch.device | str = "cpu", amp: str = "auto") -> TrainingSettings:
    """Step settings: bf16 autocast where native (fp16 + GradScaler on old GPUs); channels_last
    on CUDA and with an autocast dtype (not for fp32 training on a CPU)."""
    p = precision_for(device, amp)
    device, amp_dtype = p.device, p.autocast_dtype
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # channels_last pays off with bf16/fp16 kernels and cuDNN; for fp32 training on a CPU it
    # is slower than NCHW (benchmarks/README.md)
    channels_last = device.type == "cuda" or amp_dtype is not None
    return TrainingSettings(device=device, amp_dtype=amp_dtype, channels_last=channels_last,
                            use_grad_scaler=p.grad_scaler)


def prepare_for_training(model: nn.Module, settings: TrainingSettings) -> nn.Module:
    """Move ``model`` to the device in channels_last (in place; returns it). Before DDP."""
    model.to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def fused_optimizer_ok(params: Any) -> bool:
    """Whether ``torch.optim.AdamW/SGD(..., fused=True)`` can take ``params`` (tensors or
    param groups): floating-point tensors all on one device type with fused kernels (CPU, CUDA).

    The fused step is one multi-threaded pass over each tensor instead of a dozen elementwise
    ops, a large share of a full fine-tuning step on a CPU (``benchmarks/README.md``).
    """
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    kinds = {t.device.type for t in tensors}
    return (bool(tensors) and len(kinds) == 1
            and kinds <= set(_get_fused_kernels_supported_devices())
            and all(t.is_floating_point() for t in tensors))


class FrozenBackboneFCN(nn.Module):
    """Train an FCN's head on a frozen backbone (the Keras example's configuration).

    The backbone (for VGG: conv layers and fc6/fc7) runs without autograd through the
    inference path (bf16 where native, fused conv+ReLU, pre-packed weights, channels_last) —
    dropout after fc6/fc7 still applies in training mode; only ``model.head`` has gradients.
    ``parameters()`` are the head's; ``state_dict()`` is the full FCN's. Call
    :meth:`sync_backbone` if the backbone weights are changed afterwards.
    """

    def __init__(self, model: nn.Module, settings: TrainingSettings) -> None:
        super().__init__()
        self.settings = settings
        self.head = model.head
        self._full = [model]  # not a submodule: parameters() = the head's only
        for p in model.backbone.parameters():
            p.requires_grad_(False)
        self.sync_backbone()

    def sync_backbone(self) -> None:
        """(Re)build the fast frozen copy of the backbone from the model's current weights."""
        model = self._full[0]
        dtype = self.settings.amp_dtype or torch.float32
        bb = copy.deepcopy(model.backbone)
        if self.settings.device.type == "cpu":
            fuse_conv_bn_relu(bb)
        # the frozen backbone is an inference path: channels_last whatever the head trains in
        bb = bb.to(self.settings.device, dtype=dtype).to(memory_format=torch.channels_last)
        self._backbone = [bb]

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return self._full[0].state_dict(*args, **kwargs)

    def train(self, mode: bool = True) -> "FrozenBackboneFCN":
        super().train(mode)
        self._backbone[0].train(mode)  # dropout on during training; BN folded, so no stats
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, C, H, W) (the head's output dtype under autocast)."""
        bb = self._backbone[0]
        dtype = self.settings.amp_dtype or torch.float32
        with torch.no_grad():
            xb = self.settings.batch(x).to(dtype).contiguous(memory_format=torch.channels_last)
            feats = bb(xb)
        with self.settings.autocast():
            return self.head(feats, x.shape[-2:])
