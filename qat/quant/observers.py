"""Observers beyond torch's: percentile, MSE and KL for activations, current min-max for weights.

Horizon recommends MSE or percentile (99.975) for activation calibration and min-max for
weights. Both keep a running mean of per-batch clipping ranges, so they also work as
slowly-updating observers during QAT. The KL observer is TensorRT's entropy calibration: it
accumulates a histogram over all batches and clips where the quantized histogram loses the least
information. Weights change at every QAT step, so their observer takes the per-channel range of
the weights as they are now.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from qat.quant.backend import MinMaxObserver, PerChannelMinMaxObserver

__all__ = ["CurrentPerChannelMinMaxObserver", "KLObserver", "MSEObserver", "PercentileObserver", "kl_threshold"]

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


def _xlogx(t: Tensor) -> Tensor:
    return torch.where(t > 0, t * t.clamp_min(1e-300).log(), t.new_zeros(()))


@functools.lru_cache(maxsize=8)
def _group_bounds(bins: int, levels: int, start_bin: int) -> tuple[Tensor, Tensor]:
    """Candidates ``i`` and, per candidate, the first bin of each of ``levels`` groups plus the end ``i``.

    Bin ``j < i`` falls in group ``j · levels // i``, so group ``l`` starts at ``ceil(l · i / levels)``.
    The same for every call with these sizes, hence cached.
    """
    i = torch.arange(start_bin, bins + 1)
    group = torch.arange(levels + 1)
    return i, (group[None, :] * i[:, None] + levels - 1) // levels


def kl_divergences(hist: Tensor, levels: int, start_bin: int = 128) -> tuple[Tensor, Tensor]:
    """KL(P‖Q) of every candidate clipping bin count ``i`` in ``start_bin..len(hist)``, vectorised.

    TensorRT's entropy calibration, per candidate ``i``: the reference P is the first ``i`` bins
    with every count beyond them added to bin ``i − 1`` (clipped values land on the top level);
    the candidate Q merges those ``i`` bins into ``levels`` equal groups (bin ``j`` into group
    ``j · levels // i``) and spreads each group's count evenly over its non-empty bins. With P and Q
    normalised, ``KL = Σ p log(p / q)``: infinite where P has mass that Q has not (an empty last
    bin under clipped values). Each group's count and non-empty-bin count come from prefix sums,
    so a candidate costs ``levels`` gathers rather than a pass over its ``i`` bins.
    Returns ``(candidates, divergences)``.
    """
    h = hist.detach().double().flatten().cpu()
    n = h.numel()
    i, bounds = _group_bounds(n, levels, start_bin)
    zero = h.new_zeros(1)
    counts = torch.cat([zero, h.cumsum(0)])
    nonzero = torch.cat([zero, (h > 0).double().cumsum(0)])
    h_log_h = torch.cat([zero, _xlogx(h).cumsum(0)])
    total = counts[-1]
    outliers = total - counts[i]
    p_log_p = h_log_h[i - 1] + _xlogx(h[i - 1] + outliers)  # Σ P log P, P unnormalised
    sums = counts[bounds].diff(dim=1)
    per_bin = sums / nonzero[bounds].diff(dim=1).clamp_min(1)  # Q on each non-empty bin, unnormalised
    log_q = per_bin.clamp_min(1e-300).log()  # finite, so an empty group adds 0 · log_q = 0
    top_group = ((i - 1) * levels // i)[:, None]  # the group of bin i − 1, where the clipped values go
    p_log_q = (sums * log_q).sum(1) + outliers * log_q.gather(1, top_group).squeeze(1)
    kl = (p_log_p - p_log_q) / total + torch.log(counts[i] / total)  # Σ Q = counts[i]
    kl = torch.where((h[i - 1] == 0) & (outliers > 0), torch.full_like(kl, float("inf")), kl)
    return i, kl


def kl_threshold(hist: Tensor, hist_max: float, levels: int, start_bin: int = 128) -> float:
    """The clipping threshold (upper edge of the last kept bin) with the least KL divergence.

    ``hist`` counts ``|x|`` in equal bins over ``[0, hist_max]``. Ties go to the larger threshold,
    as in NVIDIA's pytorch-quantization.
    """
    candidates, kl = kl_divergences(hist, levels, start_bin)
    best = kl.numel() - 1 - int(torch.argmin(kl.flip(0)))
    return float(candidates[best]) * hist_max / hist.numel()


class KLObserver(MinMaxObserver):
    """TensorRT's entropy calibration: clips ``|x|`` where the quantized histogram stays closest (KL).

    Every batch adds ``|x|`` to a ``bins``-bin histogram over ``[0, hist_max]``; when a batch
    exceeds ``hist_max`` the range doubles (as often as needed) and old bins merge in pairs, so
    counts are never re-interpolated. Exact zeros are left out: every grid represents 0 exactly,
    and the spike of a ReLU's zeros would otherwise dominate the divergence.

    Levels compared: a non-negative tensor on an affine grid uses the whole grid (256 levels);
    a signed one, or a symmetric grid, has half of it on each side of zero (128), as in
    TensorRT. The range is ``[max(min, −T), min(max, T)]`` for the threshold ``T``: a side that
    never reaches ``T`` keeps its own extent.
    """

    def __init__(self, bins: int = 2048, start_bin: int = 128, **kwargs) -> None:
        super().__init__(**kwargs)
        if bins < start_bin or bins & (bins - 1):
            raise ValueError(f"KLObserver: bins must be a power of two >= start_bin ({start_bin}), got {bins}")
        self.bins = bins
        self.start_bin = start_bin
        self.register_buffer("histogram", torch.zeros(bins, dtype=torch.float64))
        self.register_buffer("hist_max", torch.tensor(0.0))

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach().float()
        super().forward(x)
        a = x.abs().flatten()
        top = float(a.max())
        if not top > 0 or not torch.isfinite(a.max()):
            return x_orig  # all zeros (exact on any grid), or NaN/inf: convert() reports those
        if float(self.hist_max) <= 0:
            self.hist_max.fill_(top)
        elif top > float(self.hist_max):
            self._widen(top)
        hist = torch.histc(a, bins=self.bins, min=0.0, max=float(self.hist_max)).double()
        hist[0] -= float((a == 0).sum())
        self.histogram += hist
        return x_orig

    def _widen(self, top: float) -> None:
        """Double the histogram range until it holds ``top``, merging old bins in pairs each time."""
        factor = 1
        while float(self.hist_max) * factor < top:
            factor *= 2
        merged = self.histogram.new_zeros(self.bins)
        if factor >= self.bins:
            merged[0] = self.histogram.sum()
        else:
            merged[: self.bins // factor] = self.histogram.view(-1, factor).sum(1)
        self.histogram.copy_(merged)
        self.hist_max.mul_(factor)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        if not float(self.histogram.sum()) > 0:
            return super().calculate_qparams()
        unsigned = float(self.min_val) >= 0 and self.qscheme == torch.per_tensor_affine
        levels = (self.quant_max - self.quant_min + 1) // (1 if unsigned else 2)
        threshold = kl_threshold(self.histogram, float(self.hist_max), levels, self.start_bin)
        lo = torch.clamp(self.min_val, min=-threshold)
        hi = torch.clamp(self.max_val, max=threshold)
        return self._calculate_qparams(lo, hi)

    def reset_min_max_vals(self) -> None:
        super().reset_min_max_vals()
        self.histogram.zero_()
        self.hist_max.zero_()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bins={self.bins}, hist_max={float(self.hist_max):.6g}"


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
