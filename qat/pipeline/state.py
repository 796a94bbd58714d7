"""``stages.json`` in the run folder: which stages are complete and what they measured.

A rerun in the same folder (``hydra.run.dir=<run> resume=true``) skips complete stages and
resumes an interrupted one from its ``last.ckpt``. Only rank 0 writes the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from qat.pipeline.errors import ConfigError

__all__ = ["STATE_FILE", "StageState"]

STATE_FILE = "stages.json"


class StageState:
    """Per-stage records ``{"status": "running"|"done", ...measurements}`` persisted as JSON."""

    def __init__(self, run_dir: Path, resume: bool, writer: bool, identity: dict[str, Any]) -> None:
        self.path = run_dir / STATE_FILE
        self.writer = writer
        self.records: dict[str, dict[str, Any]] = {}
        if resume and self.path.is_file():
            saved = json.loads(self.path.read_text())
            if saved.get("identity") != identity:
                raise ConfigError(
                    f"{run_dir} holds a run of another model/data/quant mode ({saved.get('identity')}); "
                    "resume it with the same settings, or start fresh with resume=false or another hydra.run.dir"
                )
            self.records = saved.get("stages", {})
        self.identity = identity

    def get(self, stage: str) -> dict[str, Any]:
        return self.records.get(stage, {})

    def done(self, stage: str) -> bool:
        return self.get(stage).get("status") == "done"

    def update(self, stage: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the stage's record and save (rank 0 only)."""
        record = self.records.setdefault(stage, {})
        record.update(fields)
        self._save()
        return record

    def _save(self) -> None:
        if not self.writer:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "stages": self.records}, indent=2))
        os.replace(tmp, self.path)
