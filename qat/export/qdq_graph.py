"""Rewrites of an exported fake-quant ONNX graph into deployable QDQ form.

The TorchScript exporter writes every fake-quant as QuantizeLinear→DequantizeLinear, weights
included (a float initializer through a QuantizeLinear), conv/Gemm biases in float, and leaves
ops that keep their input's grid (max pooling, reshapes, ReLU, nearest resizes...) without a
pair after them. Runtimes fuse ``DQ → op → Q`` groups into integer kernels only when every input
of the op comes from a DequantizeLinear, so this pass:

- stores each weight as its int8 codes (an int8 initializer read by a DequantizeLinear with
  per-channel scales on ``axis``);
- stores each bias as int32 on the grid ``input scale × weight scale`` (what integer kernels add;
  the one rounding qat's int8 model does not do: fbgemm adds the float bias);
- puts a QuantizeLinear→DequantizeLinear on the input's grid after each grid-keeping op, and on
  the grid ``scale × c`` after a multiplication by a positive constant (qat's ``MulScalar``),
  exactly what qat's int8 model computes there;
- turns Constant nodes into initializers and drops what nothing reads.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["GRID_KEEPING_OPS", "finalize_qdq", "quantize_biases"]

#: Ops whose output values lie on their (per-tensor) input grid: a QDQ pair on that grid is exact.
GRID_KEEPING_OPS = frozenset(
    {
        "MaxPool", "Relu", "Clip", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Split",
        "DepthToSpace", "SpaceToDepth", "Identity", "Gather", "Expand", "Tile",
    }
)  # fmt: skip
#: ``Resize`` keeps the grid only when it copies values (``nearest``); ``Pad`` when it pads with zeros.
_CONDITIONAL = frozenset({"Resize", "Pad"})


class _Graph:
    """Producer/consumer bookkeeping over a mutable ``GraphProto``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self._names = 0

    def fresh(self, base: str) -> str:
        self._names += 1
        return f"{base}_qdq{self._names}"

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {o: n for n in self.graph.node for o in n.output}

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                out[i].append(n)
        return out

    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.graph.output}

    def add_init(self, name: str, value: np.ndarray) -> str:
        self.inits[name] = value
        return name

    def rename_uses(self, old: str, new: str, skip: onnx.NodeProto | None = None) -> None:
        for n in self.graph.node:
            if n is skip:
                continue
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def const(self, name: str) -> np.ndarray | None:
        return self.inits.get(name)

    def write_back(self) -> None:
        """Drop unread nodes and initializers, order nodes topologically, store the initializers."""
        needed = self.graph_outputs()
        keep: list[onnx.NodeProto] = []
        for n in reversed(list(self.graph.node)):
            if any(o in needed for o in n.output):
                keep.append(n)
                needed.update(i for i in n.input if i)
        keep.reverse()
        del self.graph.node[:]
        self.graph.node.extend(_topological(keep, set(self.inits) | {i.name for i in self.graph.input}))
        read = {i for n in self.graph.node for i in n.input} | self.graph_outputs()
        del self.graph.initializer[:]
        self.graph.initializer.extend(
            numpy_helper.from_array(np.asarray(v), k) for k, v in self.inits.items() if k in read
        )


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    ready = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(i in ready for i in n.input):
                ordered.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError(f"ONNX graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    return ordered


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constants_to_initializers(g: _Graph) -> None:
    """Constant nodes become initializers; Identity of a constant is read straight from it."""
    outputs = g.graph_outputs()
    for n in list(g.graph.node):
        if n.op_type == "Constant" and _attr(n, "value") is not None and n.output[0] not in outputs:
            g.add_init(n.output[0], numpy_helper.to_array(_attr(n, "value")))
            g.graph.node.remove(n)
    for n in list(g.graph.node):
        if n.op_type == "Identity" and n.input[0] in g.inits and n.output[0] not in outputs:
            g.rename_uses(n.output[0], n.input[0])
            g.graph.node.remove(n)


def _broadcast(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _fold_weight_quantizers(g: _Graph) -> None:
    """``QuantizeLinear(constant)`` → the constant's integer codes as an initializer."""
    for n in list(g.graph.node):
        if n.op_type != "QuantizeLinear" or n.input[0] not in g.inits:
            continue
        w = g.const(n.input[0]).astype(np.float32)
        scale, zp = g.const(n.input[1]), g.const(n.input[2])
        if scale is None or zp is None:
            continue
        axis = _attr(n, "axis", 1) % max(w.ndim, 1)
        info = np.iinfo(zp.dtype)
        codes = np.rint(w / _broadcast(scale.astype(np.float32), axis, w.ndim)) + _broadcast(zp, axis, w.ndim)
        name = g.add_init(g.fresh(n.input[0] + "_quantized"), np.clip(codes, info.min, info.max).astype(zp.dtype))
        g.rename_uses(n.output[0], name)
        g.graph.node.remove(n)


def _per_tensor_dq(g: _Graph, producer: onnx.NodeProto | None) -> tuple[str, str] | None:
    """``(scale, zero_point)`` initializer names of a per-tensor DequantizeLinear, else None."""
    if producer is None or producer.op_type != "DequantizeLinear" or len(producer.input) < 3:
        return None
    scale = g.const(producer.input[1])
    if scale is None or scale.size != 1 or g.const(producer.input[2]) is None:
        return None
    return producer.input[1], producer.input[2]


def _insert_qdq(
    g: _Graph,
    value: str,
    scale: str,
    zero_point: str,
    after: onnx.NodeProto,
    readers: list[onnx.NodeProto],
) -> list[onnx.NodeProto]:
    """``Q → DQ`` (``scale``, ``zero_point``) on ``value`` for every reader that is not already a Q.

    Returns the two new nodes (none when every reader is a Q); readers are rewired to the DQ.
    """
    is_output = value in g.graph_outputs()
    if not is_output and all(r.op_type == "QuantizeLinear" for r in readers):
        return []
    q_out, dq_out = g.fresh(value + "_q"), g.fresh(value + "_dq")
    source = value
    if is_output:  # the graph output keeps its name: the float result is renamed and the DQ takes the name
        source = g.fresh(value + "_float")
        after.output[list(after.output).index(value)] = source
        dq_out = value
    q = helper.make_node("QuantizeLinear", [source, scale, zero_point], [q_out], name=g.fresh(after.name + "/Q"))
    dq = helper.make_node("DequantizeLinear", [q_out, scale, zero_point], [dq_out], name=g.fresh(after.name + "/DQ"))
    for r in readers:
        target = source if r.op_type == "QuantizeLinear" else dq_out
        for k, i in enumerate(r.input):
            if i == value:
                r.input[k] = target
    return [q, dq]


def _keeps_grid(g: _Graph, n: onnx.NodeProto) -> bool:
    if n.op_type in GRID_KEEPING_OPS:
        return True
    if n.op_type == "Resize":
        return _attr(n, "mode", b"nearest") in (b"nearest", "nearest")
    if n.op_type == "Pad":
        mode = _attr(n, "mode", b"constant")
        value = g.const(n.input[2]) if len(n.input) > 2 and n.input[2] else np.zeros(())
        return mode in (b"constant", "constant") and value is not None and not np.any(value)
    return False


def _propagate_grids(g: _Graph) -> None:
    """A QDQ pair after every op that keeps its input grid, and after ``x · c`` (``c > 0``) on grid ``s·c``."""
    producers, consumers = g.producers(), g.consumers()
    ordered: list[onnx.NodeProto] = []
    for n in list(g.graph.node):
        ordered.append(n)
        pairs: list[tuple[str, str, str]] = []
        if _keeps_grid(g, n) and n.input:
            grid = _per_tensor_dq(g, producers.get(n.input[0]))
            if grid is not None and not (n.op_type == "Pad" and np.any(g.const(grid[1]))):
                pairs = [(o, *grid) for o in n.output]
        elif n.op_type == "Mul" and len(n.input) == 2:
            const = [k for k in (0, 1) if n.input[k] in g.inits]
            if len(const) == 1:
                c = g.const(n.input[const[0]])
                grid = _per_tensor_dq(g, producers.get(n.input[1 - const[0]]))
                if grid is not None and c.size == 1 and float(c.reshape(())) > 0:
                    scale = np.asarray(g.const(grid[0]), np.float32) * np.float32(c.reshape(()))
                    name = g.add_init(g.fresh(n.name + "_scale"), scale.astype(np.float32))
                    pairs = [(n.output[0], name, grid[1])]
        for value, scale, zero_point in pairs:
            new = _insert_qdq(g, value, scale, zero_point, n, consumers.get(value, []))
            for node in new:
                ordered.append(node)
                producers.update({o: node for o in node.output})
            if new:
                consumers[new[0].output[0]] = [new[1]]
                consumers[new[1].output[0]] = [r for r in consumers.get(value, []) if r.op_type != "QuantizeLinear"]
                consumers[new[0].input[0]] = [new[0]] + [
                    r for r in consumers.get(value, []) if r.op_type == "QuantizeLinear"
                ]
    del g.graph.node[:]
    g.graph.node.extend(ordered)


def _quantize_biases(g: _Graph) -> None:
    """Float Conv/Gemm biases → int32 on the grid ``input scale × weight scale``, read through a DQ."""
    producers = g.producers()
    for n in g.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in g.inits:
            continue
        x_grid = _per_tensor_dq(g, producers.get(n.input[0]))
        w_dq = producers.get(n.input[1])
        if x_grid is None or w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        w_scale = g.const(w_dq.input[1])
        if w_scale is None or g.const(w_dq.input[0]) is None:
            continue
        bias = g.const(n.input[2]).astype(np.float32)
        scale = (np.float32(g.const(x_grid[0]).reshape(())) * w_scale.astype(np.float32)).reshape(-1)
        scale = np.broadcast_to(scale, bias.shape).astype(np.float32).copy()
        codes = np.rint(bias.astype(np.float64) / scale)
        if not np.all(np.abs(codes) < 2**31):  # a degenerate (all-zero) input grid: keep the exact float bias
            continue
        codes = codes.astype(np.int32)
        base = n.input[2]
        codes_name = g.add_init(g.fresh(base + "_int32"), codes)
        scale_name = g.add_init(g.fresh(base + "_scale"), scale)
        zp_name = g.add_init(g.fresh(base + "_zero_point"), np.zeros_like(codes))
        out = g.fresh(base + "_dq")
        dq = helper.make_node(
            "DequantizeLinear", [codes_name, scale_name, zp_name], [out], name=g.fresh(n.name + "/bias_DQ"), axis=0
        )
        g.graph.node.insert(list(g.graph.node).index(n), dq)
        n.input[2] = out


def finalize_qdq(model: onnx.ModelProto, int32_bias: bool = True) -> onnx.ModelProto:
    """Apply the rewrites above to ``model`` in place and return it (biases stay float without ``int32_bias``)."""
    g = _Graph(model)
    _constants_to_initializers(g)
    _fold_weight_quantizers(g)
    _propagate_grids(g)
    if int32_bias:
        _quantize_biases(g)
    g.write_back()
    return model


def quantize_biases(model: onnx.ModelProto) -> onnx.ModelProto:
    """Only the int32 bias rewrite, on a graph :func:`finalize_qdq` wrote with float biases."""
    g = _Graph(model)
    _quantize_biases(g)
    g.write_back()
    return model
