"""The overlay gallery: images of the test split (else val, else train), their ground truth
and each run's prediction blended over them in the dataset's palette (``gallery.png`` and
``overlays/*.png`` at original size)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from fcn_dist import config
from fcn_dist import fs as fsio
from fcn_dist.spec import JobSpec

def _colorize(label, palette, ignore_index):
    import numpy as np

    pal = np.zeros((256, 3), dtype=np.uint8)
    for i, c in enumerate(palette[:256]):
        pal[i] = c[:3]
    lab = np.asarray(label).astype(np.int64)
    rgb = pal[np.clip(lab, 0, 255)]
    valid = (lab != ignore_index) & (lab >= 0) & (lab < len(palette))
    return rgb, valid


def _overlay(image, label, palette, ignore_index, alpha: float = 0.55):
    """Blend the colour label map onto the RGB image (ignored pixels left as they are)."""
    import numpy as np

    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    rgb, valid = _colorize(label, palette, ignore_index)
    out = img.copy()
    out[valid] = (1 - alpha) * img[valid] + alpha * rgb[valid].astype(np.float32)
    return out.clip(0, 255).astype(np.uint8)


def _default_palette(n: int) -> list[list[int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [[int(255 * v) for v in cmap(i % 20)[:3]] for i in range(n)]


def _data_dir_of(run: dict) -> "fsio.Location | None":
    """The prepared data a run trained on, from its stored spec (None if unknown)."""
    spec = run.get("spec")
    if not spec:
        return None
    try:
        return JobSpec.from_json(spec).data_dir()
    except Exception:  # a spec of an older version: its `data` field is enough
        try:
            data = json.loads(spec).get("data")
            return config.data_path() / data if data else None
        except Exception:
            return None


def plot_gallery(runs: list[dict], out_dir: Path, n: int, *,
                 predict_fn: Callable[[str], Callable[[Any], Any]] | None = None,
                 dataset_fn: Callable[[Path, str], Any] | None = None,
                 data_dir: str | Path | None = None, split: str | None = None) -> dict:
    """Overlay gallery for ``n`` images of ``split`` (default: test, else val, else train):
    image, ground truth, each run's prediction.

    ``predict_fn(checkpoint_path)`` returns a callable image -> label map (default:
    ``fcn_dist.predict.Segmenter.from_checkpoint(path).predict``); ``dataset_fn(dir, split)``
    returns an object with ``raw(i) -> (PIL image, label)``, ``len()`` and ``manifest``
    (default: ``fcn_dist.data.ShardDataset``). Writes ``gallery.png`` and
    ``overlays/<i>_<name>.png`` at each image's original size. Returns ``{"files": [...],
    "skipped": reason or None}``.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch
    from PIL import Image

    result: dict = {"files": [], "skipped": None}
    runs = [r for r in runs if r.get("best_checkpoint")]
    if n <= 0:
        result["skipped"] = "gallery disabled (--gallery 0)"
        return result
    if not runs:
        result["skipped"] = "no run has a best checkpoint"
        return result
    if predict_fn is None:
        try:
            from fcn_dist.predict import Segmenter
        except ImportError as exc:
            result["skipped"] = f"fcn_dist.predict is not available ({exc})"
            return result
        predict_fn = lambda p: Segmenter.from_checkpoint(p).predict  # noqa: E731
    if dataset_fn is None:
        try:
            from fcn_dist.data import ShardDataset
        except ImportError as exc:
            result["skipped"] = f"fcn_dist.data.ShardDataset is not available ({exc})"
            return result
        dataset_fn = ShardDataset
    ddir = fsio.location(data_dir) if data_dir else _data_dir_of(runs[0])
    if ddir is None or not fsio.exists(ddir):
        result["skipped"] = f"data directory not found ({fsio.masked(ddir)}); pass data_dir / --data"
        return result
    try:
        ds = None
        splits = [split] if split else ["test", "val", "train"]
        for s in splits:
            try:
                ds = dataset_fn(ddir, s)
                if len(ds) > 0:
                    split = s
                    break
            except Exception:
                ds = None
        if ds is None:
            result["skipped"] = f"no split of {splits} readable in {ddir}"
            return result
        manifest = getattr(ds, "manifest", None)
        classes = list(getattr(manifest, "classes", None) or runs[0].get("class_names") or [])
        palette = [list(c) for c in (getattr(manifest, "palette", None) or
                                     _default_palette(max(1, len(classes))))]
        ignore = getattr(manifest, "ignore_index", 255)
        predictors = [(r, predict_fn(r["best_checkpoint"])) for r in runs]
    except Exception as exc:
        result["skipped"] = f"gallery failed: {type(exc).__name__}: {exc}"
        return result
    n = min(n, len(ds))
    ov_dir = out_dir / "overlays"
    ov_dir.mkdir(parents=True, exist_ok=True)
    ncols = 2 + len(predictors)
    fig, axes = plt.subplots(n, ncols, figsize=(2.6 * ncols, 2.6 * n + 0.5), squeeze=False)
    for i in range(n):
        image, label = ds.raw(i)
        image = image.convert("RGB")
        panels = [("image", np.asarray(image)), ("ground truth", _overlay(image, label, palette,
                                                                          ignore))]
        Image.fromarray(panels[1][1]).save(ov_dir / f"{i:03d}_ground_truth.png")
        for r, pred in predictors:
            lab = np.asarray(pred(image))
            ov = _overlay(image, lab, palette, ignore)
            name = f"{i:03d}_fcn{r['variant']}_{_safe_name(r['run_id'])}.png"
            Image.fromarray(ov).save(ov_dir / name)
            result["files"].append(str(ov_dir / name))
            panels.append((f"FCN-{r['variant']} {r.get('backbone') or ''}", ov))
        for j, (title, arr) in enumerate(panels):
            ax = axes[i][j]
            ax.imshow(arr)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=10)
    handles = [Patch(facecolor=np.array(palette[k][:3]) / 255.0, edgecolor="k", label=c)
               for k, c in enumerate(classes) if k < len(palette)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=9,
               frameon=False)
    fig.tight_layout(rect=(0, 0.45 / (2.6 * n + 0.5), 1, 1))  # leave 0.45 in for the legend
    path = out_dir / "gallery.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    result["files"].insert(0, str(path))
    result["split"] = split
    return result


def _safe_name(text: str | None) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text or "run").lstrip(".")[:64]

