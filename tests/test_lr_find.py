"""``optim.optimizer.lr=auto`` (Lightning's learning-rate finder) and the per-model optim defaults."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tiny_run import tiny_overrides

from qat.models import create_model
from qat.models.registry import training_defaults
from qat.pipeline.config import compose_config
from qat.pipeline.data import DigitsDataModule
from qat.pipeline.errors import ConfigError
from qat.pipeline.module import ClassificationModule
from qat.pipeline.optim import find_lr, resolve_optim_defaults, set_bn_momentum
from qat.pipeline.stages import run_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = tiny_overrides(
    {
        "data.limit": None,
        "data.eval_batch_size": 256,
        "report.latency_runs": None,
        "report.latency_warmup": None,
        "report.latency_rounds": None,
    },
    "+model.width=8",
    "quant=float",
)


def test_finder_picks_a_stable_rate(tmp_path: Path) -> None:
    """On a tiny model the pick lies in the stable range and lowers the loss below its starting value."""
    pl.seed_everything(0, verbose=False)
    data = DigitsDataModule(image_size=16, stem="cifar", batch_size=32)
    model = create_model("tiny_convnet", num_classes=10, stem="cifar", width=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module = ClassificationModule(model, 10, optimizer=functools.partial(torch.optim.SGD, lr=1e-6, momentum=0.9))
    trainer = functools.partial(
        pl.Trainer, accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    found = find_lr(module, data, trainer, tmp_path)
    assert 1e-4 <= found["value"] <= 1.0
    assert found["loss_at_suggestion"] < found["loss_at_start"]
    assert found["steps"] > 50 and Path(found["plot"]).is_file()
    for key, value in model.state_dict().items():  # the range test leaves the weights as they were
        assert torch.equal(value, before[key]), key


def test_lr_auto_in_the_pipeline_is_used_and_reported(tmp_path: Path) -> None:
    report = run_pipeline(compose_config([*FAST, "data.limit=256", "optim.optimizer.lr=auto"]), tmp_path)
    lr = report["optim"]["lr"]
    assert lr["source"] == "auto" and 1e-4 <= lr["value"] <= 1.0
    assert (tmp_path / "lr_find" / "lr_find.png").is_file()
    assert "learning-rate finder" in (tmp_path / "report.md").read_text().lower()


def test_nulls_take_the_model_defaults_and_explicit_values_win() -> None:
    cfg = compose_config(["model=mobilenet_v2", "data.batch_size=64", "optim.label_smoothing=0.0"])
    record = resolve_optim_defaults(cfg.optim, "mobilenet_v2", 32, 64)
    defaults = training_defaults("mobilenet_v2", 32)
    assert cfg.optim.optimizer.lr == pytest.approx(defaults.lr * 64 / 128)
    assert cfg.optim.optimizer.weight_decay == defaults.weight_decay
    assert cfg.optim.scheduler.warmup_fraction == defaults.warmup_fraction
    assert record["lr"]["source"] == "model default"
    assert record["label_smoothing"] == {"value": 0.0, "source": "config"}
    assert training_defaults("mobilenet_v2", 224) != defaults  # small and large inputs differ
    model = create_model("tiny_convnet", num_classes=10)
    assert set_bn_momentum(model, 0.01) > 0
    assert all(m.momentum == 0.01 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ConfigError, match="use a number, null"):
        resolve_optim_defaults(compose_config(["optim.optimizer.lr=fast"]).optim, "mobilenet_v2", 32, 64)


def test_a_users_own_class_keeps_its_bn_momentum() -> None:
    """Only registered models take a default BN momentum; a custom class keeps what it was written with."""
    cfg = compose_config(["model=mobilenet_v2"])
    resolve_optim_defaults(cfg.optim, "my_pkg.MyNet", 32, 64)
    assert cfg.optim.bn_momentum is None
    assert cfg.optim.optimizer.lr is not None  # the other defaults still apply
