"""Segmentation metrics from a confusion matrix.

The confusion matrix is accumulated with torchmetrics' ``MulticlassConfusionMatrix`` (rows =
ground truth, columns = prediction, pixels labelled ``ignore_index`` excluded), which sums the
per-rank matrices across DDP workers when it is computed. Everything the service reports is a
pure function of that matrix, defined here once (the FCN paper's definitions, section 5):

- pixel accuracy          sum_i n_ii / sum_i t_i
- mean class accuracy     (1/n_cl') sum_i n_ii / t_i
- mean IoU                (1/n_cl') sum_i n_ii / (t_i + sum_j n_ji - n_ii)
- frequency-weighted IoU  (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

where ``n_ij`` counts pixels of class i predicted as j and ``t_i = sum_j n_ij``. A class that
is absent from both the labels and the predictions has an undefined IoU (NaN); it is left out
of the means (``n_cl'`` counts the classes that are defined) instead of counting as 0 or 1.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

METRIC_NAMES = ("pixel_accuracy", "mean_accuracy", "miou", "fwiou")


def _as_array(cm: Any) -> np.ndarray:
    """The confusion matrix as a float64 numpy array, checked to be square."""
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    a = np.asarray(cm, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {a.shape}")
    return a


def per_class_iou(cm: Any) -> np.ndarray:
    """IoU of each class; NaN where the class is in neither labels nor predictions."""
    a = _as_array(cm)
    tp = np.diag(a)
    union = a.sum(axis=1) + a.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def per_class_accuracy(cm: Any) -> np.ndarray:
    """Recall of each class (n_ii / t_i); NaN where the class has no labelled pixel."""
    a = _as_array(cm)
    t = a.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(t > 0, np.diag(a) / np.where(t > 0, t, 1), np.nan)


def pixel_accuracy(cm: Any) -> float:
    """Fraction of valid pixels classified correctly (NaN when there is no valid pixel)."""
    a = _as_array(cm)
    total = a.sum()
    return float(np.trace(a) / total) if total > 0 else math.nan


def mean_accuracy(cm: Any) -> float:
    """Mean over labelled classes of the per-class accuracy."""
    acc = per_class_accuracy(cm)
    return float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan


def mean_iou(cm: Any) -> float:
    """Mean IoU over the classes whose IoU is defined."""
    iou = per_class_iou(cm)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan


def fw_iou(cm: Any) -> float:
    """Frequency-weighted IoU: per-class IoU weighted by the class's share of labelled pixels."""
    a = _as_array(cm)
    total = a.sum()
    if total <= 0:
        return math.nan
    freq = a.sum(axis=1) / total
    iou = per_class_iou(a)
    # a class with t_i > 0 always has a defined IoU; classes with t_i == 0 weigh 0
    return float(np.sum(freq * np.nan_to_num(iou, nan=0.0)))


def summarize(cm: Any, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """All reported metrics of a confusion matrix.

    Returns ``pixel_accuracy``, ``mean_accuracy``, ``miou``, ``fwiou`` (floats) and
    ``per_class_iou`` (class name -> IoU or NaN; names default to ``"0"``, ``"1"``, ...).
    """
    a = _as_array(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(a.shape[0])]
    if len(names) != a.shape[0]:
        raise ValueError(f"{len(names)} class names for a {a.shape[0]}-class confusion matrix")
    iou = per_class_iou(a)
    return {
        "pixel_accuracy": pixel_accuracy(a),
        "mean_accuracy": mean_accuracy(a),
        "miou": mean_iou(a),
        "fwiou": fw_iou(a),
        "per_class_iou": {n: float(v) for n, v in zip(names, iou)},
    }


def confusion_matrix_metric(num_classes: int, ignore_index: int | None, device: Any = "cpu"):
    """A torchmetrics ``MulticlassConfusionMatrix`` for label maps.

    Pixels whose label is ``ignore_index`` are excluded. Under ``torch.distributed`` its
    ``compute()`` sums the matrices of all ranks (gloo on CPU, NCCL on GPU), so every rank sees
    the global matrix. Argument validation is off: it scans every pixel on every update.
    """
    from torchmetrics.classification import MulticlassConfusionMatrix

    return MulticlassConfusionMatrix(
        num_classes=num_classes,
        ignore_index=ignore_index,
        normalize=None,
        validate_args=False,
    ).to(device)


def confusion_matrix_numpy(pred: np.ndarray, target: np.ndarray, num_classes: int,
                           ignore_index: int | None = None) -> np.ndarray:
    """Reference confusion matrix (rows = target, columns = prediction) with plain numpy."""
    pred = np.asarray(pred).ravel().astype(np.int64)
    target = np.asarray(target).ravel().astype(np.int64)
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def nan_to_none(value: Any) -> Any:
    """JSON-safe copy: NaN/inf floats (also inside dicts and lists) become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value
