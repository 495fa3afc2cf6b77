"""Paired image/label transforms (torchvision.transforms.v2 with ``tv_tensors.Mask``).

Every transform here takes and returns ``(image, label)`` where ``image`` is a uint8 tensor
(3, H, W) (or a PIL image / HxWx3 array) and ``label`` an integer (H, W) tensor or array. Output:
``image`` float32 (3, H, W) ImageNet-normalised, ``label`` int64 (H, W).

Label maps are wrapped in ``tv_tensors.Mask`` so that every geometric op on them uses
nearest-neighbour: a transformed label map only ever holds values that were present before,
plus the ignore index where padding was added. Nothing here interpolates labels bilinearly.
Every resize goes through :func:`resize_pair`: images bilinear (antialiased), labels
centre-aligned nearest (``NEAREST_EXACT``), the same pixel-centre mapping for both. (Legacy
``NEAREST`` — v2's default for masks — picks source floor(j * s) and shifts labels by up to
half a pixel against the image: 0.5 px on average at 500 -> 256.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from fcn_dist.spec import size2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PairTransform = Callable[[Any, Any], "tuple[torch.Tensor, torch.Tensor]"]


def to_tv(image: Any, label: Any) -> tuple[tv_tensors.Image, tv_tensors.Mask | None]:
    """Wrap an image (PIL, HxWx3 uint8 array or 3xHxW tensor) and a label map (or None) as
    tv_tensors."""
    if isinstance(image, torch.Tensor):
        img = image
    elif isinstance(image, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:  # PIL
        img = F.pil_to_tensor(image.convert("RGB"))
    if label is None:
        return tv_tensors.Image(img), None
    lab = label if isinstance(label, torch.Tensor) else torch.from_numpy(np.asarray(label).astype(np.int64))
    return tv_tensors.Image(img), tv_tensors.Mask(lab.to(torch.int64))


# Labels: centre-aligned nearest, so a label pixel takes the source pixel under its centre, as
# the bilinear image samples around that same centre.
LABEL_INTERPOLATION = v2.InterpolationMode.NEAREST_EXACT


def resize_pair(inpt: Any, size: Sequence[int]) -> Any:
    """Resize one tv_tensor to ``size`` (h, w): an image bilinearly (antialiased), a label map
    (``Mask``) with centre-aligned nearest; anything else passes through."""
    if isinstance(inpt, tv_tensors.Mask):
        return F.resize(inpt, list(size), interpolation=LABEL_INTERPOLATION)
    if isinstance(inpt, tv_tensors.Image):
        return F.resize(inpt, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
    return inpt


class PairedResize(v2.Transform):
    """Resize image and label map to ``size`` (h, w) with :func:`resize_pair`."""

    def __init__(self, size: int | Sequence[int]):
        super().__init__()
        self.size = size2(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"size": list(self.size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return resize_pair(inpt, params["size"])


class RandomScale(v2.Transform):
    """Resize by a random factor so that, at factor 1, the image just covers ``target_size``.

    ``r = max(th / h, tw / w) * U(scale_range)``; the aspect ratio is kept. Resized with
    :func:`resize_pair` (image bilinear, label centre-aligned nearest).
    """

    def __init__(self, target_size: Sequence[int], scale_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.target_size = size2(target_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        th, tw = self.target_size
        lo, hi = self.scale_range
        r = max(th / h, tw / w) * (lo + (hi - lo) * torch.rand(()).item())  # torch RNG, like v2
        return {"size": [max(1, round(h * r)), max(1, round(w * r))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return resize_pair(inpt, params["size"])


def _plain(t: Any, dtype: torch.dtype | None = None) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.as_subclass(torch.Tensor)
    return (t.to(dtype) if dtype is not None else t).contiguous()


class PairedCompose:
    """Apply a v2 pipeline to (image, label) and finish with dtype conversion and normalisation
    (``mean``/``std``). ``label`` may be None (inference): the second result is then None."""

    def __init__(self, steps: list[v2.Transform], normalize: bool = True,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if normalize:
            steps = [*steps, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                     v2.Normalize(list(mean), list(std))]
        self.pipeline = v2.Compose(steps) if steps else None
        self.normalize = normalize

    def __call__(self, image: Any, label: Any = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        image, label = to_tv(image, label)
        if self.pipeline is not None:
            if label is None:
                image = self.pipeline(image)
            else:
                image, label = self.pipeline(image, label)
        return _plain(image), _plain(label, torch.int64 if self.normalize else None)


def train_transform(
    crop_size: int | Sequence[int],
    ignore_index: int,
    *,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: float = 0.5,
    jitter: float = 0.2,
    normalize: bool = True,
) -> PairedCompose:
    """Training transform: random scale, random crop padded to ``crop_size`` (image with 0,
    label with ``ignore_index``), horizontal flip, mild colour jitter, ImageNet normalisation.

    The output always has the spatial size ``crop_size`` (fixed-size batches)."""
    crop = size2(crop_size)
    steps: list[v2.Transform] = [
        RandomScale(crop, scale_range),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if jitter > 0:  # ColorJitter leaves masks alone
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(0.05, jitter / 4)))
    return PairedCompose(steps, normalize=normalize)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the network's input for validation, the test score and inference.

    One definition for all three, saved in every checkpoint's ``meta.json`` (as torchvision's
    weights carry their transforms): resize to ``size`` (h, w) — image bilinear (antialiased),
    label centre-aligned nearest — or keep the image's size when ``size`` is None, then normalise.
    """

    size: tuple[int, int] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def transform(self) -> PairedCompose:
        """The paired transform: ``(image, label or None) -> (float image, int64 label or None)``."""
        steps: list[v2.Transform] = []
        if self.size is not None:
            steps.append(PairedResize(self.size))
        return PairedCompose(steps, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size) if self.size else None, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        """From :meth:`to_dict`'s form, or from an older checkpoint meta (``eval_size``,
        ``mean``, ``std`` at the top level)."""
        pre = d.get("preprocessing") or {"size": d.get("eval_size"), "mean": d.get("mean"),
                                         "std": d.get("std")}
        size = pre.get("size")
        return cls(size=size2(size) if size else None,
                   mean=tuple(pre.get("mean") or IMAGENET_MEAN),
                   std=tuple(pre.get("std") or IMAGENET_STD))


def eval_transform(size: int | Sequence[int] | None = None, *, normalize: bool = True) -> PairedCompose:
    """Evaluation transform (:class:`Preprocessing`): resize to ``size`` (image bilinear,
    label centre-aligned nearest) or keep the original size when ``size`` is None; ImageNet
    normalisation."""
    if not normalize:
        steps = [PairedResize(size)] if size is not None else []
        return PairedCompose(steps, normalize=False)
    return Preprocessing(size2(size) if size is not None else None).transform()


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: float (3, H, W) or (N, 3, H, W) -> float in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image * std + mean).clamp(0, 1)
