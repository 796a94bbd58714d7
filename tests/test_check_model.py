"""check_model reports each kind of problem, and stays quiet on a clean model."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import qat.nn as qnn
from qat.quant import ModelCheckError, check_model


class Base(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = qnn.QuantStub()
        self.conv = qnn.ConvModule2d(3, 8, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.dequant = qnn.DeQuantStub()


class TensorAdd(Base):
    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.quant(x))
        return self.dequant(y + y)


class FunctionalGelu(Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(F.gelu(self.conv(self.quant(x))))


class Shared(Base):
    def __init__(self) -> None:
        super().__init__()
        self.conv2 = qnn.ConvModule2d(8, 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.conv2(self.conv2(self.conv(self.quant(x)))))


class UnfusedConvBN(Base):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.relu(self.bn(self.c(self.conv(self.quant(x))))))


class NoKernel(Base):
    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Softplus()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.act(self.conv(self.quant(x))))


class NoQuantStub(Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.conv(x))


class NoDeQuantStub(Base):
    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.quant(x))


class Clean(Base):
    def __init__(self) -> None:
        super().__init__()
        self.add = qnn.Add()
        self.gelu = qnn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(self.quant(x))
        return self.dequant(self.gelu(self.add(y, y)))


@pytest.mark.parametrize(
    ("model", "kind", "where"),
    [
        (TensorAdd(), "tensor-op", ""),
        (FunctionalGelu(), "functional-act", ""),
        (Shared(), "shared-module", "conv2"),
        (UnfusedConvBN(), "unfused-conv-bn", "bn"),
        (NoKernel(), "no-int8-kernel", "act"),
        (NoQuantStub(), "missing-quant-stub", "conv.conv"),
        (NoDeQuantStub(), "missing-dequant-stub", ""),
    ],
)
def test_each_finding_is_reported(model: nn.Module, kind: str, where: str) -> None:
    report = check_model(model, torch.rand(2, 3, 8, 8))
    assert not report.ok
    found = [f for f in report.errors if f.kind == kind]
    assert found, str(report)
    assert found[0].module == where
    assert found[0].fix and kind in str(report)
    with pytest.raises(ModelCheckError, match=kind):
        check_model(model, torch.rand(2, 3, 8, 8), raise_on_error=True)


def test_unfused_relu_is_a_warning_only() -> None:
    class ConvReLU(Base):
        def __init__(self) -> None:
            super().__init__()
            self.c = qnn.ConvModule2d(8, 8, 1)
            self.relu = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.dequant(self.relu(self.c(self.conv(self.quant(x)))))

    report = check_model(ConvReLU(), torch.rand(2, 3, 8, 8))
    assert report.ok and [f.kind for f in report.warnings] == ["unfused-conv-relu"]


def test_clean_model_and_no_side_effects() -> None:
    model = Clean().train()
    stats = model.conv.norm.running_mean.clone()
    report = check_model(model, torch.rand(2, 3, 8, 8))
    assert report.ok and not report.findings, str(report)
    assert "clean" in str(report)
    assert model.training and torch.equal(model.conv.norm.running_mean, stats)
    assert not model.conv._forward_hooks, "hooks must be removed"


def test_user_model_is_clean(user_net: nn.Module, x: Tensor) -> None:
    assert check_model(user_net, x).ok
