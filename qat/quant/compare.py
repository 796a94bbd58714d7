"""Agreement between two models on the same inputs (fake-quant vs int8, float vs int8)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["compare_outputs"]


@torch.no_grad()
def compare_outputs(reference: nn.Module, candidate: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Relative L2 error, max abs error and top-1 agreement of ``candidate`` against ``reference``.

    ``batches`` yields tensors or ``(input, ...)`` tuples; both models run in eval mode.
    Top-1 agreement compares the argmax over dim 1 (class logits; for dense outputs, per position).
    """
    reference.eval()
    candidate.eval()
    sq_err = sq_ref = 0.0
    max_abs = 0.0
    agree = total = 0
    for batch in batches:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        ref: Tensor = reference(x).float()
        out: Tensor = candidate(x).float()
        sq_err += float(((out - ref) ** 2).sum())
        sq_ref += float((ref**2).sum())
        max_abs = max(max_abs, float((out - ref).abs().max()))
        if ref.dim() >= 2:
            same = out.argmax(1) == ref.argmax(1)
            agree += int(same.sum())
            total += same.numel()
    return {
        "rel_l2": (sq_err / max(sq_ref, 1e-12)) ** 0.5,
        "max_abs": max_abs,
        "top1_agreement": agree / total if total else float("nan"),
    }
