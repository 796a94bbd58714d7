"""One evaluation routine for every stage (float, fake-quant, real int8) on the held-out split."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

__all__ = ["EvalResult", "evaluate_model", "prediction_agreement", "quantized_kernels_allowed"]


@contextlib.contextmanager
def quantized_kernels_allowed() -> Iterator[None]:
    """Lift ``torch.use_deterministic_algorithms`` (set by ``deterministic=true`` training) for int8 inference.

    torch flags its quantized CPU kernels (``quantized_resize_cpu_``) as nondeterministic and
    refuses them in that mode, although they compute the same result on every run.
    """
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@dataclass
class EvalResult:
    """Top-1 / top-5 accuracy (0..1), mean cross-entropy, sample count and the top-1 predictions."""

    top1: float
    top5: float
    loss: float
    samples: int
    predictions: Tensor

    def metrics(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "samples": self.samples}


@torch.no_grad()
def evaluate_model(
    model: nn.Module, batches: Iterable[Any], num_classes: int, progress: str | None = None
) -> EvalResult:
    """Evaluate ``model`` (in eval mode, on CPU) over ``(input, target)`` batches with torchmetrics.

    A real int8 model is evaluated as it is (quantized kernels), never through fake-quant.
    ``progress`` names a tqdm bar (``None``: no bar).
    """
    model.eval()
    # Rank 0 evaluates alone under DDP: no cross-rank sync (the other ranks are not evaluating).
    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro", sync_on_compute=False)
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro", sync_on_compute=False)
    loss = MeanMetric(sync_on_compute=False)
    preds: list[Tensor] = []
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=progress, leave=False)
    with quantized_kernels_allowed():
        for x, y in it:
            logits = model(x).float()
            loss.update(F.cross_entropy(logits, y, reduction="none"))
            top1.update(logits, y)
            top5.update(logits, y)
            preds.append(logits.argmax(1))
    predictions = torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)
    if predictions.numel() == 0:
        raise ValueError("evaluate_model() got no batches")
    return EvalResult(
        top1=float(top1.compute()),
        top5=float(top5.compute()),
        loss=float(loss.compute()),
        samples=int(predictions.numel()),
        predictions=predictions,
    )


def prediction_agreement(a: Tensor, b: Tensor) -> float:
    """Fraction of samples where two models predict the same top-1 class."""
    if a.shape != b.shape:
        raise ValueError(f"prediction sets differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a == b).float().mean())
