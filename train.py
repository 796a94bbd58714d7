#!/usr/bin/env python
"""Train, quantize and report: ``python train.py model=henet_tinym quant=qat``.

float training → calibration → QAT → real int8, every stage evaluated on the same held-out split,
the int8 model exported and an accuracy-drop report written into the Hydra run folder.
``python train.py --help`` lists the config groups; ``--cfg job`` prints the composed config.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from qat.pipeline.errors import PipelineError


def fail(err: PipelineError) -> None:
    """Print a user error as one message (no traceback) and exit with status 2."""
    print(f"\nerror: {err}", file=sys.stderr)
    sys.exit(2)


def run(cfg: DictConfig, run_dir: str | Path) -> float | None:
    """Run the pipeline; user errors exit cleanly. Returns the last stage's top-1 (for sweepers)."""
    from qat.pipeline.stages import run_pipeline

    try:
        report = run_pipeline(cfg, run_dir)
    except PipelineError as err:
        fail(err)
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
    except PipelineError as err:
        fail(err)
    main()
