"""The single doorway to ``torch.ao.quantization``.

Every torch.ao symbol the project uses is imported here and nowhere else, so a future move to
torchao (or another backend) touches one package. The upstream deprecation warnings are
silenced here, narrowly: only the exact messages torch.ao emits, never a category-wide filter,
so users' own warnings (and torch's other warnings) still reach them.
"""

from __future__ import annotations

import warnings

# Exact upstream texts (torch 2.x eager quantization). Filters are message-anchored regexes.
_TORCH_AO_DEPRECATIONS = (
    r"torch\.ao\.quantization is deprecated",
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation",
    r"Please use quant_min and quant_max to specify the range for observers",
    r"must run observer before calling calculate_qparams",
)
for _msg in _TORCH_AO_DEPRECATIONS:
    warnings.filterwarnings("ignore", message=_msg)

import torch  # noqa: E402
import torch.ao.nn.intrinsic as nni  # noqa: E402
import torch.ao.nn.intrinsic.qat as nniqat  # noqa: E402
import torch.ao.nn.intrinsic.quantized as nniq  # noqa: E402
import torch.ao.nn.qat as nnqat  # noqa: E402
import torch.ao.nn.quantized as nnq  # noqa: E402
import torch.ao.quantization as tq  # noqa: E402
from torch.ao.quantization import (  # noqa: E402
    DeQuantStub,
    FakeQuantize,
    FixedQParamsFakeQuantize,
    FixedQParamsObserver,
    FusedMovingAvgObsFakeQuantize,
    HistogramObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
    QConfig,
    QuantStub,
)
from torch.ao.quantization.fake_quantize import FakeQuantizeBase  # noqa: E402
from torch.ao.quantization.observer import ObserverBase  # noqa: E402
from torch.ao.quantization.quantization_mappings import (  # noqa: E402
    get_default_qat_module_mappings,
    get_default_qconfig_propagation_list,
    get_default_static_quant_module_mappings,
)

FloatFunctional = nnq.FloatFunctional
QFunctional = nnq.QFunctional
FusedModule = nni._FusedModule

__all__ = [
    "DeQuantStub",
    "FakeQuantize",
    "FakeQuantizeBase",
    "FixedQParamsFakeQuantize",
    "FixedQParamsObserver",
    "FloatFunctional",
    "FusedModule",
    "FusedMovingAvgObsFakeQuantize",
    "HistogramObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "ObserverBase",
    "PerChannelMinMaxObserver",
    "QConfig",
    "QFunctional",
    "QuantStub",
    "get_default_qat_module_mappings",
    "get_default_qconfig_propagation_list",
    "get_default_static_quant_module_mappings",
    "nni",
    "nniq",
    "nniqat",
    "nnq",
    "nnqat",
    "torch",
    "tq",
]
