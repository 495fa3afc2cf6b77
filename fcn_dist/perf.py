"""Speed settings for inference and training, measured by ``fcn-bench model``.

Inference (used by :mod:`fcn_dist.predict` and evaluation)::

    fast = optimize_for_inference(model)          # a new module; ``model`` is left as it is
    logits = fast(images)                         # float32 in, float32 logits out

What :func:`optimize_for_inference` does, and why (figures in ``benchmarks/README.md``):

- **bf16 weights and activations** where the hardware runs bf16 natively (CUDA with bf16,
  CPUs with ``avx512_bf16`` / AMX): the weights are cast once, not on every call as
  ``torch.autocast`` does under ``inference_mode`` (for VGG's fc6 that is 400 MB read and
  200 MB written per call). Logits come back as float32; softmax/argmax are unchanged.
- **channels_last** (NHWC): oneDNN's and cuDNN's fast convolution layouts; no reorders
  between layers.
- **conv + ReLU fused** into one oneDNN primitive (``mkldnn._convolution_pointwise`` with a
  ReLU post-op) on CPU: the ReLU is applied while the output is still in cache, and the
  weights are pre-packed once into oneDNN's blocked layout (an eager convolution re-packs
  them on every call). BatchNorm (ResNet, MobileNetV3) is folded into the preceding conv.
- ``torch.inference_mode`` around the forward; ``cudnn.benchmark`` on CUDA.
- freed memory kept for reuse on CPU (:func:`reuse_freed_memory`): big activations are not
  page-faulted in again on every call.
- optional ``compile=True``: ``torch.compile`` (Inductor, with weight freezing on CPU) on top.

Training (used by the train loop)::

    settings = training_settings(device, amp="auto")
    model = prepare_for_training(model, settings)           # channels_last
    x = settings.batch(x)                                   # channels_last input
    with settings.autocast(): logits = model(x)

and, for the frozen-backbone configuration (the Keras example's: backbone and fc6/fc7 frozen),
:class:`FrozenBackboneFCN`, which runs the frozen backbone through the inference path above
(bf16, fused, no autograd graph) and trains only the head.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ConvReLU",
    "Dropout",
    "FrozenBackboneFCN",
    "InferenceModel",
    "TrainingSettings",
    "cpu_supports_bf16",
    "fast_dtype",
    "fuse_conv_bn_relu",
    "fused_optimizer_ok",
    "optimize_for_inference",
    "physical_cores",
    "prepare_for_training",
    "reuse_freed_memory",
    "set_threads",
    "training_settings",
]


# ---------------------------------------------------------------------------------------------
# Hardware facts
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from ``/proc/cpuinfo`` (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True where the CPU computes bf16 natively (``avx512_bf16`` or AMX), so bf16 is faster.

    Without it oneDNN emulates bf16 and it is slower than fp32; ``FCN_CPU_BF16=0/1`` overrides.
    """
    env = os.environ.get("FCN_CPU_BF16")
    if env in ("0", "1"):
        return env == "1"
    flags = cpu_flags()
    native = bool({"avx512_bf16", "amx_bf16"} & flags)
    if not flags:  # not Linux: ask oneDNN
        with contextlib.suppress(Exception):
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return native


def fast_dtype(device: torch.device | str, amp: str = "auto") -> torch.dtype:
    """The compute dtype to use on ``device``: bf16 where native, else float32.

    ``amp``: ``"auto"`` (bf16 where native; fp16 on CUDA GPUs without bf16), ``"off"``
    (float32), ``"bf16"``, ``"fp16"`` (CUDA only; CPUs fall back to bf16/fp32).
    """
    device = torch.device(device)
    if amp == "off":
        return torch.float32
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp == "bf16" or cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def physical_cores() -> int:
    """Cores this process may run on (affinity), the thread count that suits oneDNN/MKL."""
    with contextlib.suppress(AttributeError):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def set_threads(n: int | None = None) -> int:
    """Intra-op threads = cores available (or ``n``), one inter-op thread; returns the count.

    More threads than cores (the default when several processes share a machine) makes
    oneDNN's OpenMP barriers spin against each other. Ray Train workers should pass their
    ``cpus_per_worker``.
    """
    n = int(n or physical_cores())
    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
        torch.set_num_interop_threads(1)
    return n


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>


@functools.lru_cache(maxsize=None)
def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide); True if it took effect.

    By default glibc serves every block above 32 MB with a fresh ``mmap`` and returns it to the
    kernel on ``free``, so each activation of a big batch is faulted in (and zeroed) page by
    page again on every forward: ~108,000 page faults per FCN-8s VGG19 batch of 8 at 224x224.
    Raising the mmap and trim thresholds keeps those pages in the process, which is what the
    jemalloc/tcmalloc set-ups of PyTorch's CPU tuning guide achieve; here without preloading a
    library. The cost: the process's RSS stays at its peak instead of shrinking after it.
    Measured on 2 AVX2 cores (``fcn-bench model --ablation``, fresh processes alternated):
    optimised inference of FCN-8s VGG19 224x224 batch 8 1.11x (2.27 -> 2.52 img/s; other A/B
    pairs +9 to +18 %), page faults per batch ~108,000 -> 0; a full fine-tuning step +9-11 %;
    batch-1 1024x1024 peak RSS 1.93 -> 2.37 GB (fragmentation).

    Only on Linux with glibc (elsewhere: False, nothing changes); ``FCN_MALLOC_REUSE=0`` turns
    it off. Called by :func:`optimize_for_inference` (CPU) and by the train loop's CPU workers.
    """
    if os.environ.get("FCN_MALLOC_REUSE", "1") == "0" or not _is_glibc():
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    # some glibc versions refuse an mmap threshold above HEAP_MAX_SIZE / 2 (32 MB): fall back
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 or mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
    return bool(ok and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1)


def _is_glibc() -> bool:
    import platform

    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


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
    shape: fc7 (a 1x1 conv, 4096 -> 4096) packed for a batch of 1 and run on a batch of 8 took
    753 ms instead of 42 ms, because oneDNN converted the weights back on every call. So packs
    are kept per input shape, the ``max_packs`` (2) most recently used ones: a batch size and
    the last, smaller batch of an epoch, or batch 1 beside batch N, each run at full speed; a
    new shape costs one re-pack. Packs are rebuilt when the weight changes. On any other
    device or dtype, or when autograd needs the graph, it falls back to ``relu(conv2d(x))``.
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


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn 4x faster on a CPU; elsewhere ``nn.Dropout`` itself.

    PyTorch's CPU ``bernoulli_`` draws about 80 M values/s: 22 ms for VGG's fc6 output at batch
    8, 224x224 (8 x 4096 x 7 x 7), twice per step (fc6, fc7), 4 % of a frozen-backbone step.
    Here the mask comes from ``torch.randint`` words cut into 16-bit halves (one draw per two
    elements; 5 ms with the multiply): an element is kept when its 16 bits are at or above the
    threshold, so ``p`` is rounded to a multiple of 1/65536 and survivors are scaled by
    1/(1 - that). Same generator (``torch.manual_seed`` repeats a mask), same autograd (the
    gradient is masked and scaled the same way), same ``state_dict`` (none).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        words = torch.randint(-2**31, 2**31, ((n + 1) // 2,), dtype=torch.int32)
        bits = words.view(torch.int16)[:n]
        # in x's own memory layout (channels_last too) where x is dense: a same-layout multiply
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        bits = bits.as_strided(x.shape, x.stride()) if dense else bits.view(x.shape)
        drop = min(65535, max(1, round(self.p * 65536)))  # out of 65536 values: dropped
        keep = bits >= drop - 32768
        mask = keep.to(x.dtype).mul_(65536 / (65536 - drop))
        return x.mul_(mask) if self.inplace else x * mask


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

    #: pixels (images x height x width) per forward call on a CPU; bigger batches are split.
    #: Activations of 8 images at 1024x1024 (1 GB a map) stream through DRAM layer after layer;
    #: in chunks of 2 FCN-8s VGG19 ran 0.37 instead of 0.29 img/s (2-core Zen 4), while 8 x 512
    #: x 512 (= this budget) was fastest whole (1.52 img/s; chunks of 4: 1.45).
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
    ``torch.dtype``, or an amp string as :func:`fast_dtype` takes. ``fuse``: fold BatchNorm
    and fuse conv+ReLU (oneDNN, CPU). ``compile``: also ``torch.compile`` it (Inductor; slow
    to start, first calls compile). ``inplace=True`` converts ``model`` itself instead of a
    copy (no second set of weights in memory; the caller must not train ``model`` afterwards).
    ``reuse_memory``: on CPU, call :func:`reuse_freed_memory` (process-wide: big activations
    are reused instead of faulted in again on every call). Outputs agree with the float32
    model to bf16 precision.
    """
    device = torch.device(device) if device is not None else next(
        (p.device for p in model.parameters()), torch.device("cpu"))
    if isinstance(dtype, str):
        dtype = fast_dtype(device, dtype)
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


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    """How the train loop should run a step on a device (see :func:`training_settings`)."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None = float32
    channels_last: bool
    use_grad_scaler: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for the forward pass (a no-op for float32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def batch(self, x: Tensor) -> Tensor:
        """An input batch on the device, channels_last when that is the setting."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def training_settings(device: torch.device | str = "cpu", amp: str = "auto") -> TrainingSettings:
    """Step settings: bf16 autocast where native (fp16 + GradScaler on old GPUs); channels_last
    on CUDA and with an autocast dtype (not for fp32 training on a CPU)."""
    device = torch.device(device)
    dtype = fast_dtype(device, amp)
    amp_dtype = None if dtype == torch.float32 else dtype
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # channels_last pays off with bf16/fp16 kernels and cuDNN; for fp32 training on a CPU it
    # is slower (AVX2 Zen 3, FCN-8s VGG19 224 batch 8: 0.44 vs 0.60 img/s NCHW)
    channels_last = device.type == "cuda" or amp_dtype is not None
    return TrainingSettings(device=device, amp_dtype=amp_dtype, channels_last=channels_last,
                            use_grad_scaler=amp_dtype == torch.float16)


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
    ops: AdamW on FCN-8s VGG19's 139.6 M parameters took 0.05-0.065 s instead of 0.17-0.30 s
    (2-core Zen 4; in a profiled full fine-tuning step the unfused one took 1.6 s of 5.7 s), and
    that step went from 1.45 to 2.07 img/s.
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

