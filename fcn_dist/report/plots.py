"""Figures of a report: training curves, per-class IoU bars and a confusion matrix (PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from fcn_dist.report.compare import short_run_id
from fcn_dist.store import scored_on


def run_label(r: dict) -> str:
    """Legend label of a run: ``FCN-<variant> <backbone> [<short run id>]``."""
    return f"FCN-{r.get('variant') or '?'} {r.get('backbone') or ''} [{short_run_id(r['run_id'])}]"


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_curves(epochs: list[dict], runs: list[dict], path: Path) -> Path:
    """Loss, mIoU and pixel accuracy per epoch; one colour per run, train solid, val dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    panels = [("loss", "train_loss", "val_loss"), ("mIoU", "train_miou", "miou"),
              ("pixel accuracy", "train_pixel_accuracy", "pixel_accuracy")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), constrained_layout=True)
    colors = _colors(len(runs))
    by_run: dict[str, list[dict]] = {}
    for e in epochs:
        by_run.setdefault(e["run_id"], []).append(e)
    for ax, (title, train_key, val_key) in zip(axes, panels):
        for color, r in zip(colors, runs):
            pts: dict[int, dict] = {}
            for e in sorted(by_run.get(r["run_id"], []),
                            key=lambda e: (e["epoch"], e["timestamp"] or 0)):
                pts[e["epoch"]] = e  # a re-written epoch (resumed run) counts once: latest
            xs = sorted(pts)
            for key, style in ((train_key, "-"), (val_key, "--")):
                ys = [pts[x].get(key) for x in xs]
                if any(y is not None for y in ys):
                    ax.plot(xs, [float("nan") if y is None else y for y in ys], style,
                            color=color, marker="o", markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if title != "loss":
            ax.set_ylim(bottom=0)
    handles = [Line2D([], [], color=c, label=run_label(r)) for c, r in zip(colors, runs)]
    handles += [Line2D([], [], color="k", ls="-", label="train"),
                Line2D([], [], color="k", ls="--", label="val")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5),
               fontsize=10, frameon=False)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_class_iou(runs: list[dict], path: Path) -> Path:
    """Grouped bars: IoU per class of each run's final score, one bar per run."""
    import matplotlib.pyplot as plt
    import numpy as np

    classes: list[str] = []
    for r in runs:
        for c in (r.get("class_names") or json.loads(r.get("per_class_iou") or "{}")):
            if c not in classes:
                classes.append(c)
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * len(classes) * max(1, len(runs)) ** 0.5 + 3),
                                    4.8), constrained_layout=True)
    x = np.arange(len(classes))
    for i, (color, r) in enumerate(zip(_colors(len(runs)), runs)):
        ious = json.loads(r.get("per_class_iou") or "{}")
        ys = [ious.get(c) for c in classes]
        ys = [np.nan if y is None else y for y in ys]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), ys, width, color=color, label=run_label(r))
        if len(classes) * len(runs) <= 40:  # values on the bars (a zero IoU is no bar at all)
            ax.bar_label(bars, fmt="%.2f", fontsize=8, padding=2)
    ax.set_xticks(x, classes, rotation=30 if len(classes) > 6 else 0, ha="right"
                  if len(classes) > 6 else "center")
    ax.set_ylabel("IoU (final score)")
    ax.set_ylim(0, 1.05)
    splits = dict.fromkeys(scored_on(r.get("eval_split"), r.get("eval_is_selection")) for r in runs)
    ax.set_title(f"Per-class IoU, scored on {' / '.join(splits)}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(run: dict, path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, sums to 1) of one run."""
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(run.get("confusion_matrix") or [[0]], dtype=np.float64)
    names = run.get("class_names") or [str(i) for i in range(cm.shape[0])]
    sums = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
    n = cm.shape[0]
    size = min(14.0, max(4.5, 0.6 * n + 3))
    fig, ax = plt.subplots(figsize=(size + 1, size), constrained_layout=True)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    split = scored_on(run.get("eval_split"), run.get("eval_is_selection"))
    ax.set_title(f"Normalised confusion matrix (rows sum to 1)\n{run_label(run)}, mIoU "
                 f"{run.get('miou') or 0:.4f} on {split}", fontsize=10)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

