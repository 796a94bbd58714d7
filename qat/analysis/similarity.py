"""Per-layer similarity of two forms of one model: float vs fake-quant, or fake-quant vs int8.

Each layer's output is captured with forward hooks where that form computes it (a fused
conv+BN+ReLU's float output is its ReLU's; a FloatFunctional op's is its output observer's) and
reported under the module the user wrote (:class:`qat.quant.QuantLayer`), in forward order.

Two modes. ``local`` (the default against a fake-quant model): each layer is measured with only
its own fake-quant on (weights and output grid), so its figures are its own error and not the
error it inherited -- the layer that breaks the model stands out. ``cumulative`` (the only mode
against an int8 model): the whole model quantized, so the first layer whose SQNR falls is where
the two models part ways.

``sqnr_db`` is computed per output channel and averaged in dB (an outlier channel that swamps
the others in a pooled figure cannot hide their collapse); ``sqnr_pooled_db`` is the pooled one.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from qat.analysis.metrics import ErrorStats, as_float
from qat.quant import (
    QuantLayer,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    is_converted,
    quant_layers,
)

__all__ = ["SIMILARITY_MODES", "LayerSimilarity", "layer_similarity"]

SIMILARITY_MODES = ("local", "cumulative")


@dataclass(frozen=True)
class LayerSimilarity:
    """How closely one layer's output in the candidate follows the reference form (all batches pooled)."""

    name: str
    path: str
    kind: str
    precision: str
    cosine: float
    sqnr_db: float
    sqnr_pooled_db: float
    rel_l2: float
    max_abs: float
    reference: str
    candidate: str
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _form(model: nn.Module) -> str:
    if is_converted(model):
        return "int8"
    try:
        quant_layers(model)
    except ValueError:
        return "float"
    return "fake-quant"


def _runnable(model: nn.Module, form: str) -> nn.Module:
    """An eval model; a fake-quant one copied, its grids frozen and fake-quant on (what convert ships)."""
    if form != "fake-quant":
        return model.eval()
    return enable_fake_quant(disable_observer(copy.deepcopy(model))).eval()


class _Capture:
    """Forward hooks storing the first output of each watched module per pass, in call order."""

    def __init__(self, model: nn.Module, paths: dict[str, str]) -> None:
        self.outputs: dict[str, Tensor] = {}
        self.order: list[str] = []
        self.handles = [
            model.get_submodule(module_path).register_forward_hook(self._hook(layer_path))
            for module_path, layer_path in paths.items()
        ]

    def _hook(self, layer_path: str):
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if isinstance(out, Tensor) and layer_path not in self.outputs:
                self.outputs[layer_path] = as_float(out)
                if layer_path not in self.order:
                    self.order.append(layer_path)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _compare(stats: ErrorStats, reference: Tensor | None, candidate: Tensor | None) -> None:
    if reference is not None and candidate is not None and reference.shape == candidate.shape:
        stats.add(reference, candidate)


@torch.no_grad()
def layer_similarity(
    float_model: nn.Module,
    quant_model: nn.Module,
    batches: Iterable[Any],
    mode: str | None = None,
    max_batches: int | None = None,
) -> list[LayerSimilarity]:
    """Cosine, SQNR (dB), relative L2 and max abs error of every quantized layer, in forward order.

    ``float_model`` is the reference: the float model, or the prepared fake-quant model when
    ``quant_model`` is its converted int8 model. ``quant_model``: a prepared (calibrated or QAT)
    model -- run on a copy with its grids frozen and fake-quant on -- or a converted one.
    ``mode``: ``local`` or ``cumulative`` (module docstring); default ``local`` for a fake-quant
    ``quant_model``, ``cumulative`` for an int8 one. ``batches`` yields tensors or ``(input, ...)`` tuples.
    """
    ref_form, cand_form = _form(float_model), _form(quant_model)
    if cand_form == "float":
        raise ValueError("layer_similarity(): quant_model must come from prepare_qat/prepare_calibration or convert")
    if ref_form == "int8":
        raise ValueError("layer_similarity(): the reference must be the float or the fake-quant model, not int8")
    mode = mode or ("local" if cand_form == "fake-quant" else "cumulative")
    if mode not in SIMILARITY_MODES:
        raise ValueError(f"layer_similarity(mode={mode!r}): use one of {SIMILARITY_MODES}")
    if mode == "local" and cand_form != "fake-quant":
        raise ValueError("layer_similarity(mode='local') needs a fake-quant quant_model; an int8 one is cumulative")
    table = quant_layers(quant_model)
    ref_attr = {"float": "float_path", "fake-quant": "fq_path"}[ref_form]
    cand_attr = {"fake-quant": "fq_path", "int8": "int8_path"}[cand_form]
    reference, candidate = _runnable(float_model, ref_form), _runnable(quant_model, cand_form)
    ref_cap = _Capture(reference, {getattr(lay, ref_attr): lay.path for lay in table})
    cand_cap = _Capture(candidate, {getattr(lay, cand_attr): lay.path for lay in table})
    stats = {lay.path: ErrorStats() for lay in table}
    seen = 0
    try:
        for batch in batches:
            if max_batches is not None and seen >= max_batches:
                break
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            ref_cap.outputs.clear()
            reference(x)
            if mode == "cumulative":
                cand_cap.outputs.clear()
                candidate(x)
                for path, out in cand_cap.outputs.items():
                    _compare(stats[path], ref_cap.outputs.get(path), out)
            else:
                _local_pass(candidate, table, x, cand_cap, ref_cap.outputs, stats)
            seen += 1
    finally:
        ref_cap.remove()
        cand_cap.remove()
    if seen == 0:
        raise ValueError("layer_similarity() got no batches")
    by_path = {lay.path: lay for lay in table}
    return [_record(by_path[p], stats[p], ref_form, cand_form, mode) for p in cand_cap.order if stats[p].count]


def _local_pass(
    candidate: nn.Module,
    table: list[QuantLayer],
    x: Tensor,
    capture: _Capture,
    reference: dict[str, Tensor],
    stats: dict[str, ErrorStats],
) -> None:
    """One pass per layer with only that layer's fake-quant on; fake-quant restored afterwards."""
    try:
        for layer in table:
            disable_fake_quant(candidate)
            enable_fake_quant(candidate.get_submodule(layer.path))
            capture.outputs.clear()
            candidate(x)
            _compare(stats[layer.path], reference.get(layer.path), capture.outputs.get(layer.path))
    finally:
        enable_fake_quant(candidate)


def _record(layer: QuantLayer, s: ErrorStats, ref_form: str, cand_form: str, mode: str) -> LayerSimilarity:
    return LayerSimilarity(
        name=layer.name,
        path=layer.path,
        kind=layer.kind,
        precision=layer.precision,
        cosine=s.cosine,
        sqnr_db=s.channel_sqnr_db,
        sqnr_pooled_db=s.sqnr_db,
        rel_l2=s.rel_l2,
        max_abs=s.max_abs,
        reference=ref_form,
        candidate=cand_form,
        mode=mode,
    )
