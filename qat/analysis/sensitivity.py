"""Which layer's quantization hurts: quantize one layer at a time and measure the model's outputs.

Two one-at-a-time views, both against the float model's own outputs (no labels needed):

``only`` (default)
    only this layer quantized (its weights and its output activation), every other layer float.
    The score is the relative L2 error of the model output. It isolates each layer's own damage,
    so the ranking does not depend on what the other layers do, and one broken layer cannot hide
    another: the right order for falling back layers one at a time.
``all_but``
    every layer quantized except this one. The score is how much the output error falls when this
    layer alone is left in float. It measures what a fallback buys in the deployed mix, but when
    several layers are broken, removing any one of them changes little, so the ranking blurs.

With labelled batches the accuracy of each configuration is measured too. Fixed grids (a
``QuantStub`` with a scale, ReLU6's clamp) stay on in every configuration: they are part of the
model's function.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qat.analysis.metrics import ErrorStats, as_float
from qat.quant import (
    QuantConfig,
    calibrate,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    prepare_calibration,
    quant_layers,
)

__all__ = ["SENSITIVITY_VIEWS", "LayerSensitivity", "sensitivity"]

SENSITIVITY_VIEWS = ("only", "all_but")
_MEASURED = {
    "only": "relative L2 error of the model output vs float, only this layer quantized (weights + output)",
    "all_but": "fall in the model output's relative L2 error vs float when only this layer is left in float",
}


@dataclass(frozen=True)
class LayerSensitivity:
    """One layer's damage: ``score`` (higher = more sensitive) and the measurements behind it.

    ``rel_l2``, ``sqnr_db`` and ``agreement`` (top-1 agreement with float) describe the model
    output of the configuration measured; ``accuracy`` is its top-1 when labels were given and
    ``float_accuracy`` the float model's on the same batches.
    """

    name: str
    path: str
    kind: str
    view: str
    score: float
    rel_l2: float
    sqnr_db: float
    agreement: float
    accuracy: float | None
    float_accuracy: float | None
    measured: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(batch: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, (tuple, list)):
        target = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], target
    return batch, None


@torch.no_grad()
def _measure(model: nn.Module, data: Sequence[tuple[Tensor, Tensor | None, Tensor]]) -> dict[str, Any]:
    """Output error vs the float outputs, top-1 agreement and (with labels) accuracy."""
    stats = ErrorStats()
    agree = correct = total = labelled = 0
    for x, target, ref in data:
        out = as_float(model(x))
        stats.add(ref, out)
        if ref.dim() >= 2:
            agree += int((out.argmax(1) == ref.argmax(1)).sum())
            total += ref.shape[0]
        if target is not None:
            correct += int((out.argmax(1) == target).sum())
            labelled += target.shape[0]
    return {
        "rel_l2": stats.rel_l2,
        "sqnr_db": stats.sqnr_db,
        "agreement": agree / total if total else float("nan"),
        "accuracy": correct / labelled if labelled else None,
    }


@torch.no_grad()
def sensitivity(
    float_model: nn.Module,
    batches: Iterable[Any],
    qconfig: str | QuantConfig = "x86",
    activation_observer: str | None = "percentile",
    view: str = "only",
    calib_batches: Iterable[Any] | None = None,
    keep_float: Sequence[str] = (),
    int16: Sequence[str] = (),
) -> list[LayerSensitivity]:
    """Rank the quantized layers of ``float_model`` by the damage their quantization does, worst first.

    The model is prepared for ``qconfig`` and calibrated on ``calib_batches`` (default: ``batches``),
    then each layer is measured on ``batches`` (tensors, or ``(input, target)`` tuples for accuracy)
    in the chosen ``view`` (``only`` or ``all_but``, module docstring). Layers already in
    ``keep_float`` / ``int16`` run at that precision throughout and are not ranked.
    """
    if view not in SENSITIVITY_VIEWS:
        raise ValueError(f"sensitivity(view={view!r}): use one of {SENSITIVITY_VIEWS}")
    batches = list(batches)
    if not batches:
        raise ValueError("sensitivity() got no batches")
    float_model = float_model.eval()
    data = []
    for batch in batches:
        x, target = _split(batch)
        data.append((x, target, as_float(float_model(x))))
    float_accuracy = _measure(float_model, data)["accuracy"]
    model = prepare_calibration(float_model, qconfig, activation_observer, keep_float=keep_float, int16=int16)
    calibrate(model, batches if calib_batches is None else calib_batches)
    disable_observer(model)
    layers = [lay for lay in quant_layers(model) if lay.precision == "int8"]
    if view == "all_but":
        enable_fake_quant(model)
        everything = _measure(model, data)
    records = []
    for layer in layers:
        module = model.get_submodule(layer.path)
        if view == "only":
            disable_fake_quant(model)
            enable_fake_quant(module)
            measured = _measure(model, data)
            score = measured["rel_l2"]
        else:
            enable_fake_quant(model)
            disable_fake_quant(module)
            measured = _measure(model, data)
            score = everything["rel_l2"] - measured["rel_l2"]
        records.append(
            LayerSensitivity(
                name=layer.name,
                path=layer.path,
                kind=layer.kind,
                view=view,
                score=score,
                float_accuracy=float_accuracy,
                measured=_MEASURED[view],
                **measured,
            )
        )
    return sorted(records, key=lambda r: r.score, reverse=True)
