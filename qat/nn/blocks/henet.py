"""HENet blocks (Horizon Robotics' Hybrid Efficient Network, HAT ``basic_henet_module``), int8-ready.

HENet stacks depthwise-conv blocks ("DWCB": depthwise k x k conv + BN, then two pointwise convs
with a GELU between, a learnable per-channel layer scale and a residual add) and optionally ends
a stage with attention blocks (a DWCB token mixer, a linear additive attention and a conv MLP).
Stages are joined by :class:`S2DDown`, a 2x2 stride-2 conv + BN that merges space-to-depth with
the following pointwise conv.

Quantization notes:

- every layer scale is a :class:`~qat.nn.ChannelScale2d` declared after the conv that feeds it,
  so fusion folds it into that conv's weights and bias; with per-channel weight quantization
  even the attention block's ``1e-5`` scales survive (a per-tensor activation multiply would
  round a 1e-5-scaled branch to the residual's grid step);
- the attention works on NCHW maps with 1x1 convs instead of ``nn.Linear`` on tokens: the same
  function (a linear map over channels at every position), but the layer scale can be folded
  into the output conv and no reshapes sit between quantized ops;
- every tensor product, sum and scaling is a ``qat.nn`` functional module (one per call site).
"""

from __future__ import annotations

from torch import Tensor, nn

from qat.nn.activations import get_act
from qat.nn.blocks.common import ActSpec
from qat.nn.conv import ChannelScale2d, ConvModule2d
from qat.nn.functional import Add, MatMul, Mul, MulScalar

__all__ = [
    "DWCB",
    "AltDWCB",
    "BasicHENetStageBlock",
    "GroupDWCB",
    "HENetAttentionBlock",
    "HENetConvMlp",
    "HENetLinearAttention",
    "S2DDown",
]


#: Channels per group of GroupDWCB's first pointwise conv, by block width (as in HAT).
GROUP_WIDTHS: dict[int, int] = {64: 64, 128: 64, 192: 64, 384: 64, 256: 128, 48: 48, 96: 48}


def _act(spec: ActSpec) -> nn.Module:
    """An activation from a ``qat.nn.get_act`` spec; HAT config strings such as ``"nn.GELU"`` work too."""
    if isinstance(spec, str) and spec.startswith("nn."):
        spec = spec[3:]
    act = get_act(spec)
    if act is None:
        raise ValueError("act_layer must name an activation, got None")
    return act


class S2DDown(nn.Module):
    """Down-sampling between stages: a ``patch_size`` x ``patch_size`` conv with equal stride, then BN.

    Equivalent to space-to-depth followed by a 1x1 conv, in one conv (no activation).
    """

    def __init__(self, in_dim: int, out_dim: int, patch_size: int = 2, padding: int = 0) -> None:
        super().__init__()
        self.proj = ConvModule2d(
            in_dim, out_dim, kernel_size=patch_size, stride=patch_size, padding=padding, norm_layer="bn"
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _DWConvBlock(nn.Module):
    """Shared body of DWCB / GroupDWCB / AltDWCB.

    ``x + layer_scale * pw2(act(pw1(bn(dw(x)))))`` followed by an optional extra activation.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        dw_kernel: tuple[int, int],
        pw_groups: int,
        act_layer: ActSpec,
        use_layer_scale: bool,
        extra_act: bool,
    ) -> None:
        super().__init__()
        padding = (dw_kernel[0] // 2, dw_kernel[1] // 2)
        self.dwconv = ConvModule2d(dim, dim, dw_kernel, padding=padding, groups=dim, norm_layer="bn")
        self.pwconv1 = ConvModule2d(dim, hidden_dim, 1, groups=pw_groups, act_layer=_act(act_layer))
        self.pwconv2 = nn.Conv2d(hidden_dim, dim, 1)
        self.use_layer_scale = use_layer_scale
        self.layer_scale = ChannelScale2d(dim) if use_layer_scale else nn.Identity()
        self.add = Add()
        self.extra_act = _act(act_layer) if extra_act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.layer_scale(self.pwconv2(self.pwconv1(self.dwconv(x))))
        return self.extra_act(self.add(x, y))

    def fuse_patterns(self) -> list[list[str]]:
        return [["pwconv2", "layer_scale"]] if self.use_layer_scale else []


class DWCB(_DWConvBlock):
    """Depthwise-conv block: ``kernel_size`` x ``kernel_size`` depthwise conv + BN, 1x1 expand + act,
    1x1 project, layer scale (ones, folded into the project conv) and a residual add."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        kernel_size: int = 3,
        act_layer: ActSpec = nn.GELU,
        use_layer_scale: bool = True,
        extra_act: bool = False,
    ) -> None:
        super().__init__(dim, hidden_dim, (kernel_size, kernel_size), 1, act_layer, use_layer_scale, extra_act)


class GroupDWCB(_DWConvBlock):
    """DWCB whose expanding 1x1 conv is grouped, ``dim // GROUP_WIDTHS[dim]`` groups (HAT's table)."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        kernel_size: int = 3,
        act_layer: ActSpec = nn.GELU,
        use_layer_scale: bool = True,
        extra_act: bool = False,
    ) -> None:
        if dim not in GROUP_WIDTHS:
            raise ValueError(f"GroupDWCB has group widths for dim in {sorted(GROUP_WIDTHS)}, got {dim}")
        groups = dim // GROUP_WIDTHS[dim]
        if hidden_dim % groups:
            raise ValueError(f"GroupDWCB: hidden_dim {hidden_dim} is not divisible by {groups} groups")
        super().__init__(dim, hidden_dim, (kernel_size, kernel_size), groups, act_layer, use_layer_scale, extra_act)


class AltDWCB(_DWConvBlock):
    """DWCB with a 1-D depthwise kernel alternating by block: ``(1, k)`` on even ``block_idx``, ``(k, 1)`` on odd."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        kernel_size: int = 5,
        act_layer: ActSpec = nn.GELU,
        use_layer_scale: bool = True,
        extra_act: bool = False,
        block_idx: int = 0,
    ) -> None:
        dw_kernel = (1, kernel_size) if block_idx % 2 == 0 else (kernel_size, 1)
        super().__init__(dim, hidden_dim, dw_kernel, 1, act_layer, use_layer_scale, extra_act)


class HENetConvMlp(nn.Module):
    """The attention block's channel MLP: BN, 1x1 conv, act, 1x1 conv."""

    def __init__(self, dim: int, hidden_dim: int, act_layer: ActSpec = nn.GELU) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(dim)
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1)
        self.act = _act(act_layer)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm1(x))))


class HENetLinearAttention(nn.Module):
    """HENet's linear additive attention (a SwiftFormer-style global query), on NCHW maps.

    With ``q = Wq x`` and ``k = Wk x`` at every position ``n``:
    ``alpha_n = (w . q_n) * dim_head**-0.5``, ``g = sum_n alpha_n q_n`` (one global query per image),
    ``out = Wo(Wp(g * k) + q)``. Cost is linear in the number of positions.

    int8 mapping: the 1x1 convs are int8 convs (``w`` is a bias-free 1x1 conv to one channel,
    initialised N(0, 1) like HAT's ``query_weight``); the ``dim_head**-0.5`` factor is a
    ``MulScalar`` (an exact int8 rescale); ``sum_n alpha_n q_n`` is one int8 ``MatMul`` of the
    ``[C, N]`` query map with the ``[N, 1]`` weights (the same sum HAT writes as mul + sum);
    ``g * k`` is a broadcasting int8 ``Mul`` and the ``+ q`` an int8 ``Add``.

    Normalisation: SwiftFormer L2-normalises ``q`` and ``k`` (a reduction, a square root and a
    division per token, none of which has an int8 kernel here). HAT's HENet leaves it out and so
    does this module: the logits are tamed by the fixed ``dim_head**-0.5`` scale instead, and the
    block feeding the attention ends in a BatchNorm'd DWCB.

    ``num_heads`` multiplies the inner width as in HAT (heads are not split); the output conv maps
    back to ``dim``, which equals HAT's ``dim_head`` for its only use (``dim_head=dim, num_heads=1``).
    """

    def __init__(self, dim: int, dim_head: int, num_heads: int = 1) -> None:
        super().__init__()
        inner = dim_head * num_heads
        self.query = nn.Conv2d(dim, inner, 1)
        self.key = nn.Conv2d(dim, inner, 1)
        self.query_weight = nn.Conv2d(inner, 1, 1, bias=False)
        nn.init.normal_(self.query_weight.weight)
        self.scale = MulScalar(dim_head**-0.5)
        self.pool = MatMul()
        self.mul = Mul()
        self.projection = nn.Conv2d(inner, inner, 1)
        self.add = Add()
        self.output = nn.Conv2d(inner, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        q = self.query(x)
        k = self.key(x)
        alpha = self.scale(self.query_weight(q))
        g = self.pool(q.flatten(2), alpha.flatten(2).transpose(1, 2)).unsqueeze(-1)
        return self.output(self.add(self.projection(self.mul(g, k)), q))


class HENetAttentionBlock(nn.Module):
    """HENet's stage-tail block: DWCB token mixer, then ``x + s1 * attn(x)``, then ``x + s2 * mlp(x)``.

    ``s1``/``s2`` are per-channel layer scales initialised to ``layer_scale_init_value`` (1e-5)
    and folded into the attention's output conv and the MLP's last conv, so they stay exact in
    int8 (see the module docstring).
    """

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 2.0,
        act_layer: ActSpec = nn.GELU,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        extra_act: bool = False,
    ) -> None:
        super().__init__()
        self.conv = DWCB(dim, dim, kernel_size=3, act_layer=act_layer, use_layer_scale=True, extra_act=extra_act)
        self.attn = HENetLinearAttention(dim, dim_head=dim, num_heads=1)
        self.mlp = HENetConvMlp(dim, int(dim * mlp_ratio), act_layer)
        self.use_layer_scale = use_layer_scale
        if use_layer_scale:
            self.layer_scale_attn = ChannelScale2d(dim, layer_scale_init_value)
            self.layer_scale_mlp = ChannelScale2d(dim, layer_scale_init_value)
        else:
            self.layer_scale_attn = nn.Identity()
            self.layer_scale_mlp = nn.Identity()
        self.add_attn = Add()
        self.add_mlp = Add()

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        x = self.add_attn(x, self.layer_scale_attn(self.attn(x)))
        return self.add_mlp(x, self.layer_scale_mlp(self.mlp(x)))

    def fuse_patterns(self) -> list[list[str]]:
        if not self.use_layer_scale:
            return []
        return [["attn.output", "layer_scale_attn"], ["mlp.fc2", "layer_scale_mlp"]]


_BLOCKS: dict[str, type[_DWConvBlock]] = {"DWCB": DWCB, "GroupDWCB": GroupDWCB, "AltDWCB": AltDWCB}


class BasicHENetStageBlock(nn.Module):
    """One HENet stage: ``block_num - attention_block_num`` conv blocks, then ``attention_block_num``
    :class:`HENetAttentionBlock` at the tail, all at width ``in_dim``.

    ``block_cls`` is ``"DWCB"``, ``"GroupDWCB"``, ``"AltDWCB"`` or one of those classes; conv
    blocks expand to ``int(mlp_ratio * in_dim)`` hidden channels and use their own default
    depthwise kernel (3x3, or 1x5 / 5x1 alternating for AltDWCB).
    """

    def __init__(
        self,
        in_dim: int,
        block_num: int,
        attention_block_num: int = 0,
        mlp_ratio: float = 2.0,
        mlp_ratio_attn: float = 2.0,
        act_layer: ActSpec = nn.GELU,
        use_layer_scale: bool = True,
        layer_scale_init_value: float = 1e-5,
        extra_act: bool = False,
        block_cls: str | type[nn.Module] = "DWCB",
    ) -> None:
        super().__init__()
        if not 0 <= attention_block_num <= block_num:
            raise ValueError(f"attention_block_num must be in [0, {block_num}], got {attention_block_num}")
        cls = _BLOCKS.get(block_cls) if isinstance(block_cls, str) else block_cls
        if cls not in _BLOCKS.values():
            raise ValueError(f"block_cls must be one of {sorted(_BLOCKS)}, got {block_cls!r}")
        blocks: list[nn.Module] = []
        for idx in range(block_num - attention_block_num):
            kwargs = {"block_idx": idx} if cls is AltDWCB else {}
            blocks.append(
                cls(
                    dim=in_dim,
                    hidden_dim=int(mlp_ratio * in_dim),
                    act_layer=act_layer,
                    use_layer_scale=use_layer_scale,
                    extra_act=extra_act,
                    **kwargs,
                )
            )
        for _ in range(attention_block_num):
            blocks.append(
                HENetAttentionBlock(
                    in_dim,
                    mlp_ratio=mlp_ratio_attn,
                    act_layer=act_layer,
                    use_layer_scale=True,
                    layer_scale_init_value=layer_scale_init_value,
                    extra_act=extra_act,
                )
            )
        self.block = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)
