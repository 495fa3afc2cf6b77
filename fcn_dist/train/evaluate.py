"""Scoring: the per-epoch validation of the loop and the final score of a checkpoint.

Both use the checkpoint's one :class:`~fcn_dist.data.transforms.Preprocessing` (validation
through the dataset's transform, the final score through :class:`~fcn_dist.predict.Segmenter`),
and every metric comes from a confusion matrix (:mod:`fcn_dist.train.metrics`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcn_dist.data import ShardDataset
from fcn_dist.perf import fast_dtype
from fcn_dist.train import metrics as M
from fcn_dist.train.step import all_reduce, segmentation_loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, *, num_classes: int, ignore_index: int,
             batch_size: int = 8, indices: list[int] | None = None, device: Any = "cpu",
             amp_dtype: torch.dtype | None = None, num_workers: int = 0,
             class_weight: torch.Tensor | None = None) -> dict[str, Any]:
    """Confusion matrix, loss and metrics of ``model`` over ``dataset`` (``ShardDataset``-like).

    ``indices`` restricts this process to its share. Under ``torch.distributed`` the confusion
    matrix (torchmetrics) and the loss are summed over all ranks, so every rank returns the
    metrics of the whole split: the same numbers as one process evaluating every index.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm_metric = M.confusion_matrix_metric(num_classes, ignore_index, device)
    loss_stats = torch.zeros(2, dtype=torch.float64, device=device)
    idx = list(range(len(dataset))) if indices is None else list(indices)
    if num_workers > 0 and idx:  # decode in background processes (GPU runs); same order
        batches: Any = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, idx), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, pin_memory=device.type == "cuda")
    else:
        batches = (_stack([dataset[i] for i in idx[s:s + batch_size]])
                   for s in range(0, len(idx), batch_size))
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()):
            logits = model(x)
        loss_sum, norm = segmentation_loss(logits, y, ignore_index, class_weight)
        loss_stats += torch.stack([loss_sum.double(), norm.double()])
        cm_metric.update(logits.argmax(1), y)
    cm = cm_metric.compute()  # torchmetrics syncs (sums) the matrices of all ranks here
    all_reduce(loss_stats)
    model.train(was_training)
    cm_np = cm.cpu().numpy()
    out = M.summarize(cm_np)
    out["loss"] = float(loss_stats[0] / loss_stats[1].clamp_min(1))
    out["confusion_matrix"] = cm_np.astype("int64").tolist()
    return out


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def evaluate_checkpoint(path: str | Path, data_dir: str | Path, split: str, *, batch_size: int = 8,
                        amp: str = "off", device: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
    """Score a checkpoint on ``split`` against labels at their ORIGINAL resolution.

    Images go through the checkpoint's preprocessing, the logits are upsampled bilinearly back
    to each image's original size and compared with the untouched label map. Returns the
    metrics of :func:`fcn_dist.train.metrics.summarize` plus ``confusion_matrix``, ``images``,
    ``params`` and ``gflops_per_image`` (one forward at the eval size).
    """
    from fcn_dist.predict import Segmenter

    seg = Segmenter.from_checkpoint(path, device=device)
    dtype = fast_dtype(seg.device, amp)
    seg.amp_dtype = None if dtype == torch.float32 else dtype
    ds = ShardDataset(data_dir, split)
    k = seg.num_classes
    cm = np.zeros((k, k), dtype=np.int64)
    n = len(ds) if limit is None else min(limit, len(ds))
    for start in range(0, n, batch_size):
        raws = [ds.raw(i) for i in range(start, min(n, start + batch_size))]
        preds = seg.predict_batch([im for im, _ in raws])
        for pred, (_, lab) in zip(preds, raws):
            cm += M.confusion_matrix_numpy(pred, lab, k, seg.ignore_index)
    out = M.summarize(cm, seg.classes)
    out["confusion_matrix"] = cm.tolist()
    out["images"] = n
    out["split"] = split
    out["params"] = int(sum(p.numel() for p in seg.model.parameters()))
    out["gflops_per_image"] = gflops(seg.model, seg.eval_size or [256, 256])
    return out


def gflops(model: torch.nn.Module, size) -> float:
    """Forward GFLOPs of ``model`` for one image of ``size`` (h, w) (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    x = torch.zeros(1, 3, int(size[0]), int(size[1]), device=p.device, dtype=p.dtype)
    was = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    model.train(was)
    return fc.get_total_flops() / 1e9
