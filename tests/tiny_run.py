"""Tiny pipeline settings the end-to-end tests share: every stage runs, nothing takes long."""

from __future__ import annotations

from collections.abc import Mapping

# tiny_convnet on 96 of the 16 px digits, one epoch, no logger, short latency timing
_BASE: dict[str, object] = {
    "model": "tiny_convnet",
    "data.image_size": 16,
    "data.stem": "cifar",
    "data.limit": 96,
    "data.batch_size": 32,
    "data.eval_batch_size": 64,
    "trainer.max_epochs": 1,
    "trainer.enable_progress_bar": "false",
    "trainer.enable_model_summary": "false",
    "logger": "none",
    "report.latency_runs": 3,
    "report.latency_warmup": 1,
    "report.latency_rounds": 1,
}


def tiny_overrides(changes: Mapping[str, object] | None = None, *extra: str) -> list[str]:
    """Hydra overrides of the tiny run with ``changes`` applied (a ``None`` value drops a key), then ``extra``."""
    settings = {**_BASE, **(changes or {})}
    return [f"{key}={value}" for key, value in settings.items() if value is not None] + list(extra)
