"""Rewrites of converted int8 layers onto fbgemm's and torch's fast kernels.

Each keeps the output codes of the layer it replaces, or computes fake-quant's own arithmetic.

- fbgemm runs depthwise convs on a dedicated fast path only for square 3/5/7 kernels and, past 100
  channels, only for channel counts divisible by 8; anything else takes its generic grouped path,
  many times slower. Zero weights add nothing to an int32
  accumulation and depthwise channels are computed independently, so padding kernels and
  splitting channels keep every output code.
- torch's quantized add/mul of a channels-last and an NCHW tensor of the same shape walks a
  strided loop, far slower than two of one layout (fbgemm's convs return channels-last, resizes
  and concats NCHW). Aligning the layouts first changes no value.
- torch's quantized mul with broadcasting (SE gates ``[N, C, 1, 1]``, spatial weights
  ``[N, 1, H, W]``) is slower than ``quantize(dequantize(x) * dequantize(y))``, which is what
  fake-quant computes; the two round differently on near-ties only.

The measurements behind each rewrite are in BENCHMARKS.md §3 ("int8 slow paths found with
``torch.profiler``" and "Figures cited in the code").
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from qat.quant.backend import QFunctional, nnq
from qat.quant.fuse import replace_module

__all__ = [
    "FastQFunctional",
    "SplitDepthwiseConv2d",
    "is_per_channel",
    "symmetric_weight",
    "use_fast_int8_kernels",
    "weight_with_codes",
]


def use_fast_int8_kernels(model: nn.Module) -> nn.Module:
    """Apply every rewrite to a converted int8 model, in place."""
    _square_depthwise_kernels(model)
    _split_depthwise_channels(model)
    _align_elementwise_layouts(model)
    return model


def is_per_channel(w: Tensor) -> bool:
    return w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)


def symmetric_weight(w: Tensor) -> bool:
    """A qint8 weight whose code 0 is weight 0 (every zero point 0)."""
    zero_points = w.q_per_channel_zero_points() if is_per_channel(w) else torch.tensor([w.q_zero_point()])
    return w.dtype == torch.qint8 and not bool(zero_points.any())


def weight_with_codes(w: Tensor, codes: Tensor, channels: slice = slice(None)) -> Tensor:
    """A quantized weight with integer ``codes`` and the grid of ``w`` (per channel: its ``channels``)."""
    if is_per_channel(w):
        return torch._make_per_channel_quantized_tensor(
            codes, w.q_per_channel_scales()[channels], w.q_per_channel_zero_points()[channels], w.q_per_channel_axis()
        )
    return torch._make_per_tensor_quantized_tensor(codes, w.q_scale(), w.q_zero_point())


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nnq.Conv2d) and m.groups == m.in_channels == m.out_channels


#: Depthwise kernel sizes with a fast int8 path in fbgemm (and QNNPACK for 3 and 5).
_FAST_DEPTHWISE = (3, 5, 7)


def _square_depthwise_kernels(model: nn.Module) -> None:
    """Zero-pad int8 depthwise kernels like (1, 5) / (5, 1) to (5, 5), adjusting the padding.

    fbgemm and QNNPACK run only square depthwise kernels on their fast path; HENet's AltDWCB
    (1, 5) kernels otherwise take the generic grouped path (BENCHMARKS.md §3). Zero weights
    add nothing to the int32 accumulation, so the outputs are bit-identical.
    """
    for m in model.modules():
        if not _is_depthwise(m) or m.padding_mode != "zeros":
            continue
        (kh, kw), (ph, pw), (dh, dw) = m.kernel_size, m.padding, m.dilation
        k = max(kh, kw)
        if kh == kw or k not in _FAST_DEPTHWISE or (k - kh) % 2 or (k - kw) % 2:
            continue
        w = m.weight()
        if not symmetric_weight(w):  # code 0 would not be weight 0
            continue
        ah, aw = (k - kh) // 2, (k - kw) // 2
        m.kernel_size, m.padding = (k, k), (ph + ah * dh, pw + aw * dw)
        m.set_weight_bias(weight_with_codes(w, torch.nn.functional.pad(w.int_repr(), (aw, aw, ah, ah))), m.bias())


#: Past ``_ANY_CHANNELS`` channels fbgemm's depthwise fast path needs a channel count divisible by
#: ``_DEPTHWISE_CHANNEL_MULTIPLE`` (BENCHMARKS.md §3). At or below it any count is fast, and a split
#: would only add its slice-and-concat copies.
_DEPTHWISE_CHANNEL_MULTIPLE = 8
_ANY_CHANNELS = 100


class SplitDepthwiseConv2d(nn.Module):
    """An int8 depthwise conv run as two: the first ``split`` channels (a multiple of 8) and the rest.

    ShuffleNetV2 x1.0's 116-channel depthwise convs take fbgemm's slow generic path; both halves
    here have a fast path, and share the output grid, so the
    concatenation equals the original conv code for code. The module keeps the original's
    attributes a caller may read (channels, scale, zero point).
    """

    int8_composite = True  # one op to comparisons such as qat.quant.replay_ops, not two

    def __init__(self, conv: nnq.Conv2d, split: int) -> None:
        super().__init__()
        self.split = split
        self.in_channels = self.out_channels = conv.out_channels
        self.scale, self.zero_point = conv.scale, conv.zero_point
        self.head = _channel_slice(conv, 0, split)
        self.tail = _channel_slice(conv, split, conv.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.head(x[:, : self.split]), self.tail(x[:, self.split :])], 1)

    def extra_repr(self) -> str:
        return f"{self.out_channels}, split={self.split}"


def _channel_slice(conv: nnq.Conv2d, start: int, stop: int) -> nnq.Conv2d:
    """A copy of a depthwise int8 conv restricted to channels ``start:stop``."""
    part = copy.deepcopy(conv)
    part.in_channels = part.out_channels = part.groups = stop - start
    w, b = conv.weight(), conv.bias()
    channels = slice(start, stop)
    part.set_weight_bias(
        weight_with_codes(w, w.int_repr()[channels], channels), None if b is None else b[channels].clone()
    )
    return part


def _split_depthwise_channels(model: nn.Module) -> None:
    """Replace depthwise int8 convs of over 100 channels, not a multiple of 8, by :class:`SplitDepthwiseConv2d`."""
    for name, m in list(model.named_modules()):
        c = getattr(m, "out_channels", 0)
        if not name or not _is_depthwise(m) or c % _DEPTHWISE_CHANNEL_MULTIPLE == 0 or c <= _ANY_CHANNELS:
            continue
        replace_module(model, name, SplitDepthwiseConv2d(m, c - c % _DEPTHWISE_CHANNEL_MULTIPLE))


def _aligned(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """``y`` in ``x``'s memory format when both are 4-D of one shape and their layouts differ."""
    if x.dim() == 4 and x.shape == y.shape:
        x_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        y_cl = y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
        if x_cl != y_cl:
            y = y.contiguous(memory_format=torch.channels_last if x_cl else torch.contiguous_format)
    return x, y


class FastQFunctional(QFunctional):
    """torch's ``QFunctional`` whose ``add``, ``add_relu`` and ``mul`` first give both operands one
    layout, and whose broadcasting ``mul`` multiplies the dequantized values (fake-quant's arithmetic)."""

    def add(self, x: Tensor, y: Tensor) -> Tensor:
        return super().add(*_aligned(x, y))

    def add_relu(self, x: Tensor, y: Tensor) -> Tensor:
        return super().add_relu(*_aligned(x, y))

    def mul(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape:
            return torch.quantize_per_tensor(x.dequantize() * y.dequantize(), self.scale, self.zero_point, x.dtype)
        return super().mul(*_aligned(x, y))


def _align_elementwise_layouts(model: nn.Module) -> None:
    """Replace every converted ``QFunctional`` (``qat.nn.Add``, ``Mul``, ``Cat``...) by :class:`FastQFunctional`."""
    for name, m in list(model.named_modules()):
        if name and type(m) is QFunctional:
            new = FastQFunctional()
            new.scale, new.zero_point = m.scale, m.zero_point
            replace_module(model, name, new)
