"""The quantization contract every block and model must meet, as one reusable call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from qat.quant.backend import nnq
from qat.quant.check import CheckReport, check_model
from qat.quant.compare import compare_outputs, replay_ops
from qat.quant.convbn import fold_bn
from qat.quant.prepare import convert, disable_observer, prepare_qat
from qat.quant.qconfig import QuantConfig

__all__ = ["VerifyResult", "unconverted_layers", "verify_model"]

_QUANTIZED_WEIGHTED = (nnq.Conv2d, nnq.Linear)


def unconverted_layers(int8_model: nn.Module) -> list[str]:
    """Paths of Conv2d/Linear layers still in float after ``convert`` (should be empty)."""
    return [
        name
        for name, m in int8_model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, _QUANTIZED_WEIGHTED)
    ]


@dataclass
class VerifyResult:
    """What :func:`verify_model` measured."""

    check: CheckReport
    int8_model: nn.Module
    fake_quant_model: nn.Module
    agreement: dict[str, float]
    ops: dict[str, float]
    unconverted: list[str]


def verify_model(
    model: nn.Module,
    example_input: torch.Tensor,
    qconfig: str | QuantConfig = "x86",
    steps: int = 3,
    lr: float = 1e-3,
    bn: str = "track",
) -> VerifyResult:
    """float forward/backward → ``check_model`` → ``prepare_qat`` → SGD steps → ``convert`` → compare.

    The QAT steps distil the fake-quant model towards the float model's output (a relative MSE loss,
    clipped gradients),
    so scales stay representative of real use. ``bn="fold"`` folds BN into the convs before the
    steps, as :func:`~qat.quant.start_qat` does by default.

    Raises if the float backward gives no gradient or ``check_model`` finds errors; returns the
    int8-vs-fake-quant agreement at the output (``rel_l2``, ``max_abs``, ``top1_agreement``),
    per op (:func:`~qat.quant.replay_ops`) and any layer left unconverted, for the caller to
    assert bounds on.
    """
    model.train()
    out = _flat(model(example_input))
    out.float().square().mean().backward()
    if not any(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()):
        raise AssertionError("float backward produced no finite gradient")
    model.zero_grad(set_to_none=True)
    report = check_model(model, example_input, raise_on_error=True)
    with torch.no_grad():
        target = _flat(model.eval()(example_input)).float()
    fq = prepare_qat(model.train(), qconfig)
    with torch.no_grad():
        # One observing pass, so even steps=0 converts from real ranges. In eval mode, as the
        # pipeline calibrates: train-mode BN on a tiny batch gives ranges the converted model never
        # sees, and grids that coarse make every rounding flip a large share of the output.
        fq.eval()(example_input)
    fq.train()
    if bn == "fold":
        fold_bn(fq)
    opt = torch.optim.SGD(fq.parameters(), lr=lr)
    # Random-init nets in eval mode can output values of 1e6+: a scale-free loss and clipped
    # gradients keep the steps small, as real fine-tuning does, instead of blowing the weights up.
    norm = target.square().mean().clamp_min(1e-12)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(_flat(fq(example_input)).float(), target) / norm
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(fq.parameters(), 1.0)
        opt.step()
    fq.eval()
    disable_observer(fq)  # observers run in eval mode too: freeze the grids that convert() uses
    q = convert(fq)
    ops = replay_ops(fq, q, example_input)
    return VerifyResult(report, q, fq, _agreement(fq, q, example_input), ops, unconverted_layers(q))


def _flat(y: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """One tensor from a model output (multi-scale feature lists are flattened and joined)."""
    return y if isinstance(y, torch.Tensor) else torch.cat([o.flatten(1) for o in y], 1)


class _Flat(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return _flat(self.inner(t))


def _agreement(fq: nn.Module, q: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    return compare_outputs(_Flat(fq), _Flat(q), [x])
