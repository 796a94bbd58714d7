"""MobileViT v1 XXS/XS/S: parameter counts vs timm / the paper, shapes, stems, patch unfolding, int8.

The full-size int8 contract runs for every registered model in tests/test_models.py.
"""

from __future__ import annotations

import pytest
import torch
from contract import (
    assert_int8_contract,
    param_count,
)
from torch import Tensor, nn

from qat.models import create_model
from qat.models.mobilevit import MOBILEVIT_CONFIGS
from qat.nn.blocks.mobilevit import MobileViTBlock
from qat.nn.stubs import DeQuantStub, QuantStub
from qat.quant import verify_model

NAMES = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s"]
# name: (our count at 1000 classes, timm's published count in millions (2 decimals), paper's (1 decimal))
REFERENCE = {
    "mobilevit_xxs": (1_272_024, 1.27, 1.3),
    "mobilevit_xs": (2_317_848, 2.32, 2.3),
    "mobilevit_s": (5_578_632, 5.58, 5.6),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_count(expansion: float, channels: tuple[int, ...], dims: tuple[int, ...], head: int) -> int:
    """timm's ``mobilevit_*`` config counted layer by layer, independently of the model code."""

    def conv(c_in: int, c_out: int, k: int, groups: int = 1) -> int:
        return c_in // groups * c_out * k * k

    def ir(c_in: int, c_out: int) -> int:  # 1x1-BN, dw 3x3-BN, 1x1-BN
        m = int(c_in * expansion)
        return conv(c_in, m, 1) + conv(m, m, 3, m) + conv(m, c_out, 1) + 2 * (2 * m + c_out)

    def layer(d: int) -> int:  # 2 LayerNorms, qkv, proj, MLP x2 (all with bias)
        return 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (2 * d * d + 2 * d) + (2 * d * d + d)

    def mvit(c: int, d: int, depth: int) -> int:
        convs = conv(c, c, 3) + conv(c, d, 1) + conv(d, c, 1) + conv(2 * c, c, 3) + 3 * 2 * c
        return convs + depth * layer(d) + 2 * d

    n = conv(3, 16, 3) + 2 * 16 + ir(16, channels[0]) + ir(channels[0], channels[1]) + 2 * ir(channels[1], channels[1])
    prev = channels[1]
    for c, d, depth in zip(channels[2:], dims, (2, 4, 3)):
        n += ir(prev, c) + mvit(c, d, depth)
        prev = c
    return n + conv(prev, head, 1) + 2 * head + head * 1000 + 1000


@pytest.mark.parametrize("name", NAMES)
def test_params_vs_timm_and_paper(name: str) -> None:
    ours, timm_m, paper_m = REFERENCE[name]
    assert param_count(create_model(name)) == ours
    assert _reference_count(*MOBILEVIT_CONFIGS[name.removeprefix("mobilevit_")]) == ours
    assert abs(ours / 1e6 - timm_m) <= 0.005  # equal at timm's precision
    assert abs(ours / 1e6 - paper_m) <= 0.05  # equal at the paper's precision


def test_unfold_order_and_fold_inverse() -> None:
    """Token ``[b·p² + i·p + j, n]`` is pixel ``(i, j)`` of patch ``n`` (timm / ml-cvnets order)."""
    block = MobileViTBlock(8, 16, 1)
    b, d, h, w, p = 2, 16, 6, 4, 2
    x = torch.randn(b, d, h, w)
    tokens = block.unfold(x)
    nw = w // p
    assert tokens.shape == (b * p * p, h * w // (p * p), d)
    for bi, i, j, n in [(0, 0, 0, 0), (1, 1, 0, 3), (1, 1, 1, 5), (0, 0, 1, 4)]:
        assert torch.equal(tokens[bi * p * p + i * p + j, n], x[bi, :, (n // nw) * p + i, (n % nw) * p + j])
    assert torch.equal(block.fold(tokens, b, h, w), x)


class _Wrapped(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.quant, self.block, self.dequant = QuantStub(scale=1 / 128), block, DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.block(self.quant(x)))


@pytest.mark.parametrize("size", [8, 7], ids=["even", "odd-resized"])
def test_block_int8_equals_fake_quant(size: int) -> None:
    """One MobileViT block, with and without the bilinear resize around the patches, in int8."""
    torch.manual_seed(0)
    model = _Wrapped(MobileViTBlock(16, 32, 2))
    x = torch.rand(2, 16, size, size) * 2 - 1
    r = verify_model(model, x, steps=2, bn="fold")
    assert_int8_contract(r, min_compared=5_000)


class _TokenNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.quant, self.fc, self.norm = QuantStub(scale=1 / 128), nn.Linear(dim, dim), nn.LayerNorm(dim)
        self.dequant = DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.norm(self.fc(self.quant(x))))


def test_layer_norm_int8_is_bit_exact() -> None:
    """The int8 LayerNorm rounds exactly as fake-quant does: no element differs, not even by a tie."""
    torch.manual_seed(0)
    x = torch.rand(8, 64, 96) * 2 - 1
    r = verify_model(_TokenNorm(96), x, steps=2)
    assert type(r.int8_model.norm).__name__ == "QuantizedRequant"
    seen: list[tuple[Tensor, Tensor]] = []
    handle = r.int8_model.norm.register_forward_hook(lambda _m, args, out: seen.append((args[0], out)))
    with torch.no_grad():
        r.int8_model(x)
        handle.remove()
        q_in, q_out = seen[0]
        ref = r.fake_quant_model.norm(q_in.dequantize())
    assert torch.equal(ref, q_out.dequantize())
