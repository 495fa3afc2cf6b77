"""One FCN head parameterised by the taps it fuses; builders, registry, staged init.

FCN-32s, -16s and -8s differ only in which backbone taps are scored and summed:

    32s: s32                 16s: s32 + s16            8s: s32 + s16 + s8

All three share the same upsampling chain — 1/32 -> x2 -> 1/16 -> x2 -> 1/8 -> x8 -> 1/1 —
and add a skip's score where the chain passes that skip's resolution. (The paper's FCN-32s
upsamples x32 in one transposed conv; we factor it as x2, x2, x8.) Because the chain is the
same and a new skip's score layer starts at zero, an FCN-16s initialised from an FCN-32s with
:func:`stage_init` computes *exactly* the FCN-32s output (and 8s from 16s), whatever the
upsampling mode: a single x16 / x32 transposed conv would not compose to the same function.

Alignment is by position and by shape, not by the paper's 100-pixel padding and crop offsets.
Position: every backbone declares where its taps' features are centred (``Tap.offset``: feature
i of a stride-s tap sits at input pixel s*i + offset), and each upsampling step puts its source
features exactly there on its target grid — the next skip's features, and finally the input's
pixels — so an s32 score is added to the s16/s8 scores of the same place and output pixel i is
centred on input pixel i. (A fixed align_corners=False placement assumes offset (s-1)/2, which
holds for VGG but puts ResNet/MobileNet s32 scores 15.5 px off.) Shape: every step targets the
exact size of the next skip (and finally of the input), so logits have the input's H and W for
any input size. For transposed convs (kernel 2f, stride f) the padding and the centre of the
bilinear kernel inside its 2f taps set the placement; the few extra rows/columns a size needs
come from ``output_padding`` (up to f-1), a longer result is cropped at the bottom/right, and
anything further (not produced by the registered backbones) is replicate-padded.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from fcn_dist.errors import SpecError, WeightsError
from fcn_dist.models.backbones import Backbone, Tap, create_backbone, list_backbones
from fcn_dist.spec import PREVIOUS_VARIANT, UPSAMPLE_MODES, VARIANTS

__all__ = [
    "FCN",
    "FCNHead",
    "Upsample",
    "VARIANTS",
    "VARIANT_TAPS",
    "bilinear_kernel",
    "create_model",
    "freeze_backbone",
    "list_models",
    "param_groups",
    "parse_model_name",
    "stage_init",
]

# Which taps each variant scores and sums, coarsest first (the variants are spec.VARIANTS).
VARIANT_TAPS: dict[str, tuple[str, ...]] = {
    "32s": ("s32",),
    "16s": ("s32", "s16"),
    "8s": ("s32", "s16", "s8"),
}
if tuple(VARIANT_TAPS) != VARIANTS:
    raise ImportError(f"VARIANT_TAPS keys {list(VARIANT_TAPS)} differ from spec.VARIANTS {VARIANTS}")

# At-once training (paper, PAMI): scale skips before scoring so they start small.
SKIP_SCALES: dict[str, float] = {"s16": 0.01, "s8": 1e-4}


def bilinear_kernel(size: int, center: float | None = None) -> Tensor:
    """2-D bilinear interpolation kernel of ``size`` x ``size`` (as Caffe FCN's surgery.interp).

    ``center``: the tap (fractional allowed) the kernel peaks at; by default the middle. A
    kernel of 2f taps holds a full bilinear of factor f for any centre in [f-1, f].
    """
    factor = (size + 1) // 2
    if center is None:
        center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    filt = (1 - (og - center).abs() / factor).clamp(min=0)
    return (filt[:, None] * filt[None, :]).float()


class Upsample(nn.Module):
    """Upsample by ``factor`` to an exact target size, source features placed at ``offset``.

    ``offset``: where source feature 0 lies on the target grid, in target pixels (source
    feature i at ``factor * i + offset``); the default ``(factor - 1) / 2`` is the
    ``align_corners=False`` placement. ``mode="learned"``: a transposed conv (channels ->
    channels, kernel 2*factor, stride factor, no bias), initialised to per-channel bilinear
    (identity across channels) centred so that it places the source at ``offset``, trained.
    ``"fixed"``: the same bilinear kernel, frozen (a non-persistent buffer, depthwise).
    ``"interp"``: bilinear interpolation sampling the source exactly at
    ``(j - offset) / factor`` for target pixel j (clamped at the border, like
    ``F.interpolate``). In the interior the three agree at init; at the border the transposed
    convs see zero padding.
    """

    def __init__(self, channels: int, factor: int, mode: str = "learned",
                 offset: float | None = None) -> None:
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise SpecError(f"unknown upsample mode {mode!r}; valid: {', '.join(UPSAMPLE_MODES)}")
        if factor < 2 or factor % 2:
            raise ValueError(f"upsampling factor must be even and >= 2, got {factor}")
        offset = (factor - 1) / 2 if offset is None else float(offset)
        # Transposed conv: source i reaches target f*i - padding + k, the kernel peaks at tap
        # `center`; so offset = center - padding with center in [f-1, f] (the kernel's 2f taps).
        padding = math.ceil(factor - 1 - offset - 1e-9)
        if padding < 0:
            raise ValueError(f"source offset {offset} is more than factor - 1 = {factor - 1} "
                             "target pixels: the tap offsets do not fit this upsampling")
        self.channels, self.factor, self.mode, self.offset = channels, factor, mode, offset
        self.padding = padding
        kernel = bilinear_kernel(2 * factor, center=padding + offset)
        if mode == "learned":
            weight = torch.zeros(channels, channels, 2 * factor, 2 * factor)
            weight[range(channels), range(channels)] = kernel
            self.weight = nn.Parameter(weight)
        elif mode == "fixed":
            weight = kernel.expand(channels, 1, 2 * factor, 2 * factor).clone()
            self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: Tensor, size: Iterable[int]) -> Tensor:
        """Upsample ``x`` (N, C, h, w) to exactly ``size`` (H, W)."""
        th, tw = (int(s) for s in size)
        if self.mode == "interp":
            h, w = x.shape[-2:]
            rows = self._interp_matrix(th, h, x)  # (th, h)
            cols = self._interp_matrix(tw, w, x)  # (tw, w)
            return rows @ (x @ cols.T)  # separable: columns, then rows
        f, p = self.factor, self.padding
        h, w = x.shape[-2:]
        # (h+1)*f - 2p rows come out; output_padding adds up to f-1 more at the bottom/right.
        oph = min(max(th - ((h + 1) * f - 2 * p), 0), f - 1)
        opw = min(max(tw - ((w + 1) * f - 2 * p), 0), f - 1)
        groups = self.channels if self.mode == "fixed" else 1
        weight = self.weight.to(x.dtype)
        y = F.conv_transpose2d(
            x, weight, stride=f, padding=p, output_padding=(oph, opw), groups=groups
        )
        y = y[..., :th, :tw]  # crop when the target is smaller (ceil-mode backbones)
        ph, pw = th - y.shape[-2], tw - y.shape[-1]
        if ph > 0 or pw > 0:  # never for registered backbones; keeps "any size" total
            y = F.pad(y, (0, pw, 0, ph), mode="replicate")
        return y

    def _interp_matrix(self, n_out: int, n_in: int, like: Tensor) -> Tensor:
        """(n_out, n_in) bilinear weights: target j samples the source at (j - offset) / f."""
        u = (torch.arange(n_out, device=like.device, dtype=torch.float64) - self.offset) / self.factor
        u = u.clamp(0, n_in - 1)
        lo = u.floor().long()
        hi = (lo + 1).clamp(max=n_in - 1)
        frac = u - lo
        m = torch.zeros(n_out, n_in, device=like.device, dtype=torch.float64)
        j = torch.arange(n_out, device=like.device)
        m.index_put_((j, lo), 1 - frac, accumulate=True)
        m.index_put_((j, hi), frac, accumulate=True)
        return m.to(like.dtype)

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, factor={self.factor}, mode={self.mode}, "
                f"offset={self.offset:g}")


def _score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1x1 conv scoring a tap, weights and bias zero (no ReLU after it)."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _placed_upsample(src: Tap, dst: Tap, channels: int, mode: str) -> Upsample:
    """The upsampling from tap ``src``'s grid onto ``dst``'s: source feature 0 (input pixel
    ``src.offset``) lies at ``(src.offset - dst.offset) / dst.stride`` target pixels."""
    if src.stride % dst.stride:
        raise ValueError(f"tap strides must divide each other, got {src.stride} -> {dst.stride}")
    return Upsample(channels, src.stride // dst.stride, mode,
                    offset=(src.offset - dst.offset) / dst.stride)


class FCNHead(nn.Module):
    """Scores the taps in ``fuse`` and sums them along the shared upsampling chain.

    Submodules: ``score_s32`` / ``score_s16`` / ``score_s8`` (only those fused),
    ``up_s16`` (1/32 -> 1/16), ``up_s8`` (1/16 -> 1/8), ``up_out`` (1/8 -> input size). Each
    upsampling places its source where the taps' offsets say it is on its target grid, so
    scores are summed at the place they describe and output pixel i is centred on input pixel i.
    """

    def __init__(
        self,
        taps: Mapping[str, Tap],
        fuse: tuple[str, ...],
        num_classes: int,
        upsample: str = "learned",
        skip_scale: bool = False,
    ) -> None:
        super().__init__()
        if fuse[0] != "s32" or any(t not in taps for t in fuse):
            raise ValueError(f"fuse must start at s32 and name declared taps, got {fuse}")
        self.fuse = tuple(fuse)
        self.num_classes = num_classes
        scaled = [t for t in fuse if t in SKIP_SCALES] if skip_scale else []
        self.skip_scales = {t: SKIP_SCALES[t] for t in scaled}
        for tap in fuse:
            self.add_module(f"score_{tap}", _score_layer(taps[tap][0], num_classes))
        if any(len(taps[t]) != 3 for t in ("s8", "s16", "s32")):
            raise ValueError(f"taps must be Tap(channels, stride, offset), got {dict(taps)}")
        grid = {t: Tap(*taps[t]) for t in ("s8", "s16", "s32")}
        grid["out"] = Tap(num_classes, 1, 0.0)  # output pixel i is centred on input pixel i
        self.up_s16 = _placed_upsample(grid["s32"], grid["s16"], num_classes, upsample)
        self.up_s8 = _placed_upsample(grid["s16"], grid["s8"], num_classes, upsample)
        self.up_out = _placed_upsample(grid["s8"], grid["out"], num_classes, upsample)

    def _score(self, tap: str, feats: Mapping[str, Tensor]) -> Tensor:
        x = feats[tap]
        if tap in self.skip_scales:
            x = x * self.skip_scales[tap]  # pool4 * 0.01, pool3 * 1e-4 (at-once training)
        return getattr(self, f"score_{tap}")(x)

    def forward(self, feats: Mapping[str, Tensor], size: Iterable[int]) -> Tensor:
        """Fuse ``feats`` (tap -> map) into logits of exactly ``size`` (H, W)."""
        x = self._score("s32", feats)  # 1/32
        x = self.up_s16(x, feats["s16"].shape[-2:])  # 1/16
        if "s16" in self.fuse:
            x = x + self._score("s16", feats)  # fuse pool4 / layer3 at 1/16
        x = self.up_s8(x, feats["s8"].shape[-2:])  # 1/8
        if "s8" in self.fuse:
            x = x + self._score("s8", feats)  # fuse pool3 / layer2 at 1/8
        return self.up_out(x, size)  # 1/1


class FCN(nn.Module):
    """Backbone (taps s8/s16/s32) -> FCN head; ``forward(x)`` returns (N, C, H, W) logits."""

    def __init__(
        self,
        backbone: Backbone,
        variant: str,
        num_classes: int,
        *,
        upsample: str = "learned",
        skip_scale: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANT_TAPS:
            raise SpecError(f"unknown FCN variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.variant = variant
        self.backbone_name = backbone.name
        self.num_classes = num_classes
        self.upsample = upsample
        self.skip_scale = skip_scale
        self.backbone = backbone
        self.head = FCNHead(backbone.taps, VARIANT_TAPS[variant], num_classes, upsample, skip_scale)

    @property
    def name(self) -> str:
        """Registry name, e.g. ``fcn8s_vgg16``."""
        return f"fcn{self.variant}_{self.backbone_name}"

    def forward(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes, H, W) for images (N, 3, H, W) of any H, W."""
        return self.head(self.backbone(x), x.shape[-2:])


def list_models() -> list[str]:
    """Every model name ``fcn{32s,16s,8s}_{backbone}``."""
    return [f"fcn{v}_{b}" for b in list_backbones() for v in VARIANTS]


def parse_model_name(name: str) -> tuple[str, str]:
    """``"fcn8s_vgg16"`` -> ``("8s", "vgg16")``; SpecError listing valid names otherwise."""
    if name in list_models():
        head, _, backbone = name.partition("_")
        return head[len("fcn"):], backbone
    raise SpecError(f"unknown model {name!r}; valid: {', '.join(list_models())}")


def create_model(
    name: str,
    num_classes: int,
    backbone_weights: str | os.PathLike[str] | None = None,
    *,
    upsample: str = "learned",
    skip_scale: bool = False,
) -> FCN:
    """Build a registered FCN (``list_models()``) with ``num_classes`` output channels.

    ``backbone_weights``: None (random), ``"imagenet"`` (torchvision's official weights) or a
    path to a torchvision-format state dict. ``upsample``: ``"learned"``, ``"fixed"`` or
    ``"interp"``. ``skip_scale``: scale pool4 by 0.01 and pool3 by 1e-4 (at-once training).
    """
    variant, backbone_name = parse_model_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SpecError(f"num_classes must be a positive integer, got {num_classes!r}")
    if upsample not in UPSAMPLE_MODES:
        raise SpecError(f"unknown upsample mode {upsample!r}; valid: {', '.join(UPSAMPLE_MODES)}")
    backbone = create_backbone(backbone_name, backbone_weights)
    return FCN(backbone, variant, num_classes, upsample=upsample, skip_scale=skip_scale)


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile


def _strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``state`` without wrapper prefixes, however nested (``module._orig_mod.``)."""
    out = dict(state)  # consume_prefix_in_state_dict_if_present edits in place
    while any(key.startswith(_WRAPPER_PREFIXES) for key in out):
        for prefix in _WRAPPER_PREFIXES:
            consume_prefix_in_state_dict_if_present(out, prefix)
    return out


def stage_init(model: FCN, previous_state_dict: Mapping[str, Tensor] | nn.Module) -> FCN:
    """Staged init: load an FCN-32s state into an FCN-16s (or 16s into 8s), in place.

    Every tensor of the previous model is copied (the backbone, the score layers, the shared
    upsampling chain); only the score layer NEW in this stage (16s: ``score_s16``, 8s:
    ``score_s8``) is set to zero, so right after this the new model's output equals the
    previous model's exactly. Loading the same variant also works (a plain load). Raises
    WeightsError naming the keys when a layer of the previous stage is missing or mis-shaped
    (another backbone, classes or upsample mode, or a truncated state).
    """
    if isinstance(previous_state_dict, nn.Module):
        previous_state_dict = previous_state_dict.state_dict()
    prev = _strip_wrappers(previous_state_dict)
    own = model.state_dict()
    previous_taps = VARIANT_TAPS[PREVIOUS_VARIANT.get(model.variant, model.variant)]
    if all(any(k.startswith(f"head.score_{t}.") for k in prev) for t in model.head.fuse):
        previous_taps = model.head.fuse  # the same variant: a plain load
    new_scores = [f"head.score_{t}." for t in model.head.fuse if t not in previous_taps]
    unexpected = [k for k in prev if k not in own]
    missing = [k for k in own if k not in prev and not k.startswith(tuple(new_scores))]
    mismatched = [
        f"{k} (previous {tuple(prev[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in prev and prev[k].shape != own[k].shape
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + ", ".join(mismatched[:8]))
    if missing:
        problems.append("missing keys: " + ", ".join(missing[:8]))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:8]))
    if problems:
        raise WeightsError(
            f"cannot stage-initialise {model.name} (upsample={model.upsample}, "
            f"{model.num_classes} classes) from this state dict; stages go 32s -> 16s -> 8s with "
            "the same backbone, classes and upsample mode: " + "; ".join(problems)
        )
    merged = dict(own)
    merged.update(prev)
    for key in own:
        if key not in prev:  # a score layer new in this stage: exactly zero
            merged[key] = torch.zeros_like(own[key])
    model.load_state_dict(merged, strict=True)
    return model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups: weight decay on conv/linear weights, none on biases and norm params.

    Only parameters with ``requires_grad`` are included (freeze before building the optimizer).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def freeze_backbone(model: FCN, frozen: bool = True) -> FCN:
    """Freeze (or unfreeze) ``model.backbone`` — for VGG that includes fc6/fc7."""
    for param in model.backbone.parameters():
        param.requires_grad_(not frozen)
    return model
