"""Exact resume: a run killed (SIGKILL) mid float epoch, during calibration or mid QAT and rerun in the same
folder ends with the same metrics, bit for bit, as the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_run import tiny_overrides

from qat.pipeline.config import CONF_DIR, compose_config
from qat.pipeline.data import DigitsDataModule
from qat.pipeline.stages import run_pipeline

REPO = CONF_DIR.parent
# 3 float epochs and 2 QAT epochs of 3 steps each on augmented 16 px digits (random shifts: the
# augmentation RNG and the data order both matter).
RUN = tiny_overrides(
    {"data.eval_batch_size": 96, "trainer.max_epochs": 3, "report.latency_runs": 1, "report.latency_warmup": 0},
    "+model.width=8",
    "quant=qat",
    "quant.epochs=2",
    "quant.calib_batches=2",
)

# Runs the pipeline in a fresh process that SIGKILLs itself at a chosen point: a real kill (nothing is
# cleaned up or flushed), at a step that does not depend on timing.
_KILLER = """
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
import qat.pipeline.stages as stages
from qat.pipeline.config import compose_config
from qat.pipeline.module import ClassificationModule

where, overrides, run_dir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if where["stage"] == "calib":
    calibrate = stages.calibrate
    def killed_calibrate(model, loader, num_batches, **kwargs):
        calibrate(model, loader, num_batches=1, **kwargs)
        die()
    stages.calibrate = killed_calibrate
else:
    step = ClassificationModule.training_step
    def killed_step(self, batch, batch_idx):
        here = Path(self.trainer.default_root_dir).name == where["stage"]
        if here and self.current_epoch == where["epoch"] and batch_idx == where["batch"]:
            die()
        return step(self, batch, batch_idx)
    ClassificationModule.training_step = killed_step
stages.run_pipeline(compose_config(overrides), run_dir)
"""


def _epoch_batches(workers: int, epoch: int, salt: str = "float", iter_first: bool = False) -> list[torch.Tensor]:
    """One epoch of augmented training batches; ``iter_first``: the iterator exists before ``set_epoch``
    (what Lightning does in a resumed run)."""
    data = DigitsDataModule(image_size=16, limit=64, batch_size=16, num_workers=workers)
    data.epoch_salt = salt
    loader = data.train_dataloader()
    if iter_first:
        batches = iter(loader)
        loader.sampler.set_epoch(epoch)
    else:
        loader.sampler.set_epoch(epoch)
        batches = iter(loader)
    return [x for x, _ in batches]


def test_training_batches_depend_on_seed_stage_and_epoch_only() -> None:
    reference = _epoch_batches(0, 2)
    assert len(reference) == 4
    for other in (_epoch_batches(0, 2, iter_first=True), _epoch_batches(2, 2), _epoch_batches(2, 2, iter_first=True)):
        assert all(torch.equal(a, b) for a, b in zip(reference, other, strict=True))
    for other in (_epoch_batches(0, 1), _epoch_batches(0, 2, salt="qat")):
        assert not torch.equal(torch.cat(reference), torch.cat(other))


def _metrics(report: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    return {name: (s["top1"], s["top5"], s["loss"]) for name, s in report["stages"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_pipeline(compose_config(RUN), tmp_path_factory.mktemp("whole"))


@pytest.mark.parametrize(
    "where",
    [
        {"stage": "float", "epoch": 1, "batch": 1},
        {"stage": "calib"},
        {"stage": "qat", "epoch": 1, "batch": 1},
    ],
    ids=["mid-float-epoch", "during-calibration", "mid-qat-epoch"],
)
def test_killed_run_resumes_to_the_same_metrics(
    where: dict[str, Any], uninterrupted: dict[str, Any], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLER, json.dumps(where), json.dumps(RUN), str(run_dir)],
        cwd=REPO,
        env={**os.environ, "HYDRA_FULL_ERROR": "1"},
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    recorded = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert recorded.get(where["stage"], {}).get("status") != "done"
    assert "int8" not in recorded and not (run_dir / "report.json").exists()

    resumed = run_pipeline(compose_config(RUN), run_dir)

    state = json.loads((run_dir / "stages.json").read_text())["stages"]
    if where["stage"] != "calib":
        assert state[where["stage"]]["resumed_from"] == str(run_dir / where["stage"] / "last.ckpt")
    assert _metrics(resumed) == _metrics(uninterrupted)
    int8, whole = resumed["stages"]["int8"], uninterrupted["stages"]["int8"]
    assert (int8["top1"], int8["loss"]) == (whole["top1"], whole["loss"])


# -- reruns are honest ----------------------------------------------------------------------

CALIB = [*(o for o in RUN if not o.startswith(("trainer.max_epochs", "quant"))), "trainer.max_epochs=1", "quant=calib"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_rerun_with_changed_settings_is_refused_and_records_stay(tmp_path: Path) -> None:
    """Another value on a rerun: refused with the changed keys, and nothing in the folder describes it."""
    run_dir = tmp_path / "run"
    first = _cli(*CALIB, "quant.calib_batches=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    kept = {name: (run_dir / name).read_bytes() for name in (".hydra/config.yaml", "report.md", "stages.json")}

    changed = _cli(
        *CALIB,
        "quant.calib_batches=1",
        "quant.target=arm",
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert changed.returncode == 2 and "Traceback" not in changed.stderr, changed.stderr[-3000:]
    message = changed.stderr.strip().splitlines()[-1]
    assert "quant.target: 'x86' -> 'arm'" in message and "trainer.max_epochs: 1 -> 2" in message, message
    assert "resume=false" in message and "hydra.run.dir" in message
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept

    # The same settings again (in-process): accepted, every stage skipped, nothing re-measured.
    before = json.loads(kept["stages.json"])["stages"]
    again = run_pipeline(compose_config([*CALIB, "quant.calib_batches=1"]), run_dir)
    after = json.loads((run_dir / "stages.json").read_text())["stages"]
    assert after["float"]["train_wall_s"] == before["float"]["train_wall_s"]
    assert after["calib"]["calib_wall_s"] == before["calib"]["calib_wall_s"]
    assert after["int8"]["latency_s"] == before["int8"]["latency_s"]
    assert {s: after[s]["fingerprint"] for s in after} == {s: before[s]["fingerprint"] for s in before}
    assert again["quant"]["target"] == "x86"


def test_resume_false_starts_the_folder_over(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_pipeline(compose_config([*CALIB, "quant.calib_batches=1"]), run_dir)
    assert (run_dir / "int8").is_dir()
    report = run_pipeline(compose_config([*CALIB, "quant=float", "trainer.max_epochs=2", "resume=false"]), run_dir)
    assert list(report["stages"]) == ["float"]
    assert not (run_dir / "int8").exists() and not (run_dir / "calib").exists(), "stale outputs of the old run"
    state = json.loads((run_dir / "stages.json").read_text())
    assert state["identity"]["mode"] == "float" and list(state["stages"]) == ["float"]
    assert state["stages"]["float"]["epochs"] == 2
