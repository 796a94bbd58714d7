"""Quantize / dequantize boundaries of a quantized network."""

from __future__ import annotations

from qat.quant.backend import DeQuantStub
from qat.quant.backend import QuantStub as _AoQuantStub

__all__ = ["DeQuantStub", "QuantStub"]


class QuantStub(_AoQuantStub):
    """Marks where float input becomes int8.

    With ``scale`` the input's quantization parameters are fixed instead of observed, as
    Horizon's stub does: for inputs normalised to [-1, 1) use ``scale=1/128`` (``zero_point``
    defaults to 128, i.e. a symmetric range on the unsigned int8 grid); for inputs in [0, 1)
    use ``scale=1/256, zero_point=0``. Without ``scale`` the qparams are observed as usual.
    """

    def __init__(self, scale: float | None = None, zero_point: int | None = None) -> None:
        super().__init__()
        if scale is not None and not scale > 0:
            raise ValueError(f"QuantStub scale must be positive, got {scale}")
        self.scale = scale
        self.zero_point = (128 if zero_point is None else int(zero_point)) if scale is not None else None

    @property
    def fixed_qparams(self) -> tuple[float, int] | None:
        """``(scale, zero_point)`` when fixed, else ``None`` (read by ``qat.quant``)."""
        return None if self.scale is None else (float(self.scale), int(self.zero_point))

    def extra_repr(self) -> str:
        return "" if self.scale is None else f"scale={self.scale}, zero_point={self.zero_point}"
