"""Crafted files never run code: a pickle that would create a file when unpickled is planted at every
entry point (``float_ckpt=``, a resumed run folder, ``python -m qat.evaluate``, the Python loaders),
and each refuses it with a message that names the fix, without creating the file."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_run import tiny_overrides

from qat.pipeline.checkpoints import load_float_weights, load_module_weights, read_checkpoint, safe_load
from qat.pipeline.config import CONF_DIR, compose_config
from qat.pipeline.errors import CheckpointError
from qat.pipeline.export import load_int8_state, rebuild_int8
from qat.pipeline.stages import run_pipeline

REPO = CONF_DIR.parent
FAST = tiny_overrides(
    {"data.limit": 64, "report.latency_runs": 1, "report.latency_warmup": 0},
    "+model.width=8",
    "quant=qat",
    "quant.epochs=1",
    "quant.calib_batches=1",
)


class _Touch:
    """Unpickles as ``pathlib.Path(path).touch()``: code run by loading."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def _plant(file: Path, canary: Path) -> Path:
    """Write a ``torch.save`` file whose unpickling creates ``canary``; check the trap is armed."""
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {}, "epoch": 0, "payload": _Touch(canary)}, file)
    with zipfile.ZipFile(file) as archive:
        data = next(n for n in archive.namelist() if n.endswith("data.pkl"))
        pickle.loads(archive.read(data))  # plain pickle: the code runs
    assert canary.exists(), "the planted pickle does not run code; the test would prove nothing"
    canary.unlink()
    return file


def _refused(call: Callable[[], Any], canary: Path, fix: str) -> None:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "was refused" in message and "run code" in message, message
    assert fix in message, message
    assert not canary.exists(), "loading the file ran its code"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("trusted")
    run_pipeline(compose_config(FAST), run_dir)
    return run_dir


def test_float_ckpt_with_code_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    evil = _plant(tmp_path / "evil.ckpt", canary)
    _refused(
        lambda: run_pipeline(compose_config([*FAST, f"float_ckpt={evil}"]), tmp_path / "run"),
        canary,
        "use the float/last.ckpt of a finished run",
    )


@pytest.mark.parametrize("planted", ["float/last.ckpt", "calib/calibrated.pt", "qat/last.ckpt"])
def test_resumed_run_folder_with_code_is_refused(finished_run: Path, planted: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    canary = tmp_path / "pwned"
    _plant(run_dir / planted, canary)
    _refused(lambda: run_pipeline(compose_config(FAST), run_dir), canary, "start fresh with resume=false")


@pytest.mark.parametrize("stage", ["float", "qat"])
def test_interrupted_stage_resume_with_code_is_refused(finished_run: Path, stage: str, tmp_path: Path) -> None:
    """An interrupted stage resumes through Lightning's ``ckpt_path``: the planted last.ckpt is refused first."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    state = json.loads((run_dir / "stages.json").read_text())
    for later in {"float": ["calib", "qat", "int8"], "qat": ["int8"]}[stage]:
        state["stages"].pop(later)
    state["stages"][stage]["status"] = "running"
    (run_dir / "stages.json").write_text(json.dumps(state))
    canary = tmp_path / "pwned"
    _plant(run_dir / stage / "last.ckpt", canary)
    _refused(lambda: run_pipeline(compose_config(FAST), run_dir), canary, "start fresh with resume=false")


def test_lightning_resume_itself_loads_weights_only(finished_run: Path, tmp_path: Path) -> None:
    """Lightning's own load of ``ckpt_path`` (as the pipeline calls it) refuses the pickle too."""
    import pytorch_lightning as pl

    from qat.pipeline.module import ClassificationModule
    from qat.pipeline.stages import build_data, build_model

    cfg = compose_config(FAST)
    canary = tmp_path / "pwned"
    evil = _plant(tmp_path / "last.ckpt", canary)
    module = ClassificationModule(build_model(cfg.model), 10, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    trainer = pl.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        trainer.fit(module, datamodule=build_data(cfg.data), ckpt_path=str(evil), weights_only=True)
    assert not canary.exists()


def test_python_api_loaders_refuse_code(finished_run: Path, tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    evil = _plant(tmp_path / "evil.pt", canary)
    model = torch.nn.Linear(1, 1)
    _refused(lambda: safe_load(evil, "FIX"), canary, "FIX")
    _refused(lambda: read_checkpoint(evil), canary, "use the float/last.ckpt")
    _refused(lambda: load_float_weights(model, evil, {"name": "x"}), canary, "use the float/last.ckpt")
    _refused(lambda: load_module_weights(model, evil), canary, "start fresh with resume=false")
    _plant(tmp_path / "int8" / "int8_state.pt", canary)
    _refused(lambda: load_int8_state(tmp_path), canary, "rerun the quant=calib/qat run")


def test_export_config_cannot_name_other_callables(finished_run: Path, tmp_path: Path) -> None:
    """The export's config is data from the file: a ``_target_`` other than a model or data module is refused."""
    canary = tmp_path / "pwned"
    payload = load_int8_state(finished_run)
    assert isinstance(rebuild_int8(payload), torch.nn.Module)
    for section in ("model", "data"):
        crafted = {**payload, "config": {**payload["config"]}}
        crafted["config"][section] = {"_target_": "builtins.open", "_args_": [str(canary), "w"]}
        torch.save(crafted, tmp_path / "int8_state.pt")
        with pytest.raises(CheckpointError, match=rf"builds {section} with 'builtins.open'.*rerun the quant"):
            rebuild_int8(load_int8_state(tmp_path))
        assert not canary.exists()
    nested = {**payload, "config": {**payload["config"]}}
    nested["config"]["model"] = {**payload["config"]["model"], "act": {"_target_": "builtins.open", "_args_": ["x"]}}
    torch.save(nested, tmp_path / "int8_state.pt")
    with pytest.raises(CheckpointError, match=r"builds model\.act with 'builtins.open'"):
        load_int8_state(tmp_path)


def test_evaluate_cli_refuses_crafted_export(finished_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    canary = tmp_path / "pwned"
    _plant(run_dir / "int8" / "int8_state.pt", canary)
    proc = subprocess.run(
        [sys.executable, "-m", "qat.evaluate", str(run_dir)],
        cwd=REPO,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "was refused" in proc.stderr and "rerun the quant=calib/qat run" in proc.stderr
    assert "reproduces" not in proc.stdout
    assert not canary.exists()
