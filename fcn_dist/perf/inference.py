"""Inference: an inference-only fast copy of a model, and the conv+ReLU fusion it runs on.

    fast = optimize_for_inference(model)          # a new module; ``model`` is left as it is
    logits = fast(images)                         # float32 in, float32 logits out

What :func:`optimize_for_inference` does, and why (figures in ``benchmarks/README.md``):

- **bf16 weights and activations** where the hardware runs bf16 natively (the policy of
  :mod:`fcn_dist.perf.precision`): the weights are cast once, not on every call as
  ``torch.autocast`` does under ``inference_mode``. Logits come back as float32;
  softmax/argmax are unchanged.
- **channels_last** (NHWC): oneDNN's and cuDNN's fast convolution layouts; no reorders
  between layers.
- **conv + ReLU fused** into one oneDNN primitive (``mkldnn._convolution_pointwise`` with a
  ReLU post-op) on CPU: the ReLU is applied while the output is still in cache, and the
  weights are pre-packed once into oneDNN's blocked layout (an eager convolution re-packs
  them on every call). BatchNorm (ResNet, MobileNetV3) is folded into the preceding conv.
- ``torch.inference_mode`` around the forward; ``cudnn.benchmark`` on CUDA.
- freed memory kept for reuse on CPU (:func:`~fcn_dist.perf.reuse_freed_memory`): big
  activations are not page-faulted in again on every call.
- optional ``compile=True``: ``torch.compile`` (Inductor, with weight freezing on CPU) on top.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcn_dist.perf.hardware import reuse_freed_memory
from fcn_dist.perf.precision import precision_for

__all__ = ["ConvReLU", "InferenceModel", "fuse_conv_bn_relu", "optimize_for_inference"]


# ---------------------------------------------------------------------------------------------
# Fusion: BatchNorm folded into the conv, conv + ReLU as one oneDNN primitive
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _onednn_bf16() -> bool:
    """Whether oneDNN's bf16 convolution runs on this CPU (AVX-512 BW/VL/DQ or AVX-NE-CONVERT);
    elsewhere (e.g. AVX2-only CPUs) a bf16 ConvReLU takes the eager path."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - builds without the op
        return False


class ConvReLU(nn.Module):
    """A Conv2d followed by ReLU, as one oneDNN convolution with a ReLU post-op on CPU.

    The weight is pre-packed into oneDNN's blocked layout once per input shape (an eager
    convolution re-packs it on every call). The layout oneDNN picks depends on the input
    shape, and a pack made for another shape is converted back on every call (many times
    slower; ``benchmarks/README.md``). So packs are kept per input shape, the ``max_packs``
    (2) most recently used ones: a batch size and the last, smaller batch of an epoch, or
    batch 1 beside batch N, each run at full speed; a new shape costs one re-pack. Packs are
    rebuilt when the weight changes. On any other device or dtype, or when autograd needs the
    graph, it falls back to ``relu(conv2d(x))``.
    Build it with :func:`fuse_conv_bn_relu` after loading the weights.
    """

    max_packs = 2

    def __init__(self, conv: nn.Conv2d, relu: bool = True) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("ConvReLU needs explicit zero padding")
        self.conv = conv
        self.relu = relu
        self._packs: dict[tuple, Tensor] = {}  # (weight key, input shape) -> packed weight

    def _cpu_weight(self, x: Tensor) -> Tensor:
        w = self.conv.weight
        key = (w.dtype, w.data_ptr(), w._version, tuple(x.shape))
        packed = self._packs.pop(key, None)
        if packed is None:
            c = self.conv
            try:
                packed = torch.ops.mkldnn._reorder_convolution_weight(
                    w.detach(), list(c.padding), list(c.stride), list(c.dilation), c.groups,
                    list(x.shape))
            except (RuntimeError, AttributeError):
                packed = w.detach()
            for k in [k for k in self._packs if k[:3] != key[:3]]:
                del self._packs[k]  # packed from an older weight
            while len(self._packs) >= self.max_packs:
                del self._packs[next(iter(self._packs))]  # the least recently used
        self._packs[key] = packed  # (re)inserted last: the most recently used
        return packed

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or c.weight.requires_grad)
        if (x.device.type == "cpu" and not needs_grad and x.dtype == c.weight.dtype
                and (x.dtype == torch.float32
                     or (x.dtype == torch.bfloat16 and _onednn_bf16()))):
            y = torch.ops.mkldnn._convolution_pointwise(
                x, self._cpu_weight(x), c.bias, list(c.padding), list(c.stride),
                list(c.dilation), c.groups, "relu" if self.relu else "none", [], "")
            return y
        y = c(x)
        return F.relu(y) if self.relu else y

    def extra_repr(self) -> str:
        return f"relu={self.relu}"




def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval())


def _is_relu(m: nn.Module) -> bool:
    return isinstance(m, nn.ReLU)


def _fuse_sequential(seq: nn.Sequential) -> int:
    """Fold Conv2d(+BN)(+ReLU) runs inside ``seq`` in place; returns how many were fused."""
    names = list(seq._modules)
    fused = 0
    i = 0
    while i < len(names):
        m = seq._modules[names[i]]
        if isinstance(m, nn.Conv2d) and not isinstance(m, nn.ConvTranspose2d):
            j = i + 1
            conv = m
            if j < len(names) and isinstance(seq._modules[names[j]], nn.BatchNorm2d):
                conv = _fold_bn(conv, seq._modules[names[j]])
                seq._modules[names[j]] = nn.Identity()
                j += 1
            relu = j < len(names) and _is_relu(seq._modules[names[j]])
            if relu:
                seq._modules[names[j]] = nn.Identity()
                j += 1
            seq._modules[names[i]] = ConvReLU(conv, relu=relu)
            fused += 1
            i = j
        else:
            i += 1
    return fused


# attribute pairs (conv, bn, relu or None) in torchvision ResNet blocks / our VGG backbone
_ATTR_TRIPLES = (
    ("conv1", "bn1", None), ("conv2", "bn2", None), ("conv3", "bn3", None),
    ("fc6", None, "relu6"), ("fc7", None, "relu7"),
)


def fuse_conv_bn_relu(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm into convs and fuse conv + ReLU, in place; returns the count.

    Handles ``nn.Sequential`` runs (VGG features, MobileNetV3's Conv2dNormActivation, ResNet
    downsample) and the attribute pairs of ResNet blocks (``conv1``/``bn1``; the block's
    shared ReLU runs after the residual add and stays) and VGG's ``fc6``/``relu6``,
    ``fc7``/``relu7``. Only for inference: BatchNorm statistics are frozen into the weights.
    """
    fused = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            fused += _fuse_sequential(module)
        for conv_name, bn_name, relu_name in _ATTR_TRIPLES:
            conv = module._modules.get(conv_name)
            if not isinstance(conv, nn.Conv2d) or isinstance(conv, nn.ConvTranspose2d):
                continue
            bn = module._modules.get(bn_name) if bn_name else None
            relu = module._modules.get(relu_name) if relu_name else None
            if bn_name and not isinstance(bn, nn.BatchNorm2d):
                continue
            if bn is not None:
                conv = _fold_bn(conv, bn)
                module._modules[bn_name] = nn.Identity()
            with_relu = relu is not None and _is_relu(relu)
            if with_relu:
                module._modules[relu_name] = nn.Identity()
            module._modules[conv_name] = ConvReLU(conv, relu=with_relu)
            fused += 1
    return fused


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------


class InferenceModel(nn.Module):
    """An inference-only copy of a model: float32 images in, float32 logits out.

    Built by :func:`optimize_for_inference`; holds ``dtype``, ``channels_last``, ``device``.
    Attributes of the wrapped FCN (``num_classes``, ``variant``, ...) are forwarded.
    """

    #: pixels (images x height x width) per forward call on a CPU; bigger batches are split:
    #: the activations of a bigger call no longer fit in cache and stream through DRAM layer
    #: after layer (the chunk size measured fastest: ``benchmarks/README.md``).
    max_pixels = 1 << 21

    def __init__(self, model: nn.Module, *, dtype: torch.dtype, channels_last: bool,
                 device: torch.device, compiled: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype
        self.channels_last = channels_last
        self.device = device
        self._compiled = compiled

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["model"], name)

    def prepare(self, x: Tensor) -> Tensor:
        """Move/cast/lay out an input batch as the optimised model wants it."""
        x = x.to(self.device, dtype=self.dtype, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, C, H, W) float32 for images (N, 3, H, W) of any dtype/device.

        On a CPU a batch of more than :attr:`max_pixels` pixels runs in chunks of whole images
        that stay under it (see there); the logits are the same.
        """
        model = self._compiled or self.model
        with torch.inference_mode():
            per_chunk = (max(1, self.max_pixels // max(1, x.shape[-2] * x.shape[-1]))
                         if x.dim() == 4 else 0)
            if self.device.type != "cpu" or x.dim() != 4 or x.shape[0] <= per_chunk:
                return model(self.prepare(x)).float()
            return torch.cat([model(self.prepare(part)).float()
                              for part in x.split(per_chunk)])

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel is inference-only; train the original model")
        return super().train(False)


def optimize_for_inference(
    model: nn.Module,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype | str = "auto",
    channels_last: bool = True,
    fuse: bool = True,
    compile: bool = False,
    inplace: bool = False,
    reuse_memory: bool = True,
) -> InferenceModel:
    """An inference-only, fast copy of ``model`` (``model`` itself is not changed).

    ``dtype``: ``"auto"`` (bf16 where the device computes it natively, else float32), a
    ``torch.dtype``, or an amp string as :func:`~fcn_dist.perf.precision_for` takes. ``fuse``:
    fold BatchNorm and fuse conv+ReLU (oneDNN, CPU). ``compile``: also ``torch.compile`` it
    (Inductor; slow to start, first calls compile). ``inplace=True`` converts ``model`` itself
    instead of a copy (no second set of weights in memory; the caller must not train ``model``
    afterwards). ``reuse_memory``: on CPU, call
    :func:`~fcn_dist.perf.reuse_freed_memory` (process-wide: big activations
    are reused instead of faulted in again on every call). Outputs agree with the float32
    model to bf16 precision.
    """
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(dtype, str):
        dtype = precision_for(device, dtype).dtype
    if reuse_memory and device.type == "cpu":
        reuse_freed_memory()
    m = (model if inplace else copy.deepcopy(model)).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    if fuse and device.type == "cpu":
        fuse_conv_bn_relu(m)
    m = m.to(device=device, dtype=dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    compiled = None
    if compile:
        if device.type == "cpu":
            import torch._inductor.config as inductor_config

            inductor_config.freezing = True  # constant weights: oneDNN prepacking, fusions
        compiled = torch.compile(m, dynamic=False)
    return InferenceModel(m, dtype=dtype, channels_last=channels_last, device=device,
                          compiled=compiled)
