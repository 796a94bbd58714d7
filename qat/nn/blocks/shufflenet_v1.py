"""ShuffleNetV1 unit (Zhang et al., 2018): pointwise group convs, channel shuffle, int8 add/concat."""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.blocks.shufflenet import channel_shuffle
from qat.nn.conv import ConvModule2d
from qat.nn.functional import AddReLU, Cat

__all__ = ["ShuffleV1Block"]


class ShuffleV1Block(nn.Module):
    """ShuffleNetV1 unit, the paper's figure 2 (b) (stride 1) and (c) (stride 2).

    ``1×1 group conv-BN-ReLU → channel shuffle → 3×3 dw conv-BN (stride) → 1×1 group conv-BN``,
    bottleneck ``out_channels // 4``. Stride 1: ``relu(x + branch)`` as one int8 ``AddReLU``.
    Stride 2: ``cat(avgpool3×3/2(x), relu(branch))`` -- the branch makes ``out - in`` channels and
    its ReLU fuses into its last conv; the shortcut gets none because its input is already a ReLU
    output (so this equals ``relu(cat(...))``, as in the official code). ``first_grouped=False``
    makes the first 1×1 conv dense (the paper's first unit of stage 2, whose input is only 24 wide).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        groups: int = 3,
        first_grouped: bool = True,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ShuffleV1Block stride must be 1 or 2, got {stride}")
        if stride == 1 and in_channels != out_channels:
            raise ValueError(f"stride 1 adds the input: in_channels ({in_channels}) must equal {out_channels}")
        mid = out_channels // 4
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        first_groups = groups if first_grouped else 1
        split = {"bottleneck": mid, "branch output": branch_out}
        if first_grouped:
            split["in_channels"] = in_channels
        for name, c in split.items():
            if c % groups:
                raise ValueError(f"ShuffleV1Block: {name} {c} does not split into {groups} groups")
        self.stride = stride
        self.groups = groups
        self.conv1 = ConvModule2d(in_channels, mid, 1, groups=first_groups, norm_layer="bn", act_layer="relu")
        self.dwconv = ConvModule2d(mid, mid, 3, stride, 1, groups=mid, norm_layer="bn")
        self.conv2 = ConvModule2d(
            mid, branch_out, 1, groups=groups, norm_layer="bn", act_layer="relu" if stride == 2 else None
        )
        if stride == 2:
            self.shortcut = nn.AvgPool2d(3, 2, 1)
            self.cat = Cat(dim=1)
        else:
            self.add_relu = AddReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(x)
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.conv2(self.dwconv(out))
        if self.stride == 2:
            return self.cat([self.shortcut(x), out])
        return self.add_relu(out, x)
