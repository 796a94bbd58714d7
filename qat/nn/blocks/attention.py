"""Channel attention that runs in int8: Coordinate Attention, ECA, and a MobileNetV2 block using them (or triplet attention)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from qat.nn.activations import get_act
from qat.nn.blocks.common import ActSpec
from qat.nn.blocks.shuffle_attention import ShuffleAttention
from qat.nn.blocks.triplet import TripletAttention
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, Cat, Mul

__all__ = ["ECA", "CoordinateAttention", "InvertedResidualAttention", "eca_kernel_size"]


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., 2021): two 1-D poolings (along W and along H) share a 1×1
    conv, then split into an H-gate and a W-gate; ``y = x · gate_w · gate_h``.

    int8 form: the poolings are ``nn.AdaptiveAvgPool2d((None, 1))`` / ``((1, None))`` on the int8
    tensor; the two pooled maps are joined with a ``qat.nn.Cat`` along H; the gates are fixed-grid
    sigmoid (or hard-sigmoid) lookup tables; the two products are ``qat.nn.Mul``. The reference's
    bias before the BN is dropped (BN absorbs it): ``mid_channels`` fewer parameters.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        reduction: int = 32,
        min_channels: int = 8,
        act_layer: ActSpec = "hardswish",
        gate: ActSpec = "sigmoid",
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if out_channels != in_channels:
            raise ValueError("CoordinateAttention gates its input: out_channels must equal in_channels")
        mid = max(min_channels, in_channels // reduction)
        self.pool_h = nn.AdaptiveAvgPool2d((None, 1))
        self.pool_w = nn.AdaptiveAvgPool2d((1, None))
        self.cat = Cat(dim=2)
        self.conv = ConvModule2d(in_channels, mid, 1, norm_layer="bn", act_layer=act_layer)
        self.conv_h = ConvModule2d(mid, out_channels, 1, act_layer=gate)
        self.conv_w = ConvModule2d(mid, out_channels, 1, act_layer=gate)
        self.mul_w = Mul()
        self.mul_h = Mul()

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x_h = self.pool_h(x)  # [N, C, H, 1]
        x_w = self.pool_w(x).permute(0, 1, 3, 2)  # [N, C, W, 1]
        y = self.conv(self.cat([x_h, x_w]))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        gate_h = self.conv_h(y_h)  # [N, C, H, 1]
        gate_w = self.conv_w(y_w.permute(0, 1, 3, 2))  # [N, C, 1, W]
        return self.mul_h(self.mul_w(x, gate_w), gate_h)


def eca_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """ECA's adaptive kernel size: the odd number nearest ``(log2(C) + beta) / gamma``."""
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class ECA(nn.Module):
    """Efficient channel attention (Wang et al., 2020): global pool → 1-D conv across channels → gate.

    The 1-D conv (``k`` taps, no bias) is a ``Conv2d(1, 1, (k, 1))`` over the pooled ``[N, 1, C, 1]``
    view, so it converts to torch's int8 conv2d like every other conv here (``nn.Conv1d`` has an int8
    kernel too, but would be the only 1-D conv in the graph). ``kernel_size=None`` picks it from ``C``.
    """

    def __init__(
        self, channels: int, kernel_size: int | None = None, gamma: int = 2, beta: int = 1, gate: ActSpec = "sigmoid"
    ) -> None:
        super().__init__()
        k = eca_kernel_size(channels, gamma, beta) if kernel_size is None else kernel_size
        if k % 2 == 0:
            raise ValueError(f"ECA kernel_size must be odd, got {k}")
        self.kernel_size = k
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(1, 1, (k, 1), padding=((k - 1) // 2, 0), bias=False)
        self.gate = get_act(gate)
        self.mul = Mul()

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        y = self.conv(self.pool(x).view(n, 1, c, 1)).view(n, c, 1, 1)
        return self.mul(x, self.gate(y))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class InvertedResidualAttention(nn.Module):
    """MobileNetV2 inverted residual with channel attention where the reference networks put it.

    ``[1×1 expand-BN-ReLU6] → 3×3 dw-BN-ReLU6 (stride) → [CA] → 1×1 project-BN → [ECA] (+ x)``:
    ``attention="ca"`` gates the expanded features after the depthwise conv (houqb/CoordAttention),
    ``"eca"`` gates the projected output before the residual add (BangguWu/ECANet), as do
    ``"triplet"`` (:class:`~qat.nn.blocks.triplet.TripletAttention`, landskape-ai/triplet-attention,
    ``triplet_kernel`` taps) and ``"sa"`` (:class:`~qat.nn.blocks.shuffle_attention.ShuffleAttention`
    with ``sa_groups``, where SA-ResNet puts it); ``None`` is a plain MobileNetV2 block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        expand_ratio: float = 6.0,
        attention: str | None = "ca",
        ca_reduction: int = 32,
        eca_kernel: int | None = None,
        act_layer: ActSpec = "relu6",
        triplet_kernel: int = 3,
        sa_groups: int = 4,
    ) -> None:
        super().__init__()
        if attention not in ("ca", "eca", "triplet", "sa", None):
            raise ValueError(f"attention must be 'ca', 'eca', 'triplet', 'sa' or None, got {attention!r}")
        hidden = int(round(in_channels * expand_ratio))
        self.expand = (
            ConvModule2d(in_channels, hidden, 1, norm_layer="bn", act_layer=act_layer) if expand_ratio != 1 else None
        )
        self.dw = ConvModule2d(hidden, hidden, 3, stride, 1, groups=hidden, norm_layer="bn", act_layer=act_layer)
        self.ca = CoordinateAttention(hidden, reduction=ca_reduction) if attention == "ca" else None
        self.project = ConvModule2d(hidden, out_channels, 1, norm_layer="bn")
        self.eca = ECA(out_channels, kernel_size=eca_kernel) if attention == "eca" else None
        self.triplet = TripletAttention(triplet_kernel) if attention == "triplet" else None
        self.sa = ShuffleAttention(out_channels, sa_groups) if attention == "sa" else None
        self.add = Add() if stride == 1 and in_channels == out_channels else None

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.dw(y)
        if self.ca is not None:
            y = self.ca(y)
        y = self.project(y)
        if self.eca is not None:
            y = self.eca(y)
        if self.triplet is not None:
            y = self.triplet(y)
        if self.sa is not None:
            y = self.sa(y)
        return y if self.add is None else self.add(x, y)
