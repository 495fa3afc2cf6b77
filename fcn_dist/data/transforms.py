"""Paired image/label transforms (torchvision.transforms.v2 with ``tv_tensors.Mask``).

Every transform here takes and returns ``(image, label)`` where ``image`` is a uint8 tensor
(3, H, W) (or a PIL image / HxWx3 array) and ``label`` an integer (H, W) tensor or array. Output:
``image`` float32 (3, H, W) ImageNet-normalised, ``label`` int64 (H, W).

Label maps are wrapped in ``tv_tensors.Mask`` so that every geometric op on them uses
nearest-neighbour: a transformed label map only ever holds values that were present before,
plus the ignore index where padding was added. Nothing here interpolates labels bilinearly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

PairTransform = Callable[[Any, Any], "tuple[torch.Tensor, torch.Tensor]"]


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(s) for s in size)
    return (h, w)


def to_tv(image: Any, label: Any) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Wrap an image (PIL, HxWx3 uint8 array or 3xHxW tensor) and a label map as tv_tensors."""
    if isinstance(image, torch.Tensor):
        img = image
    elif isinstance(image, np.ndarray):
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    else:  # PIL
        img = F.pil_to_tensor(image.convert("RGB"))
    lab = label if isinstance(label, torch.Tensor) else torch.from_numpy(np.asarray(label).astype(np.int64))
    return tv_tensors.Image(img), tv_tensors.Mask(lab.to(torch.int64))


class RandomScale(v2.Transform):
    """Resize by a random factor so that, at factor 1, the image just covers ``target_size``.

    ``r = max(th / h, tw / w) * U(scale_range)``; the aspect ratio is kept. Images are resized
    bilinearly (antialiased), masks with nearest-neighbour (v2 dispatch on ``tv_tensors.Mask``).
    """

    def __init__(self, target_size: Sequence[int], scale_range: tuple[float, float] = (0.5, 2.0)):
        super().__init__()
        self.target_size = _size2(target_size)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        th, tw = self.target_size
        lo, hi = self.scale_range
        r = max(th / h, tw / w) * (lo + (hi - lo) * torch.rand(()).item())  # torch RNG, like v2
        return {"size": [max(1, round(h * r)), max(1, round(w * r))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        if isinstance(inpt, tv_tensors.Image):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        return inpt


class _Finish:
    """uint8 image -> float32 normalised; mask -> plain int64 tensor."""

    def __init__(self) -> None:
        self.to_float = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
        self.normalize = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)

    def __call__(self, image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.to_float(image, label)
        image, label = self.normalize(image, label)
        return image.as_subclass(torch.Tensor).contiguous(), label.as_subclass(torch.Tensor).to(torch.int64).contiguous()


class PairedCompose:
    """Apply a v2 pipeline to (image, label) and finish with dtype conversion and normalisation."""

    def __init__(self, steps: list[v2.Transform], normalize: bool = True):
        self.pipeline = v2.Compose(steps) if steps else None
        self.finish = _Finish() if normalize else None

    def __call__(self, image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = to_tv(image, label)
        if self.pipeline is not None:
            image, label = self.pipeline(image, label)
        if self.finish is None:
            return image.as_subclass(torch.Tensor), label.as_subclass(torch.Tensor)
        return self.finish(image, label)


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
    crop = _size2(crop_size)
    steps: list[v2.Transform] = [
        RandomScale(crop, scale_range),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if jitter > 0:  # ColorJitter leaves masks alone
        steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter, hue=min(0.05, jitter / 4)))
    return PairedCompose(steps, normalize=normalize)


def eval_transform(size: int | Sequence[int] | None = None, *, normalize: bool = True) -> PairedCompose:
    """Evaluation transform: resize to ``size`` (image bilinear, label nearest) or keep the
    original size when ``size`` is None; ImageNet normalisation."""
    steps: list[v2.Transform] = []
    if size is not None:
        steps.append(v2.Resize(list(_size2(size)), antialias=True))  # Mask -> nearest by dispatch
    return PairedCompose(steps, normalize=normalize)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation: float (3, H, W) or (N, 3, H, W) -> float in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(-1, 1, 1)
    return (image * std + mean).clamp(0, 1)
