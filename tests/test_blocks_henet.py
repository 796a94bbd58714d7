"""HENet blocks: structure, faithfulness to HAT's formulas, and the int8 contract."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import qat.nn as qnn
from qat.nn.blocks.henet import GROUP_WIDTHS
from qat.quant import verify_model


class _Wrapped(nn.Module):
    """A block between a QuantStub and a DeQuantStub, as it sits inside a model."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.quant = qnn.QuantStub()
        self.block = block
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.block(self.quant(x)))


def _capture(model: nn.Module, path: str, x: Tensor) -> Tensor:
    """The (dequantized) output of submodule ``path`` for input ``x``."""
    seen: list[Tensor] = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0].dequantize() if seen[0].is_quantized else seen[0]


BLOCKS = {
    "dwcb": (lambda: qnn.DWCB(16, 32), 16),
    "dwcb_extra_act": (lambda: qnn.DWCB(16, 32, extra_act=True), 16),
    "dwcb_no_layer_scale": (lambda: qnn.DWCB(16, 32, use_layer_scale=False), 16),
    "group_dwcb": (lambda: qnn.GroupDWCB(96, 192), 96),
    "alt_dwcb_even": (lambda: qnn.AltDWCB(16, 32, block_idx=0), 16),
    "alt_dwcb_odd": (lambda: qnn.AltDWCB(16, 32, block_idx=1), 16),
    "s2d_down": (lambda: qnn.S2DDown(16, 32), 16),
    "linear_attention": (lambda: qnn.HENetLinearAttention(16, 16), 16),
    "attention_block": (lambda: qnn.HENetAttentionBlock(16), 16),
    "attention_block_scale_1": (lambda: qnn.HENetAttentionBlock(16, layer_scale_init_value=1.0), 16),
    "stage_with_attention": (lambda: qnn.BasicHENetStageBlock(16, 3, 1, block_cls="AltDWCB"), 16),
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_block_int8_contract(name: str) -> None:
    build, channels = BLOCKS[name]
    r = verify_model(_Wrapped(build()), torch.randn(2, channels, 8, 8))
    assert r.check.ok
    assert not r.unconverted
    assert r.agreement["rel_l2"] <= 0.05
    assert not any(isinstance(m, qnn.ChannelScale2d) for m in r.int8_model.modules()), "layer scale not folded"


def test_attention_layer_scale_survives_int8() -> None:
    """The 1e-5 layer scales fold into the attention/MLP output convs; the int8 branches keep their values."""
    x = torch.randn(2, 16, 8, 8)
    model = _Wrapped(qnn.HENetAttentionBlock(16)).eval()
    blk = model.block
    with torch.no_grad():
        h = blk.conv(x)
        attn_ref = blk.attn(h) * 1e-5
        mlp_ref = blk.mlp(h + blk.layer_scale_attn(blk.attn(h))) * 1e-5
    r = verify_model(model, x, steps=0)
    assert isinstance(r.fake_quant_model.block.layer_scale_attn, nn.Identity)
    assert isinstance(r.fake_quant_model.block.layer_scale_mlp, nn.Identity)
    for path, ref in (("block.attn.output", attn_ref), ("block.mlp.fc2", mlp_ref)):
        q = _capture(r.int8_model, path, x)
        fq = _capture(r.fake_quant_model, path, x)
        assert (q != 0).float().mean() > 0.9, f"{path}: int8 branch collapsed to zero"
        assert (q - ref).norm() / ref.norm() <= 0.1, f"{path}: int8 branch lost the 1e-5 scale"
        assert torch.allclose(q, fq, rtol=0, atol=float(ref.abs().max()) * 0.02)


def test_linear_attention_matches_token_formula() -> None:
    """NCHW convs + MatMul compute HAT's token form: out = Wo(Wp(sum_n a_n q_n * k) + q), a = (q w) / sqrt(d)."""
    attn = qnn.HENetLinearAttention(8, 8).eval()
    x = torch.randn(2, 8, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)

    def linear(conv: nn.Conv2d, t: Tensor) -> Tensor:
        return nn.functional.linear(t, conv.weight.flatten(1), conv.bias)

    q, k = linear(attn.query, tokens), linear(attn.key, tokens)
    a = linear(attn.query_weight, q) * 8**-0.5
    g = (a * q).sum(dim=1, keepdim=True)
    expected = linear(attn.output, linear(attn.projection, g * k) + q)
    with torch.no_grad():
        got = attn(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_s2d_down_halves_resolution() -> None:
    down = qnn.S2DDown(16, 32).eval()
    assert down(torch.randn(2, 16, 8, 12)).shape == (2, 32, 4, 6)
    assert down.proj.conv.kernel_size == (2, 2) and down.proj.conv.stride == (2, 2)
    assert isinstance(down.proj.norm, nn.BatchNorm2d) and isinstance(down.proj.act, nn.Identity)


def test_alt_dwcb_kernel_alternates() -> None:
    stage = qnn.BasicHENetStageBlock(16, 4, block_cls="AltDWCB")
    kernels = [b.dwconv.conv.kernel_size for b in stage.block]
    paddings = [b.dwconv.conv.padding for b in stage.block]
    assert kernels == [(1, 5), (5, 1), (1, 5), (5, 1)]
    assert paddings == [(0, 2), (2, 0), (0, 2), (2, 0)]
    assert stage.eval()(torch.randn(2, 16, 6, 6)).shape == (2, 16, 6, 6)


@pytest.mark.parametrize(("dim", "groups"), [(48, 1), (64, 1), (96, 2), (128, 2), (192, 3), (256, 2), (384, 6)])
def test_group_dwcb_group_count(dim: int, groups: int) -> None:
    block = qnn.GroupDWCB(dim, 2 * dim)
    assert GROUP_WIDTHS[dim] * groups == dim
    assert block.pwconv1.conv.groups == groups
    assert block.dwconv.conv.groups == dim and block.pwconv2.groups == 1


def test_group_dwcb_rejects_unknown_width() -> None:
    with pytest.raises(ValueError, match="group widths"):
        qnn.GroupDWCB(32, 64)


def test_stage_puts_attention_blocks_at_tail() -> None:
    stage = qnn.BasicHENetStageBlock(16, 4, attention_block_num=2, block_cls="DWCB", layer_scale_init_value=1e-5)
    assert [type(b) for b in stage.block] == [qnn.DWCB, qnn.DWCB, qnn.HENetAttentionBlock, qnn.HENetAttentionBlock]
    assert torch.all(stage.block[0].layer_scale.weight == 1.0)
    assert torch.all(stage.block[2].layer_scale_attn.weight == 1e-5)
    assert torch.all(stage.block[3].layer_scale_mlp.weight == 1e-5)
    with pytest.raises(ValueError, match="attention_block_num"):
        qnn.BasicHENetStageBlock(16, 2, attention_block_num=3)


def test_hat_activation_strings_accepted() -> None:
    block = qnn.DWCB(16, 32, act_layer="nn.GELU", extra_act=True)
    assert isinstance(block.pwconv1.act, nn.GELU) and isinstance(block.extra_act, nn.GELU)
