"""Observers beyond torch's: percentile and MSE for activations, current min-max for weights.

Horizon recommends MSE or percentile (99.975) for activation calibration and min-max for
weights. Both activation observers keep a running mean of per-batch clipping ranges, so they
also work as slowly-updating observers during QAT. Weights change at every QAT step, so their
observer takes the per-channel range of the weights as they are now.
"""

from __future__ import annotations

import torch
from torch import Tensor

from qat.quant.backend import MinMaxObserver, PerChannelMinMaxObserver

__all__ = ["CurrentPerChannelMinMaxObserver", "MSEObserver", "PercentileObserver"]

_MAX_SAMPLES = 1 << 18  # values drawn per batch: ranges of huge tensors are estimated on a sample


def _sample(x: Tensor) -> Tensor:
    flat = x.detach().flatten().float()
    if flat.numel() > _MAX_SAMPLES:
        idx = torch.randint(0, flat.numel(), (_MAX_SAMPLES,), device=flat.device)
        flat = flat[idx]
    return flat


class _RunningRangeObserver(MinMaxObserver):
    """Min-max observer whose per-batch range comes from :meth:`batch_range`, averaged over batches."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.register_buffer("num_batches", torch.tensor(0, dtype=torch.long))

    def batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self.batch_range(_sample(x_orig))
        n = self.num_batches.item()
        if n == 0:
            self.min_val.resize_(lo.shape).copy_(lo)
            self.max_val.resize_(hi.shape).copy_(hi)
        else:
            self.min_val.mul_(n / (n + 1)).add_(lo / (n + 1))
            self.max_val.mul_(n / (n + 1)).add_(hi / (n + 1))
        self.num_batches += 1
        return x_orig

    def reset_min_max_vals(self) -> None:
        super().reset_min_max_vals()
        self.num_batches.zero_()


class PercentileObserver(_RunningRangeObserver):
    """Clips each batch at the ``percentile`` (and ``100 - percentile``) of its values."""

    def __init__(self, percentile: float = 99.975, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        q = torch.tensor([1.0 - self.percentile / 100.0, self.percentile / 100.0], device=x.device)
        lo, hi = torch.quantile(x, q)
        return torch.minimum(lo, x.new_zeros(())), torch.maximum(hi, x.new_zeros(()))


class MSEObserver(_RunningRangeObserver):
    """Picks, per batch, the clipping range (a fraction of min/max) with the least quantization MSE."""

    def __init__(self, num_candidates: int = 40, min_fraction: float = 0.3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_candidates = num_candidates
        self.min_fraction = min_fraction

    def batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lo0 = torch.minimum(x.min(), x.new_zeros(()))
        hi0 = torch.maximum(x.max(), x.new_zeros(()))
        levels = self.quant_max - self.quant_min
        symmetric = self.qscheme in (torch.per_tensor_symmetric, torch.per_channel_symmetric)
        best, best_err = (lo0, hi0), None
        for frac in torch.linspace(self.min_fraction, 1.0, self.num_candidates).tolist():
            lo, hi = lo0 * frac, hi0 * frac
            if symmetric:
                bound = torch.maximum(-lo, hi)
                lo, hi = -bound, bound
            scale = torch.clamp((hi - lo) / levels, min=1e-12)
            zp = torch.round(-lo / scale) if not symmetric else torch.tensor(levels / 2 + 0.5).floor()
            q = torch.clamp(torch.round(x / scale) + zp, 0, levels)
            err = torch.mean((x - (q - zp) * scale) ** 2)
            if best_err is None or err < best_err:
                best, best_err = (lo, hi), err
        return best


class CurrentPerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel min and max of the tensor seen last (the current weights), not a running extreme.

    Two reductions (``amin``, ``amax``) rather than ``torch.aminmax`` along a dimension, which is
    ~5x slower on this CPU; qparams, state dict and ``convert`` are torch's.
    """

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        y = x_orig.detach().to(self.min_val.dtype).transpose(0, self.ch_axis).flatten(1)
        min_val, max_val = y.amin(1), y.amax(1)
        if self.min_val.shape != min_val.shape:
            self.min_val.resize_(min_val.shape)
            self.max_val.resize_(max_val.shape)
        self.min_val.copy_(min_val)
        self.max_val.copy_(max_val)
        return x_orig
