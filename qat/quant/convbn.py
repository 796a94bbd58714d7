"""A cheaper training forward for torch.ao's QAT conv+BN modules, same forward values.

torch.ao's ``ConvBn2d`` folds BN into the weights for fake-quant and undoes it on the output:
``y = conv(x, fq(w * s)) / s`` with ``s = gamma / running_std``, then BN. Autograd then also
differentiates the division with respect to ``s`` -- four extra full-size tensor ops per conv in
the backward pass -- although, fake-quant aside, the two ``s`` cancel and that gradient is zero.
Treating ``s`` as a constant gives the same gradients up to the straight-through estimate and
makes a QAT step markedly cheaper (see bench/step_time.py). Forward values are unchanged, so
the trained model converts exactly as before.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import Tensor, nn

from qat.quant.backend import nniqat

__all__ = ["CONV_BN_QAT", "use_fast_conv_bn"]

CONV_BN_QAT = (
    nniqat.ConvBn1d,
    nniqat.ConvBn2d,
    nniqat.ConvBn3d,
    nniqat.ConvBnReLU1d,
    nniqat.ConvBnReLU2d,
    nniqat.ConvBnReLU3d,
)


def _forward_approximate(self: nn.Module, input: Tensor) -> Tensor:
    """torch.ao's single-pass conv+BN fold with the BN scale factor detached from autograd."""
    running_std = torch.sqrt(self.bn.running_var + self.bn.eps)
    scale = (self.bn.weight / running_std).detach()
    weight_shape = [1] * self.weight.dim()
    weight_shape[0] = -1
    out_shape = [1] * self.weight.dim()
    out_shape[1] = -1
    scaled_weight = self.weight_fake_quant(self.weight * scale.reshape(weight_shape))
    zero_bias = torch.zeros(self.out_channels, device=scaled_weight.device, dtype=input.dtype)
    conv = self._conv_forward(input, scaled_weight, zero_bias) / scale.reshape(out_shape)
    if self.bias is not None:
        conv = conv + self.bias.reshape(out_shape)
    return self.bn(conv)


def use_fast_conv_bn(model: nn.Module) -> nn.Module:
    """Give every QAT conv+BN module in ``model`` the cheaper training forward (in place)."""
    for module in model.modules():
        if isinstance(module, CONV_BN_QAT):
            module._forward_approximate = MethodType(_forward_approximate, module)
    return model
