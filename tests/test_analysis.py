"""Layer similarity, sensitivity, keep_float repair and the automatic fallback on a planted outlier channel.

The planted case: a small ``qat.nn`` network trained on scikit-learn's digits, then one
activation made to carry an outlier channel with the float function unchanged -- channel 3 of
``c2``'s output scaled by 1000 (its BN weight and bias; ReLU commutes with a positive scale) and
``c3``'s weights reading that channel divided by 1000. The int8 grid of ``c2``'s output is then
1000× too coarse for the other channels, and int8 collapses.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import qat.nn as qnn
from qat.analysis import (
    LayerSensitivity,
    LayerSimilarity,
    layer_similarity,
    markdown_table,
    plot_sensitivity,
    plot_similarity,
    sensitivity,
    write_csv,
)
from qat.pipeline.fallback import greedy_fallback
from qat.quant import calibrate, convert, disable_observer, prepare_calibration

PLANTED = "c2"
CHANNEL = 3


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.c1 = qnn.ConvModule2d(1, 16, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.c2 = qnn.ConvModule2d(16, 16, 3, padding=1, norm_layer="bn", act_layer="relu")
        self.c3 = qnn.ConvModule2d(16, 32, 3, stride=2, padding=1, norm_layer="bn", act_layer="relu")
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.head(self.c3(self.c2(self.c1(self.quant(x))))))


def _accuracy(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> float:
    with torch.no_grad():
        right = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return right / sum(len(y) for _, y in batches)


@pytest.fixture(scope="module")
def planted() -> dict:
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # [-1, 1]
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    model = DigitsNet()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(4):
        for i in range(0, len(train), 64):
            idx = train[i : i + 64]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    held = [(x[test[i : i + 200]], y[test[i : i + 200]]) for i in range(0, len(test), 200)]
    before = torch.cat([model(b) for b, _ in held]).detach()
    with torch.no_grad():
        model.c2.norm.weight[CHANNEL] *= 1000
        model.c2.norm.bias[CHANNEL] *= 1000
        model.c3.conv.weight[:, CHANNEL] /= 1000
    after = torch.cat([model(b) for b, _ in held]).detach()
    calib = [x[train[i : i + 64]] for i in range(0, 512, 64)]
    return {"model": model, "held": held, "calib": calib, "before": before, "after": after}


def _int8_accuracy(data: dict, **kwargs) -> float:
    fq = prepare_calibration(data["model"], **kwargs)
    calibrate(fq, data["calib"])
    return _accuracy(convert(disable_observer(fq)), data["held"])


def test_planted_outlier_keeps_float_function_and_breaks_int8(planted: dict) -> None:
    float_acc = _accuracy(planted["model"], planted["held"])
    assert float_acc > 0.9
    assert torch.allclose(planted["before"], planted["after"], atol=1e-3)
    assert _int8_accuracy(planted) < float_acc - 0.5


def test_sensitivity_ranks_the_planted_layer_first(planted: dict) -> None:
    for view in ("only", "all_but"):
        ranking = sensitivity(planted["model"], planted["held"], calib_batches=planted["calib"], view=view)
        assert isinstance(ranking[0], LayerSensitivity)
        assert ranking[0].name == PLANTED, [(r.name, r.score) for r in ranking]
        assert ranking[0].view == view and ranking[0].measured
        assert [r.score for r in ranking] == sorted((r.score for r in ranking), reverse=True)
        assert ranking[0].float_accuracy == pytest.approx(_accuracy(planted["model"], planted["held"]))
    only = sensitivity(planted["model"], planted["held"], calib_batches=planted["calib"])
    assert {r.name for r in only} == {"c1", "c2", "c3", "head.0", "head.2"}
    assert only[0].accuracy is not None and only[0].accuracy < only[0].float_accuracy - 0.3
    assert only[0].score > 5 * only[2].score  # planted c2 and c3 (its consumer) far above the rest


def test_similarity_shows_the_planted_layer_far_below_the_others(planted: dict) -> None:
    fq = prepare_calibration(planted["model"])
    calibrate(fq, planted["calib"])
    records = layer_similarity(planted["model"], fq, planted["held"][:1])
    assert [r.name for r in records] == ["c1", "c2", "c3", "head.0", "head.2"]  # forward order, user names
    assert all(isinstance(r, LayerSimilarity) and r.reference == "float" and r.mode == "local" for r in records)
    sqnr = {r.name: r.sqnr_db for r in records}
    others = min(v for k, v in sqnr.items() if k != PLANTED)
    assert sqnr[PLANTED] < others - 8, sqnr
    # The pooled figure hides it: the outlier channel carries almost all the energy.
    assert next(r for r in records if r.name == PLANTED).sqnr_pooled_db > sqnr[PLANTED] + 15
    # Fake-quant vs its int8 model: cumulative, same names, int8 follows fake-quant closely.
    int8 = convert(disable_observer(fq))
    exact = layer_similarity(fq, int8, planted["held"][:1])
    assert [r.name for r in exact] == [r.name for r in records]
    assert all(r.candidate == "int8" and r.mode == "cumulative" and r.sqnr_db > 30 for r in exact)
    with pytest.raises(ValueError, match="local"):
        layer_similarity(fq, int8, planted["held"][:1], mode="local")


def test_keep_float_of_the_top_two_repairs_int8(planted: dict) -> None:
    top_two = [r.name for r in sensitivity(planted["model"], planted["held"], calib_batches=planted["calib"])[:2]]
    assert set(top_two) == {"c2", "c3"}
    float_acc = _accuracy(planted["model"], planted["held"])
    repaired = _int8_accuracy(planted, keep_float=top_two)
    assert repaired >= float_acc - 0.015, (repaired, float_acc)


def test_auto_fallback_finds_the_planted_layer(planted: dict) -> None:
    held = planted["held"][:2]
    result = greedy_fallback(planted["model"], planted["calib"], held, max_drop=1.5, max_fallback=3)
    assert result.drop_pp > 30
    assert result.met and result.chosen[0] == PLANTED and len(result.chosen) <= 3
    steps = result.to_dict()["steps"]
    assert steps[-1]["drop_pp"] <= 1.5 and all(s["precision"] == "float" for s in steps)
    nothing = greedy_fallback(planted["model"], planted["calib"], held, max_drop=100, max_fallback=3)
    assert nothing.met and nothing.chosen == []


def test_writers(tmp_path: Path, planted: dict) -> None:
    fq = prepare_calibration(planted["model"])
    calibrate(fq, planted["calib"])
    sim = layer_similarity(planted["model"], fq, planted["held"][:1])
    sens = sensitivity(planted["model"], planted["held"][:1], calib_batches=planted["calib"])
    path = write_csv(sim, tmp_path / "a" / "similarity.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["name"] for r in rows] == [r.name for r in sim]
    assert math.isclose(float(rows[1]["sqnr_db"]), sim[1].sqnr_db, rel_tol=1e-9)
    table = markdown_table(sens, ["name", "score"])
    assert table.splitlines()[0] == "| name | score |" and f"| {sens[0].name} |" in table.splitlines()[2]
    for plot, records in ((plot_similarity, sim), (plot_sensitivity, sens)):
        png = plot(records, tmp_path / f"{plot.__name__}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_cli_on_a_pipeline_run(tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_pipeline import FAST, QUANT_FAST

    from qat.analyze import main
    from qat.pipeline.config import compose_config
    from qat.pipeline.stages import run_pipeline

    run = tmp_path / "run"
    overrides = [*FAST, *QUANT_FAST, "quant=calib", "quant.keep_float=[block2.conv*]", "quant.max_drop=100"]
    report = run_pipeline(compose_config(overrides), run)
    assert [r["name"] for r in report["mixed_precision"]["layers"]] == ["block2.conv1", "block2.conv2"]
    assert report["fallback"]["chosen"] == [] and report["fallback"]["met"]
    assert main([str(run), "--batches", "1"]) == 0
    out = run / "analysis"
    for name in ("similarity.csv", "similarity_int8.csv", "sensitivity.csv", "analysis.md", "similarity.png"):
        assert (out / name).is_file(), name
    sens = list(csv.DictReader((out / "sensitivity.csv").open()))
    assert "block2.conv1" not in {r["name"] for r in sens}  # already float: not ranked
    assert "[analysis/analysis.md](analysis/analysis.md)" in (run / "report.md").read_text()
    assert "Layers not in int8" in (run / "report.md").read_text()
    capsys.readouterr()
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_pipeline_fallback_records_the_path_and_replays_it(tmp_path: Path, planted: dict) -> None:
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from qat.pipeline.fallback import apply_fallback, precision_lines
    from qat.pipeline.plan import QuantPlan
    from qat.pipeline.state import StageState

    xs = torch.cat([x for x, _ in planted["held"]])
    ys = torch.cat([y for _, y in planted["held"]])
    calib = [(c, torch.zeros(len(c), dtype=torch.long)) for c in planted["calib"][:4]]
    loader = [*calib, (xs[:200], ys[:200]), (xs[200:], ys[200:])]
    plan = QuantPlan(mode="calib", calib_batches=4, fallback_batches=2, max_drop=1.5, max_fallback=3)
    cfg = OmegaConf.create({"quant": {"keep_float": [], "int16": []}})

    def ctx(resume: bool) -> SimpleNamespace:
        state = StageState(tmp_path, resume=resume, writer=True, identity={"name": "planted"})
        data = SimpleNamespace(calib_dataloader=lambda: iter(loader))
        return SimpleNamespace(plan=plan, state=state, data=data, cfg=cfg)

    first = ctx(resume=False)
    new_plan = apply_fallback(first, planted["model"])
    assert new_plan.keep_float == ("c2", "c3") and list(cfg.quant.keep_float) == ["c2", "c3"]
    recorded = first.state.get("calib")["fallback"]
    assert [s["layer"] for s in recorded["steps"]] == ["c2", "c3"] and recorded["met"]
    lines = "\n".join(precision_lines({"fallback": recorded}))
    assert "| 1 | c2 | float |" in lines and "| 2 | c3 | float |" in lines and "Drop met." in lines
    # A resumed run whose calibration is done replays the recorded choice without measuring again.
    first.state.update("calib", status="done")
    again = ctx(resume=True)
    again.data = SimpleNamespace(calib_dataloader=lambda: pytest.fail("the fallback ran again"))
    assert apply_fallback(again, planted["model"]).keep_float == ("c2", "c3")
