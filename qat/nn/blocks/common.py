"""Types and helpers every block file shares: the activation spec and the BatchNorm factory."""

from __future__ import annotations

from torch import nn

__all__: list[str] = []

#: What ``act_layer`` accepts everywhere: a name (``"relu"``), an ``nn.Module`` class or an instance.
ActSpec = str | type[nn.Module] | nn.Module


def batch_norm(channels: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    """A ``BatchNorm2d`` with the reference implementation's ``eps``/``momentum`` (MobileNetV3: 1e-3/0.01)."""
    return nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
