"""The one precision policy: the dtype training, validation, the final test and inference run in.

    p = precision_for(device, amp)        # amp: "auto" | "off" | "bf16" | "fp16"
    with p.autocast(): logits = model(x)  # p.autocast_dtype is None for float32
    scaler = torch.amp.GradScaler(enabled=p.grad_scaler)

Unless forced (``"bf16"``), a CPU gets bf16 only where it computes bf16 natively
(``avx512_bf16``/AMX): without them oneDNN emulates bf16, slower than float32, so oneDNN's
own ``_is_mkldnn_bf16_supported`` (true on any AVX-512 CPU) is not the test.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from fcn_dist.perf.hardware import cpu_supports_bf16
from fcn_dist.spec import AMP_MODES

__all__ = ["Precision", "fast_dtype", "precision_for"]


@dataclass(frozen=True)
class Precision:
    """The compute dtype on a device and what follows from it (see :func:`precision_for`)."""

    device: torch.device
    dtype: torch.dtype  # bf16, fp16 or float32

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, None for float32 (no autocast)."""
        return None if self.dtype == torch.float32 else self.dtype

    @property
    def grad_scaler(self) -> bool:
        """Whether training needs a GradScaler: fp16 only (bf16 has float32's exponent range)."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context for a forward pass (a no-op for float32)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def precision_for(device: torch.device | str, amp: str = "auto") -> Precision:
    """The precision to compute in on ``device`` for the ``amp`` setting.

    ``"off"``: float32. CUDA: fp16 (with a GradScaler) when asked for, or under ``"auto"`` on
    a GPU without bf16; else bf16. CPU: ``"bf16"`` forces bf16; ``"auto"`` and ``"fp16"``
    give bf16 where :func:`~fcn_dist.perf.cpu_supports_bf16` (``FCN_CPU_BF16`` overrides),
    else float32: never fp16 on a CPU (no fast kernels).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp: unknown mode {amp!r} (expected one of {', '.join(AMP_MODES)})")
    device = torch.device(device)
    if amp == "off":
        dtype = torch.float32
    elif device.type == "cuda":
        fp16 = amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported())
        dtype = torch.float16 if fp16 else torch.bfloat16
    elif amp == "bf16" or cpu_supports_bf16():
        dtype = torch.bfloat16
    else:
        dtype = torch.float32
    return Precision(device=device, dtype=dtype)


def fast_dtype(device: torch.device | str, amp: str = "auto") -> torch.dtype:
    """The compute dtype of :func:`precision_for` (``device``, ``amp``)."""
    return precision_for(device, amp).dtype
