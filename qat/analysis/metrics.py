"""Error statistics of a candidate tensor against a reference, accumulated over batches."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ErrorStats", "as_float"]


@dataclass
class ErrorStats:
    """Running sums for cosine similarity, SQNR, relative L2 error and max abs error (all elements pooled)."""

    dot: float = 0.0
    ref_sq: float = 0.0
    cand_sq: float = 0.0
    err_sq: float = 0.0
    max_abs: float = 0.0
    count: int = 0
    ref_sq_channel: Tensor | None = None
    err_sq_channel: Tensor | None = None

    def add(self, reference: Tensor, candidate: Tensor) -> None:
        """Accumulate one batch (channels along dim 1 for tensors of two or more dimensions)."""
        if reference.dim() >= 2:
            dims = [d for d in range(reference.dim()) if d != 1]
            ref_c = reference.detach().double().pow(2).sum(dims)
            err_c = (candidate.detach().double() - reference.detach().double()).pow(2).sum(dims)
            if self.ref_sq_channel is None or self.err_sq_channel is None:
                self.ref_sq_channel, self.err_sq_channel = ref_c, err_c
            else:
                self.ref_sq_channel = self.ref_sq_channel + ref_c
                self.err_sq_channel = self.err_sq_channel + err_c
        r = reference.detach().double().flatten()
        c = candidate.detach().double().flatten()
        err = c - r
        self.dot += float(r @ c)
        self.ref_sq += float(r @ r)
        self.cand_sq += float(c @ c)
        self.err_sq += float(err @ err)
        self.count += r.numel()
        self.max_abs = max(self.max_abs, float(err.abs().max()) if err.numel() else 0.0)

    @property
    def cosine(self) -> float:
        denom = math.sqrt(self.ref_sq * self.cand_sq)
        return self.dot / denom if denom > 0 else (1.0 if self.err_sq == 0 else 0.0)

    @property
    def channel_sqnr_db(self) -> float:
        """SQNR per channel (dim 1), averaged in dB over the channels that carry signal.

        A channel whose range swamps the others cannot hide their collapse, as it does in the
        pooled figure. Exact channels count as 120 dB; without channels it is the pooled SQNR.
        """
        if self.ref_sq_channel is None or self.err_sq_channel is None:
            return self.sqnr_db
        ref, err = self.ref_sq_channel, self.err_sq_channel
        live = ref > 0
        if not bool(live.any()):
            return self.sqnr_db
        ratio = ref[live] / torch.maximum(err[live], ref[live] * 1e-12)
        return float((10.0 * torch.log10(ratio)).mean())

    @property
    def sqnr_db(self) -> float:
        """Pooled signal (reference) to quantization-noise ratio in dB; ``inf`` when the two agree exactly."""
        if self.err_sq == 0:
            return math.inf
        if self.ref_sq == 0:
            return -math.inf
        return 10.0 * math.log10(self.ref_sq / self.err_sq)

    @property
    def rel_l2(self) -> float:
        return math.sqrt(self.err_sq / self.ref_sq) if self.ref_sq > 0 else (0.0 if self.err_sq == 0 else math.inf)


def as_float(t: Tensor) -> Tensor:
    """A quantized tensor dequantized, any other one as float32."""
    return t.dequantize() if t.is_quantized else t.float()
