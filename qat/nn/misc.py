"""Shape and resampling layers that run unchanged on int8 tensors."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from qat.quant.int8_ops import Int8Policy

__all__ = ["Interpolate", "SpaceToDepth"]


class SpaceToDepth(nn.Module):
    """Pixel-unshuffle: ``[N, C, H, W] → [N, C·b², H/b, W/b]`` -- lossless down-sampling."""

    int8_policy = Int8Policy("passthrough")  # a pure permutation: the int8 tensor keeps its grid

    def __init__(self, block_size: int = 2) -> None:
        super().__init__()
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.block_size or w % self.block_size:
            raise ValueError(f"SpaceToDepth({self.block_size}) needs H and W divisible by it, got {h}x{w}")
        return F.pixel_unshuffle(x, self.block_size)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


class Interpolate(nn.Module):
    """Resize by ``scale_factor`` or to ``size`` (``nearest`` or ``bilinear``).

    In int8, ``nearest`` copies int8 values (keeps the input grid); ``bilinear`` averages them
    and rounds once to its own observed grid -- both exact to the fake-quant model.
    """

    def __init__(
        self,
        size: int | tuple[int, int] | None = None,
        scale_factor: float | tuple[float, float] | None = None,
        mode: str = "bilinear",
        align_corners: bool | None = None,
    ) -> None:
        super().__init__()
        if (size is None) == (scale_factor is None):
            raise ValueError("Interpolate needs exactly one of size or scale_factor")
        if mode not in ("nearest", "bilinear"):
            raise ValueError(f"Interpolate mode must be 'nearest' or 'bilinear', got {mode!r}")
        self.size = size
        self.scale_factor = scale_factor
        self.mode = mode
        self.align_corners = (align_corners or False) if mode == "bilinear" else None
        self.int8_policy = Int8Policy("passthrough" if mode == "nearest" else "requant")

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        """Resize ``x``; a ``size`` given here (e.g. another feature map's) overrides the configured one."""
        if size is not None:
            return F.interpolate(x, size=size, mode=self.mode, align_corners=self.align_corners)
        return F.interpolate(
            x, size=self.size, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners
        )

    def extra_repr(self) -> str:
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"{what}, mode={self.mode}"
