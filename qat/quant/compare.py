"""Agreement between two models on the same inputs (fake-quant vs int8, float vs int8).

Per-layer comparison is :func:`qat.analysis.layer_similarity`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from qat.quant.backend import nnq
from qat.quant.float_functional import FF_METHODS

__all__ = ["compare_outputs", "replay_ops"]


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


_QF_METHODS = FF_METHODS


@torch.no_grad()
def replay_ops(fake_quant_model: nn.Module, int8_model: nn.Module, x: Tensor) -> dict[str, float]:
    """Feed every int8 op its own int8 inputs through the matching fake-quant op, and compare.

    Model-level agreement of random-init nets is chaotic: one float32 near-tie (127.4999 vs the
    integer 127.5) flips a code and spreads. Per op, int8 must equal fake-quant up to such ties.
    Returns ``mismatched`` (elements differing), ``compared``, ``worst_steps`` (largest
    difference in output grid steps) and ``worst_op`` (where it happened).
    """
    calls: list[tuple[str, str | None, tuple, dict, Any]] = []
    handles = []
    restore: list[tuple[nn.Module, str]] = []
    composites: list[str] = []
    for path, mod in int8_model.named_modules():
        if any(path.startswith(c + ".") for c in composites):
            continue  # a part of an op that is compared as a whole
        if getattr(mod, "int8_composite", False):
            composites.append(path)
        if hasattr(mod, "add_relu") and hasattr(mod, "mul_scalar"):  # a QFunctional
            for meth in (m for m in _QF_METHODS if hasattr(mod, m)):
                original = getattr(mod, meth)

                def wrapped(*args, _o=original, _p=path, _m=meth, **kwargs):
                    out = _o(*args, **kwargs)
                    calls.append((_p, _m, args, kwargs, out))
                    return out

                setattr(mod, meth, wrapped)
                restore.append((mod, meth))
        elif (
            (path and not list(mod.children()))
            or isinstance(mod, nnq.Linear)  # its packed-params child hides it from the leaf test
            or type(mod).__name__ in ("QuantizedLUT", "QuantizedRequant")
            or getattr(mod, "int8_composite", False)
        ):
            handles.append(
                mod.register_forward_hook(
                    lambda m, a, kw, o, _p=path: calls.append((_p, None, a, kw, o)), with_kwargs=True
                )
            )
    try:
        int8_model.eval()(x)
    finally:
        for h in handles:
            h.remove()
        for mod, meth in restore:
            delattr(mod, meth)
    fake_quant_model.eval()
    mismatched = compared = 0
    worst, worst_op = 0.0, ""
    for path, meth, args, kwargs, out in calls:
        first = args[0][0] if meth == "cat" else args[0]
        if not (isinstance(out, Tensor) and out.is_quantized and isinstance(first, Tensor) and first.is_quantized):
            continue
        ins = [_dequant(a) for a in args]
        fq_op = fake_quant_model.get_submodule(path)
        ref = getattr(fq_op, meth)(*ins, **kwargs) if meth else fq_op(*ins, **kwargs)
        steps = (ref - out.dequantize()).abs() / out.q_scale()
        mismatched += int((steps > 1e-3).sum())
        compared += steps.numel()
        if float(steps.max()) > worst:
            worst, worst_op = float(steps.max()), path
    return {"mismatched": mismatched, "compared": compared, "worst_steps": worst, "worst_op": worst_op}


def _dequant(a: Any) -> Any:
    if isinstance(a, Tensor):
        return a.dequantize()
    if isinstance(a, (list, tuple)):
        return [_dequant(t) for t in a]
    return a
