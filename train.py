#!/usr/bin/env python
"""Train, quantize and report: ``python train.py model=henet_tinym quant=qat``.

float training → calibration → QAT → real int8, every stage evaluated on the same held-out split,
the int8 model exported and an accuracy-drop report written into the Hydra run folder.
``python train.py --help`` lists the config groups; ``--cfg job`` prints the composed config.
"""

from __future__ import annotations

import errno
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from qat.pipeline.errors import ConfigError, PipelineError, one_line

# Errors writing the run folder that the user fixes (permissions, read-only or full disk, a file in the way).
_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.ENOTDIR, errno.EEXIST}


def fail(err: PipelineError) -> None:
    """Print a user error as one message (no traceback) and exit with status 2."""
    print(f"\nerror: {one_line(err)}", file=sys.stderr)
    sys.exit(2)


def _unwritable(path: Path, err: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write the run folder {path} ({err.strerror or err}); make it writable (e.g. chmod u+w) or "
        "choose another one with hydra.run.dir=<folder>"
    )


def check_run_folder(argv: Sequence[str]) -> None:
    """Refuse a run folder that cannot be written before Hydra tries (its own failure is a traceback).

    The folder is ``hydra.run.dir`` (``hydra.sweep.dir`` with ``-m``) or the default under
    ``outputs/``; the part before any ``${...}`` is probed by creating a file in its nearest
    existing folder.
    """
    multirun = any(a in ("-m", "--multirun") for a in argv)
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a[len(key) :] for a in argv if a.startswith(key)]
    folder = Path((given[-1] if given else ("multirun" if multirun else "outputs")).split("${")[0] or ".")
    probe = folder.expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{probe} is a file, not a folder")
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise _unwritable(folder, err) from None


def run(cfg: DictConfig, run_dir: str | Path) -> float | None:
    """Run the pipeline; user errors exit cleanly. Returns the last stage's top-1 (for sweepers)."""
    from qat.pipeline.stages import run_pipeline

    try:
        report = run_pipeline(cfg, run_dir)
    except PipelineError as err:
        fail(err)
    except OSError as err:
        if err.errno not in _UNWRITABLE or not str(err.filename or "").startswith(str(run_dir)):
            raise
        fail(_unwritable(Path(run_dir), err))
    stages = report["stages"]
    return list(stages.values())[-1]["top1"] if stages else None


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    """Hydra task: the pipeline in this job's run folder."""
    from hydra.core.hydra_config import HydraConfig

    return run(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from qat.pipeline.config import validate_overrides

    try:
        validate_overrides(sys.argv[1:])
        check_run_folder(sys.argv[1:])
    except PipelineError as err:
        fail(err)
    main()
