"""Mixed precision: layers kept in float or given 16-bit activations, and the table of quantized layers.

A *layer* is one quantized op of the prepared model -- a (fused) conv/linear, a lookup-table
activation, a FloatFunctional op, a requantized pool -- named after the module the user wrote:
a fused conv+BN+ReLU inside a ``ConvModule2d`` called ``stem`` is the layer ``stem``.

``keep_float`` and ``int16`` select layers by name, op path or an enclosing module, with
``fnmatch`` globs. Each selected layer is wrapped in a :class:`PrecisionIsland`: its input is
dequantized, the layer runs in float (``float``) or in float with int8 weights and a 16-bit output
grid (``int16``), and its output is requantized to the 8-bit grid of the int8 layers after it --
unless every consumer of it is another island, in which case it stays float (found on the first
forward pass), so two adjacent float layers exchange a float tensor, as the float model does.

torch has no int16 kernels: after ``convert`` an ``int16`` island runs ``dequantize → float op with
int8-grid weights → 16-bit fake-quant → quantize`` (or straight on to the next island), i.e. the
16-bit grid is simulated in float on CPU. :meth:`PrecisionIsland.int16_qparams` is what an ONNX
exporter needs to emit it as 16-bit QuantizeLinear/DequantizeLinear (opset 21).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from qat.quant.backend import DeQuantStub, FakeQuantizeBase, FloatFunctional, QConfig, QuantStub, tq
from qat.quant.fuse import FIXED_QPARAMS_ATTR, RELU6_QPARAMS, replace_module
from qat.quant.qconfig import QuantConfig

__all__ = [
    "PRECISIONS",
    "LAYERS_ATTR",
    "LayerSelectionError",
    "PrecisionIsland",
    "QuantLayer",
    "is_converted",
    "layer_table",
    "quant_layers",
    "select_layers",
]

PRECISIONS = ("int8", "int16", "float")
LAYERS_ATTR = "qat_layers"
CONVERTED_ATTR = "qat_converted"
_TAG = "_qat_island"


class LayerSelectionError(ValueError):
    """A ``keep_float`` / ``int16`` entry that names no layer, or a layer that cannot leave int8."""


@dataclass(frozen=True)
class QuantLayer:
    """One quantized layer: where it is in each form of the model, and at what precision it runs.

    ``name`` is the user's module (fusion-aware), ``path`` the op in the prepared and int8 models,
    ``float_path`` the module of the float model whose output is this layer's output,
    ``fq_path`` / ``int8_path`` the modules whose outputs are its fake-quant / int8 outputs.
    """

    name: str
    path: str
    float_path: str
    fq_path: str
    int8_path: str
    precision: str = "int8"
    kind: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_UNDECIDED, _REQUANT, _HANDOFF = 0, 1, 2


class PrecisionIsland(nn.Module):
    """A layer run outside int8: dequantize → layer (float, or 16-bit output grid) → requantize to 8 bit.

    ``route`` says what happens to the output: requantized for int8 consumers (1), or handed on
    in float (2) when every consumer is another island, found by :class:`_RouteFinder` on the
    first forward pass (0: not yet seen); fake-quant and int8 models take the same route.
    """

    def __init__(self, layer: nn.Module, precision: str) -> None:
        super().__init__()
        if precision not in ("float", "int16"):
            raise ValueError(f"PrecisionIsland precision must be 'float' or 'int16', got {precision!r}")
        self.layer = layer
        self.requant = QuantStub()
        self.precision = precision
        self.converted = False
        self.register_buffer("route", torch.zeros((), dtype=torch.uint8))

    @property
    def handoff(self) -> bool:
        return int(self.route) == _HANDOFF

    def forward(self, x: Tensor) -> Tensor:
        if self.converted:
            x = x.dequantize() if x.is_quantized else x
            return self.requant(self.layer(x))
        _ACTIVE.append(self)
        try:
            y = self.layer(x)
            if not self.handoff:
                y = self.requant(y)
        finally:
            _ACTIVE.pop()
        if int(self.route) == _UNDECIDED:
            setattr(y, _TAG, self)
        return y

    def int16_qparams(self) -> dict[str, Any] | None:
        """The 16-bit output grid (``scale``, ``zero_point``, ``dtype``, ``quant_min``, ``quant_max``); ``None`` for float."""
        if self.precision != "int16":
            return None
        fq = next(m.activation_post_process for m in self.layer.modules() if hasattr(m, "activation_post_process"))
        return {
            "scale": float(fq.scale),
            "zero_point": int(fq.zero_point),
            "dtype": str(fq.dtype).replace("torch.", ""),
            "quant_min": int(fq.quant_min),
            "quant_max": int(fq.quant_max),
        }

    def extra_repr(self) -> str:
        return f"precision={self.precision}, handoff={self.handoff}"


_ACTIVE: list[PrecisionIsland] = []


class _RouteFinder(TorchFunctionMode):
    """Watches one forward pass: who consumes each undecided island's output."""

    def __init__(self) -> None:
        super().__init__()
        self.consumers: dict[int, tuple[PrecisionIsland, set[str]]] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        for value in [*args, *kwargs.values()]:
            for t in value if isinstance(value, (list, tuple)) else (value,):
                source = getattr(t, _TAG, None) if isinstance(t, Tensor) else None
                if isinstance(source, PrecisionIsland):
                    reader = _ACTIVE[-1] if _ACTIVE else None
                    kind = "island" if reader is not None and reader is not source else "other"
                    self.consumers.setdefault(id(source), (source, set()))[1].add(kind)
        return func(*args, **kwargs)


class RouteHook:
    """Forward pre/post hook pair on the root: finds the islands' routes on the first pass."""

    def __init__(self) -> None:
        self.finder: _RouteFinder | None = None

    def pre(self, model: nn.Module, _args: Any) -> None:
        pending = [m for m in model.modules() if isinstance(m, PrecisionIsland) and int(m.route) == _UNDECIDED]
        if pending and self.finder is None:
            self.finder = _RouteFinder()
            self.finder.__enter__()

    def post(self, model: nn.Module, _args: Any, _out: Any) -> None:
        if self.finder is None:
            return
        finder, self.finder = self.finder, None
        finder.__exit__(None, None, None)
        for m in model.modules():
            if isinstance(m, PrecisionIsland) and int(m.route) == _UNDECIDED:
                seen = finder.consumers.get(id(m), (m, set()))[1]
                m.route.fill_(_HANDOFF if seen == {"island"} else _REQUANT)


def attach_route_hook(model: nn.Module) -> None:
    """Let ``model``'s first forward pass decide the routes of its islands."""
    if any(isinstance(m, PrecisionIsland) for m in model.modules()):
        hook = RouteHook()
        model.register_forward_pre_hook(hook.pre)
        model.register_forward_hook(hook.post, always_call=True)


def _is_stub(module: nn.Module) -> bool:
    return isinstance(module, (QuantStub, DeQuantStub))


def _op_paths(prepared: nn.Module) -> list[str]:
    """Paths of the quantized ops of a prepared model (stubs excluded), islands as one op each."""
    islands = [n for n, m in prepared.named_modules() if isinstance(m, PrecisionIsland)]
    ops = []
    for name, module in prepared.named_modules():
        if any(name == i or name.startswith(i + ".") for i in islands):
            if name in islands:
                ops.append(name)
            continue
        if _is_stub(module) or not name:
            continue
        if isinstance(getattr(module, "activation_post_process", None), FakeQuantizeBase):
            ops.append(name)
    return ops


def _user_names(ops: Sequence[str]) -> dict[str, str]:
    """Each op under the outermost enclosing module that holds no other op (never the root)."""
    names = {}
    for op in ops:
        parts = op.split(".")
        name = op
        for k in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:k])
            if sum(o == ancestor or o.startswith(ancestor + ".") for o in ops) != 1:
                break
            name = ancestor
        names[op] = name
    return names


def _pattern_ends(patterns: Iterable[Sequence[str]]) -> dict[str, str]:
    """Fusion head → last module of its pattern (whose float output is the fused op's output)."""
    return {p[0]: p[-1] for p in patterns if len(p) > 1}


def layer_table(prepared: nn.Module, patterns: Iterable[Sequence[str]]) -> list[QuantLayer]:
    """The :class:`QuantLayer` of every op of ``prepared``; ``patterns`` are the float model's fusions."""
    ops = _op_paths(prepared)
    names = _user_names(ops)
    ends = _pattern_ends(patterns)
    table = []
    for op in ops:
        module = prepared.get_submodule(op)
        precision = module.precision if isinstance(module, PrecisionIsland) else "int8"
        inner = module.layer if isinstance(module, PrecisionIsland) else module
        functional = isinstance(inner, FloatFunctional)
        app = f"{op}.activation_post_process"
        table.append(
            QuantLayer(
                name=names[op],
                path=op,
                float_path=app if functional else ends.get(op, op),
                fq_path=op if precision != "int8" else app,
                int8_path=app if functional and precision == "int8" else op,
                precision=precision,
                kind=type(inner).__name__,
            )
        )
    return table


def quant_layers(model: nn.Module) -> list[QuantLayer]:
    """The quantized layers of a model returned by ``prepare_qat``/``prepare_calibration`` or ``convert``."""
    table = getattr(model, LAYERS_ATTR, None)
    if table is None:
        raise ValueError("quant_layers() needs a model returned by prepare_qat()/prepare_calibration() or convert()")
    return list(table)


def is_converted(model: nn.Module) -> bool:
    """Whether ``model`` is a real int8 model from ``convert`` (not a float or fake-quant one)."""
    return bool(getattr(model, CONVERTED_ATTR, False))


def _candidates(layer: QuantLayer) -> list[str]:
    parts = layer.path.split(".")
    return [layer.name, layer.path, *(".".join(parts[:k]) for k in range(1, len(parts)))]


def select_layers(table: Sequence[QuantLayer], patterns: Iterable[str], option: str) -> list[QuantLayer]:
    """The layers matched by ``patterns`` (layer names, op paths or enclosing modules; globs allowed).

    A pattern that matches nothing raises ``ValueError`` listing the layer names.
    """
    chosen: dict[str, QuantLayer] = {}
    for pattern in patterns:
        hits = [lay for lay in table if any(fnmatch.fnmatchcase(c, pattern) for c in _candidates(lay))]
        if not hits:
            names = ", ".join(lay.name for lay in table)
            raise LayerSelectionError(f"{option}: {pattern!r} matches no quantized layer; the layers are: {names}")
        chosen.update((lay.path, lay) for lay in hits)
    return [lay for lay in table if lay.path in chosen]


def _int16_activation(cfg: QuantConfig) -> Any:
    """The activation fake-quant factory of ``cfg`` on a 16-bit grid (same observer)."""
    factory = cfg.activation()
    kwargs = dict(factory.p.keywords)
    if cfg.symmetric_activations:
        kwargs.update(dtype=torch.int16, quant_min=-(2**15), quant_max=2**15 - 1)
    else:
        kwargs.update(dtype=torch.uint16, quant_min=0, quant_max=2**16 - 1)
    return factory.p.func.with_args(**kwargs)


def place_islands(
    model: nn.Module,
    dry_prepared: nn.Module,
    cfg: QuantConfig,
    keep_float: Sequence[str],
    int16: Sequence[str],
) -> None:
    """Wrap the selected layers of the fused ``model`` in :class:`PrecisionIsland` before it is prepared.

    ``dry_prepared`` is a prepared copy of ``model`` (it names the ops); ``model`` keeps its qconfigs.
    """
    table = layer_table(dry_prepared, [])
    floats = select_layers(table, keep_float, "keep_float")
    sixteens = select_layers(table, int16, "int16")
    both = {lay.name for lay in floats} & {lay.name for lay in sixteens}
    if both:
        raise LayerSelectionError(f"layer(s) {sorted(both)} are in both keep_float and int16; put each in one list")
    for layer, precision in [*((lay, "float") for lay in floats), *((lay, "int16") for lay in sixteens)]:
        module = model.get_submodule(layer.path)
        if isinstance(module, FloatFunctional):
            raise LayerSelectionError(
                f"{layer.name} ({layer.kind}) takes several inputs; keep_float/int16 apply to single-input "
                "layers (convolutions, linears, activations, pools): select those around it instead"
            )
        relu6 = getattr(module, FIXED_QPARAMS_ATTR, None) == RELU6_QPARAMS
        if precision == "float":
            module.qconfig = None
        else:
            module.qconfig = QConfig(activation=_int16_activation(cfg), weight=cfg.weight())
        if relu6:  # fusion turned the ReLU6 into a ReLU whose clamp at 6 was the int8 grid
            delattr(module, FIXED_QPARAMS_ATTR)
            module = nn.Sequential(module, nn.ReLU6())
        replace_module(model, layer.path, PrecisionIsland(module, precision))


def detach_islands(model: nn.Module) -> dict[str, nn.Module]:
    """Take the layers out of the islands so that ``tq.convert`` leaves them as they are."""
    detached = {}
    for name, module in model.named_modules():
        if isinstance(module, PrecisionIsland) and not module.converted:
            observer = getattr(
                getattr(module.requant, "activation_post_process", None), "activation_post_process", None
            )
            lo = getattr(observer, "min_val", None)
            if int(module.route) == _UNDECIDED:
                raise ValueError(
                    f"convert(): {name} ({module.precision}) never ran; run calibrate(model, batches) first"
                )
            if not module.handoff and lo is not None and (lo.numel() == 0 or bool(torch.isinf(lo).all())):
                raise ValueError(
                    f"convert(): the output grid of {name} ({module.precision}) never saw data; "
                    "run calibrate(model, batches) first"
                )
            detached[name] = module.layer
            module.layer = nn.Identity()
    return detached


def finish_islands(model: nn.Module, detached: dict[str, nn.Module]) -> None:
    """Put the layers back after ``tq.convert``: observers off, fake-quant of ``int16`` layers on."""
    for name, layer in detached.items():
        island = model.get_submodule(name)
        layer.apply(tq.disable_observer)
        layer.apply(tq.enable_fake_quant)
        island.layer = layer
        if island.handoff:
            island.requant = nn.Identity()
        island.converted = True
