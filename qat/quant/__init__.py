"""The quantization engine: presets, fusion, calibration, QAT, int8 convert, checks.

This is the only package that touches ``torch.ao.quantization`` (through ``qat.quant.backend``).
"""

from qat.quant.check import CheckReport, Finding, ModelCheckError, check_model
from qat.quant.compare import compare_outputs, replay_ops
from qat.quant.convbn import fold_bn
from qat.quant.fuse import collect_patterns, fuse_model
from qat.quant.int8_ops import INT8_POLICIES, Int8Policy
from qat.quant.lsq import LearnedScaleFakeQuantize, learn_scales
from qat.quant.lut_kernel import lut_kernel_available, portable_int8, use_lut_kernel
from qat.quant.mixed import (
    PRECISIONS,
    LayerSelectionError,
    PrecisionIsland,
    QuantLayer,
    is_converted,
    quant_layers,
    select_layers,
)
from qat.quant.prepare import (
    BN_MODES,
    calibrate,
    convert,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
    freeze_activation_observers,
    freeze_bn_stats,
    prepare_calibration,
    prepare_qat,
    start_qat,
    unfreeze_bn_stats,
)
from qat.quant.qconfig import ACTIVATION_OBSERVERS, TARGETS, QuantConfig, get_qconfig
from qat.quant.verify import VerifyResult, unconverted_layers, verify_model

__all__ = [
    "ACTIVATION_OBSERVERS",
    "BN_MODES",
    "INT8_POLICIES",
    "PRECISIONS",
    "TARGETS",
    "CheckReport",
    "Finding",
    "Int8Policy",
    "LearnedScaleFakeQuantize",
    "LayerSelectionError",
    "PrecisionIsland",
    "QuantLayer",
    "ModelCheckError",
    "QuantConfig",
    "calibrate",
    "check_model",
    "collect_patterns",
    "compare_outputs",
    "convert",
    "disable_fake_quant",
    "disable_observer",
    "enable_fake_quant",
    "enable_observer",
    "fold_bn",
    "freeze_activation_observers",
    "freeze_bn_stats",
    "fuse_model",
    "get_qconfig",
    "learn_scales",
    "is_converted",
    "lut_kernel_available",
    "portable_int8",
    "prepare_calibration",
    "prepare_qat",
    "quant_layers",
    "replay_ops",
    "select_layers",
    "start_qat",
    "unconverted_layers",
    "unfreeze_bn_stats",
    "use_lut_kernel",
    "verify_model",
    "VerifyResult",
]
