"""Dataset sources (pets, camvid, folder, synthetic) and ``prepare`` (source -> Parquet shards).

Sources
-------
``pets``
    Oxford-IIIT Pet in torchvision's layout: ``ROOT/oxford-iiit-pet/images/*.jpg``,
    ``.../annotations/trimaps/*.png``, ``.../annotations/{trainval,test}.txt`` (``ROOT`` may also
    be the ``oxford-iiit-pet`` folder itself). Read through ``torchvision.datasets.OxfordIIITPet``
    (``download=True`` only with ``--download``). Trimap 1 pet, 2 background, 3 border ->
    classes 0 pet, 1 background, 2 border; with ``ignore_border`` the border becomes the ignore
    index 255 and the classes are ``pet, background``. Splits: ``test`` = the official test list;
    ``train``/``val`` carved from the official trainval list by this rule: group ids by breed
    (``id.rsplit("_", 1)[0]``), sort each group, shuffle it with ``random.Random(f"{seed}:{breed}")``
    and put the first ``floor(val_fraction * n + 0.5)`` ids of each breed in ``val`` (default 0.1).
``camvid``
    ``ROOT/{train,val[,test]}/images/NAME.jpg`` + ``.../labels/NAME.png`` (single-channel class
    indices). 11 classes; label 11 (void) is kept as is and is the ignore index (no remap).
``folder``
    ``ROOT/images/*`` + ``ROOT/labels/STEM.png`` (or ``ROOT/{train,val,test}/{images,labels}``
    for explicit splits) and a classes file (``ROOT/classes.{json,yaml,yml}`` or ``classes_file``)
    with ``names`` (list), optional ``palette`` (list of [r, g, b] per class), optional
    ``ignore_index`` (default 255) and optional ``ignore_color`` ([r, g, b] -> ignore index).
    Labels are index PNGs (modes L, P (palette indices), I;16, I) or colour PNGs (RGB/RGBA,
    mapped through the palette). A single split is divided into train/val by the seeded rule
    above (one group; ``val_fraction`` default 0.1).
``synthetic``
    :mod:`fcn_dist.data.synthetic`: ``count`` images of ``size`` (H, W), ids ``syn-000000`` ...;
    the last ``floor(test_fraction * count + 0.5)`` go to ``test``, the same rounding of
    ``val_fraction * count``
    before them to ``val`` (defaults 0.1 / 0.1), the rest to ``train``.

Stored rows keep the original JPEG bytes when the source file is a valid RGB JPEG (and is not
resized); anything else is re-encoded losslessly as PNG. ``max_size`` caps the longer side
(image bilinear/antialiased, label nearest).

Bad input (a clear error, or a counted skip; never silent damage)
-------------------------------------------------------------------
=====================================  =====================================================
corrupt or truncated image             skip, counted as ``corrupt_image``
image listed but file missing          skip, ``missing_image``
grayscale / RGBA / CMYK / palette /    converted to RGB (stored as PNG), counted under
16-bit images                          ``converted`` by original mode; kept
image without a label                  skip, ``missing_label``
label file unreadable                  skip, ``corrupt_label``
label of another size than its image   skip, ``size_mismatch``
label value outside 0..C-1, not ignore skip, ``label_out_of_range`` (a Pets trimap value
                                       outside 1..3 counts here too)
colour label with a colour not in      skip, ``label_unknown_colour``
the palette (folder source)
label without an image (folder)        not a sample; counted as ``orphan_label``
empty folder / no images / nothing     DataError naming the folder
left after skipping
missing classes file (folder)          DataError naming the expected path(s)
colour labels but no palette           DataError naming the classes file
Pets not on disk (offline)             DataError saying where to put images.tar.gz and
                                       annotations.tar.gz (extracted), or to use --download
=====================================  =====================================================

With ``strict=True`` every skip becomes a DataError naming the file and the reason instead.
"""

from __future__ import annotations

import datetime as _dt
import functools
import io
import json
import math
import os
import random
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from fcn_dist.data import synthetic as _synthetic
from fcn_dist.data.shards import FORMAT_VERSION, Manifest, ShardWriter, encode_label, encode_png
from fcn_dist.errors import DataError
from fcn_dist.fs import Uri, masked

SOURCES = ("pets", "camvid", "folder", "synthetic")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
LABEL_EXTS = (".png", ".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".gif")
MAX_EXAMPLES = 10  # ids kept per skip reason in the summary

PETS_CLASSES = ["pet", "background", "border"]
PETS_PALETTE = [[128, 0, 0], [0, 0, 0], [224, 224, 192]]
CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree",
    "sign_symbol", "fence", "car", "pedestrian", "bicyclist",
]  # fmt: skip
CAMVID_PALETTE = [
    [128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
    [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192],
]  # fmt: skip
CAMVID_VOID = 11


class Skip(Exception):
    """A sample is dropped for ``reason`` (counted in the summary)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


@dataclass
class Candidate:
    """One would-be row: where its image and label come from and how to read the label."""

    split: str
    id: str
    image: Path | Image.Image | np.ndarray | None
    label: Path | np.ndarray | None
    label_map: Callable[[Image.Image], np.ndarray] | None = None  # PIL label -> class indices
    make: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None  # generated (image, label)


@dataclass
class Plan:
    """What a source yields: classes and the candidates to process."""

    classes: list[str]
    palette: list[list[int]] | None
    ignore_index: int
    candidates: list[Candidate]
    splits: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    notes: Counter = field(default_factory=Counter)  # counted non-sample events (orphan labels)


# --------------------------------------------------------------------------- helpers
def _seeded_val(ids: Iterable[str], fraction: float, seed: int, group: Callable[[str], str]) -> set[str]:
    """The documented val rule: per group, sort, shuffle with Random(f"{seed}:{group}"), take
    the first floor(fraction * n + 0.5)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for i in ids:
        groups[group(i)].append(i)
    val: set[str] = set()
    for g in sorted(groups):
        members = sorted(groups[g])
        random.Random(f"{seed}:{g}").shuffle(members)
        val.update(members[: _round_half_up(fraction * len(members))])
    return val


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_fraction(name: str, v: float) -> float:
    v = float(v)
    if not 0.0 <= v < 1.0:
        raise DataError(f"{name} must be in [0, 1), got {v}")
    return v


def _index_label(im: Image.Image) -> np.ndarray:
    """An index label image -> integer array (P: palette indices; L/I/I;16 as is)."""
    if im.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        return np.array(im).astype(np.int64)
    if im.mode in ("LA", "PA"):
        return np.array(im.getchannel(0)).astype(np.int64)
    raise Skip("label_out_of_range", f"label mode {im.mode} is not an index map")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (16-bit/float grayscale rescaled to 8 bits)."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        arr = arr / hi * 255.0 if hi > 255 else arr
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, im).convert("RGB")  # transparent -> black
    return im.convert("RGB")


def _open_image(src: Path | Image.Image | np.ndarray) -> tuple[Image.Image, bytes | None, str]:
    """-> (RGB PIL image, original bytes if they are a valid RGB JPEG else None, original mode)."""
    if isinstance(src, np.ndarray):
        return Image.fromarray(src).convert("RGB"), None, "RGB"
    if isinstance(src, Image.Image):
        return _to_rgb(src) if src.mode != "RGB" else src, None, src.mode
    try:
        data = Path(src).read_bytes()
    except FileNotFoundError:
        raise Skip("missing_image", str(src)) from None
    except OSError as e:
        raise Skip("corrupt_image", f"{src}: {e}") from None
    try:
        im = Image.open(io.BytesIO(data))
        fmt, mode = im.format, im.mode
        im.load()  # full decode: truncated JPEGs raise here
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, ...
        raise Skip("corrupt_image", f"{src}: {e}") from None
    if fmt == "JPEG" and mode == "RGB":
        return im, data, mode
    return _to_rgb(im), None, mode


def _process(c: Candidate, num_classes: int, ignore_index: int, max_size: int | None) -> tuple[dict, str | None]:
    """Candidate -> (row, converted-from mode or None); raises Skip."""
    if c.make is not None:
        c = Candidate(c.split, c.id, *c.make())
    if c.image is None:
        raise Skip("missing_image")
    im, jpeg, mode = _open_image(c.image)
    if c.label is None:
        raise Skip("missing_label")
    if isinstance(c.label, np.ndarray):
        label = c.label
    else:
        try:
            with Image.open(c.label) as lim:
                lim.load()
                label = c.label_map(lim) if c.label_map else _index_label(lim)
        except Skip:
            raise
        except FileNotFoundError:
            raise Skip("missing_label", str(c.label)) from None
        except Exception as e:  # noqa: BLE001
            raise Skip("corrupt_label", f"{c.label}: {e}") from None
    label = np.asarray(label)
    if label.shape != (im.height, im.width):
        raise Skip("size_mismatch", f"{c.id}: image {im.height}x{im.width}, label {label.shape[0]}x{label.shape[1]}")
    bad = (label >= num_classes) & (label != ignore_index) | (label < 0)
    if bad.any():
        vals = sorted(set(np.unique(label[bad]).tolist()))[:5]
        raise Skip("label_out_of_range", f"{c.id}: values {vals} not in 0..{num_classes - 1} or {ignore_index}")
    if max_size and max(im.height, im.width) > max_size:
        r = max_size / max(im.height, im.width)
        size = (max(1, round(im.width * r)), max(1, round(im.height * r)))
        im = im.resize(size, Image.BILINEAR, reducing_gap=None)
        # PIL's NEAREST samples at output pixel centres (as NEAREST_EXACT; tests/test_data.py)
        label = np.asarray(Image.fromarray(label.astype(np.int32), mode="I").resize(size, Image.NEAREST))
        jpeg = None
    image_bytes = jpeg if jpeg is not None else encode_png(im)
    row = {
        "id": c.id,
        "image": image_bytes,
        "label": encode_label(label),
        "height": int(label.shape[0]),
        "width": int(label.shape[1]),
    }
    return row, (mode if mode != "RGB" else None)


# --------------------------------------------------------------------------- sources
def _pets_root(root: Path) -> Path:
    """Accept ROOT (holding oxford-iiit-pet/) or the oxford-iiit-pet folder itself."""
    if (root / "oxford-iiit-pet").is_dir() or not (root / "annotations").is_dir():
        return root
    if root.name == "oxford-iiit-pet":
        return root.parent
    raise DataError(f"{root}: holds annotations/ but torchvision expects it under a folder named oxford-iiit-pet")


def plan_pets(root: str | os.PathLike | None, *, seed: int = 0, val_fraction: float = 0.1,
              ignore_border: bool = False, download: bool = False, **_: Any) -> Plan:
    """Oxford-IIIT Pet through torchvision's ``OxfordIIITPet`` (see module doc)."""
    from fcn_dist import config
    from torchvision.datasets import OxfordIIITPet

    if not root and isinstance(config.data_path(), Uri):
        raise DataError("pets: FCN_DATA is a URI; give --root, a local directory for torchvision's archives")
    root = Path(root).expanduser() if root else config.data_path() / "downloads"
    root = _pets_root(root)
    base = root / "oxford-iiit-pet"
    where = (
        f"put images.tar.gz and annotations.tar.gz from https://www.robots.ox.ac.uk/~vgg/data/pets/ "
        f"extracted under {base} (giving {base}/images and {base}/annotations)"
    )
    sets = {}
    for split in ("trainval", "test"):
        try:
            sets[split] = OxfordIIITPet(str(root), split=split, target_types="segmentation", download=download)
        except RuntimeError as e:
            if "not found" in str(e).lower():
                raise DataError(f"Oxford-IIIT Pet not found under {base}: {where}, or pass --download when online") from None
            raise DataError(f"Oxford-IIIT Pet at {base}: {e}") from None
        except FileNotFoundError as e:
            raise DataError(f"Oxford-IIIT Pet at {base} is incomplete ({e.filename} missing): {where}") from None
        except (OSError, ValueError) as e:  # URLError is an OSError: offline download
            raise DataError(f"cannot download Oxford-IIIT Pet ({e}); offline? {where}") from None
        except Exception as e:  # noqa: BLE001 - torchvision's download raises assorted errors
            raise DataError(f"cannot obtain Oxford-IIIT Pet ({type(e).__name__}: {e}); {where}") from None
    val_fraction = _check_fraction("val_fraction", val_fraction)
    ignore = 255
    lut = np.full(256, -1, dtype=np.int64)  # trimap value -> class; -1 = out of range
    lut[1], lut[2], lut[3] = 0, 1, (ignore if ignore_border else 2)

    def trimap(im: Image.Image) -> np.ndarray:
        arr = np.array(im.convert("L") if im.mode not in ("L", "P") else im)
        out = lut[arr.astype(np.int64)]
        if (out < 0).any():
            raise Skip("label_out_of_range", f"trimap values {sorted(np.unique(arr[out < 0]).tolist())[:5]} not in 1..3")
        return out

    tv = sets["trainval"]
    tv_ids = [p.stem for p in tv._images]
    val_ids = _seeded_val(tv_ids, val_fraction, seed, lambda i: i.rsplit("_", 1)[0])
    candidates = []
    for ds, official in ((tv, "trainval"), (sets["test"], "test")):
        for img, seg in zip(ds._images, ds._segs):
            split = "test" if official == "test" else ("val" if img.stem in val_ids else "train")
            label = seg if seg.is_file() else None
            candidates.append(Candidate(split, img.stem, img if img.is_file() else None, label, trimap))
    classes = PETS_CLASSES[:2] if ignore_border else list(PETS_CLASSES)
    palette = [list(c) for c in PETS_PALETTE[: len(classes)]]
    return Plan(classes, palette, ignore, candidates, ["train", "val", "test"],
                options={"seed": seed, "val_fraction": val_fraction, "ignore_border": ignore_border,
                         "root": str(root), "val_rule": "per breed: sorted, Random(f'{seed}:{breed}').shuffle, first floor(f*n+0.5)"})


def _pair_dir(d: Path, split: str, *, label_required: bool = True) -> tuple[list[Candidate], Counter]:
    """Candidates from d/images + d/labels (matching stems)."""
    images_dir, labels_dir = d / "images", d / "labels"
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: missing (expected images/ and labels/ folders)")
    images = sorted(p for p in images_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
    if not images:
        raise DataError(f"{images_dir}: no images ({', '.join(IMAGE_EXTS)})")
    labels: dict[str, Path] = {}
    if labels_dir.is_dir():
        for p in sorted(labels_dir.iterdir()):
            if p.is_file() and p.suffix.lower() in LABEL_EXTS:
                if p.stem not in labels or p.suffix.lower() == ".png":  # prefer .png
                    labels[p.stem] = p
    notes: Counter = Counter()
    stems = {p.stem for p in images}
    notes["orphan_label"] += sum(1 for s in labels if s not in stems)
    return [Candidate(split, p.stem, p, labels.get(p.stem)) for p in images], notes


def plan_camvid(root: str | os.PathLike | None, **_: Any) -> Plan:
    """CamVid in the layout of ``shared/data/camvid`` (see module doc)."""
    if not root:
        raise DataError("camvid needs --root (the folder holding train/ and val/)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    candidates: list[Candidate] = []
    notes: Counter = Counter()
    splits = [s for s in ("train", "val", "test") if (root / s).is_dir()]
    if "train" not in splits:
        raise DataError(f"{root}: no train/ folder (expected {{train,val}}/images and {{train,val}}/labels)")
    for s in splits:
        c, n = _pair_dir(root / s, s)
        candidates += c
        notes += n
    return Plan(list(CAMVID_CLASSES), [list(c) for c in CAMVID_PALETTE], CAMVID_VOID, candidates, splits,
                options={"root": str(root)}, notes=notes)


def _load_classes(root: Path, classes_file: str | os.PathLike | None) -> tuple[Path, dict[str, Any]]:
    if classes_file:
        path = Path(classes_file).expanduser()
        if not path.is_file():
            raise DataError(f"classes file {path}: not found")
    else:
        tried = [root / n for n in ("classes.json", "classes.yaml", "classes.yml")]
        found = [p for p in tried if p.is_file()]
        if not found:
            raise DataError(f"classes file missing: expected one of {', '.join(map(str, tried))} (or pass --classes)")
        path = found[0]
    try:
        text = path.read_text()
        if path.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"classes file {path}: unreadable ({e})") from None
    if isinstance(d, list):
        d = {"names": d}
    if not isinstance(d, dict) or not isinstance(d.get("names"), list) or not d["names"]:
        raise DataError(f"classes file {path}: needs a non-empty list 'names'")
    pal = d.get("palette")
    if pal is not None and (len(pal) != len(d["names"]) or any(len(c) != 3 for c in pal)):
        raise DataError(f"classes file {path}: 'palette' must have one [r, g, b] per name")
    return path, d


def plan_folder(root: str | os.PathLike | None, *, classes_file: str | os.PathLike | None = None,
                seed: int = 0, val_fraction: float = 0.1, **_: Any) -> Plan:
    """Generic images/ + labels/ + classes file (see module doc)."""
    if not root:
        raise DataError("folder needs --root (the folder holding images/ and labels/)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    cpath, cdef = _load_classes(root, classes_file)
    names = [str(n) for n in cdef["names"]]
    palette = [[int(v) for v in c] for c in cdef["palette"]] if cdef.get("palette") else None
    ignore = int(cdef.get("ignore_index", 255))
    ignore_color = cdef.get("ignore_color") or cdef.get("ignore_colour")
    colour_lut: dict[int, int] = {}
    if palette:
        for k, (r, g, b) in enumerate(palette):
            colour_lut[(r << 16) | (g << 8) | b] = k
    if ignore_color:
        r, g, b = (int(v) for v in ignore_color)
        colour_lut[(r << 16) | (g << 8) | b] = ignore

    def label_map(im: Image.Image) -> np.ndarray:
        if im.mode in ("RGB", "RGBA"):
            if not colour_lut:
                raise DataError(f"colour label {getattr(im, 'filename', '')} but classes file {cpath} has no palette")
            rgb = np.asarray(im.convert("RGB"), dtype=np.int64)
            key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
            uniq, inv = np.unique(key, return_inverse=True)
            mapped = np.array([colour_lut.get(int(u), -1) for u in uniq], dtype=np.int64)
            if (mapped < 0).any():
                bad = [((int(u) >> 16) & 255, (int(u) >> 8) & 255, int(u) & 255) for u in uniq[mapped < 0]][:3]
                raise Skip("label_unknown_colour", f"colours {bad} not in the palette")
            return mapped[inv].reshape(key.shape)
        return _index_label(im)

    if (root / "images").is_dir():
        candidates, notes = _pair_dir(root, "train")
        val_fraction = _check_fraction("val_fraction", val_fraction)
        val_ids = _seeded_val([c.id for c in candidates], val_fraction, seed, lambda i: "")
        for c in candidates:
            c.split = "val" if c.id in val_ids else "train"
        splits = ["train", "val"]
    else:
        splits = [s for s in ("train", "val", "test") if (root / s / "images").is_dir()]
        if not splits:
            raise DataError(f"{root}: empty (expected images/ and labels/, or train|val|test/images and labels)")
        candidates, notes = [], Counter()
        for s in splits:
            c, n = _pair_dir(root / s, s)
            candidates += c
            notes += n
    for c in candidates:
        c.label_map = label_map
    return Plan(names, palette, ignore, candidates, splits, notes=notes,
                options={"root": str(root), "classes_file": str(cpath), "seed": seed, "val_fraction": val_fraction})


def plan_synthetic(root: Any = None, *, count: int = 200, size: tuple[int, int] = (64, 64), seed: int = 0,
                   val_fraction: float = 0.1, test_fraction: float = 0.1, shape_classes: bool = False,
                   **_: Any) -> Plan:
    """Procedural shapes (see :mod:`fcn_dist.data.synthetic`)."""
    count = int(count)
    h, w = (int(s) for s in size)
    if count < 1:
        raise DataError(f"synthetic count must be >= 1, got {count}")
    if h < 16 or w < 16:
        raise DataError(f"synthetic size must be at least 16x16, got {h}x{w}")
    n_test = _round_half_up(_check_fraction("test_fraction", test_fraction) * count)
    n_val = _round_half_up(_check_fraction("val_fraction", val_fraction) * count)
    n_train = count - n_val - n_test
    if n_train < 1:
        raise DataError(f"synthetic: no training images left (count {count}, val {n_val}, test {n_test})")
    classes, palette = _synthetic.classes(shape_classes)
    candidates = []
    for i in range(count):
        split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
        make = functools.partial(_synthetic.generate, i, seed, (h, w), shape_classes)
        candidates.append(Candidate(split, f"syn-{i:06d}", None, None, make=make))
    return Plan(classes, palette, 255, candidates, ["train", "val", "test"],
                options={"count": count, "size": [h, w], "seed": seed, "val_fraction": val_fraction,
                         "test_fraction": test_fraction, "shape_classes": shape_classes})


PLANNERS: dict[str, Callable[..., Plan]] = {
    "pets": plan_pets,
    "camvid": plan_camvid,
    "folder": plan_folder,
    "synthetic": plan_synthetic,
}


# --------------------------------------------------------------------------- prepare
def prepare(
    source: str,
    out: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    shard_size: int = 256,
    max_size: int | None = None,
    overwrite: bool = False,
    strict: bool = False,
    workers: int | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Turn ``source`` (pets, camvid, folder, synthetic) into Parquet shards + manifest at
    ``out`` (atomically). Source options: ``seed``, ``val_fraction``, ``ignore_border``,
    ``download`` (pets); ``classes_file`` (folder); ``count``, ``size``, ``test_fraction``,
    ``shape_classes`` (synthetic). Returns a summary dict: ``out, source, splits {split: rows},
    kept, skipped {reason: n}, skipped_examples {reason: [id: detail]}, converted {mode: n},
    orphan_labels, shards, bytes, seconds``."""
    if source not in PLANNERS:
        raise DataError(f"unknown source {source!r} (choose from {', '.join(SOURCES)})")
    if max_size is not None and int(max_size) < 16:
        raise DataError(f"max size must be >= 16, got {max_size}")
    t0 = time.perf_counter()
    plan = PLANNERS[source](root, **options)
    if not plan.candidates:
        raise DataError(f"{source}: no samples found under {root}")
    # Train rows are written in a seeded random order: sources list samples by name, and for
    # video-like datasets (CamVid) that puts near-identical consecutive frames into the same
    # shard block, hence into the same training batch when a reader shuffles only blocks.
    order_seed = f"{options.get('seed', 0)}:train-order"
    train = [c for c in plan.candidates if c.split == "train"]
    random.Random(order_seed).shuffle(train)
    shuffled = iter(train)
    plan.candidates = [next(shuffled) if c.split == "train" else c for c in plan.candidates]
    num_classes = len(plan.classes)
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    converted: Counter = Counter()

    def work(c: Candidate):
        try:
            return c, _process(c, num_classes, plan.ignore_index, max_size), None
        except Skip as s:
            return c, None, s

    n_workers = workers if workers else min(4, os.cpu_count() or 1)
    writer = ShardWriter(out, shard_size=shard_size, overwrite=overwrite)
    with writer, ThreadPoolExecutor(max_workers=max(1, n_workers)) as pool:
        for c, res, skip in pool.map(work, plan.candidates):  # ordered: deterministic shards
            if skip is not None:
                if strict:
                    raise DataError(f"{source} sample {c.id} ({c.image}): {skip.reason}: {skip.detail}")
                skipped[skip.reason] += 1
                if len(examples[skip.reason]) < MAX_EXAMPLES:
                    examples[skip.reason].append(f"{c.id}: {skip.detail}" if skip.detail else c.id)
                continue
            row, conv = res
            if conv:
                converted[conv] += 1
            writer.add(c.split, row)
        kept = sum(writer.counts.values())
        if kept == 0:
            raise DataError(f"{source}: no usable samples under {root} (skipped: {dict(skipped)})")
        summary = {
            "source": source,
            "kept": kept,
            "skipped": dict(sorted(skipped.items())),
            "skipped_examples": dict(sorted(examples.items())),
            "converted": dict(sorted(converted.items())),
            "orphan_labels": int(plan.notes.get("orphan_label", 0)),
        }
        opts = {"max_size": max_size, "shard_size": shard_size, **plan.options,
                "train_order": f"random.Random({order_seed!r}).shuffle"}
        manifest = Manifest(
            root=writer.out, classes=plan.classes, palette=plan.palette, ignore_index=plan.ignore_index,
            splits={s: 0 for s in plan.splits}, shards={}, source=source, options=opts, summary=summary,
            format_version=FORMAT_VERSION, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        manifest = writer.commit(manifest)
    shards = [s for v in manifest.shards.values() for s in v]
    return {
        "out": masked(manifest.root),  # a URI's credentials never reach the output
        "source": source,
        "splits": dict(manifest.splits),
        **summary,
        "classes": manifest.classes,
        "ignore_index": manifest.ignore_index,
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def iter_candidates(source: str, root: Any = None, **options: Any) -> Iterator[Candidate]:
    """The candidates a source would yield (for inspection and tests)."""
    yield from PLANNERS[source](root, **options).candidates
