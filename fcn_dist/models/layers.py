"""Layers the backbones build on where ``torch.nn``'s own are slow."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Dropout"]


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is drawn faster on a CPU; elsewhere ``nn.Dropout`` itself.

    PyTorch's CPU ``bernoulli_`` draws one random value per element, a visible share of a
    frozen-backbone VGG step (fc6 and fc7 outputs; figures in ``benchmarks/README.md``). Here
    the mask comes from ``torch.randint`` words cut into 16-bit halves (one draw per two
    elements): an element is kept when its 16 bits are at or above the threshold, so ``p`` is
    rounded to a multiple of 1/65536 and survivors are scaled by 1/(1 - that). Same generator
    (``torch.manual_seed`` repeats a mask), same autograd (the gradient is masked and scaled
    the same way), same ``state_dict`` (none).
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or self.p == 1.0 or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        words = torch.randint(-2**31, 2**31, ((n + 1) // 2,), dtype=torch.int32)
        bits = words.view(torch.int16)[:n]
        # in x's own memory layout (channels_last too) where x is dense: a same-layout multiply
        dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
        bits = bits.as_strided(x.shape, x.stride()) if dense else bits.view(x.shape)
        drop = min(65535, max(1, round(self.p * 65536)))  # out of 65536 values: dropped
        keep = bits >= drop - 32768
        mask = keep.to(x.dtype).mul_(65536 / (65536 - drop))
        return x.mul_(mask) if self.inplace else x * mask
