"""Speed settings for inference and training, measured by ``fcn-bench model``.

- :mod:`~fcn_dist.perf.hardware`: CPU flags, cores, threads, malloc reuse (process-wide).
- :mod:`~fcn_dist.perf.precision`: the one precision policy (:func:`precision_for`) that
  training, validation, the final test and inference all follow.
- :mod:`~fcn_dist.perf.inference`: :func:`optimize_for_inference`, an inference-only fast copy
  of a model (bf16 where native, channels_last, fused conv+ReLU).
- :mod:`~fcn_dist.perf.training`: :func:`training_settings` for the train loop's step and
  :class:`FrozenBackboneFCN` (head-only training over the fast frozen backbone).

A leaf: it knows models only by their ``.backbone``/``.head`` attributes.
"""

from fcn_dist.perf.hardware import (
    cpu_flags,
    cpu_supports_bf16,
    physical_cores,
    reuse_freed_memory,
    set_threads,
)
from fcn_dist.perf.inference import (
    ConvReLU,
    InferenceModel,
    fuse_conv_bn_relu,
    optimize_for_inference,
)
from fcn_dist.perf.precision import Precision, fast_dtype, precision_for
from fcn_dist.perf.training import (
    FrozenBackboneFCN,
    TrainingSettings,
    fused_optimizer_ok,
    prepare_for_training,
    training_settings,
)

__all__ = [
    "ConvReLU",
    "FrozenBackboneFCN",
    "InferenceModel",
    "Precision",
    "TrainingSettings",
    "cpu_flags",
    "cpu_supports_bf16",
    "fast_dtype",
    "fuse_conv_bn_relu",
    "fused_optimizer_ok",
    "optimize_for_inference",
    "physical_cores",
    "precision_for",
    "prepare_for_training",
    "reuse_freed_memory",
    "set_threads",
    "training_settings",
]
