"""``to_onnx``: a prepared (calibrated or QAT) model as standard QDQ ONNX.

The fake-quant model is rewritten so that every grid is a frozen ``torch.fake_quantize_*``
call (:mod:`qat.quant.onnx_qdq`), exported with the TorchScript exporter (fake-quant becomes
QuantizeLinear→DequantizeLinear) and finished by :mod:`qat.export.qdq_graph` (int8 weight
initializers, int32 biases, QDQ pairs after grid-keeping ops).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

import qat
from qat.export.qdq_graph import finalize_qdq
from qat.pipeline.errors import PipelineError
from qat.quant.onnx_qdq import QdqExportError, qdq_export_model, quant_config_of

__all__ = ["DEFAULT_OPSET", "OnnxExportError", "export_float_onnx", "read_metadata", "to_onnx"]

#: 20 has GELU as one op (ONNX Runtime runs it as one kernel, not five); pass opset=17 for runtimes
#: that stop earlier (GELU then decomposes into Erf arithmetic; LayerNormalization needs 17).
DEFAULT_OPSET = 20

#: What qat's data modules feed a model: ``(pixel / 255 - mean) / std`` per channel (range [-1, 1]).
DEFAULT_NORMALIZATION = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "pixel_scale": 1 / 255}

_LEGACY_EXPORTER_NOTICE = r"You are using the legacy TorchScript-based ONNX export"


class OnnxExportError(PipelineError):
    """A model that cannot be exported as QDQ ONNX; the message names the module or op and the fix."""


def _output_names(model: nn.Module, example_input: Tensor) -> list[str]:
    with torch.no_grad():
        y = model(example_input)
    count = 1 if isinstance(y, Tensor) else len(y)
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _export(model: nn.Module, example_input: Tensor, path: Path, opset: int) -> onnx.ModelProto:
    """TorchScript export with a dynamic batch axis; exporter failures name the module and op."""
    outputs = _output_names(model, example_input)
    axes = {name: {0: "batch"} for name in ["input", *outputs]}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_LEGACY_EXPORTER_NOTICE)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=["input"],
                output_names=outputs,
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except (torch.onnx.errors.OnnxExporterError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxExportError(
            f"ONNX export failed: {first}. The op has no ONNX form at opset {opset}: replace the layer that "
            "calls it with a qat.nn layer (qat.quant.check_model lists them) or pass a higher opset"
        ) from e
    return onnx.load(str(path))


def _check_ops(model: onnx.ModelProto) -> None:
    """No op outside the standard domain (an ATen fallback) may reach the file."""
    for n in model.graph.node:
        if n.domain not in ("", "ai.onnx"):
            module = n.name.rsplit("/", 1)[0].strip("/").split("/")[-1] or "<root>"
            raise OnnxExportError(
                f"module '{module}' exports op {n.domain}::{n.op_type}, which has no standard ONNX form; "
                "replace it with a qat.nn layer"
            )


def _metadata(model: nn.Module, example_input: Tensor, extra: Mapping[str, Any] | None) -> dict[str, str]:
    cfg = quant_config_of(model)
    meta: dict[str, Any] = {
        "qat_version": qat.__version__,
        "target": cfg.target if cfg is not None else "float",
        "input_size": list(example_input.shape[1:]),
        "input_normalization": DEFAULT_NORMALIZATION,
        "quantization": "QDQ: uint8 activations, int8 per-channel symmetric weights, int32 biases"
        if cfg is not None
        else "float32",
    }
    meta.update(extra or {})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def _save(model: onnx.ModelProto, path: Path, meta: dict[str, str]) -> None:
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    model.producer_name = "qat"
    model.producer_version = qat.__version__
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def to_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: str | Path,
    opset: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    int32_bias: bool = True,
) -> Path:
    """Write a prepared model (calibrated or QAT fake-quant form) as QDQ ONNX at ``path``.

    Every activation gets a QuantizeLinear→DequantizeLinear pair on the grid qat's ``convert``
    uses; weights are int8 initializers with per-channel scales, biases int32; BN (and layer
    scales) are folded; the batch axis is dynamic. ``metadata`` (e.g. ``class_names``, or
    ``input_normalization`` for other data) is stored in ``metadata_props`` next to the target,
    input size and qat version (values that are not strings as JSON). Raises
    :class:`OnnxExportError` naming the module or op that has no QDQ form.

    ``int32_bias=False`` keeps conv/Gemm biases in float: the graph then computes the fake-quant
    model op for op (a reference), but ONNX Runtime fuses a QDQ conv into an integer kernel only
    with an int32 bias, so it runs those convs in float.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_input = example_input.detach().cpu()[:1]
    try:
        export_model = qdq_export_model(model, example_input)
    except QdqExportError as e:
        raise OnnxExportError(str(e)) from e
    graph = _export(export_model, example_input, path, opset or DEFAULT_OPSET)
    _check_ops(graph)
    finalize_qdq(graph, int32_bias=int32_bias)
    _save(graph, path, _metadata(model, example_input, metadata))
    return path


def export_float_onnx(
    model: nn.Module,
    example_input: Tensor,
    path: str | Path,
    opset: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a float model as plain fp32 ONNX (the baseline the int8 file is compared with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example_input = example_input.detach().cpu()[:1]
    graph = _export(model.cpu().eval(), example_input, path, opset or DEFAULT_OPSET)
    _check_ops(graph)
    _save(graph, path, _metadata(model, example_input, metadata))
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, JSON values decoded."""
    out: dict[str, Any] = {}
    for p in onnx.load(str(path), load_external_data=False).metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            out[p.key] = p.value
    return out
