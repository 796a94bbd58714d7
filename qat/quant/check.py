"""``check_model``: before any training, what will not quantize, or will quantize wrongly.

One float forward on an example input is traced (module hooks plus a ``TorchFunctionMode``),
and these are reported, each with where it happens and how to fix it:

- ``tensor-op`` (error): ``+ * - / @ cat stack`` on activations outside a ``FloatFunctional``
  -- it gets no observer and no int8 kernel;
- ``functional-act`` (error): ``F.gelu``, ``torch.sigmoid``... called as functions -- no observer;
- ``shared-module`` (error): one observed module instance called twice in a forward -- both call
  sites share one observer and one int8 grid;
- ``unfused-conv-bn`` (error): a BatchNorm fed straight by a conv but not declared for fusion;
- ``unfused-conv-relu`` (warning): a ReLU after a conv/BN that is not fused (an extra int8 op);
- ``no-int8-kernel`` (error): a leaf module with no int8 implementation;
- ``missing-quant-stub`` / ``missing-dequant-stub`` (error): input or output crossing the
  float/int8 boundary without a stub.
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from qat.quant.backend import (
    DeQuantStub,
    FloatFunctional,
    QuantStub,
    get_default_static_quant_module_mappings,
)
from qat.quant.float_functional import FF_METHODS
from qat.quant.fuse import collect_patterns
from qat.quant.int8_ops import policy_for

__all__ = ["CheckReport", "Finding", "ModelCheckError", "check_model"]

_ARITH_GROUPS = {
    "add": ("add", "__add__", "__radd__", "__iadd__", "add_"),
    "sub": ("sub", "__sub__", "__rsub__", "__isub__", "sub_", "subtract"),
    "mul": ("mul", "__mul__", "__rmul__", "__imul__", "mul_", "multiply"),
    "div": ("div", "__truediv__", "__rtruediv__", "__itruediv__", "div_", "true_divide"),
    "matmul": ("matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "einsum"),
    "cat": ("cat", "concat", "concatenate"),
    "stack": ("stack",),
}
_ARITH = {name: key for key, names in _ARITH_GROUPS.items() for name in names}
_FIX = {
    "add": "qat.nn.Add", "sub": "qat.nn.FloatFunctional (its .sub)", "mul": "qat.nn.Mul (or MulScalar)",
    "div": "qat.nn.MulScalar(1/c)", "matmul": "qat.nn.MatMul", "cat": "qat.nn.Cat", "stack": "qat.nn.Cat",
}  # fmt: skip
_FUNCTIONAL_ACTS = {
    "gelu": "qat.nn.GELU", "silu": "qat.nn.SiLU", "sigmoid": "qat.nn.Sigmoid", "hardsigmoid": "qat.nn.Hardsigmoid",
    "hardswish": "qat.nn.Hardswish", "tanh": "qat.nn.Tanh", "softmax": "qat.nn.Softmax", "mish": "nn.Mish",
    "elu": "nn.ELU", "log_softmax": "a float head after the DeQuantStub",
}  # fmt: skip
_PASSTHROUGH_LEAVES = (
    nn.ReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.ZeroPad2d, nn.Hardtanh,
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """One problem: ``kind``, ``severity`` (``error``/``warning``), ``module`` path, message, fix."""

    kind: str
    severity: str
    module: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind} at '{self.module or '<root>'}': {self.message}. Fix: {self.fix}"


@dataclass
class CheckReport:
    """Structured result of :func:`check_model`."""

    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors (warnings cost speed or accuracy, not correctness)."""
        return not self.errors

    def kinds(self) -> Counter:
        return Counter(f.kind for f in self.findings)

    def __str__(self) -> str:
        if not self.findings:
            return "check_model: clean -- every op will be quantized and fused as declared."
        head = f"check_model: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"
        return "\n".join([head, *(f"  {f}" for f in self.findings)])

    def raise_if_errors(self) -> None:
        if self.errors:
            raise ModelCheckError(self)


class ModelCheckError(ValueError):
    """Raised when a model would not quantize correctly; carries the :class:`CheckReport`."""

    def __init__(self, report: CheckReport) -> None:
        super().__init__(str(report))
        self.report = report


@dataclass
class _Call:
    name: str
    module: nn.Module
    inputs: list[int]
    output: int | None


class _Tracer(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]], ff_depth: list[int], report: CheckReport) -> None:
        super().__init__()
        self.stack, self.ff_depth, self.report = stack, ff_depth, report
        self.seen: set[tuple[str, str]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if not self.ff_depth[0] and self.stack:
            where, module = self.stack[-1]
            inside_torch_leaf = not list(module.children()) and type(module).__module__.startswith("torch.")
            if not inside_torch_leaf:
                self._inspect(name, where, args, kwargs)
        return func(*args, **kwargs)

    def _inspect(self, name: str, where: str, args: tuple, kwargs: dict) -> None:
        flat = [a for a in (*args, *kwargs.values())]
        flat += [t for a in flat if isinstance(a, (list, tuple)) for t in a]
        activations = [a for a in flat if isinstance(a, Tensor) and not isinstance(a, nn.Parameter)]
        if not activations or any(a.dtype in (torch.long, torch.int, torch.bool) for a in activations):
            return
        if name in _ARITH:
            key = _ARITH[name]
            if (where, key) not in self.seen:
                self.seen.add((where, key))
                self.report.findings.append(
                    Finding(
                        "tensor-op",
                        "error",
                        where,
                        f"tensor '{key}' on activations outside FloatFunctional gets no observer and no int8 kernel",
                        f"use a {_FIX.get(key, 'qat.nn functional module')} submodule (one instance per call site)",
                    )
                )
        elif name in _FUNCTIONAL_ACTS and (where, name) not in self.seen:
            self.seen.add((where, name))
            self.report.findings.append(
                Finding(
                    "functional-act",
                    "error",
                    where,
                    f"functional '{name}' has no observer, so its int8 output grid is wrong",
                    f"use a {_FUNCTIONAL_ACTS[name]} module",
                )
            )


def _has_int8_form(module: nn.Module, static_mapping: dict) -> bool:
    if isinstance(module, _PASSTHROUGH_LEAVES) or policy_for(module) is not None:
        return True
    return any(isinstance(module, t) for t in static_mapping)


def _observed(module: nn.Module) -> bool:
    """Would this module (or anything inside it) carry an observer or weights?"""
    for m in module.modules():
        policy = policy_for(m)
        if policy is not None:
            if policy.kind == "passthrough":
                continue
            return True
        if isinstance(m, _PASSTHROUGH_LEAVES):
            continue
        if not list(m.children()) or isinstance(m, FloatFunctional):
            return True
    return False


def _ids(obj: Any) -> list[int]:
    if isinstance(obj, Tensor):
        return [id(obj)]
    if isinstance(obj, (list, tuple)):
        return [i for o in obj for i in _ids(o)]
    if isinstance(obj, dict):
        return [i for o in obj.values() for i in _ids(o)]
    return []


def check_model(model: nn.Module, example_input: Any, raise_on_error: bool = False) -> CheckReport:
    """Trace one float forward of ``model`` on ``example_input`` and report quantization problems.

    ``example_input`` is a tensor or a tuple of positional inputs. The model is not modified
    (a copy is traced in eval mode). With ``raise_on_error`` a :class:`ModelCheckError` is raised.
    """
    model = copy.deepcopy(model).eval()
    report = CheckReport()
    names = {m: n for n, m in model.named_modules()}
    stack: list[tuple[str, nn.Module]] = []
    ff_depth = [0]
    calls: list[_Call] = []
    counts: Counter = Counter()
    keep_alive: list[Any] = []
    handles = []

    def pre_hook(mod: nn.Module, args: tuple) -> None:
        stack.append((names[mod], mod))
        counts[names[mod]] += 1

    def post_hook(mod: nn.Module, args: tuple, out: Any) -> None:
        stack.pop()
        keep_alive.append((args, out))
        if isinstance(mod, nn.Identity):
            return  # returns its input object: recording it would hide the real producer
        if not list(mod.children()) or isinstance(mod, (QuantStub, DeQuantStub)):
            out_ids = _ids(out)
            calls.append(_Call(names[mod], mod, _ids(args), out_ids[0] if len(out_ids) == 1 else None))

    for mod in model.modules():
        handles.append(mod.register_forward_pre_hook(pre_hook))
        handles.append(mod.register_forward_hook(post_hook))
        if isinstance(mod, FloatFunctional):
            for meth in FF_METHODS:
                if hasattr(mod, meth):  # torch's FloatFunctional lacks Horizon's sub/sum/mean
                    _wrap_ff_method(mod, meth, names[mod], ff_depth, counts)

    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with torch.no_grad(), _Tracer(stack, ff_depth, report):
            output = model(*inputs)
    finally:
        for h in handles:
            h.remove()

    static_mapping = get_default_static_quant_module_mappings()
    _check_stubs(model, inputs, output, calls, report)
    _check_shared(model, counts, report)
    _check_fusion(model, calls, report)
    for name, mod in model.named_modules():
        if list(mod.children()) or isinstance(mod, (QuantStub, DeQuantStub)) or counts[name] == 0:
            continue
        if not _has_int8_form(mod, static_mapping):
            report.findings.append(
                Finding(
                    "no-int8-kernel",
                    "error",
                    name,
                    f"{type(mod).__name__} has no int8 implementation in eager torch.ao",
                    "replace it with a qat.nn layer, or give its class an `int8_policy` "
                    "(qat.quant.Int8Policy('lut') for elementwise functions)",
                )
            )
    if raise_on_error:
        report.raise_if_errors()
    return report


def _wrap_ff_method(ff: nn.Module, meth: str, name: str, ff_depth: list[int], counts: Counter) -> None:
    original = getattr(ff, meth)

    def wrapped(*args, **kwargs):
        ff_depth[0] += 1
        counts[name] += 1
        try:
            return original(*args, **kwargs)
        finally:
            ff_depth[0] -= 1

    setattr(ff, meth, wrapped)


def _check_stubs(model: nn.Module, inputs: tuple, output: Any, calls: list[_Call], report: CheckReport) -> None:
    if not any(isinstance(m, QuantStub) for m in model.modules()):
        report.findings.append(
            Finding("missing-quant-stub", "error", "", "the model has no QuantStub", "quantize the input first: "
                    "self.quant = qat.nn.QuantStub() and x = self.quant(x) at the top of forward")
        )  # fmt: skip
    else:
        float_ids = set(_ids(inputs))
        for call in calls:
            consumed = float_ids & set(call.inputs)
            if not consumed:
                continue
            if isinstance(call.module, QuantStub):
                float_ids -= consumed  # in float mode a stub returns its input object itself
                continue
            report.findings.append(
                Finding("missing-quant-stub", "error", call.name,
                        f"{type(call.module).__name__} consumes the float input directly",
                        "pass the input through a qat.nn.QuantStub first")
            )  # fmt: skip
            break
    dequant_outputs = {c.output for c in calls if isinstance(c.module, DeQuantStub)}
    if not any(isinstance(m, DeQuantStub) for m in model.modules()):
        report.findings.append(
            Finding("missing-dequant-stub", "error", "", "the model has no DeQuantStub",
                    "end forward with x = self.dequant(x), self.dequant = qat.nn.DeQuantStub()")
        )  # fmt: skip
    elif any(i not in dequant_outputs for i in _ids(output)):
        report.findings.append(
            Finding("missing-dequant-stub", "error", "", "an output is returned without passing a DeQuantStub",
                    "dequantize every returned tensor (one DeQuantStub per output)")
        )  # fmt: skip


def _check_shared(model: nn.Module, counts: Counter, report: CheckReport) -> None:
    flagged: list[str] = []
    for name, mod in model.named_modules():
        if counts[name] <= 1 or not name or any(name.startswith(f + ".") for f in flagged):
            continue
        if _observed(mod):
            flagged.append(name)
            report.findings.append(
                Finding("shared-module", "error", name,
                        f"{type(mod).__name__} instance is called {counts[name]} times in one forward; its call "
                        "sites would share one observer and one int8 grid",
                        "create one module instance per call site")
            )  # fmt: skip


def _check_fusion(model: nn.Module, calls: list[_Call], report: CheckReport) -> None:
    group = {}
    for i, pattern in enumerate(collect_patterns(model)):
        for p in pattern:
            group[p] = i
    producer = {c.output: c for c in calls if c.output is not None}
    for call in calls:
        prev = next((producer[i] for i in call.inputs if i in producer), None)
        if prev is None:
            continue
        fused = prev.name in group and group.get(prev.name) == group.get(call.name)
        if isinstance(call.module, nn.BatchNorm2d) and type(prev.module) is nn.Conv2d and not fused:
            report.findings.append(
                Finding("unfused-conv-bn", "error", call.name,
                        f"BatchNorm2d follows conv '{prev.name}' but is not declared for fusion (in int8 it becomes "
                        "a separate op with its own rounding, and QAT cannot fold it)",
                        "build the pair with qat.nn.ConvModule2d, or list it in the parent's fuse_patterns()")
            )  # fmt: skip
        elif (
            type(call.module) in (nn.ReLU, nn.ReLU6) and type(prev.module) in (nn.Conv2d, nn.BatchNorm2d) and not fused
        ):
            report.findings.append(
                Finding("unfused-conv-relu", "warning", call.name,
                        f"{type(call.module).__name__} after '{prev.name}' is not fused (an extra int8 op)",
                        "use qat.nn.ConvModule2d(..., act_layer='relu') or declare the pattern")
            )  # fmt: skip
