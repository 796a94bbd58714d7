"""keep_float / int16 layers: selection by name or glob, the layer table, fake-quant and int8 agreeing."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import qat.nn as qnn
from qat.pipeline.errors import ConfigError
from qat.pipeline.fallback import precision_costs, prepare_for_plan
from qat.pipeline.plan import QuantPlan
from qat.quant import (
    LayerSelectionError,
    PrecisionIsland,
    calibrate,
    convert,
    disable_observer,
    enable_fake_quant,
    is_converted,
    prepare_calibration,
    prepare_qat,
    quant_layers,
    start_qat,
)


class BranchNet(nn.Module):
    """``stem``'s output feeds both ``b`` and the residual add: it must stay requantized."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.stem = qnn.ConvModule2d(3, 8, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.b = qnn.ConvModule2d(8, 8, 3, padding=1, norm_layer="bn", act_layer="gelu")
        self.add = qnn.Add()
        self.c6 = qnn.ConvModule2d(8, 8, 1, norm_layer="bn", act_layer="relu6")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(self.quant(x))
        x = self.add(x, self.b(x))
        return self.dequant(self.head(self.c6(x)))


def _net() -> nn.Module:
    torch.manual_seed(0)
    model = BranchNet()
    with torch.no_grad():  # non-trivial BN statistics, and c6 reaching past ReLU6's clamp
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        model.c6.norm.weight.fill_(8.0)
    return model.eval()


def _batches() -> list[Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(8, 3, 8, 8, generator=g) * 2 - 1 for _ in range(3)]


def _calibrated(**kwargs) -> nn.Module:
    model = prepare_calibration(_net(), **kwargs)
    return calibrate(model, _batches())


def test_layer_table_names_the_users_modules() -> None:
    layers = quant_layers(prepare_calibration(_net()))
    assert [(lay.name, lay.path) for lay in layers] == [
        ("stem", "stem.conv"),
        ("b.conv", "b.conv"),
        ("b.act", "b.act"),
        ("add", "add.op"),
        ("c6", "c6.conv"),
        ("head.0", "head.0"),
        ("head.2", "head.2"),
    ]
    stem = layers[0]
    assert stem.float_path == "stem.act" and stem.kind == "ConvBnReLU2d" and stem.precision == "int8"
    with pytest.raises(ValueError, match="prepare_qat"):
        quant_layers(_net())


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (["stem"], {"stem"}),  # user name
        (["b.conv"], {"b.conv"}),  # op path
        (["b"], {"b.conv", "b.act"}),  # enclosing module
        (["b.*", "head.?"], {"b.conv", "b.act", "head.0", "head.2"}),  # globs
    ],
)
def test_keep_float_selects_by_name_path_module_or_glob(patterns: list[str], expected: set[str]) -> None:
    layers = quant_layers(prepare_calibration(_net(), keep_float=patterns))
    assert {lay.name for lay in layers if lay.precision == "float"} == expected


def test_selection_errors_name_the_layers() -> None:
    with pytest.raises(LayerSelectionError, match=r"'stme' matches no quantized layer; the layers are: stem, b.conv"):
        prepare_calibration(_net(), keep_float=["stme"])
    with pytest.raises(LayerSelectionError, match="several inputs"):
        prepare_calibration(_net(), keep_float=["add"])
    with pytest.raises(LayerSelectionError, match="both keep_float and int16"):
        prepare_calibration(_net(), keep_float=["stem"], int16=["st*"])


def _same_outputs(fake_quant: nn.Module, int8: nn.Module) -> float:
    fq = enable_fake_quant(disable_observer(fake_quant)).eval()
    x = _batches()[0]
    with torch.no_grad():
        return float((fq(x) - int8(x)).abs().max())


def test_keep_float_runs_in_float_between_int8_layers() -> None:
    model = _calibrated(keep_float=["stem", "b"])
    int8 = convert(disable_observer(model))
    assert is_converted(int8) and not is_converted(model)
    stem, b_conv, b_act = (int8.get_submodule(p) for p in ("stem.conv", "b.conv", "b.act"))
    assert all(isinstance(m, PrecisionIsland) for m in (stem, b_conv, b_act))
    # stem feeds b (float) and the add (int8): requantized; b.conv feeds only b.act: handed on in float.
    assert not stem.handoff and isinstance(stem.requant, nn.Module) and hasattr(stem.requant, "scale")
    assert b_conv.handoff and isinstance(b_conv.requant, nn.Identity)
    assert not b_act.handoff
    assert type(stem.layer).__name__ == "ConvBnReLU2d" and not any(
        p.dtype != torch.float32 for p in stem.layer.parameters()
    )
    assert type(int8.get_submodule("add.op")).__name__.endswith("QFunctional")  # nothing else touched
    assert _same_outputs(model, int8) < 1e-5
    costs = precision_costs(int8)
    assert [r["name"] for r in costs["layers"]] == ["stem", "b.conv", "b.act"]
    assert costs["layers"][0]["extra_bytes_vs_int8"] > 0


def test_keep_float_of_a_relu6_conv_keeps_the_clamp() -> None:
    model = _calibrated(keep_float=["c6"])
    island = model.get_submodule("c6.conv")
    x = torch.randn(2, 8, 4, 4) * 3
    with torch.no_grad():
        assert float(island.layer(x).max()) <= 6.0
    assert _same_outputs(model, convert(disable_observer(model))) < 1e-5


def test_int16_layers_get_a_16_bit_grid_and_run_simulated_after_convert() -> None:
    model = _calibrated(int16=["b.conv"])
    island = model.get_submodule("b.conv")
    fq = island.layer.activation_post_process
    assert (fq.quant_min, fq.quant_max, fq.dtype) == (0, 65535, torch.uint16)
    int8 = convert(disable_observer(model))
    island8 = int8.get_submodule("b.conv")
    assert island8.precision == "int16" and island8.layer.activation_post_process.fake_quant_enabled.item() == 1
    qparams = island8.int16_qparams()
    assert qparams["dtype"] == "uint16" and qparams["quant_max"] == 65535 and qparams["scale"] > 0
    assert _same_outputs(model, int8) < 1e-5
    assert [lay.precision for lay in quant_layers(int8) if lay.name == "b.conv"] == ["int16"]


def test_npu_int16_grid_is_symmetric() -> None:
    fq = _calibrated(qconfig="npu", int16=["stem"]).get_submodule("stem.conv").layer.activation_post_process
    assert (fq.quant_min, fq.quant_max, fq.dtype) == (-32768, 32767, torch.int16)


def test_prepare_qat_trains_and_converts_with_islands() -> None:
    model = prepare_qat(_net(), keep_float=["b.conv"], int16=["stem"])
    calibrate(model, _batches())
    start_qat(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model(_batches()[1]).sum().backward()
    assert model.get_submodule("b.conv").layer[0].weight.grad is not None
    opt.step()
    model.eval()
    assert _same_outputs(model, convert(disable_observer(model))) < 1e-5


def test_convert_refuses_islands_that_never_ran() -> None:
    model = _calibrated(keep_float=["stem"])
    model.get_submodule("stem.conv").route.fill_(0)  # as if its route were never found
    with pytest.raises(ValueError, match="stem.conv \\(float\\) never ran"):
        convert(model)


def test_plan_fields_and_user_errors() -> None:
    plan = QuantPlan(mode="calib", keep_float=["stem"], int16="b.act", max_drop=1.0)
    assert plan.keep_float == ("stem",) and plan.int16 == ("b.act",)
    for bad in (
        {"fallback_precision": "int4"},
        {"max_fallback": 0},
        {"max_drop": -1},
        {"keep_float": ["x"], "int16": ["x"]},
    ):
        with pytest.raises(ConfigError):
            QuantPlan(mode="calib", **bad)
    with pytest.raises(ConfigError, match="stme.*Fix the names"):
        prepare_for_plan(_net(), QuantPlan(mode="calib", keep_float=["stme"]))
