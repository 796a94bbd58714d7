"""Precise BN: recompute BatchNorm running statistics over training batches before a model is used.

A short run leaves BN running statistics far from the data's when the momentum is small
(torchvision's MobileNetV3 uses 0.01: after a few hundred steps the running mean still
remembers its initialisation), so a model that is accurate in train mode predicts one class in
eval mode -- and QAT would fold those statistics into the weights. Recomputing them as a
cumulative average over training images with eval transforms (no augmentation, weights
untouched) gives the statistics the trained weights actually produce.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batchnorm_layers", "recompute_bn_stats"]


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """Every BatchNorm layer with running statistics (those inside fused conv-BN modules included)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], num_batches: int) -> int:
    """Reset and recompute the BN running statistics of ``model`` over up to ``num_batches`` batches.

    Only the BN layers run in train mode, with ``momentum=None`` (a cumulative average, so every
    batch counts equally); everything else stays in eval mode, so dropout, observers and
    fake-quant behave as at evaluation. The model's modes and the layers' momenta are restored.
    Returns the number of batches actually run (the loader may be shorter); 0 leaves the model
    unchanged.
    """
    layers = batchnorm_layers(model)
    if num_batches <= 0 or not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [bn.momentum for bn in layers]
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in layers]
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    run = 0
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for x, _ in batches:
            if run >= num_batches:
                break
            model(x.to(device))
            run += 1
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        if run == 0:
            for bn, (mean, var, count) in zip(layers, saved):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
        for m, training in modes.items():
            m.train(training)
    return run
