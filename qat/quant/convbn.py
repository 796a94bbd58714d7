"""Cheaper QAT for torch.ao's conv+BN modules: a lighter BN-tracking forward, or BN folded away.

torch.ao's ``ConvBn2d`` folds BN into the weights for fake-quant and undoes it on the output:
``y = conv(x, fq(w * s)) / s`` with ``s = gamma / running_std``, then BN. Autograd then also
differentiates the division with respect to ``s`` -- four extra full-size tensor ops per conv in
the backward pass -- although, fake-quant aside, the two ``s`` cancel and that gradient is zero.
Treating ``s`` as a constant gives the same gradients up to the straight-through estimate and
makes a QAT step markedly cheaper (see bench/step_time.py). Forward values are unchanged, so
the trained model converts exactly as before.

:func:`fold_bn` goes further, as Horizon's default QAT mode (``FuseBN``) does: BN is folded
into the conv's weights and bias once, from its running statistics, and QAT trains a plain
fake-quant conv -- the forward the int8 model runs, with no BN work left in the step.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import Tensor, nn

from qat.quant.backend import nniqat, nnqat
from qat.quant.fuse import replace_module

__all__ = ["CONV_BN_QAT", "fold_bn", "use_fast_conv_bn"]

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


#: The BN-free QAT module each torch.ao conv+BN QAT module folds into.
_FOLDED: dict[type[nn.Module], type[nn.Module]] = {
    nniqat.ConvBn1d: nnqat.Conv1d,
    nniqat.ConvBn2d: nnqat.Conv2d,
    nniqat.ConvBn3d: nnqat.Conv3d,
    nniqat.ConvBnReLU1d: nniqat.ConvReLU1d,
    nniqat.ConvBnReLU2d: nniqat.ConvReLU2d,
    nniqat.ConvBnReLU3d: nniqat.ConvReLU3d,
}


@torch.no_grad()
def _folded(module: nn.Module) -> nn.Module:
    """The BN-free QAT conv computing ``module``'s eval-mode output, with its fake-quants and hooks."""
    bn = module.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [-1] + [1] * (module.weight.dim() - 1)
    bias = module.bias if module.bias is not None else torch.zeros_like(bn.running_mean)
    new = _FOLDED[type(module)](
        module.in_channels,
        module.out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=module.groups,
        bias=True,
        padding_mode=module.padding_mode,
        qconfig=module.qconfig,
    ).to(module.weight.device)
    new.weight.copy_(module.weight * scale.reshape(shape))  # the product ConvBn fake-quantizes
    new.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    new.weight_fake_quant = module.weight_fake_quant  # same grid and observer state
    if hasattr(module, "activation_post_process"):
        new.activation_post_process = module.activation_post_process
    new._forward_pre_hooks.update(module._forward_pre_hooks)
    new._forward_hooks.update(module._forward_hooks)
    new.train(module.training)
    return new


def fold_bn(model: nn.Module) -> nn.Module:
    """Fold every QAT conv+BN module's BatchNorm into its conv (in place); return ``model``.

    The folded conv computes the eval-mode output of the conv+BN module (BN with its running
    statistics) and fake-quantizes exactly the same folded weights, so a calibrated model keeps
    its accuracy and its grids. From then on BN statistics no longer exist: training updates
    the folded weights and bias directly, in train and eval mode alike.
    """
    targets = [(name, m) for name, m in model.named_modules() if type(m) in _FOLDED]
    for name, module in targets:
        replace_module(model, name, _folded(module))
    return model
