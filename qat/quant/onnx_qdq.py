"""A prepared (fake-quant) model rewritten into the form that exports as standard QDQ ONNX.

The fake-quant model is the canonical source of every int8 grid ``convert`` uses: each observed
activation has a ``(scale, zero_point)``, each weight per-channel scales. Here every fake-quant
module is replaced by a frozen ``torch.fake_quantize_*`` call on that grid, which the TorchScript
ONNX exporter writes as a QuantizeLinear→DequantizeLinear pair, and BatchNorm is folded into the
convs as ``convert`` folds it. The rewritten model computes the fake-quant forward, so its
QDQ graph reads exactly the grids and weight codes of qat's own int8 model.

Only grids and weight codes cross into the exporter; a torchao PT2E model (quantize/dequantize
ops with the same parameters) can feed the same graph writer.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qat.quant.backend import DeQuantStub, FakeQuantizeBase, FloatFunctional, QuantStub, nniqat, nnqat
from qat.quant.convbn import fold_bn
from qat.quant.fuse import replace_module
from qat.quant.int8_ops import policy_for
from qat.quant.qconfig import QuantConfig

__all__ = ["QDQ_WEIGHT_RANGE", "QdqExportError", "qdq_export_model", "quant_config_of"]

#: The weight range ONNX's int8 QuantizeLinear has; qat's own codes (±63 on x86) lie inside it.
QDQ_WEIGHT_RANGE = (-128, 127)
_ACTIVATION_RANGE = (0, 255)

_WEIGHTED = (nnqat.Conv2d, nnqat.Linear, nniqat.ConvReLU2d, nniqat.LinearReLU)

#: Leaf modules the TorchScript exporter writes as ONNX ops that run between QDQ pairs.
_EXPORTABLE_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.Dropout, nn.Dropout2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.PReLU, nn.Softmax, nn.LayerNorm,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Unflatten, nn.PixelShuffle,
    nn.PixelUnshuffle, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d,
    FloatFunctional, nn.Conv2d, nn.Linear, nn.BatchNorm2d,
)  # fmt: skip
_STUBS = (QuantStub, DeQuantStub)
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class QdqExportError(ValueError):
    """A module of the prepared model that has no QDQ ONNX form; the message names it and the fix."""


@dataclass(frozen=True)
class _Grid:
    scale: float
    zero_point: int


def quant_config_of(model: nn.Module) -> QuantConfig | None:
    """The :class:`QuantConfig` ``prepare_qat`` attached to ``model`` (None for a float model)."""
    from qat.quant.prepare import _QCONFIG_ATTR

    return getattr(model, _QCONFIG_ATTR, None)


class ActivationQDQ(nn.Module):
    """Frozen per-tensor fake-quant on one uint8 grid: QuantizeLinear→DequantizeLinear in ONNX."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale = float(scale)
        self.zero_point = int(zero_point)

    def forward(self, x: Tensor) -> Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, *_ACTIVATION_RANGE)

    def extra_repr(self) -> str:
        return f"scale={self.scale:.6g}, zero_point={self.zero_point}"


class WeightQDQ(nn.Module):
    """The fake-quantized weight (values on its grid) under a frozen per-channel QDQ pair.

    ``forward`` ignores the live weight it is handed and returns the stored grid values, so the
    exported QuantizeLinear has a constant input that the graph pass turns into int8 codes.
    """

    def __init__(self, weight: Tensor, scale: Tensor, axis: int) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero_point", torch.zeros_like(scale, dtype=torch.int32))
        self.axis = axis

    def forward(self, _: Tensor) -> Tensor:
        return torch.fake_quantize_per_channel_affine(
            self.weight, self.scale, self.zero_point, self.axis, *QDQ_WEIGHT_RANGE
        )


def _activation_grid(fq: FakeQuantizeBase, where: str) -> _Grid:
    """The grid ``convert`` would use for this activation fake-quant (its observer's qparams)."""
    if (fq.quant_min, fq.quant_max) != _ACTIVATION_RANGE or fq.dtype != torch.quint8:
        raise QdqExportError(
            f"activation fake-quant at '{where}' uses {fq.dtype} [{fq.quant_min}, {fq.quant_max}]; QDQ export "
            "writes quint8 [0, 255] activations: prepare the model with a qat.quant.get_qconfig preset"
        )
    scale, zero_point = fq.calculate_qparams()
    return _Grid(float(scale.reshape(-1)[0]), int(zero_point.reshape(-1)[0]))


@torch.no_grad()
def _weight_qdq(module: nn.Module, where: str) -> WeightQDQ:
    """The weight as ``convert`` quantizes it: the weight fake-quant run once on the current weight."""
    fq = module.weight_fake_quant
    if not (fq.is_per_channel and fq.qscheme == torch.per_channel_symmetric and fq.ch_axis == 0):
        raise QdqExportError(
            f"weight fake-quant at '{where}' is not per-channel symmetric on axis 0; QDQ export needs a "
            "qat.quant.get_qconfig preset"
        )
    w_fq = fq(module.weight)
    scale, zero_point = fq.calculate_qparams()
    if bool(zero_point.any()):
        raise QdqExportError(f"weight of '{where}' has a non-zero zero point; QDQ export needs symmetric weights")
    return WeightQDQ(w_fq, scale, 0)


def _unsupported_leaves(model: nn.Module) -> list[tuple[str, str]]:
    """Leaf modules (no children besides observers) whose type has no QDQ ONNX form."""
    bad = []
    for name, m in model.named_modules():
        children = [c for c in m.children() if not isinstance(c, (FakeQuantizeBase, FloatFunctional, ActivationQDQ))]
        if children or isinstance(m, (FakeQuantizeBase, ActivationQDQ, WeightQDQ, *_WEIGHTED)):
            continue
        if isinstance(m, (*_EXPORTABLE_LEAVES, *_CONTAINERS)) or policy_for(m) is not None:
            continue
        if type(m).__module__.startswith(("torch.nn.modules", "torch.ao.nn")) and not isinstance(m, _STUBS):
            bad.append((name, type(m).__name__))
    return bad


class _FixedAvgPool(nn.Module):
    """An average pool to a call-time size, frozen to the kernel that size gave on the example input."""

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: Tensor, size: object = None) -> Tensor:
        return F.avg_pool2d(x, self.kernel, self.kernel)


def _requires_size(m: nn.Module) -> bool:
    """``forward(x, size)`` with ``size`` required: a pool to a size given at call time."""
    size = inspect.signature(m.forward).parameters.get("size")
    return size is not None and size.default is inspect.Parameter.empty


def _freeze_pools_to_size(model: nn.Module, example: Tensor) -> None:
    """Average pools told their output size at call time (Lite-HRNet's cross-resolution pooling) and
    adaptive pools to more than 1x1 (coordinate attention's ``(None, 1)``) become fixed-kernel pools
    for ``example``'s shape: ``kernel = input size / output size``.

    ONNX has no adaptive pooling, and a kernel traced from shapes would be a computed value; with the
    input size fixed it is a constant of the graph.
    """
    targets = {
        name: m
        for name, m in model.named_modules()
        if (getattr(policy_for(m), "kind", None) == "requant" and _requires_size(m))
        or (isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size not in (1, (1, 1)))
    }
    kernels: dict[str, tuple[int, int]] = {}

    def record(name: str):
        def hook(_: nn.Module, args: tuple, kwargs: dict, out: Tensor) -> None:
            (h, w), (oh, ow) = args[0].shape[-2:], out.shape[-2:]
            if h % oh or w % ow:
                raise QdqExportError(
                    f"module '{name}' pools {h}x{w} to {oh}x{ow}, which is no fixed-kernel pool; ONNX has no "
                    "adaptive pooling: export at an input size whose feature maps divide evenly"
                )
            kernels[name] = (h // oh, w // ow)

        return hook

    handles = [m.register_forward_hook(record(n), with_kwargs=True) for n, m in targets.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    for name, kernel in kernels.items():
        old = model.get_submodule(name)
        new = _FixedAvgPool(kernel)
        if hasattr(old, "activation_post_process"):
            new.activation_post_process = old.activation_post_process
        new._forward_hooks.update(old._forward_hooks)
        replace_module(model, name, new)


def qdq_export_model(prepared: nn.Module, example_input: Tensor) -> nn.Module:
    """A copy of a prepared model whose fake-quants are frozen QDQ calls and whose BN is folded, for
    ``example_input``'s spatial size (pools to a call-time size get that size's fixed kernel).

    Raises :class:`QdqExportError` naming the module for a float model, a layer with no QDQ form
    or a grid outside the uint8-activation / int8-per-channel-weight scheme.
    """
    if quant_config_of(prepared) is None:
        raise QdqExportError(
            "to_onnx() needs a prepared model (fake-quant form): pass the model returned by "
            "qat.quant.prepare_calibration() + calibrate() or prepare_qat() after training"
        )
    model = copy.deepcopy(prepared).cpu().eval()
    fold_bn(model)
    for name, m in list(model.named_modules()):
        if type(m) is nniqat.LinearBn1d:
            raise QdqExportError(f"module '{name}' (Linear+BatchNorm1d) has no QDQ export: fold the BN into the Linear")
        if isinstance(m, _WEIGHTED) and hasattr(m, "weight_fake_quant"):
            m.weight_fake_quant = _weight_qdq(m, name)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, FakeQuantizeBase):
                where = f"{name}.{child_name}" if name else child_name
                grid = _activation_grid(child, where)
                setattr(m, child_name, ActivationQDQ(grid.scale, grid.zero_point))
    _freeze_pools_to_size(model, example_input)
    bad = _unsupported_leaves(model)
    if bad:
        path, kind = bad[0]
        raise QdqExportError(
            f"module '{path}' ({kind}) has no QDQ ONNX export"
            f"{f' (and {len(bad) - 1} more: ' + ', '.join(p for p, _ in bad[1:4]) + ')' if len(bad) > 1 else ''}; "
            "replace it with a qat.nn layer (qat.quant.check_model lists the int8 equivalents)"
        )
    return model
