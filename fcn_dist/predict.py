"""Inference from a checkpoint: label maps at each image's original size.

    seg = Segmenter.from_checkpoint("runs/job-8s/epoch_0010")
    labels = seg.predict("cat.jpg")          # np.ndarray (H, W) of class indices, original size

The checkpoint says how to preprocess (``meta.json``'s ``preprocessing``, the same
:class:`~fcn_dist.data.transforms.Preprocessing` that validation used): the image is resized to
its size (or kept at its own), normalised, the logits are upsampled bilinearly back to the
original size and the argmax is taken there — the path the final test evaluation uses, so
predictions and reported test metrics agree.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fcn_dist.checkpoint import load_checkpoint
from fcn_dist.data.transforms import Preprocessing
from fcn_dist.errors import FcnError
from fcn_dist.perf import fast_dtype, optimize_for_inference

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _to_pil(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image, an HxWx3 (or HxW) uint8 array, or a file path."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, os.PathLike)):
        p = Path(image)
        try:
            with Image.open(p) as im:
                return im.convert("RGB")
        except (OSError, ValueError) as e:
            raise FcnError(f"{p}: cannot read image ({e})") from None
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        if a.ndim != 3 or a.shape[2] not in (3, 4):
            raise FcnError(f"image array must be (H, W, 3), got shape {a.shape}")
        if a.dtype != np.uint8:
            a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a[..., :3])
    raise FcnError(f"cannot use {type(image).__name__} as an image (PIL image, array or path)")


class Segmenter:
    """A trained FCN with its preprocessing, from a self-describing checkpoint directory."""

    def __init__(self, model: torch.nn.Module, meta: dict[str, Any], device: Any = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.classes: list[str] = list(meta.get("classes") or [str(i) for i in range(meta["num_classes"])])
        self.num_classes = int(meta["num_classes"])
        self.palette = meta.get("palette")
        self.ignore_index = meta.get("ignore_index")
        self.preprocessing = Preprocessing.from_dict(meta)
        self._transform = self.preprocessing.transform()
        self.eval_size = list(self.preprocessing.size) if self.preprocessing.size else None
        self.amp_dtype: torch.dtype | None = None  # None = float32; bf16/fp16 = faster, lower precision
        self._fast: tuple[Any, Any] | None = None  # (dtype, optimised inference copy)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: Any = None) -> "Segmenter":
        """Load a checkpoint directory (``model.pt`` + ``meta.json``), weights_only."""
        model, meta = load_checkpoint(path)
        return cls(model, meta, device)

    @torch.no_grad()
    def logits_batch(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Per image, fp32 logits (C, H, W) at the image's original size."""
        pils = [_to_pil(i) for i in images]
        if not pils:
            return []
        xs = [self._transform(im)[0] for im in pils]
        same = all(x.shape == xs[0].shape for x in xs)
        groups = [torch.stack(xs)] if same else [x[None] for x in xs]
        outs: list[torch.Tensor] = []
        for xb in groups:
            outs.extend(self.fast_model()(xb.to(self.device)).float())
        result = []
        for lg, im in zip(outs, pils):
            w, h = im.size
            if lg.shape[-2:] != (h, w):
                lg = F.interpolate(lg[None], size=(h, w), mode="bilinear", align_corners=False)[0]
            result.append(lg)
        return result

    def fast_model(self) -> torch.nn.Module:
        """The inference copy of the model (:func:`fcn_dist.perf.optimize_for_inference`:
        BatchNorm folded, conv+ReLU fused, channels_last, weights in ``amp_dtype``), built once
        per dtype."""
        dtype = self.amp_dtype or torch.float32
        if self._fast is None or self._fast[0] != dtype:
            self._fast = (dtype, optimize_for_inference(self.model, self.device, dtype=dtype))
        return self._fast[1]

    def predict_batch(self, images: Sequence[Any]) -> list[np.ndarray]:
        """Label maps (H, W) int64 at each image's original size."""
        return [lg.argmax(0).cpu().numpy().astype(np.int64) for lg in self.logits_batch(images)]

    def predict(self, image: Any) -> np.ndarray:
        """The label map (H, W) of one image (PIL image, HxWx3 array or path) at its size."""
        return self.predict_batch([image])[0]

    def to_palette_image(self, labels: np.ndarray) -> Image.Image:
        """A palette ("P" mode) PNG-able image of a label map, coloured with the dataset palette."""
        im = Image.fromarray(labels.astype(np.uint8))  # "L"; putpalette makes it "P"
        im.putpalette(_flat_palette(self.palette, self.num_classes))
        return im

    def overlay(self, image: Any, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
        """The image with the coloured label map blended over it."""
        base = _to_pil(image)
        colour = self.to_palette_image(labels).convert("RGB")
        return Image.blend(base, colour, alpha)


def _flat_palette(palette: Iterable[Iterable[int]] | None, n: int) -> list[int]:
    """A 768-entry flat palette: the dataset's colours, else a fixed distinct colour per class."""
    flat: list[int] = []
    if palette:
        for c in list(palette)[:256]:
            flat.extend(int(v) for v in list(c)[:3])
    else:
        rng = np.random.default_rng(12345)
        cols = rng.integers(0, 256, size=(max(n, 1), 3))
        cols[0] = 0
        flat = cols.astype(int).ravel().tolist()
    return (flat + [0] * 768)[:768]


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns -> a list of image files."""
    out: list[Path] = []
    for item in inputs:
        s = str(item)
        p = Path(s).expanduser()
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()))
        elif p.is_file():
            out.append(p)
        elif any(ch in s for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(s), recursive=True))
            files = [m for m in matches if m.is_file() and m.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise FcnError(f"{s}: no image matches this pattern")
            out.extend(files)
        else:
            raise FcnError(f"{s}: no such file or folder")
    seen: set[Path] = set()
    uniq = []
    for p in out:
        if p not in seen:
            seen.add(p)
            uniq.append(p)
    if not uniq:
        raise FcnError("no input images found")
    return uniq


def predict_files(checkpoint: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                  out: str | os.PathLike, overlay: bool = False, device: Any = None,
                  precision: str = "auto") -> list[Path]:
    """Segment every input image; write ``<out>/<stem>.png`` (palette label map at the image's
    original size) and, with ``overlay``, ``<out>/<stem>_overlay.png``. Returns written label maps.
    ``precision``: ``auto`` (bf16 where the device computes it natively), ``off`` (float32),
    ``bf16``, ``fp16``."""
    seg = Segmenter.from_checkpoint(checkpoint, device=device)
    dtype = fast_dtype(seg.device, precision)
    seg.amp_dtype = None if dtype == torch.float32 else dtype
    files = expand_inputs(inputs)
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    used: dict[str, int] = {}
    for f in files:
        im = _to_pil(f)
        labels = seg.predict(im)
        stem = f.stem
        if stem in used:  # two inputs named alike (different folders): keep both
            used[stem] += 1
            stem = f"{stem}_{used[stem]}"
        else:
            used[stem] = 0
        target = out_dir / f"{stem}.png"
        seg.to_palette_image(labels).save(target)
        if overlay:
            seg.overlay(im, labels).save(out_dir / f"{stem}_overlay.png")
        written.append(target)
    return written
