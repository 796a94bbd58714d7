"""``stages.json`` in the run folder: which stages are complete, what they measured, and the settings they used.

A rerun in the same folder (``hydra.run.dir=<run> resume=true``) skips complete stages and
resumes an interrupted one from its ``last.ckpt``. Each stage records a fingerprint of the config
values that determine it (chained with its upstream stage's), so a rerun with another value is
refused with the changed keys instead of mixing two configurations; ``resume=false`` starts the
folder over. Hydra rewrites ``.hydra/`` before the pipeline runs, so the accepted run's copy is
kept here and put back when a rerun is refused. Only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qat.pipeline.errors import ConfigError

__all__ = ["STATE_FILE", "StageState", "stage_inputs"]

STATE_FILE = "stages.json"
HYDRA_DIR = ".hydra"
# What the pipeline writes into a run folder; resume=false removes it before starting over.
OUTPUTS = ("float", "calib", "qat", "int8", STATE_FILE, "report.json", "report.md", "report.png")

# Top-level keys that never change what a stage computes.
_NOT_INPUTS = {"resume", "logger", "hydra", "health_check"}
# Trainer keys that only change what is printed.
_COSMETIC_TRAINER = {"enable_progress_bar", "enable_model_summary", "log_every_n_steps"}
# quant keys that only the QAT stage reads.
_QAT_ONLY = {"mode", "epochs", "lr_scale", "activation_scales", "bn", "freeze_bn_epoch", "freeze_observer_epoch"}
_STAGE_KEYS = {"report", "quant", "optim", "trainer", "float_ckpt"}


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values): the keys a refusal names."""
    if isinstance(node, dict) and (node or not prefix):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: node}


def _file_sha256(path: str | Path) -> str | None:
    path = Path(path).expanduser()
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_inputs(config: dict[str, Any], stages: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per stage, the flattened config values that determine it (upstream stages are chained by fingerprint).

    float: model, data, seed, deterministic and any other top-level key, plus optim and trainer (or
    ``float_ckpt`` with its content hash); calib: the calibration's quant keys; qat: every quant key,
    optim, trainer (but the float epochs); int8: the target and the report's latency settings.
    """
    common = {k: v for k, v in config.items() if k not in _NOT_INPUTS | _STAGE_KEYS}
    if isinstance(common.get("data"), dict):  # workers change speed, not numbers (per-sample seeds)
        common["data"] = {k: v for k, v in common["data"].items() if k != "num_workers"}
    trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k not in _COSMETIC_TRAINER}
    optim = config.get("optim")
    quant = config.get("quant") or {}
    float_ckpt = config.get("float_ckpt")
    if float_ckpt:
        first = {**common, "float_ckpt": float_ckpt, "float_ckpt_sha256": _file_sha256(float_ckpt)}
    else:
        first = {**common, "optim": optim, "trainer": trainer}
    inputs = {
        "float": first,
        "calib": {"quant": {k: v for k, v in quant.items() if k not in _QAT_ONLY}},
        "qat": {"quant": quant, "optim": optim, "trainer": {k: v for k, v in trainer.items() if k != "max_epochs"}},
        "int8": {"quant": {"target": quant.get("target")}, "report": config.get("report")},
    }
    return {stage: _flatten(inputs[stage]) for stage in stages}


def _fingerprints(inputs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """sha256 of each stage's inputs and its upstream stage's fingerprint (stages in run order)."""
    prints, upstream = {}, ""
    for stage, values in inputs.items():
        text = json.dumps({"inputs": values, "upstream": upstream}, sort_keys=True, default=str)
        upstream = prints[stage] = hashlib.sha256(text.encode()).hexdigest()
    return prints


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    unset = "<unset>"
    return [
        f"{key}: {old.get(key, unset)!r} -> {new.get(key, unset)!r}"
        for key in sorted(set(old) | set(new))
        if old.get(key, unset) != new.get(key, unset)
    ]


class StageState:
    """Per-stage records ``{"status": "running"|"done", "fingerprint": ..., ...measurements}`` persisted as JSON.

    ``identity`` (model name, class count, data, quant mode) and ``inputs`` (:func:`stage_inputs`)
    describe this run; a resumed folder recorded with other values raises :class:`ConfigError`
    naming them (after putting back the recorded ``.hydra/`` files).
    """

    def __init__(
        self,
        run_dir: Path,
        resume: bool,
        writer: bool,
        identity: dict[str, Any],
        inputs: dict[str, dict[str, Any]] | None = None,
        keep: Sequence[str | Path] = (),
    ) -> None:
        self.path = run_dir / STATE_FILE
        self.writer = writer
        self.identity = identity
        self.inputs = inputs or {}
        self.fingerprints = _fingerprints(self.inputs)
        self.records: dict[str, dict[str, Any]] = {}
        if resume and self.path.is_file():
            saved = json.loads(self.path.read_text())
            self._check_same_settings(run_dir, saved)
            self.records = saved.get("stages", {})
        elif not resume and writer:
            _clear_outputs(run_dir, keep)
        self.hydra_files = _read_hydra(run_dir)

    def _check_same_settings(self, run_dir: Path, saved: dict[str, Any]) -> None:
        changes = _changes(saved.get("identity") or {}, self.identity)
        for stage, record in (saved.get("stages") or {}).items():
            if stage not in self.fingerprints:
                continue
            if "fingerprint" not in record:
                changes.append(f"{stage}: recorded without a settings fingerprint (an older qat)")
            elif record["fingerprint"] != self.fingerprints[stage]:
                old = (saved.get("inputs") or {}).get(stage, {})
                changes += [c for c in _changes(old, self.inputs[stage]) if c not in changes]
                if not changes:  # only an upstream fingerprint moved, and its values were not recorded
                    changes.append(
                        f"{stage}: settings fingerprint {record['fingerprint'][:12]} -> {self.fingerprints[stage][:12]}"
                    )
        if not changes:
            return
        if self.writer:
            _write_hydra(run_dir, saved.get("hydra_files") or {})
        raise ConfigError(
            f"{run_dir} holds a run made with other settings ({'; '.join(changes)}), so rerunning it would mix "
            "two configurations; rerun with the recorded values, start this folder over with resume=false, "
            "or pick a new hydra.run.dir"
        )

    def get(self, stage: str) -> dict[str, Any]:
        return self.records.get(stage, {})

    def done(self, stage: str) -> bool:
        return self.get(stage).get("status") == "done"

    def update(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the stage's record, stamped with its fingerprint, and save (rank 0 only)."""
        record = self.records.setdefault(stage, {})
        record.update(fields)
        if stage in self.fingerprints:
            record["fingerprint"] = self.fingerprints[stage]
        self._save()
        return record

    def _save(self) -> None:
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        payload = {
            "identity": self.identity,
            "stages": self.records,
            "inputs": self.inputs,
            "hydra_files": self.hydra_files,
        }
        tmp.write_text(json.dumps(payload, indent=2, default=str))
        os.replace(tmp, self.path)


def _read_hydra(run_dir: Path) -> dict[str, str]:
    """The text of ``.hydra/*.yaml`` (what Hydra wrote for the run being accepted), if any."""
    folder = run_dir / HYDRA_DIR
    return {p.name: p.read_text() for p in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def _write_hydra(run_dir: Path, files: dict[str, str]) -> None:
    """Put the recorded ``.hydra/`` files back (Hydra overwrote them for a run that is refused)."""
    for name, text in files.items():
        if Path(name).name == name and name.endswith(".yaml"):
            (run_dir / HYDRA_DIR / name).write_text(text)


def _clear_outputs(run_dir: Path, keep: Sequence[str | Path]) -> None:
    """Remove the pipeline's outputs of an earlier run (``resume=false``), except folders holding ``keep`` files."""
    kept = [Path(k).expanduser().resolve() for k in keep if k]
    for name in OUTPUTS:
        path = run_dir / name
        if any(k.is_relative_to(path.resolve()) for k in kept):
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
