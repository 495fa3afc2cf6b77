"""Backbones: torchvision classifiers cut into named feature taps.

Every backbone is an ``nn.Module`` whose ``forward(x)`` returns ``{"s8", "s16", "s32"}`` — the
feature maps at 1/8, 1/16 and 1/32 of the input — and which declares them up front in
``taps`` (name -> :class:`Tap` ``(channels, stride, offset)``, like timm's ``feature_info``).
The FCN head only ever sees that dict, so any backbone fits any FCN variant.

``offset`` is where a tap's feature 0 is centred, in input pixels (pixel j centred at j):
feature i of a stride-s tap sits at ``s * i + offset``. It is the centre of the feature's
receptive field, fixed by the kernel sizes, strides and paddings. VGG's unpadded 2x2 pools each
shift by half their input stride: (s - 1) / 2 (3.5, 7.5, 15.5). ResNet and MobileNetV3
downsample with stride-2 convs/pools padded by (k - 1) / 2, which keep the centre: 0. The head
places every upsampling by these offsets; ``tests/test_models.py`` measures them for every
registered backbone from the gradient of one feature w.r.t. the input.

ResNet and MobileNetV3 are torchvision's own modules cut with torchvision's
``IntermediateLayerGetter`` (the children up to the last tap, run in order); VGG is built here
because fc6/fc7 turn its classifier into convs. Module names are torchvision's (``features.N``,
``layer3``, ...), so a torchvision-format state dict maps onto a backbone almost key for key;
only VGG's classifier is reshaped (``classifier.0`` -> ``fc6``, a 7x7 conv; ``classifier.3`` ->
``fc7``, a 1x1 conv).

Weights (``weights=`` of :func:`create_backbone`):

- ``None``: random init, as torchvision initialises the classifier.
- ``"imagenet"``: torchvision's official ``DEFAULT`` weights, taken from the torch hub cache
  (``$TORCH_HOME/hub/checkpoints/<file>.pth``) or downloaded into it. Without network this
  fails at once with :class:`~fcn_dist.errors.WeightsError` saying which file to put where.
- a path: a torchvision-format state dict (e.g. ``torchvision.models.vgg16().state_dict()``),
  read with ``torch.load(weights_only=True)``. Missing keys, unknown keys or wrong shapes raise
  :class:`~fcn_dist.errors.WeightsError` naming the keys.

Minimum input size: VGG pools with floor, so inputs need H, W >= 32 (pool5 at least 1x1).
ResNet and MobileNetV3 downsample with ceil and accept smaller inputs, but BatchNorm in training
mode needs more than one value per channel at 1/32 (batch 1 needs H, W > 32 there).
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import vgg as tv_vgg
from torchvision.models._utils import IntermediateLayerGetter

from fcn_dist.errors import SpecError, WeightsError
from fcn_dist.models.layers import Dropout
from fcn_dist.spec import BACKBONES

__all__ = [
    "Backbone",
    "Tap",
    "VGGBackbone",
    "ResNetBackbone",
    "MobileNetV3Backbone",
    "create_backbone",
    "list_backbones",
    "load_backbone_state",
    "imagenet_weights_file",
]

TAP_NAMES = ("s8", "s16", "s32")

# Seconds allowed for the reachability probe before an ImageNet download is attempted.
_PROBE_TIMEOUT_S = float(os.environ.get("FCN_DOWNLOAD_PROBE_TIMEOUT", "10"))


class Tap(NamedTuple):
    """A declared feature tap: feature i of it is centred at input pixel ``stride * i + offset``."""

    channels: int
    stride: int  # input pixels per feature
    offset: float  # input pixel (centre coordinates) on which feature 0 is centred


class Backbone(nn.Module):
    """Base class: ``forward(x) -> {"s8": ..., "s16": ..., "s32": ...}``.

    Subclasses set ``taps`` (name -> :class:`Tap`) and ``name``, and list the
    torchvision state-dict prefixes they drop (``ignored_prefixes``, e.g. the ImageNet
    classifier) in ``convert_torchvision_state``.
    """

    name: str = ""
    taps: dict[str, Tap] = {}
    ignored_prefixes: tuple[str, ...] = ()

    def forward(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def convert_torchvision_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map a torchvision classifier state dict onto this backbone's keys."""
        return {k: v for k, v in state.items() if not k.startswith(self.ignored_prefixes)}

    def torchvision_key(self, key: str) -> str:
        """The torchvision state-dict key a backbone key comes from (for error messages)."""
        return key


# ---------------------------------------------------------------------------------------------
# VGG: s8 = pool3, s16 = pool4, s32 = fc7 (fc6/fc7 are the ImageNet classifier made convolutional)
# ---------------------------------------------------------------------------------------------

_VGG_CFG = {"vgg16": "D", "vgg19": "E"}


class VGGBackbone(Backbone):
    """VGG16/19 conv layers plus fc6 (7x7 conv, 4096) and fc7 (1x1 conv, 4096), as in FCN.

    fc6 is padded by 3 so a pool5 map of any size (>= 1x1) keeps its size; at a position whose
    7x7 window lies inside the map it computes exactly torchvision's ``classifier.0`` Linear.
    """

    ignored_prefixes = ("classifier.6.",)  # the 1000-way ImageNet scores

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.features = tv_vgg.make_layers(tv_vgg.cfgs[_VGG_CFG[name]], batch_norm=False)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._pool3, self._pool4 = pools[2], pools[3]
        self.fc6 = nn.Conv2d(512, 4096, kernel_size=7, padding=3)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = Dropout(0.5)  # nn.Dropout with a faster CPU mask
        self.fc7 = nn.Conv2d(4096, 4096, kernel_size=1)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = Dropout(0.5)
        # Each unpadded 2x2/2 pool moves the centre by half its input stride: (s - 1) / 2.
        # fc6 (7x7, padding 3) and fc7 (1x1) keep pool5's centre.
        self.taps = {"s8": Tap(256, 8, 3.5), "s16": Tap(512, 16, 7.5), "s32": Tap(4096, 32, 15.5)}
        self._init_weights()

    def _init_weights(self) -> None:
        # As torchvision's VGG: kaiming convs, classifier N(0, 0.01), zero biases.
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in (self.fc6, self.fc7):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return pool3 (1/8), pool4 (1/16) and fc7 (1/32) feature maps."""
        out: dict[str, Tensor] = {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self._pool3:
                out["s8"] = x  # pool3, 1/8
            elif i == self._pool4:
                out["s16"] = x  # pool4, 1/16
        x = self.drop6(self.relu6(self.fc6(x)))  # pool5 -> fc6, 1/32
        x = self.drop7(self.relu7(self.fc7(x)))  # fc7, 1/32
        out["s32"] = x
        return out

    _FC_KEYS = {
        "classifier.0": ("fc6", (4096, 512, 7, 7)),
        "classifier.3": ("fc7", (4096, 4096, 1, 1)),
    }

    def convert_torchvision_state(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Reshape ``classifier.0`` / ``classifier.3`` (weights AND biases) into fc6 / fc7."""
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            if key.startswith(self.ignored_prefixes):
                continue
            prefix, _, tail = key.rpartition(".")
            if prefix in self._FC_KEYS:
                conv, shape = self._FC_KEYS[prefix]
                fits = value.dim() == 2 and value.numel() == torch.Size(shape).numel()
                if tail == "weight" and fits:
                    value = value.reshape(shape)  # Linear (out, in*kh*kw) -> conv (out, in, kh, kw)
                key = f"{conv}.{tail}"  # a wrong shape stays as is and is reported
            out[key] = value
        return out

    def torchvision_key(self, key: str) -> str:
        """The torchvision state-dict key a backbone key comes from (for error messages)."""
        for prefix, (conv, _) in self._FC_KEYS.items():
            if key.startswith(conv + "."):
                return prefix + key[len(conv):]
        return key


# ---------------------------------------------------------------------------------------------
# ResNet: s8 = layer2, s16 = layer3, s32 = layer4
# ---------------------------------------------------------------------------------------------


class ResNetBackbone(IntermediateLayerGetter, Backbone):
    """torchvision ResNet's stem and layer1-4 as children; avgpool and ``fc`` are dropped.

    The ``IntermediateLayerGetter`` runs the children in order and returns layer2, layer3 and
    layer4 as s8, s16, s32; being one (rather than holding one) keeps torchvision's keys.
    """

    ignored_prefixes = ("fc.",)

    def __init__(self, name: str) -> None:
        net = getattr(torchvision.models, name)(weights=None)
        super().__init__(net, {"layer2": "s8", "layer3": "s16", "layer4": "s32"})
        self.name = name
        expansion = type(net.layer1[0]).expansion  # 1 for BasicBlock, 4 for Bottleneck
        # conv1 (7x7/2, pad 3), maxpool (3x3/2, pad 1), the stride-2 3x3 (pad 1) and 1x1
        # downsample convs are all centred: feature i sits on input pixel s * i.
        self.taps = {
            "s8": Tap(128 * expansion, 8, 0.0),
            "s16": Tap(256 * expansion, 16, 0.0),
            "s32": Tap(512 * expansion, 32, 0.0),
        }


# ---------------------------------------------------------------------------------------------
# MobileNetV3: taps at the last block of each resolution (indices into ``features``)
# ---------------------------------------------------------------------------------------------

_MOBILENET_TAPS: dict[str, dict[str, tuple[int, int, int]]] = {
    # tap -> (index into features, channels, stride)
    "mobilenet_v3_small": {"s8": (3, 24, 8), "s16": (8, 48, 16), "s32": (12, 576, 32)},
    "mobilenet_v3_large": {"s8": (6, 40, 8), "s16": (12, 112, 16), "s32": (16, 960, 32)},
}


class MobileNetV3Backbone(Backbone):
    """torchvision MobileNetV3 ``features`` (no dilation); the classifier is dropped.

    ``features`` is an ``IntermediateLayerGetter`` over torchvision's ``features`` (as in
    torchvision's own LR-ASPP and DeepLabV3 MobileNet models): index its blocks by string.
    """

    ignored_prefixes = ("classifier.",)

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        spec = _MOBILENET_TAPS[name]
        features = getattr(torchvision.models, name)(weights=None).features
        self.features = IntermediateLayerGetter(
            features, {str(idx): tap for tap, (idx, _, _) in spec.items()}
        )
        # every conv is padded by (k - 1) / 2 (3x3 and 5x5, stride 1 or 2): centred, offset 0
        self.taps = {tap: Tap(ch, stride, 0.0) for tap, (_, ch, stride) in spec.items()}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Return the last feature maps at 1/8, 1/16 and 1/32."""
        return self.features(x)


# ---------------------------------------------------------------------------------------------
# Registry and weights
# ---------------------------------------------------------------------------------------------

# name -> builder called with the name, in spec.BACKBONES order (checked below)
_BUILDERS: dict[str, Callable[[str], Backbone]] = {
    "vgg16": VGGBackbone,
    "vgg19": VGGBackbone,
    "resnet18": ResNetBackbone,
    "resnet34": ResNetBackbone,
    "resnet50": ResNetBackbone,
    "resnet101": ResNetBackbone,
    "mobilenet_v3_small": MobileNetV3Backbone,
    "mobilenet_v3_large": MobileNetV3Backbone,
}
if tuple(_BUILDERS) != BACKBONES:  # spec validates job specs against BACKBONES
    raise ImportError(f"backbone builders {list(_BUILDERS)} differ from spec.BACKBONES {BACKBONES}")


def list_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone` (and as the ``_backbone`` part of a model)."""
    return list(BACKBONES)


def create_backbone(name: str, weights: str | os.PathLike[str] | None = None) -> Backbone:
    """Build backbone ``name`` with ``weights`` None, ``"imagenet"`` or a state-dict path."""
    if name not in _BUILDERS:
        raise SpecError(f"unknown backbone {name!r}; valid: {', '.join(_BUILDERS)}")
    backbone = _BUILDERS[name](name)
    if weights is None:
        return backbone
    if isinstance(weights, str) and weights.lower() == "imagenet":
        state = _imagenet_state(name)
        source = f"ImageNet weights for {name}"
    else:
        state = _read_state_file(Path(weights))
        source = str(weights)
    load_backbone_state(backbone, state, source=source)
    return backbone


def load_backbone_state(
    backbone: Backbone, state: Mapping[str, Tensor], *, source: str = "state dict"
) -> None:
    """Load a torchvision-format state dict into ``backbone``; WeightsError names bad keys."""
    converted = backbone.convert_torchvision_state(state)
    own = backbone.state_dict()
    name = backbone.torchvision_key
    missing = [name(k) for k in own if k not in converted]
    unexpected = [name(k) for k in converted if k not in own]
    mismatched = [
        f"{name(k)} (file {tuple(converted[k].shape)}, model needs {tuple(own[k].shape)})"
        for k in own
        if k in converted and tuple(converted[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + _few(mismatched))
    if missing:
        problems.append("missing keys: " + _few(missing))
    if unexpected:
        problems.append("unexpected keys: " + _few(unexpected))
    if problems:
        raise WeightsError(
            f"{source} does not fit backbone {backbone.name} "
            f"(expected a torchvision {backbone.name} state dict): " + "; ".join(problems)
        )
    backbone.load_state_dict(converted, strict=True)


def _few(keys: list[str], limit: int = 8) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _read_state_file(path: Path) -> dict[str, Tensor]:
    """Read a local state dict (``weights_only=True``); unwrap ``{"state_dict": ...}``."""
    if not path.is_file():
        raise WeightsError(f"backbone weights file not found: {path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-tensor payloads
        raise WeightsError(f"cannot read backbone weights {path}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict) and len(obj) <= 3:
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{path} is not a state dict (a mapping of names to tensors)")
    return obj


def imagenet_weights_file(name: str) -> tuple[str, Path]:
    """Return (url, cache path) of torchvision's DEFAULT ImageNet weights for ``name``."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    return url, cache


def _imagenet_state(name: str) -> dict[str, Tensor]:
    """Cached or downloaded ImageNet state dict; fails fast (WeightsError) when offline."""
    url, cache = imagenet_weights_file(name)
    if cache.is_file():
        return _read_state_file(cache)
    hint = (
        f"without network, put the file {cache.name} (from {url}) into {cache.parent}/ "
        f"($TORCH_HOME/hub/checkpoints/), or pass backbone_weights=/path/to/{name}_state_dict.pth"
    )
    host = urllib.parse.urlparse(url)
    reason = _probe(host.hostname or "", host.port or 443, _PROBE_TIMEOUT_S)
    if reason:
        raise WeightsError(f"cannot download ImageNet weights for {name} ({reason}); {hint}")
    try:
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except (urllib.error.URLError, OSError, socket.error, RuntimeError) as exc:
        raise WeightsError(f"cannot download ImageNet weights for {name} ({exc}); {hint}") from exc
    return state


def _probe(host: str, port: int, timeout: float) -> str | None:
    """Return None when ``host:port`` accepts a TCP connection within ``timeout`` s, else why.

    Runs in a daemon thread so that a hanging DNS lookup cannot hang the caller either.
    """
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host} unreachable: {exc}")

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if not result:
        return f"{host} did not answer within {timeout:.0f} s"
    return result[0]
