"""Scoring: ONE :func:`evaluate` for the per-epoch validation and the final score.

Both call sites score the same way (issue 17.4): each image goes through the checkpoint's one
:class:`~fcn_dist.data.transforms.Preprocessing` (resized to its size, or kept at its own for
``eval_size: native``), the logits are upsampled bilinearly to the label map's ORIGINAL size,
and the loss and the confusion matrix are taken there against the untouched labels. So the
best epoch's val mIoU and the final score of that checkpoint on the same split are the same
number. Every metric comes from a confusion matrix (:mod:`fcn_dist.train.metrics`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F

from fcn_dist.data import ShardDataset
from fcn_dist.data.transforms import Preprocessing
from fcn_dist.train import metrics as M
from fcn_dist.train.step import all_reduce, segmentation_loss


class ScoringTransform:
    """``(image, label) -> (network input, label at its original size, int64)``: only the image
    goes through the preprocessing; the label is never resized (picklable for DataLoaders)."""

    def __init__(self, preprocessing: Preprocessing):
        self.preprocessing = preprocessing
        self._image = preprocessing.transform()

    def __call__(self, image: Any, label: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = self._image(image)
        return x, torch.as_tensor(label).to(torch.int64)


def scoring_dataset(data_dir: str | Path, split: str, preprocessing: Preprocessing) -> ShardDataset:
    """``split`` as :func:`evaluate` scores it: preprocessed images, labels at original size."""
    return ShardDataset(data_dir, split, transform=ScoringTransform(preprocessing))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, *, num_classes: int, ignore_index: int,
             batch_size: int = 8, indices: list[int] | None = None, device: Any = "cpu",
             amp_dtype: torch.dtype | None = None, num_workers: int = 0,
             class_weight: torch.Tensor | None = None,
             class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Confusion matrix, loss and metrics of ``model`` over ``dataset`` (items ``(input,
    label)``, e.g. :func:`scoring_dataset`), at each LABEL's size: logits of another size are
    upsampled bilinearly to it first. Items of different sizes are batched apart.
    ``class_names`` name the ``per_class_iou`` entries (default ``"0"``, ``"1"``, ...).

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
    for x, y in _batches(dataset, idx, batch_size, num_workers, pin=device.type == "cuda"):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()):
            logits = model(x)
        logits = logits.float()  # upsampling, softmax and argmax in fp32
        if logits.shape[-2:] != y.shape[-2:]:
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss_sum, norm = segmentation_loss(logits, y, ignore_index, class_weight)
        loss_stats += torch.stack([loss_sum.double(), norm.double()])
        cm_metric.update(logits.argmax(1), y)
    cm = cm_metric.compute()  # torchmetrics syncs (sums) the matrices of all ranks here
    all_reduce(loss_stats)
    model.train(was_training)
    cm_np = cm.cpu().numpy()
    out = M.summarize(cm_np, class_names)
    out["loss"] = float(loss_stats[0] / loss_stats[1].clamp_min(1))
    out["confusion_matrix"] = cm_np.astype("int64").tolist()
    return out


def _batches(dataset, idx: list[int], batch_size: int, num_workers: int, pin: bool,
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``idx`` in order, ``batch_size`` items at a time, each cut into runs of one input and
    label size (native-size images of different sizes cannot share a tensor)."""
    if num_workers > 0 and idx:  # decode in background processes (GPU runs); same order
        chunks: Any = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, idx), batch_size=batch_size, shuffle=False,
            num_workers=num_workers, pin_memory=pin, collate_fn=list)
    else:
        chunks = ([dataset[i] for i in idx[s:s + batch_size]] for s in range(0, len(idx), batch_size))
    for items in chunks:
        run: list[tuple[torch.Tensor, torch.Tensor]] = []
        for it in items:
            if run and (it[0].shape != run[0][0].shape or it[1].shape != run[0][1].shape):
                yield _stack(run)
                run = []
            run.append(it)
        if run:
            yield _stack(run)


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([it[0] for it in items]), torch.stack([it[1] for it in items])


def evaluate_checkpoint(path: str | Path, data_dir: str | Path, split: str, *, batch_size: int = 8,
                        amp: str = "off", device: str | None = None,
                        limit: int | None = None) -> dict[str, Any]:
    """The final score of a checkpoint on ``split``: :func:`evaluate` with the checkpoint's
    preprocessing, in the training loop's precision and layout, so it equals that checkpoint's
    val metrics when ``split`` is its val split. Returns the metrics of
    :func:`fcn_dist.train.metrics.summarize` plus ``confusion_matrix``, ``images``, ``split``,
    ``eval_size`` (``"native"`` or ``"HxW"``), ``params`` and ``gflops_per_image`` (one
    forward at the eval size; native: the first image's size)."""
    from fcn_dist.checkpoint import load_checkpoint
    from fcn_dist.perf import prepare_for_training, training_settings

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = load_checkpoint(path)
    settings = training_settings(dev, amp)  # the precision policy the loop validated with
    prepare_for_training(model, settings)
    pre = Preprocessing.from_dict(meta)
    ds = scoring_dataset(data_dir, split, pre)
    n = len(ds) if limit is None else min(limit, len(ds))
    out = evaluate(model, ds, num_classes=int(meta["num_classes"]),
                   ignore_index=int(meta["ignore_index"]), batch_size=batch_size,
                   indices=list(range(n)), device=dev, amp_dtype=settings.amp_dtype,
                   class_names=meta.get("classes"))
    out.pop("loss")  # unweighted here; the val loss (class-weighted) is the epoch row's
    out["images"] = n
    out["split"] = split
    out["eval_size"] = eval_size_label(pre.size)
    out["params"] = int(sum(p.numel() for p in model.parameters()))
    size = pre.size or (tuple(ds[0][0].shape[-2:]) if n else (256, 256))
    out["gflops_per_image"] = gflops(model, size)
    return out


def eval_size_label(size: tuple[int, int] | list[int] | None) -> str:
    """How a run's eval size is recorded: ``"native"`` (None) or ``"HxW"``."""
    return "native" if not size else f"{int(size[0])}x{int(size[1])}"


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
