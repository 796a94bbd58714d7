"""User-facing pipeline errors: each message names the problem and how to fix it.

``train.py`` and ``python -m qat.evaluate`` print these as one clean message (no traceback);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "ModelRejectedError",
    "NaNLossError",
    "PipelineError",
    "StageCollapseError",
    "UnknownModelError",
    "close_matches_hint",
    "one_line",
]


def close_matches_hint(name: str, options: Iterable[str], prefix: str = "") -> str:
    """`` Did you mean a, b?`` for the closest options (each shown after ``prefix``), or an empty string."""
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def one_line(err: BaseException) -> str:
    """The message of a user error, without the worker traceback a DataLoader worker wraps it in."""
    text = str(err)
    marker = f"{type(err).__name__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


class PipelineError(Exception):
    """A problem the user can fix (configuration, data, checkpoint, model); printed without a traceback."""


class ConfigError(PipelineError):
    """An unknown config group option or an invalid setting."""


class UnknownModelError(ConfigError):
    """A model name that is not registered (or has no config file)."""

    def __init__(self, name: str, registered: Iterable[str]) -> None:
        registered = sorted(registered)
        super().__init__(
            f"unknown model {name!r}.{close_matches_hint(name, registered)} "
            f"Registered models: {', '.join(registered)}. Pick one with model=<name>."
        )
        self.name = name


class DataError(PipelineError):
    """Missing, empty or malformed data."""


class CheckpointError(PipelineError):
    """A checkpoint that cannot be read, or that belongs to another model."""


class NaNLossError(PipelineError):
    """The training loss became NaN or infinite."""


class ModelRejectedError(PipelineError):
    """``qat.quant.check_model`` found errors: the model would not quantize correctly."""


class StageCollapseError(PipelineError):
    """Held-out accuracy at chance while training accuracy is high (``health_check=error``)."""
