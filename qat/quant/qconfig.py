"""Quantization presets per deployment target.

========  ==========================================  =============================================  =========
target    activations                                 weights                                        engine
========  ==========================================  =============================================  =========
``x86``   quint8 affine, full 0..255 range            qint8 per-channel symmetric, **7-bit** ±63      x86
``arm``   quint8 affine, full 0..255 range            qint8 per-channel symmetric, 8-bit ±127          qnnpack
``npu``   symmetric int8 (quint8 with zero-point 128)  qint8 per-channel symmetric, 7-bit ±63 on x86    x86
========  ==========================================  =============================================  =========

Why 7-bit weights on x86: CPUs without VNNI (AVX2 only, like ours) multiply u8×s8 pairs into
saturating int16 lanes, so full-range activations *and* weights can overflow silently after
``convert``. torch's stock x86 qconfig avoids it by training with 7-bit activations but then
converting to a full 8-bit activation grid -- fake-quant and int8 disagree. (Measured here: a
3×3 conv with full-range u8 activations and ±127 weights had ~50 % of its int8 outputs off by
more than one step on the x86, fbgemm and onednn engines alike; with ±63 weights, none.) We keep the full
activation range and spend the missing bit on weights, where per-channel scales make it cheap;
the fake-quant model uses exactly the grid the int8 kernels use.

Why plain ``FakeQuantize`` + observer and never torch's faster ``FusedMovingAvgObsFakeQuantize``:
the fused kernel derives its grid from min/max differently from its observer's
``calculate_qparams()``, which is what ``convert`` uses, so the model trains on one grid and ships
on another. Measured here: per-channel symmetric weights got other scales (27 % of a 3×3 conv's
int8 outputs one or two steps off its fake-quant), symmetric activations zero-point 128 vs 127,
and scales below 2^-14 are clamped, so a 1e-5 layer-scale branch was all zeros in fake-quant
but not in int8. With the observer-backed fake-quant, int8 equals fake-quant exactly on x86.

``npu`` mirrors Horizon's BPU: symmetric activations and weights. In torch.ao terms a
symmetric signed activation is a quint8 tensor with zero-point 128, which runs on the stock
kernels here. Its int8 model is checked on this CPU, so it uses 7-bit weights too; for the
chip itself pass ``weight_quant_max=127``. ``arm`` targets QNNPACK/XNNPACK (no int16 saturation, so full 8-bit weights).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from qat.quant.backend import (
    FixedQParamsFakeQuantize,
    FixedQParamsObserver,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    QConfig,
)
from qat.quant.fakequant import FastFakeQuantize
from qat.quant.observers import CurrentPerChannelMinMaxObserver, KLObserver, MSEObserver, PercentileObserver

__all__ = ["ACTIVATION_OBSERVERS", "TARGETS", "QuantConfig", "get_qconfig"]

TARGETS = ("x86", "arm", "npu")
# Smallest scale an observer may pick. torch's default (float32 eps, 1.2e-7) coarsens the weights
# of a conv that absorbed a 1e-5 layer scale to a handful of levels; 1e-12 keeps all 127.
_EPS = 1e-12
ACTIVATION_OBSERVERS = ("moving_average", "minmax", "percentile", "mse", "histogram", "kl")


@dataclass(frozen=True)
class QuantConfig:
    """Everything the engine needs to quantize one model for one target."""

    target: str = "x86"
    activation_observer: str = "moving_average"
    averaging_constant: float = 0.01
    percentile: float = 99.975
    symmetric_activations: bool = False
    weight_quant_max: int = 127
    engine: str = "x86"

    def with_observer(self, activation_observer: str, **kwargs: Any) -> QuantConfig:
        """The same target with another activation observer."""
        return replace(self, activation_observer=_check_observer(activation_observer), **kwargs)

    # -- torch.ao factories -------------------------------------------------------------
    def activation(self):
        """Fake-quant factory for observed activations."""
        qscheme = torch.per_tensor_symmetric if self.symmetric_activations else torch.per_tensor_affine
        common = dict(dtype=torch.quint8, qscheme=qscheme, reduce_range=False, eps=_EPS)
        if not self.symmetric_activations:  # torch picks zero-point 127, not 128, for an explicit symmetric range
            common.update(quant_min=0, quant_max=255)
        observer = {
            "moving_average": MovingAverageMinMaxObserver.with_args(averaging_constant=self.averaging_constant),
            "minmax": MinMaxObserver,
            "percentile": PercentileObserver.with_args(percentile=self.percentile),
            "mse": MSEObserver,
            "histogram": HistogramObserver,
            "kl": KLObserver,
        }[self.activation_observer]
        return FastFakeQuantize.with_args(observer=observer, **common)

    def weight(self):
        """Per-channel symmetric weight fake-quant tracking the current weights (not a stale min/max)."""
        q = self.weight_quant_max
        return FastFakeQuantize.with_args(
            observer=CurrentPerChannelMinMaxObserver,
            eps=_EPS,
            quant_min=-q - 1 if q == 127 else -q,
            quant_max=q,
            dtype=torch.qint8,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            reduce_range=False,
        )

    def qconfig(self) -> QConfig:
        return QConfig(activation=self.activation(), weight=self.weight())

    def fixed_qconfig(self, scale: float, zero_point: int) -> QConfig:
        """A qconfig whose output grid is fixed (stubs with a scale, sigmoid, ReLU6-fused convs)."""
        observer = FixedQParamsObserver.with_args(
            scale=scale, zero_point=zero_point, dtype=torch.quint8, quant_min=0, quant_max=255
        )
        return QConfig(activation=FixedQParamsFakeQuantize.with_args(observer=observer), weight=self.weight())


def _check_observer(name: str) -> str:
    if name not in ACTIVATION_OBSERVERS:
        raise ValueError(f"unknown activation observer {name!r}; choose one of {list(ACTIVATION_OBSERVERS)}")
    return name


def get_qconfig(
    target: str | QuantConfig = "x86", activation_observer: str | None = None, **kwargs: Any
) -> QuantConfig:
    """The preset for ``target`` (``x86``, ``arm``, ``npu``), optionally with another observer.

    ``activation_observer``: ``moving_average`` (QAT default), ``minmax``, ``percentile``
    (99.975 by default, ``percentile=``), ``mse``, ``histogram`` (torch's) or ``kl`` (TensorRT's
    entropy calibration). Weights always use per-channel min-max of the current weights.
    """
    if isinstance(target, QuantConfig):
        base = target
    elif target == "x86":
        base = QuantConfig(target="x86", weight_quant_max=63, engine="x86")
    elif target == "arm":
        base = QuantConfig(target="arm", weight_quant_max=127, engine="qnnpack")
    elif target == "npu":
        base = QuantConfig(target="npu", symmetric_activations=True, weight_quant_max=63, engine="x86")
    else:
        raise ValueError(f"unknown quantization target {target!r}; choose one of {list(TARGETS)}")
    if activation_observer is not None or kwargs:
        base = base.with_observer(activation_observer or base.activation_observer, **kwargs)
    return base
