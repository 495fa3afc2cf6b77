"""Training on Ray Train: the loop per worker, metrics, checkpoints, and ``run(spec)``.

- :func:`run` — one job (one FCN variant on one dataset) on Ray Train; see
  :mod:`fcn_dist.train.trainer`.
- :func:`load_checkpoint` — ``(model, meta)`` from a checkpoint directory (weights_only).
- :class:`Interrupted` — raised by :func:`run` when ``should_stop()`` stopped it (a subclass of
  ``fcn_dist.queue.Interrupted`` when the queue package is importable).
- :class:`NonFiniteLossError` — a :class:`~fcn_dist.errors.TrainingError` for a NaN/inf loss.
- :mod:`fcn_dist.train.metrics` — pixel accuracy, mean accuracy, mIoU, fwIoU, per-class IoU.
"""

from fcn_dist.train.checkpoint import load_checkpoint, read_meta
from fcn_dist.train.loop import evaluate, train_loop_per_worker
from fcn_dist.train.trainer import (
    Interrupted,
    NonFiniteLossError,
    evaluate_checkpoint,
    resolve_resources,
    run,
)

__all__ = [
    "Interrupted",
    "NonFiniteLossError",
    "evaluate",
    "evaluate_checkpoint",
    "load_checkpoint",
    "read_meta",
    "resolve_resources",
    "run",
    "train_loop_per_worker",
]
