"""Conv + norm + activation, and the learnable per-channel layer scale.

Fusion protocol (read by ``qat.quant.fuse_model``): a module may define
``fuse_patterns() -> list[list[str]]``, each a run of submodule paths (relative to the module)
executed back to back, e.g. ``[["conv", "norm", "act"]]``. A module with
``fold_into(target)`` (:class:`ChannelScale2d`) placed last in a pattern is folded into the
conv or batch norm just before it and disappears from the int8 graph.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from qat.nn.activations import get_act
from qat.nn.functional import Mul
from qat.nn.stubs import QuantStub

__all__ = ["ChannelScale2d", "ConvModule2d", "PixelShuffleUp", "get_norm"]

_FUSABLE_ACTS = (nn.ReLU, nn.ReLU6)


def get_norm(spec: str | type[nn.Module] | nn.Module | None, num_features: int) -> nn.Module | None:
    """Build a 2d norm from ``"bn"``, a class (``nn.BatchNorm2d``) or an instance (deep-copied)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec.lower() not in ("bn", "bn2d", "batchnorm", "batchnorm2d"):
            raise ValueError(f"unknown norm_layer {spec!r}; use 'bn' or pass a module class/instance")
        return nn.BatchNorm2d(num_features)
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec(num_features)
    if isinstance(spec, nn.Module):
        norm = copy.deepcopy(spec)
        got = getattr(norm, "num_features", num_features)
        if got != num_features:
            raise ValueError(f"norm_layer has {got} features but the conv has {num_features} channels")
        return norm
    raise TypeError(f"norm_layer must be a name, an nn.Module class or instance, got {type(spec).__name__}")


class ConvModule2d(nn.Module):
    """``Conv2d`` → optional norm → optional activation, declaring how it fuses.

    ``norm_layer``/``act_layer`` accept instances (as HENet's reference code passes them:
    ``norm_layer=nn.BatchNorm2d(c), act_layer=nn.ReLU()``), classes, or names (``"bn"``,
    ``"relu"``). With a norm the conv bias is dropped (it would be folded into BN anyway).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        norm_layer: str | type[nn.Module] | nn.Module | None = None,
        act_layer: str | type[nn.Module] | nn.Module | None = None,
    ) -> None:
        super().__init__()
        norm = get_norm(norm_layer, out_channels)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias and norm is None,
        )
        self.norm = norm if norm is not None else nn.Identity()
        act = get_act(act_layer)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))

    def fuse_patterns(self) -> list[list[str]]:
        names = ["conv"]
        if isinstance(self.norm, nn.BatchNorm2d):
            names.append("norm")
        if isinstance(self.act, _FUSABLE_ACTS):
            names.append("act")
        return [names] if len(names) > 1 else []


class ChannelScale2d(nn.Module):
    """Learnable per-channel layer scale ``y = x * s`` (``s`` shaped ``[C]``).

    When a block declares it after a conv (``[..., "conv", "norm", "scale"]``), fusion folds
    ``s`` into that conv/BN so it costs nothing in int8 -- with per-channel weight quantization
    even a scale of 1e-5 survives. Where no conv precedes it, it runs as a QuantStub-quantized
    weight times an int8 ``FloatFunctional.mul``.
    """

    def __init__(self, num_features: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.num_features = num_features
        self.weight = nn.Parameter(torch.full((num_features,), float(init_value)))
        self.weight_quant = QuantStub()
        self.mul = Mul()

    def forward(self, x: Tensor) -> Tensor:
        return self.mul(x, self.weight_quant(self.weight.view(1, -1, 1, 1)))

    @torch.no_grad()
    def fold_into(self, target: nn.Module) -> None:
        """Fold the scale into a preceding ``BatchNorm2d`` (γ, β) or ``Conv2d`` (W, b)."""
        s = self.weight.detach()
        if isinstance(target, nn.BatchNorm2d):
            if not target.affine:
                raise ValueError("cannot fold a layer scale into a BatchNorm2d without affine parameters")
            target.weight.mul_(s)
            target.bias.mul_(s)
        elif isinstance(target, nn.Conv2d):
            target.weight.mul_(s.view(-1, 1, 1, 1))
            if target.bias is not None:
                target.bias.mul_(s)
        else:
            raise TypeError(f"ChannelScale2d folds into Conv2d or BatchNorm2d, not {type(target).__name__}")

    def extra_repr(self) -> str:
        return f"{self.num_features}"


class PixelShuffleUp(nn.Module):
    """A transposed conv with ``kernel_size == stride == scale`` (no padding), as a 1×1 conv + pixel shuffle.

    Such a transposed conv writes each input pixel to its own ``scale × scale`` output patch, so
    it equals a 1×1 conv to ``out · scale²`` channels whose outputs a pixel shuffle lays out
    spatially: the same function with the same weights (a bias is repeated for the ``scale²``
    pixels of each patch). The 1×1 form quantizes per output channel, converts through eager
    mode's ordinary conv path and runs on fbgemm's fast kernel, while ``nn.ConvTranspose2d`` has
    no QAT module in eager mode. Decoders such as ESPNet's (``ConvTranspose2d(c, c, 2,
    stride=2)``) up-sample with it; :meth:`from_conv_transpose` loads a trained transposed conv.
    """

    def __init__(self, in_channels: int, out_channels: int, scale: int = 2, bias: bool = False) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"PixelShuffleUp scale must be >= 1, got {scale}")
        self.scale = scale
        self.conv = nn.Conv2d(in_channels, out_channels * scale * scale, 1, bias=bias)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))

    @classmethod
    @torch.no_grad()
    def from_conv_transpose(cls, ct: nn.ConvTranspose2d) -> PixelShuffleUp:
        """The equivalent layer of a trained ``nn.ConvTranspose2d(kernel_size=s, stride=s)``."""
        s = ct.kernel_size[0]
        plain = (
            ct.kernel_size == (s, s)
            and ct.stride == (s, s)
            and ct.padding == (0, 0)
            and ct.output_padding == (0, 0)
            and ct.dilation == (1, 1)
            and ct.groups == 1
        )
        if not plain:
            raise ValueError(
                "PixelShuffleUp replaces only a square ConvTranspose2d with kernel_size == stride, no padding, "
                f"no dilation and groups=1; got {ct}"
            )
        out = cls(ct.in_channels, ct.out_channels, s, bias=ct.bias is not None)
        # ConvTranspose2d weight [in, out, a, b] -> 1×1 conv rows ordered (out, a, b), as PixelShuffle reads them.
        out.conv.weight.copy_(ct.weight.permute(1, 2, 3, 0).reshape(-1, ct.in_channels, 1, 1))
        if ct.bias is not None:
            out.conv.bias.copy_(ct.bias.repeat_interleave(s * s))
        return out

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
