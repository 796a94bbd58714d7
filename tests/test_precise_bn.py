"""Precise BN and the post-stage health check: a short run with BN momentum 0.01 must not silently collapse."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from qat.models.tiny import TinyConvNet
from qat.pipeline.config import compose_config
from qat.pipeline.errors import ConfigError, StageCollapseError
from qat.pipeline.health import collapse_message
from qat.pipeline.precise_bn import batchnorm_layers, recompute_bn_stats
from qat.pipeline.stages import run_pipeline


class SlowBNNet(TinyConvNet):
    """tiny_convnet with torchvision MobileNetV3's BN momentum (0.01): running statistics lag the weights."""

    def __init__(self, num_classes: int = 10, width: int = 8, momentum: float = 0.01) -> None:
        super().__init__(num_classes=num_classes, stem="cifar", width=width)
        for bn in batchnorm_layers(self):
            bn.momentum = momentum


# 5 epochs of 45 batches: 225 AdamW steps on 16 px digits.
SHORT_RUN = [
    "model=tiny_convnet",
    f"model._target_={__name__}.SlowBNNet",
    "data.image_size=16",
    "data.batch_size=32",
    "optim=adamw",
    "trainer.max_epochs=5",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=none",
    "quant=float",
]


def _float_run(tmp_path: Path, *overrides: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    report = run_pipeline(compose_config([*SHORT_RUN, *overrides]), tmp_path)
    record = json.loads((tmp_path / "stages.json").read_text())["stages"]["float"]
    return report, record, (tmp_path / "report.md").read_text()


@pytest.mark.slow
def test_short_run_collapses_without_precise_bn_and_not_with_it(tmp_path: Path) -> None:
    collapsed, rec_off, md_off = _float_run(tmp_path / "off", "precise_bn_batches=0")
    fixed, rec_on, md_on = _float_run(tmp_path / "on", "precise_bn_batches=64")
    # same weights (same seed and steps): only the BN statistics differ
    assert rec_off["train_top1"] == pytest.approx(rec_on["train_top1"])
    assert rec_off["train_top1"] > 0.8 and rec_off["steps"] >= 200
    top1_off, top1_on = collapsed["stages"]["float"]["top1"], fixed["stages"]["float"]["top1"]
    assert top1_off < 0.35, top1_off  # near the 10 % chance level: one class for most images
    assert top1_on > 0.85, top1_on
    # the health check fired for the collapsed run only, and says why and what to do
    warning = rec_off["health_warning"]
    assert warning and "BatchNorm running statistics" in warning and "precise_bn_batches=64" in warning
    assert "Health check" in md_off and "Precise BN: off" in md_off
    assert rec_on["health_warning"] is None and "Health check" not in md_on
    # recorded: the batches run (the 1437 training images are 45 batches, fewer than the 64 asked)
    assert rec_on["precise_bn"] == {"configured_batches": 64, "batches": 45}
    assert "recomputed over 45 training batches" in md_on
    # the custom class is reported as the class actually built
    assert collapsed["model"] == f"{__name__}.SlowBNNet"
    # health_check=error stops instead (a rerun of the folder: the float stage is loaded, not retrained)
    with pytest.raises(StageCollapseError, match="BatchNorm running statistics"):
        _float_run(tmp_path / "off", "precise_bn_batches=0", "health_check=error")


def test_collapse_message_thresholds() -> None:
    assert collapse_message("float", 0.10, 0.95, 10, 0) is not None
    assert collapse_message("float", 0.90, 0.95, 10, 0) is None
    assert collapse_message("float", 0.10, 0.20, 10, 0) is None  # nothing learnt yet: no verdict
    assert collapse_message("float", 0.10, None, 10, 0) is None  # no training accuracy (float_ckpt)
    assert "still collapsed" in str(collapse_message("qat", 0.5, 0.99, 2, 64))
    assert "quantization broke it" in str(collapse_message("int8", 0.1, 0.95, 10, 64, float_top1=0.93))


def test_recompute_bn_stats_is_the_exact_average_and_restores_the_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01), nn.Dropout(0.5), nn.ReLU())
    model.train()
    batches = [(torch.randn(8, 3, 6, 6) * 3 + 1, torch.zeros(8)) for _ in range(5)]
    run = recompute_bn_stats(model, batches, 3)
    assert run == 3
    bn = model[1]
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches[:3]]
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var)
    assert bn.momentum == 0.01 and model.training and all(m.training for m in model)
    before = bn.running_mean.clone()
    assert recompute_bn_stats(model, batches, 0) == 0
    assert recompute_bn_stats(model, [], 4) == 0
    torch.testing.assert_close(bn.running_mean, before)


def test_precise_bn_batches_must_be_a_whole_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precise_bn_batches"):
        run_pipeline(compose_config([*SHORT_RUN, "precise_bn_batches=-1"]), tmp_path)
