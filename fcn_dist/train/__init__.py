"""Training on Ray Train: the loop per worker, its step, scoring, and ``run(spec)``.

- :func:`run` — one job (one FCN variant on one dataset) on Ray Train; see
  :mod:`fcn_dist.train.trainer`.
- :mod:`fcn_dist.train.loop` — the per-worker loop (set-up, train_one_epoch, validate,
  save_and_report); :mod:`fcn_dist.train.step` — one training step, loss, optimizer, schedule.
- :mod:`fcn_dist.train.evaluate` — per-epoch validation and the final score of a checkpoint.
- :class:`Interrupted` — raised by :func:`run` when ``should_stop()`` stopped it.
- :class:`NonFiniteLossError` — a :class:`~fcn_dist.errors.TrainingError` for a NaN/inf loss.
- :mod:`fcn_dist.train.metrics` — pixel accuracy, mean accuracy, mIoU, fwIoU, per-class IoU.
"""

from fcn_dist.checkpoint import load_checkpoint, read_meta
from fcn_dist.errors import Interrupted
from fcn_dist.train.evaluate import evaluate, evaluate_checkpoint, gflops
from fcn_dist.train.hooks import LoopHooks
from fcn_dist.train.loop import LoopConfig, train_loop_per_worker
from fcn_dist.train.trainer import NonFiniteLossError, resolve_resources, run, run_loop_locally

__all__ = [
    "Interrupted",
    "LoopConfig",
    "LoopHooks",
    "NonFiniteLossError",
    "evaluate",
    "evaluate_checkpoint",
    "gflops",
    "load_checkpoint",
    "read_meta",
    "resolve_resources",
    "run",
    "run_loop_locally",
    "train_loop_per_worker",
]
