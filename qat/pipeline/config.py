"""The Hydra config tree (``conf/``): group options, override validation, and composition for tests/tools."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from qat.pipeline.errors import ConfigError, UnknownModelError, close_matches_hint

__all__ = ["CONF_DIR", "GROUPS", "compose_config", "group_options", "validate_overrides"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUPS = ("model", "quant", "data", "trainer", "optim", "logger", "experiment")


def group_options(group: str, conf_dir: Path = CONF_DIR) -> list[str]:
    """Option names of a config group (its ``*.yaml`` files)."""
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def _check_choice(group: str, value: str, conf_dir: Path) -> None:
    options = group_options(group, conf_dir)
    if value in options or (group == "experiment" and value in ("null", "None")):
        return
    if group == "model":
        from qat.models import is_model, list_models

        if is_model(value):
            raise ConfigError(
                f"model {value!r} is registered but conf/model/{value}.yaml is missing; "
                "run `python scripts/gen_model_configs.py` to generate the model configs"
            )
        raise UnknownModelError(value, list_models())
    raise ConfigError(
        f"unknown {group} option {value!r}.{close_matches_hint(value, options)} "
        f"Available: {', '.join(options)} (files in conf/{group}/)."
    )


def validate_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Check config-group choices (``model=...``, ``quant=a,b``...) before Hydra composes anything.

    Hydra's own message for a missing option lists every file; this one names the closest
    matches (registered models for ``model=``) and says how to fix it. Overrides that are not
    group choices, or sweeps that cannot be listed (globs, ranges), are left to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [a for a in overrides if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception:  # noqa: BLE001 - malformed overrides are reported by Hydra itself
        return
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.package or override.is_delete():
            continue
        try:
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        except Exception:  # noqa: BLE001 - not a listable sweep
            continue
        for value in values:
            if isinstance(value, str):
                _check_choice(group, value, conf_dir)


def compose_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (as the CLI would), for tests and tools."""
    from hydra import compose, initialize_config_dir

    validate_overrides(overrides, conf_dir)
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))
