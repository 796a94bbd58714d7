"""Squeeze-and-excitation gates of a converted model as one int8 op (``qat::channel_gate_u8``).

A block declares ``int8_fused = "channel_gate"`` when its forward is
``mul(x, gate(expand(reduce(pool(x)))))`` (:class:`qat.nn.SqueezeExcite`). torch runs the int8
form as seven ops, most of them on a 1×1 map where per-call overhead is all there is (measured in
BENCHMARKS.md §3, "Figures cited in the code").
:class:`FusedChannelGate` keeps the converted parts (the same ``state_dict``) and, where
:func:`~qat.quant.lut_kernel.use_channel_gate_kernel` allows, calls the fused op instead. It rounds
at every point the op chain rounds; the one difference is the pool's mean, exact here and a float
sum in torch, which can land on the other side of a rounding tie (tests bound how often).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qat.quant.backend import nniq, nnq
from qat.quant.fast_int8 import is_per_channel, symmetric_weight
from qat.quant.fuse import replace_module
from qat.quant.int8_ops import QuantizedRequant
from qat.quant.lut_kernel import use_channel_gate_kernel

__all__ = ["FusedChannelGate", "fuse_channel_gates"]

_PARTS = ("pool", "reduce", "expand", "gate", "mul")


def _all_codes(scale: float, zero_point: int) -> Tensor:
    codes = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    return torch._make_per_tensor_quantized_tensor(codes, scale, zero_point)


def _elementwise_table(act: nn.Module, scale: float, zero_point: int) -> tuple[Tensor, float, int] | None:
    """``act`` on every quint8 code of a grid: (output codes, output scale, output zero point)."""
    if isinstance(act, nn.Identity):
        return torch.arange(256, dtype=torch.uint8), scale, zero_point
    if getattr(act, "elementwise", False) is not True:
        return None
    with torch.no_grad():
        y = act(_all_codes(scale, zero_point))
    if not (isinstance(y, Tensor) and y.is_quantized and y.dtype == torch.quint8 and y.numel() == 256):
        return None
    return y.int_repr().flatten().contiguous(), float(y.q_scale()), int(y.q_zero_point())


def _pointwise_conv(m: nn.Module) -> nnq.Conv2d | None:
    """The int8 1×1 conv of a converted ``ConvModule2d`` whose norm was folded away, if it is one."""
    conv = getattr(m, "conv", None)
    if not isinstance(conv, nnq.Conv2d) or not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity):
        return None
    plain = conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0)
    return conv if plain and conv.dilation == (1, 1) and conv.groups == 1 else None


def _conv_args(conv: nnq.Conv2d, in_scale: float) -> tuple[Tensor, Tensor, Tensor, Tensor, int, int]:
    """Packed int8 weights and their row sums, ``bias / (s_in s_w)``, ``s_in s_w / s_out``, zero point, clamp floor.

    The packing is the kernel's: blocks of 16 outputs × 4 inputs, ``[rows/16, cols/4, 16, 4]``,
    zero-padded.
    """
    w = conv.weight()
    if is_per_channel(w):
        w_scale = w.q_per_channel_scales().float()
    else:
        w_scale = torch.full((w.shape[0],), w.q_scale(), dtype=torch.float32)
    act_times_w = torch.tensor(in_scale, dtype=torch.float32) * w_scale  # fbgemm's float arithmetic
    bias = conv.bias()
    bias = torch.zeros_like(w_scale) if bias is None else bias.detach().float()
    codes = w.int_repr().flatten(1)
    rows, cols = codes.shape
    codes = F.pad(codes, (0, -cols % 4, 0, -rows % 16))
    packed = codes.view(codes.shape[0] // 16, 16, codes.shape[1] // 4, 4).permute(0, 2, 1, 3).contiguous()
    row_sums = codes.sum(1, dtype=torch.int32).contiguous()
    mult = act_times_w / torch.tensor(conv.scale, dtype=torch.float32)
    floor = int(conv.zero_point) if isinstance(conv, nniq.ConvReLU2d) else 0
    return packed, row_sums, (bias / act_times_w).contiguous(), mult.contiguous(), int(conv.zero_point), floor


def _fused_args(parts: dict[str, nn.Module | None]) -> tuple | None:
    """The fused op's arguments read from converted SE parts, or None when one of them has no
    exact fused equivalent."""
    pool, mul = parts["pool"], getattr(parts["mul"], "op", parts["mul"])  # qat.nn.Mul wraps a QFunctional
    if not (
        isinstance(pool, QuantizedRequant)
        and isinstance(pool.fn, nn.AdaptiveAvgPool2d)
        and pool.fn.output_size in (1, (1, 1))
        and isinstance(getattr(mul, "scale", None), float)
    ):
        return None
    conv1, conv2 = _pointwise_conv(parts["reduce"]), _pointwise_conv(parts["expand"])
    if conv1 is None or conv2 is None or not all(symmetric_weight(c.weight()) for c in (conv1, conv2)):
        return None
    mid = _elementwise_table(parts["reduce"].act, conv1.scale, conv1.zero_point)
    expanded = _elementwise_table(parts["expand"].act, conv2.scale, conv2.zero_point)
    gate = None if expanded is None else _elementwise_table(parts["gate"], *expanded[1:])
    if mid is None or expanded is None or gate is None:
        return None
    table1, mid_scale, mid_zp = mid
    table2, gate_scale, gate_zp = gate[0][expanded[0].long()].contiguous(), gate[1], gate[2]
    w1, r1, b1, m1, z1, lo1 = _conv_args(conv1, pool.scale)
    w2, r2, b2, m2, z2, lo2 = _conv_args(conv2, mid_scale)
    if lo2:  # a ReLU fused into the expand conv: fold its clamp into the gate table
        table2 = table2[torch.arange(256).clamp(min=lo2)].contiguous()
    gate_values = _all_codes(gate_scale, gate_zp).dequantize().flatten().contiguous()
    args = (pool.scale, pool.zero_point, w1, r1, b1, m1, z1, lo1, table1, mid_zp)
    return args + (w2, r2, b2, m2, z2, table2, gate_values, float(mul.scale), int(mul.zero_point))


def _refresh_after_load(module: FusedChannelGate, incompatible_keys: object) -> None:
    module.refresh()


class FusedChannelGate(nn.Module):
    """A converted squeeze-and-excitation block that runs as ``qat::channel_gate_u8`` when it can.

    Build it with :meth:`from_converted`; the parts stay children under their own names, run
    one after another when the kernel is not used (no compiler, ``portable_int8()``, a CPU
    without AVX-512 VNNI, a non-quint8 input). The op's arguments are read from the parts, again
    after every ``load_state_dict``; call :meth:`refresh` after changing a part's attributes by hand.
    """

    #: One op to comparisons such as ``qat.quant.replay_ops``: its parts do not run when it is fused.
    int8_composite = True

    def __init__(self, parts: dict[str, nn.Module], args: tuple) -> None:
        super().__init__()
        for name in _PARTS:
            self.add_module(name, parts[name])
        self._args: tuple | None = args
        self.register_load_state_dict_post_hook(_refresh_after_load)
        use_channel_gate_kernel()  # build and query the kernel now, not inside a later trace

    @classmethod
    def from_converted(cls, block: nn.Module) -> FusedChannelGate | None:
        """The fused form of a converted block declaring ``int8_fused = "channel_gate"``, or None
        when one of its parts has no exact fused equivalent (then the block stays as it is)."""
        parts = {name: getattr(block, name, None) for name in _PARTS}
        args = _fused_args(parts)
        return None if args is None else cls(parts, args)

    def refresh(self) -> None:
        """Re-read the op's arguments from the parts (the chain runs if they stop fitting it)."""
        self._args = _fused_args({name: getattr(self, name) for name in _PARTS})

    def forward(self, x: Tensor) -> Tensor:
        fusable = self._args is not None and x.dtype == torch.quint8 and x.dim() == 4
        if fusable and x.qscheme() == torch.per_tensor_affine and use_channel_gate_kernel():
            return torch.ops.qat.channel_gate_u8(x, *self._args, True)
        return self.chain(x)

    def chain(self, x: Tensor) -> Tensor:
        """The parts one after another: stock torch ops."""
        return self.mul(x, self.gate(self.expand(self.reduce(self.pool(x)))))

    def fused(self, x: Tensor, simd: bool = True) -> Tensor:
        """The fused op; ``simd=False`` forces its scalar loops (tests compare both)."""
        if self._args is None:
            raise RuntimeError("this gate's parts no longer fit qat::channel_gate_u8; call chain()")
        return torch.ops.qat.channel_gate_u8(x, *self._args, simd)

    def extra_repr(self) -> str:
        return "qat::channel_gate_u8 where available"


#: Engines whose 1×1 convs the op reproduces (fbgemm's float-bias requantization); qnnpack rounds
#: differently, so models converted for it keep the op chain.
_ENGINES = ("x86", "fbgemm")


def fuse_channel_gates(model: nn.Module) -> nn.Module:
    """Swap every block of a converted model that declares ``int8_fused = "channel_gate"`` for its
    :class:`FusedChannelGate`, in place, when the quantized engine is x86/fbgemm."""
    if torch.backends.quantized.engine not in _ENGINES:
        return model
    for name, m in list(model.named_modules()):
        if name and getattr(m, "int8_fused", None) == "channel_gate":
            fused = FusedChannelGate.from_converted(m)
            if fused is not None:
                replace_module(model, name, fused)
    return model
