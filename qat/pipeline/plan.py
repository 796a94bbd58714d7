"""What the ``quant`` config group asks for: which stages run and how they quantize."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from qat.pipeline.errors import ConfigError
from qat.pipeline.fallback import check_precision_fields
from qat.quant import ACTIVATION_OBSERVERS, BN_MODES, TARGETS

__all__ = ["ACTIVATION_SCALES", "MODES", "WEIGHT_SCALES", "QuantPlan"]

#: ``quant.activation_scales``: calibrated grids kept, moved by their observers, or learned (LSQ).
ACTIVATION_SCALES = ("fixed", "update", "learn")
#: ``quant.weight_scales``: per-channel min/max of the current weights, or learned (LSQ).
WEIGHT_SCALES = ("track", "learn")

MODES: dict[str, tuple[str, ...]] = {
    "float": ("float",),
    "calib": ("float", "calib", "int8"),
    "qat": ("float", "calib", "qat", "int8"),
}


@dataclass(frozen=True)
class QuantPlan:
    """The quantization recipe (``conf/quant/*.yaml`` instantiate this).

    ``mode``: ``float`` (train only), ``calib`` (PTQ: float → calibration → int8) or ``qat``
    (float → calibration init → QAT fine-tune → int8). ``lr_scale`` multiplies the float learning
    rate for QAT (Horizon advises 1/100). ``activation_scales``: ``fixed`` keeps the calibrated
    activation grids during QAT, ``update`` lets their observers move until ``freeze_observer_epoch``,
    ``learn`` trains their step sizes by gradient from the calibrated grids (LSQ).
    ``weight_scales``: ``track`` follows each weight channel's current min/max, ``learn`` trains
    the per-channel step sizes (LSQ).
    ``bn``: ``fold`` folds BatchNorm into the conv when QAT starts (Horizon's default; no BN work
    in the step) or ``track`` keeps the conv+BN QAT modules, whose batch statistics move until
    ``freeze_bn_epoch`` (the QAT epoch from which they are frozen; ``None``: never).
    ``keep_float`` / ``int16`` / ``max_drop`` / ``max_fallback`` / ``fallback_precision`` /
    ``fallback_batches``: higher-precision layers and the accuracy-driven fallback
    (:mod:`qat.pipeline.fallback`).
    """

    mode: str = "qat"
    target: str = "x86"
    calib_observer: str = "percentile"
    calib_batches: int = 16
    epochs: int = 0
    lr_scale: float = 0.01
    activation_scales: str = "fixed"
    weight_scales: str = "track"
    bn: str = "fold"
    freeze_bn_epoch: int | None = None
    freeze_observer_epoch: int | None = None
    high_precision_output: bool = False
    keep_float: tuple[str, ...] = ()
    int16: tuple[str, ...] = ()
    max_drop: float | None = None
    max_fallback: int = 3
    fallback_precision: str = "float"
    fallback_batches: int = 4

    def __post_init__(self) -> None:
        check_precision_fields(self)
        if self.mode not in MODES:
            raise ConfigError(f"quant.mode={self.mode!r} is unknown; use one of {sorted(MODES)} (quant=<mode>)")
        if self.target not in TARGETS:
            raise ConfigError(f"quant.target={self.target!r} is unknown; use one of {list(TARGETS)}")
        if self.calib_observer not in ACTIVATION_OBSERVERS:
            raise ConfigError(
                f"quant.calib_observer={self.calib_observer!r} is unknown; use one of {list(ACTIVATION_OBSERVERS)}"
            )
        if self.activation_scales not in ACTIVATION_SCALES:
            raise ConfigError(
                f"quant.activation_scales={self.activation_scales!r} is unknown; use one of {list(ACTIVATION_SCALES)}"
            )
        if self.weight_scales not in WEIGHT_SCALES:
            raise ConfigError(
                f"quant.weight_scales={self.weight_scales!r} is unknown; use one of {list(WEIGHT_SCALES)}"
            )
        if self.bn not in BN_MODES:
            raise ConfigError(f"quant.bn={self.bn!r} is unknown; use one of {list(BN_MODES)}")
        if self.bn == "fold" and self.freeze_bn_epoch is not None:
            raise ConfigError(
                f"quant.freeze_bn_epoch={self.freeze_bn_epoch} needs quant.bn=track: with quant.bn=fold BN is "
                "folded into the conv when QAT starts and has no statistics left to freeze "
                "(set quant.freeze_bn_epoch=null, or quant.bn=track)"
            )
        if self.mode != "float" and self.calib_batches < 1:
            raise ConfigError(f"quant.calib_batches must be >= 1, got {self.calib_batches}")
        if self.mode == "qat" and self.epochs < 1:
            raise ConfigError(f"quant.epochs must be >= 1 for QAT, got {self.epochs}")
        if not self.lr_scale > 0:
            raise ConfigError(f"quant.lr_scale must be positive, got {self.lr_scale}")

    @property
    def stages(self) -> tuple[str, ...]:
        """Stage names in execution order."""
        return MODES[self.mode]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
