"""Lightweight-zoo blocks: each passes the int8 contract (verify_model) and does what its paper says."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import qat.nn as qnn
from qat.nn.blocks.litehrnet import _AvgPoolTo
from qat.quant import verify_model

# Measured: int8 equals the fake-quant model bit for bit (rel_l2 == 0.0) for every block below;
# the bound leaves room for an occasional rounding tie.
REL_L2_BOUND = 0.01


pytestmark = pytest.mark.usefixtures("one_thread")


def _wrap(block: nn.Module) -> nn.Module:
    return nn.Sequential(qnn.QuantStub(scale=1 / 128), block, qnn.DeQuantStub())


class _Branches(nn.Module):
    """Quantized input → one stride-2^i conv per branch → a multi-branch block → one DeQuantStub each."""

    def __init__(self, block: nn.Module, channels: list[int]) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.proj = nn.ModuleList(
            qnn.ConvModule2d(3, c, 3, 2**i, 1, norm_layer="bn", act_layer="relu") for i, c in enumerate(channels)
        )
        self.block = block
        self.dequants = nn.ModuleList(qnn.DeQuantStub() for _ in channels)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.quant(x)
        out = self.block([p(x) for p in self.proj])
        return [dq(o) for dq, o in zip(self.dequants, out)]


def _perturbed(block: nn.Module) -> nn.Module:
    """Random affine parameters: the reference initialisation (gate weights 0) would make the gates constant."""
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.5, 0.5)
    return block


_BR = [8, 16, 32]
BLOCKS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "shuffle_v2_s1": (lambda: _wrap(qnn.ShuffleV2Block(16, 16, 1)), (2, 16, 16, 16)),
    "shuffle_v2_s2": (lambda: _wrap(qnn.ShuffleV2Block(16, 32, 2)), (2, 16, 16, 16)),
    "ghost_module_odd": (lambda: _wrap(qnn.GhostModule(16, 15)), (2, 16, 16, 16)),
    "ghost_bottleneck": (lambda: _wrap(qnn.GhostBottleneck(16, 48, 16)), (2, 16, 16, 16)),
    "ghost_bottleneck_se_s2": (lambda: _wrap(qnn.GhostBottleneck(16, 48, 24, 5, 2, 0.25)), (2, 16, 16, 16)),
    "sandglass_residual": (lambda: _wrap(qnn.SandGlass(32, 32, 1, 2)), (2, 32, 16, 16)),
    "sandglass_s2": (lambda: _wrap(qnn.SandGlass(32, 48, 2, 2, dw_in=False)), (2, 32, 16, 16)),
    "sandglass_partial_identity": (lambda: _wrap(qnn.SandGlass(32, 32, 1, 2, identity_ratio=0.5)), (2, 32, 16, 16)),
    "lcnet_se": (lambda: _wrap(qnn.LCNetBlock(16, 32, 5, 2, use_se=True)), (2, 16, 16, 16)),
    "coordinate_attention": (lambda: _wrap(qnn.CoordinateAttention(16)), (2, 16, 16, 12)),
    "eca": (lambda: _wrap(qnn.ECA(16, 3)), (2, 16, 16, 16)),
    "inverted_residual_ca": (lambda: _wrap(qnn.InvertedResidualAttention(16, 16, 1, 6, "ca")), (2, 16, 16, 16)),
    "inverted_residual_eca": (
        lambda: _wrap(qnn.InvertedResidualAttention(16, 24, 2, 6, "eca", eca_kernel=3)),
        (2, 16, 16, 16),
    ),
    "triplet_attention": (lambda: _wrap(qnn.TripletAttention(3)), (2, 16, 12, 10)),
    "inverted_residual_triplet": (
        lambda: _wrap(qnn.InvertedResidualAttention(16, 16, 1, 6, "triplet")),
        (2, 16, 16, 16),
    ),
    "shuffle_attention": (lambda: _wrap(_perturbed(qnn.ShuffleAttention(16, 2))), (2, 16, 8, 6)),
    "inverted_residual_sa": (lambda: _wrap(qnn.InvertedResidualAttention(16, 16, 1, 6, "sa")), (2, 16, 16, 16)),
    "ic_conv": (lambda: _wrap(qnn.InceptionConv2d(16, 16, 2)), (2, 16, 12, 12)),
    "inception_v3_e": (lambda: _wrap(qnn.InceptionE(32)), (2, 32, 6, 6)),
    "inception_v4_c": (lambda: _wrap(qnn.InceptionV4C()), (2, 1536, 3, 3)),
    "bn_inception_s2": (lambda: _wrap(qnn.BNInceptionModule(32, 0, 16, 24, 16, 24, 0, 2)), (2, 32, 8, 8)),
    "bn_inception_maxpool": (
        lambda: _wrap(qnn.BNInceptionModule(32, 16, 16, 24, 16, 24, 8, max_pool=True)),
        (2, 32, 8, 8),
    ),
    "litehr_stem": (lambda: _wrap(qnn.LiteHRStem(3, 32, 32, 1.0, 1, 1)), (2, 3, 16, 16)),
    "spatial_weighting": (lambda: _wrap(qnn.SpatialWeighting(16)), (2, 16, 16, 16)),
    "cross_resolution_weighting": (lambda: _Branches(qnn.CrossResolutionWeighting(_BR, 4), _BR), (2, 3, 16, 16)),
    "conditional_channel_weighting": (
        lambda: _Branches(qnn.ConditionalChannelWeighting(_BR, reduce_ratio=4), _BR),
        (2, 3, 16, 16),
    ),
    "litehr_module": (lambda: _Branches(qnn.LiteHRModule(_BR, 1, 4), _BR), (2, 3, 16, 16)),
    "iterative_head": (lambda: _Branches(qnn.IterativeHead(_BR), _BR), (2, 3, 16, 16)),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_block_verifies_int8(name: str) -> None:
    factory, shape = BLOCKS[name]
    r = verify_model(factory(), torch.rand(*shape) * 2 - 1)
    assert r.check.ok and not r.check.warnings, str(r.check)
    assert not r.unconverted
    assert r.agreement["rel_l2"] <= REL_L2_BOUND, r.agreement


def test_channel_shuffle_is_the_known_interleave() -> None:
    x = torch.arange(6.0).view(1, 6, 1, 1).expand(2, 6, 3, 3)
    assert qnn.channel_shuffle(x, 2)[0, :, 0, 0].tolist() == [0, 3, 1, 4, 2, 5]
    assert qnn.channel_shuffle(x, 3)[0, :, 0, 0].tolist() == [0, 2, 4, 1, 3, 5]
    q = torch.quantize_per_tensor(x, 0.5, 10, torch.quint8)
    shuffled = qnn.channel_shuffle(q, 2)
    assert shuffled.is_quantized and shuffled.q_scale() == 0.5
    assert torch.equal(shuffled.int_repr()[0, :, 0, 0], q.int_repr()[0, [0, 3, 1, 4, 2, 5], 0, 0])
    with pytest.raises(ValueError):
        qnn.channel_shuffle(x, 4)


def test_shuffle_v2_stride1_passes_the_first_half_through() -> None:
    block = qnn.ShuffleV2Block(8, 8, 1).eval()
    x = torch.randn(2, 8, 5, 5)
    y = block(x)
    assert torch.equal(y[:, 0::2], x[:, :4])  # cat(x1, branch2(x2)) shuffled: x1 lands on even channels
    assert torch.allclose(y[:, 1::2], block.branch2(x[:, 4:]))


def test_ghost_module_slices_to_out_channels() -> None:
    m = qnn.GhostModule(8, 15, ratio=2).eval()
    x = torch.randn(2, 8, 6, 6)
    y = m(x)
    assert y.shape == (2, 15, 6, 6)
    primary = m.primary(x)
    assert torch.equal(y[:, :8], primary)
    assert torch.allclose(y[:, 8:], m.cheap(primary)[:, :7])


def test_ghost_bottleneck_downsample_keeps_dw_conv_at_stride_1() -> None:
    s2 = qnn.GhostBottleneck(16, 48, 24, 3, 2)
    s1 = qnn.GhostBottleneck(16, 48, 24, 3, 1, dw_conv=True)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(s1) == count(s2)
    assert s1(torch.randn(2, 16, 8, 8)).shape == (2, 24, 8, 8)
    with pytest.raises(ValueError):
        qnn.GhostBottleneck(16, 48, 24, 3, 2, dw_conv=False)


def test_sandglass_partial_identity_adds_to_the_first_channels_only() -> None:
    block = qnn.SandGlass(16, 16, 1, 2, identity_ratio=0.25).eval()
    x = torch.randn(2, 16, 6, 6)
    body = block.dw_out(block.expand(block.reduce(block.dw_in(x))))
    y = block(x)
    assert torch.allclose(y[:, :4], body[:, :4] + x[:, :4])
    assert torch.equal(y[:, 4:], body[:, 4:])
    with pytest.raises(ValueError):
        qnn.SandGlass(16, 24, 2, 2, dw_out=False)


def test_coordinate_attention_gate_factorises_over_h_and_w() -> None:
    ca = qnn.CoordinateAttention(8).eval()
    x = torch.rand(1, 8, 5, 7) + 0.5
    g = ca(x) / x  # per channel: gate_h[i] * gate_w[j], a rank-1 map
    assert g.shape == x.shape
    assert torch.allclose(g[..., 0:1, 0:1] * g, g[..., 0:1, :] * g[..., :, 0:1], atol=1e-6)
    assert not torch.allclose(g[..., 0, :], g[..., 1, :]) and not torch.allclose(g[..., :, 0], g[..., :, 1])


def test_eca_kernel_size_and_gate() -> None:
    assert [qnn.eca_kernel_size(c) for c in (16, 64, 128, 256, 1024)] == [3, 3, 5, 5, 5]
    eca = qnn.ECA(16, 3).eval()
    x = torch.rand(2, 16, 4, 4)
    pooled = x.mean((2, 3))
    expected = torch.sigmoid(F.conv1d(pooled[:, None], eca.conv.weight.view(1, 1, 3), padding=1))[:, 0]
    assert torch.allclose(eca(x), x * expected[..., None, None], atol=1e-6)
    with pytest.raises(ValueError):
        qnn.ECA(16, 4)


def test_fixed_pooling_equals_adaptive_pooling() -> None:
    pool = _AvgPoolTo()
    x = torch.randn(2, 4, 16, 12)
    assert torch.allclose(pool(x, (4, 3)), F.adaptive_avg_pool2d(x, (4, 3)))
    assert torch.allclose(pool(x, (5, 5)), F.adaptive_avg_pool2d(x, (5, 5)))  # non-integral ratio falls back


def test_litehr_module_handles_odd_resolutions() -> None:
    module = qnn.LiteHRModule([8, 16, 32], num_blocks=1, reduce_ratio=4).eval()
    out = module([torch.randn(2, 8, 7, 7), torch.randn(2, 16, 4, 4), torch.randn(2, 32, 2, 2)])
    assert [tuple(o.shape) for o in out] == [(2, 8, 7, 7), (2, 16, 4, 4), (2, 32, 2, 2)]
    assert all((o >= 0).all() for o in out)  # every fused output ends with a ReLU


def test_triplet_attention_equals_the_reference_formula() -> None:
    """(1/3)(gate(x) + rot⁻¹ gate(rot_h x) + rot⁻¹ gate(rot_w x)), gate = x · σ(BN(conv([max_C, mean_C])))."""
    block = qnn.TripletAttention(3).eval()
    with torch.no_grad():
        for gate in (block.gate_h, block.gate_w, block.gate_spatial):
            gate.conv.conv.weight.normal_()
            gate.conv.norm.running_mean.uniform_(-0.5, 0.5)

        def gate_fn(gate: nn.Module, t: Tensor) -> Tensor:
            z = torch.cat([t.max(1, keepdim=True)[0], t.mean(1, keepdim=True)], 1)
            return t * torch.sigmoid(gate.conv.norm(F.conv2d(z, gate.conv.conv.weight, padding=1)))

        x = torch.randn(2, 8, 6, 5)
        expected = (
            gate_fn(block.gate_spatial, x)
            + gate_fn(block.gate_h, x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
            + gate_fn(block.gate_w, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
        ) / 3
        torch.testing.assert_close(block(x), expected)


def test_shuffle_attention_equals_the_reference_formula() -> None:
    """SA-Net's ``sa_layer``: per group, x0·σ(cw·avg(x0) + cb) ‖ x1·σ(sw·GN(x1) + sb), then a 2-group shuffle."""
    groups, c = 2, 16
    block = _perturbed(qnn.ShuffleAttention(c, groups)).eval()
    x = torch.randn(2, c, 5, 4)
    half = c // (2 * groups)
    cw, cb = block.channel_gate.conv.weight.view(1, half, 1, 1), block.channel_gate.conv.bias.view(1, half, 1, 1)
    sw, sb = block.spatial_gate.conv.weight.view(1, half, 1, 1), block.spatial_gate.conv.bias.view(1, half, 1, 1)
    x0, x1 = x.reshape(2 * groups, c // groups, 5, 4).chunk(2, dim=1)
    xn = x0 * torch.sigmoid(cw * x0.mean((2, 3), keepdim=True) + cb)
    gn = F.group_norm(x1, half, block.norm.weight, block.norm.bias, block.norm.eps)
    xs = x1 * torch.sigmoid(sw * gn + sb)
    out = torch.cat([xn, xs], 1).reshape(2, c, 5, 4)
    expected = out.reshape(2, 2, c // 2, 5, 4).transpose(1, 2).reshape(2, c, 5, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected)
    assert sum(p.numel() for p in qnn.ShuffleAttention(c, groups).parameters()) == 3 * c // groups


def test_inception_conv_dilates_each_channel_group() -> None:
    """Output group k equals a 3x3 conv with group k's (dh, dw) dilation; the parameter count is one 3x3 conv + BN."""
    block = qnn.InceptionConv2d(8, 8).eval()
    assert sum(p.numel() for p in block.parameters()) == 8 * 8 * 9 + 2 * 8
    x = torch.randn(1, 8, 9, 9)
    with torch.no_grad():
        y = block(x)
        for k, ((dh, dw), branch) in enumerate(zip(qnn.FIXED_PATTERN, block.branches)):
            z = F.conv2d(x, branch.conv.weight, padding=(dh, dw), dilation=(dh, dw))
            torch.testing.assert_close(y[:, 2 * k : 2 * k + 2], torch.relu(branch.norm(z)))
    with pytest.raises(ValueError, match="dilation groups"):
        qnn.InceptionConv2d(8, 6)
