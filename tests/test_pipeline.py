"""The training pipeline end to end on tiny settings: stages, export, re-evaluation, user errors, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf
from tiny_run import tiny_overrides
from torch import Tensor, nn

import qat.nn as qnn
from qat.models import list_models
from qat.pipeline.config import CONF_DIR, compose_config, validate_overrides
from qat.pipeline.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    ModelRejectedError,
    NaNLossError,
    UnknownModelError,
)
from qat.pipeline.export import TORCHSCRIPT, load_int8_state, rebuild_int8
from qat.pipeline.stages import run_pipeline

REPO = CONF_DIR.parent
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.load` is deprecated:FutureWarning")

# A few steps of a tiny model on 16 px digits: every stage runs, nothing takes long.
FAST = tiny_overrides(None, "+model.width=8")
QUANT_FAST = ["quant.calib_batches=2"]
QAT_FAST = [*QUANT_FAST, "quant=qat", "quant.epochs=1"]


def _run(run_dir: Path, *overrides: str) -> dict[str, Any]:
    return run_pipeline(compose_config([*FAST, *overrides]), run_dir)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run_dir = tmp_path_factory.mktemp("qat_run")
    return run_dir, _run(run_dir, *QAT_FAST)


def _val_batches(run_dir: Path) -> list[tuple[Tensor, Tensor]]:
    from hydra.utils import instantiate

    cfg = OmegaConf.create(load_int8_state(run_dir)["config"])
    return list(instantiate(cfg.data).val_dataloader())


# -- stages -------------------------------------------------------------------------------


def test_qat_runs_every_stage_and_reports(qat_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, report = qat_run
    assert list(report["stages"]) == ["float", "calib", "qat", "int8"]
    for stage in report["stages"].values():
        assert 0.0 <= stage["top1"] <= stage["top5"] <= 1.0
        assert stage["samples"] == 96
    assert report["stages"]["float"]["delta_top1_vs_float"] == 0.0
    assert report["int8_vs_fake_quant"]["reference"] == "qat"
    assert report["int8_vs_fake_quant"]["top1"] >= 0.9
    assert report["size_bytes"]["int8"] < report["size_bytes"]["fp32"]
    assert report["latency_s"]["int8"] > 0 and report["latency_s"]["fp32_bn_folded"] > 0
    assert report["qat_over_float_step_time"] > 0
    assert report["complexity"]["params"] > 0 and report["complexity"]["macs"] > 0
    assert f"{report['complexity']['params']:,} parameters" in (run_dir / "report.md").read_text()
    for name in ("report.json", "report.md", "report.png", "float/last.ckpt", "qat/last.ckpt", "calib/calibrated.pt"):
        assert (run_dir / name).is_file(), name
    assert (
        json.loads((run_dir / "report.json").read_text())["stages"]["int8"]["top1"] == report["stages"]["int8"]["top1"]
    )
    state = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert all(state[s]["status"] == "done" for s in ("float", "calib", "qat", "int8"))


def _qat_state_keys(run_dir: Path) -> list[str]:
    return list(torch.load(run_dir / "qat" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"])


def test_qat_folds_bn_by_default_and_tracks_it_on_request(qat_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = qat_run
    assert not [k for k in _qat_state_keys(run_dir) if "running_mean" in k], "quant.bn=fold leaves no BN"
    report = _run(tmp_path, *QAT_FAST, "quant.bn=track", "quant.freeze_bn_epoch=0")
    assert report["stages"]["int8"]["top1"] >= 0.0
    assert [k for k in _qat_state_keys(tmp_path) if "bn.running_mean" in k]
    with pytest.raises(ConfigError, match="needs quant.bn=track"):
        _run(tmp_path / "bad", *QAT_FAST, "quant.freeze_bn_epoch=1")


def test_float_only_trains_and_reports_without_int8(tmp_path: Path) -> None:
    report = _run(tmp_path, "quant=float")
    assert list(report["stages"]) == ["float"]
    assert report["size_bytes"] is None
    assert (tmp_path / "float" / "last.ckpt").is_file()
    assert not (tmp_path / "int8").exists()


def test_calib_from_float_ckpt_skips_float_training(qat_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    src, qat_report = qat_run
    report = _run(tmp_path, *QUANT_FAST, "quant=calib", f"float_ckpt={src / 'float' / 'last.ckpt'}")
    assert list(report["stages"]) == ["float", "calib", "int8"]
    assert not (tmp_path / "float").exists()
    assert report["stages"]["float"]["top1"] == qat_report["stages"]["float"]["top1"]
    assert report["stages"]["calib"]["top1"] == qat_report["stages"]["calib"]["top1"]
    assert report["int8_vs_fake_quant"]["reference"] == "calib"
    assert report["qat_over_float_step_time"] is None
    assert (tmp_path / "int8" / TORCHSCRIPT).is_file()


def test_rerun_in_same_folder_skips_complete_stages(qat_run: tuple[Path, dict[str, Any]]) -> None:
    run_dir, report = qat_run
    before = json.loads((run_dir / "stages.json").read_text())
    again = run_pipeline(compose_config([*FAST, *QAT_FAST]), run_dir)
    after = json.loads((run_dir / "stages.json").read_text())
    assert after["stages"]["float"]["train_wall_s"] == before["stages"]["float"]["train_wall_s"]
    assert after["stages"]["qat"]["train_wall_s"] == before["stages"]["qat"]["train_wall_s"]
    assert again["stages"] == report["stages"]


# -- export and re-evaluation -------------------------------------------------------------


def test_export_reloads_with_same_predictions(qat_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    run_dir, _ = qat_run
    payload = load_int8_state(run_dir)
    torch.backends.quantized.engine = payload["engine"]
    x = torch.cat([b[0] for b in _val_batches(run_dir)])
    rebuilt = rebuild_int8(payload)
    traced = torch.jit.load(str(run_dir / "int8" / TORCHSCRIPT))
    with torch.no_grad():
        ref = rebuilt(x)
        assert torch.equal(traced(x), ref)
    # Plain torch, with `qat` made unimportable: the TorchScript file needs nothing else.
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys; sys.modules['qat'] = None; import torch; "
        f"torch.backends.quantized.engine = {payload['engine']!r}; "
        f"m = torch.jit.load({str(run_dir / 'int8' / TORCHSCRIPT)!r}); "
        f"torch.save(m(torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)), {str(tmp_path / 'y.pt')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "y.pt", weights_only=True), ref)


def test_export_rebuild_keeps_lookup_table_grids(tmp_path: Path) -> None:
    """SiLU becomes an int8 lookup table whose output grid is not in the state dict; the rebuild restores it."""
    _run(tmp_path, *QUANT_FAST, "quant=calib", "+model.act_layer=silu")
    payload = load_int8_state(tmp_path)
    assert payload["module_qparams"], "expected lookup-table activations with their own output grid"
    x = torch.cat([b[0] for b in _val_batches(tmp_path)])
    with torch.no_grad():
        assert torch.equal(rebuild_int8(payload)(x), torch.jit.load(str(tmp_path / "int8" / TORCHSCRIPT))(x))


def test_evaluate_reproduces_report_int8_top1(qat_run: tuple[Path, dict[str, Any]], capsys) -> None:
    from qat.evaluate import evaluate_export, main

    run_dir, report = qat_run
    out = evaluate_export(str(run_dir))
    assert out["metrics"]["top1"] == report["stages"]["int8"]["top1"]
    assert out["metrics"]["loss"] == pytest.approx(report["stages"]["int8"]["loss"], abs=1e-6)
    assert evaluate_export(str(run_dir / "int8"), torchscript=True)["metrics"]["top1"] == out["metrics"]["top1"]
    assert main([str(run_dir)]) == 0
    assert "reproduces" in capsys.readouterr().out


# -- user errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "error", "needle"),
    [
        ("model=henet_tinyx", UnknownModelError, "Did you mean henet_tinym"),
        ("data=digitz", ConfigError, "Did you mean digits"),
        ("quant=qatt", ConfigError, "Did you mean qat"),
        ("quant=calib,qta", ConfigError, "unknown quant option 'qta'"),
    ],
)
def test_unknown_group_option_names_close_matches(override: str, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        validate_overrides([override])


def test_unknown_model_name_override(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="Did you mean tiny_convnet"):
        _run(tmp_path, "model.name=tiny_convnt")


def test_missing_or_empty_data_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        _run(tmp_path / "run1", "data=imagefolder", f"data.root={tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="needs a 'train' folder"):
        _run(tmp_path / "run2", "data=imagefolder", f"data.root={tmp_path / 'empty'}")
    for split in ("train", "val"):
        (tmp_path / "noimg" / split / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="without images"):
        _run(tmp_path / "run3", "data=imagefolder", f"data.root={tmp_path / 'noimg'}")
    with pytest.raises(DataError, match="data.root is not set"):
        _run(tmp_path / "run4", "data=imagefolder")


def test_bad_float_ckpt(qat_run: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    src, _ = qat_run
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        _run(tmp_path / "a", "quant=float", f"float_ckpt={corrupt}")
    with pytest.raises(CheckpointError, match="does not exist"):
        _run(tmp_path / "b", "quant=float", f"float_ckpt={tmp_path / 'missing.ckpt'}")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "qat_model_info": {"name": "resnet18", "num_classes": 10}}, other)
    with pytest.raises(CheckpointError, match="use model=resnet18"):
        _run(tmp_path / "c", "quant=float", f"float_ckpt={other}")
    with pytest.raises(CheckpointError, match="does not fit"):  # same model name, other width
        _run(tmp_path / "d", "quant=float", "model.width=16", f"float_ckpt={src / 'float' / 'last.ckpt'}")
    with pytest.raises(CheckpointError, match="fake-quant"):
        _run(tmp_path / "e", "quant=float", f"float_ckpt={src / 'qat' / 'last.ckpt'}")


def test_nan_loss_stops_with_advice(tmp_path: Path) -> None:
    with pytest.raises(NaNLossError, match="lower the learning rate"):
        _run(tmp_path, "quant=float", "optim.optimizer.lr=nan")


class _FunctionalSigmoidNet(nn.Module):
    """Calls ``torch.sigmoid`` as a function: no observer, so check_model must reject it."""

    def __init__(self, num_classes: int = 10, **kwargs: Any) -> None:
        super().__init__()
        self.quant = qnn.QuantStub(scale=1 / 128)
        self.conv = qnn.ConvModule2d(3, 4, 3, padding=1, norm_layer="bn")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)
        self.dequant = qnn.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        x = torch.sigmoid(self.conv(self.quant(x)))
        return self.dequant(self.fc(torch.flatten(self.pool(x), 1)))


def test_check_model_rejection_fails_before_training(tmp_path: Path) -> None:
    cfg = compose_config(FAST)
    cfg.model = OmegaConf.create({"_target_": f"{__name__}._FunctionalSigmoidNet", "name": "sigmoid_net"})
    with pytest.raises(ModelRejectedError, match="functional-act") as info:
        run_pipeline(cfg, tmp_path)
    assert "training was not started" in str(info.value)
    assert not (tmp_path / "float").exists()


# -- configs and CLI ----------------------------------------------------------------------


def test_every_registered_model_has_a_config() -> None:
    for name in list_models():
        path = CONF_DIR / "model" / f"{name}.yaml"
        assert path.is_file(), f"{path} missing: run python scripts/gen_model_configs.py"
        cfg = OmegaConf.load(path)
        assert cfg.name == name and cfg._target_ == "qat.models.create_model"
    stale = [
        p.name
        for p in (CONF_DIR / "model").glob("*.yaml")
        if OmegaConf.load(p).get("_target_") == "qat.models.create_model"
        and OmegaConf.load(p).name not in list_models()
    ]
    assert not stale, f"configs for unregistered models {stale}: run python scripts/gen_model_configs.py"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_user_errors_print_one_clean_message(tmp_path: Path, capsys) -> None:
    unknown = _cli("model=henet_tinyx", cwd=tmp_path)
    assert unknown.returncode == 2 and "Did you mean henet_tinym" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    # The Hydra task's own handler (train.run), in-process: a runtime user error exits 2 with one message.
    spec = importlib.util.spec_from_file_location("train_entry", REPO / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    cfg = compose_config([*FAST, "data=imagefolder", f"data.root={tmp_path / 'nowhere'}"])
    with pytest.raises(SystemExit) as info:
        train.run(cfg, tmp_path / "run")
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: data root")


def test_cli_cfg_job_and_help(tmp_path: Path) -> None:
    job = _cli("--cfg", "job", "model=tiny_convnet", "quant=calib", cwd=tmp_path)
    assert job.returncode == 0 and "name: tiny_convnet" in job.stdout and "mode: calib" in job.stdout
    help_ = _cli("--help", cwd=tmp_path)
    assert help_.returncode == 0 and "quant: calib, float, qat" in help_.stdout


def test_cli_multirun_over_quant_modes(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _cli("-m", *FAST, "++quant.calib_batches=2", "quant=float,calib", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = sorted(sweep.glob("*/report.json"))
    assert [json.loads(p.read_text())["mode"] for p in reports] == ["float", "calib"]


# -- interruption and DDP (real CLI processes) ---------------------------------------------


def test_killed_run_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    """SIGKILL a float run after its first epoch checkpoint; the rerun in the same folder resumes it."""
    run_dir = tmp_path / "run"
    args = [
        *[o for o in FAST if not o.startswith(("trainer.max_epochs", "data.limit", "+model.width"))],
        "+model.width=32",
        "trainer.max_epochs=4",
        "quant=float",
        f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL
    )
    last = run_dir / "float" / "last.ckpt"
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    assert last.is_file(), "the run never wrote float/last.ckpt"
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    assert killed_at < 4, "the run finished before it could be interrupted"
    assert not (run_dir / "report.json").exists()

    again = _cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    state = json.loads((run_dir / "stages.json").read_text())["stages"]["float"]
    assert state["status"] == "done" and state["resumed_from"] == str(last)
    assert state["epochs"] == 4
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 3  # 0-based: the 4th epoch
    assert (run_dir / "report.json").is_file()


def test_ddp_qat_on_two_cpu_processes(tmp_path: Path) -> None:
    """trainer=ddp: 2 gloo processes train float and QAT; ranks hold identical grids; one export."""
    run_dir = tmp_path / "run"
    proc = _cli(
        *FAST,
        *QAT_FAST,
        "trainer=ddp",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((run_dir / "stages.json").read_text())["stages"]
    for stage in ("float", "qat"):
        assert state[stage]["world_size"] == 2
        assert state[stage]["ranks_consistent"] is True
    assert state["int8"]["status"] == "done"
    exports = ["int8_state.pt", "model_fp32.onnx", "model_int8.onnx", TORCHSCRIPT]
    assert sorted(p.name for p in (run_dir / "int8").iterdir()) == exports  # rank 0 alone wrote them
    assert len(list(run_dir.rglob("report.json"))) == 1
