"""Shared test fixtures: deterministic seeds and a small user-style model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import qat.nn as qnn


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The test machine's cores are shared: one intra-op thread is several times faster for model tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class UserNet(nn.Module):
    """A user's own network assembled from qat.nn layers, with no fusion list of its own
    except the layer-scale fold it declares."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = qnn.ConvModule2d(16, 16, 3, padding=1, groups=16, norm_layer=nn.BatchNorm2d(16), act_layer=nn.GELU())
        self.pw = qnn.ConvModule2d(16, 16, 1, norm_layer="bn")
        self.layer_scale = qnn.ChannelScale2d(16, 1e-2)
        self.add = qnn.Add()
        self.relu6 = qnn.ConvModule2d(16, 24, 3, stride=2, padding=1, norm_layer="bn", act_layer="relu6")
        self.se = qnn.SqueezeExcite(24, gate="hardsigmoid")
        self.silu = qnn.SiLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)
        self.dequant = qnn.DeQuantStub()

    def fuse_patterns(self) -> list[list[str]]:
        return [["pw.conv", "pw.norm", "layer_scale"]]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.quant(x))
        x = self.add(x, self.layer_scale(self.pw(self.dw(x))))
        x = self.silu(self.se(self.relu6(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


@pytest.fixture
def user_net() -> UserNet:
    return UserNet()


@pytest.fixture
def x() -> Tensor:
    """A batch of inputs normalised to [-1, 1), as the fixed-scale QuantStub expects."""
    return torch.rand(4, 3, 16, 16) * 2 - 1


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: `make test` runs two pytest-xdist workers on two cores."""
    torch.set_num_threads(1)
