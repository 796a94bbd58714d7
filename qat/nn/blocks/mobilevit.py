"""MobileViT (Mehta & Rastegari, 2022) blocks from ``qat.nn`` layers, in timm's / ml-cvnets' layout.

- :class:`MultiHeadSelfAttention` -- ViT attention on ``[B, N, C]`` tokens: one qkv ``Linear``,
  ``q·d^-½`` as an int8 rescale (:class:`~qat.nn.MulScalar`), both products as
  :class:`~qat.nn.MatMul`, torch's int8 softmax on its fixed 1/256 grid, output ``Linear``;
- :class:`TransformerEncoderLayer` -- pre-LayerNorm encoder layer (attention, SiLU MLP, two
  :class:`~qat.nn.Add` residuals);
- :class:`MobileViTBlock` -- local 3×3 conv → 1×1 to the transformer width → unfold into
  ``patch_size²`` interleaved token sequences → transformers → LayerNorm → fold → 1×1 projection →
  concat with the input → 3×3 fusion conv.

LayerNorms are plain ``nn.LayerNorm``: ``qat.quant`` converts them to an int8-in/int8-out op that
rounds exactly as the fake-quant model does (``qat.quant.int8_ops``). The unfold/fold are
reshapes and transposes, exact on int8 tensors.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from qat.nn.activations import SiLU, Softmax
from qat.nn.conv import ConvModule2d
from qat.nn.functional import Add, Cat, MatMul, MulScalar
from qat.nn.misc import Interpolate

__all__ = ["MobileViTBlock", "MultiHeadSelfAttention", "TransformerEncoderLayer"]


class MultiHeadSelfAttention(nn.Module):
    """ViT multi-head self-attention (timm's ``Attention``) on ``[B, N, C]`` tokens, int8-ready.

    Queries, keys and values come from one ``Linear(C, 3C)`` (one int8 grid for all three) and
    are split per head into ``[B, heads, N, d]``; the scaled scores ``q·kᵀ`` go through an int8
    softmax (fixed 1/256 output grid) and weight the values.
    """

    def __init__(self, dim: int, num_heads: int = 4, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.scale = MulScalar(self.head_dim**-0.5)
        self.qk = MatMul()
        self.softmax = Softmax(dim=-1)
        self.av = MatMul()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = self.scale(qkv[0].contiguous())  # [B, heads, N, d]
        k_t = qkv[1].transpose(-2, -1).contiguous()  # [B, heads, d, N]
        v = qkv[2].contiguous()
        attn = self.softmax(self.qk(q, k_t))  # [B, heads, N, N]
        o = self.av(attn, v).transpose(1, 2).reshape(b, n, c)
        return self.proj(o)


class TransformerEncoderLayer(nn.Module):
    """Pre-norm transformer layer (timm's ViT ``Block``): ``x + attn(LN(x))``, then ``x + mlp(LN(x))``.

    The MLP is ``Linear(C, C·mlp_ratio)`` → SiLU (``x·sigmoid(x)`` in int8) → ``Linear(·, C)``.
    """

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: float = 2.0, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadSelfAttention(dim, num_heads)
        self.add1 = Add()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = SiLU()
        self.fc2 = nn.Linear(hidden, dim)
        self.add2 = Add()

    def forward(self, x: Tensor) -> Tensor:
        x = self.add1(x, self.attn(self.norm1(x)))
        return self.add2(x, self.fc2(self.act(self.fc1(self.norm2(x)))))


class MobileViTBlock(nn.Module):
    """MobileViT block: local convs, global transformers over unfolded patches, fusion with the input.

    ``3×3 conv-BN-SiLU (C) → 1×1 conv (C → D, no bias/BN) → unfold → depth × TransformerEncoderLayer
    → LayerNorm → fold → 1×1 conv-BN-SiLU (D → out) → cat(input, ·) → 3×3 conv-BN-SiLU (C+out → out)``.

    Unfolding (timm / ml-cvnets order) turns ``[B, D, H, W]`` into ``[B·p², H·W/p², D]``: one token
    sequence per pixel position inside the ``p×p`` patches, so attention mixes pixels ``p`` apart.
    When H or W is not a multiple of ``p`` (e.g. 7×7 at 224 input) the map is resized bilinearly
    to the next multiple and back after folding, as timm does; the two resizes are
    :class:`~qat.nn.Interpolate` modules with their own observed int8 grids, so calibrate at the
    resolution the model will run at (at a resolution with no resize they never see data).
    """

    def __init__(
        self,
        in_channels: int,
        transformer_dim: int,
        depth: int,
        out_channels: int | None = None,
        patch_size: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.patch_size = patch_size
        self.conv_kxk = ConvModule2d(in_channels, in_channels, 3, 1, 1, norm_layer="bn", act_layer="silu")
        self.conv_1x1 = ConvModule2d(in_channels, transformer_dim, 1, bias=False)
        self.resize_in = Interpolate(scale_factor=1.0, mode="bilinear")  # target size given in forward
        self.transformer = nn.Sequential(
            *(TransformerEncoderLayer(transformer_dim, num_heads, mlp_ratio) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(transformer_dim)
        self.resize_out = Interpolate(scale_factor=1.0, mode="bilinear")
        self.conv_proj = ConvModule2d(transformer_dim, out_channels, 1, norm_layer="bn", act_layer="silu")
        self.cat = Cat(dim=1)
        self.conv_fusion = ConvModule2d(
            in_channels + out_channels, out_channels, 3, 1, 1, norm_layer="bn", act_layer="silu"
        )

    def unfold(self, x: Tensor) -> Tensor:
        """``[B, D, H, W] → [B·p², N, D]`` with ``N = H·W/p²`` (H, W multiples of ``p``)."""
        b, d, h, w = x.shape
        p = self.patch_size
        nh, nw = h // p, w // p
        x = x.reshape(b * d * nh, p, nw, p).transpose(1, 2)  # [B·D·nh, nw, p, p]
        return x.reshape(b, d, nh * nw, p * p).transpose(1, 3).reshape(b * p * p, nh * nw, d)

    def fold(self, x: Tensor, b: int, h: int, w: int) -> Tensor:
        """Inverse of :meth:`unfold`: ``[B·p², N, D] → [B, D, H, W]``."""
        p = self.patch_size
        nh, nw = h // p, w // p
        d = x.shape[-1]
        x = x.reshape(b, p * p, nh * nw, d).transpose(1, 3).reshape(b * d * nh, nw, p, p)
        return x.transpose(1, 2).reshape(b, d, h, w)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        y = self.conv_1x1(self.conv_kxk(x))
        b, _, h, w = y.shape
        p = self.patch_size
        new_h, new_w = math.ceil(h / p) * p, math.ceil(w / p) * p
        resize = (new_h, new_w) != (h, w)
        if resize:
            y = self.resize_in(y, size=(new_h, new_w))
        tokens = self.norm(self.transformer(self.unfold(y)))
        y = self.fold(tokens, b, new_h, new_w)
        if resize:
            y = self.resize_out(y, size=(h, w))
        return self.conv_fusion(self.cat([shortcut, self.conv_proj(y)]))
