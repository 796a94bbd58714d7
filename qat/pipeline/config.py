"""The Hydra config tree (``conf/``): group options, override and value validation, composition for tests/tools."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from qat.pipeline.errors import ConfigError, UnknownModelError, close_matches_hint

__all__ = ["CONF_DIR", "GROUPS", "compose_config", "group_options", "validate_config", "validate_overrides"]

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


def _check_keys(parsed: list, conf_dir: Path) -> None:
    """Refuse ``key=value`` overrides of keys the composed config lacks, naming the closest key.

    Hydra's own message suggests ``+key=value``, which for a typo (``trainer.max_epoch``) only
    moves the failure into the Trainer. Group sweeps leave the key set open, so they skip this.
    """
    plain = [
        o
        for o in parsed
        if o.key_or_group not in GROUPS
        and not (o.is_add() or o.is_force_add() or o.is_delete() or o.package)
        and not o.key_or_group.startswith("hydra")
        and "/" not in o.key_or_group  # a config group path (hydra/launcher=...), not a key
    ]
    groups = [o for o in parsed if o.key_or_group in GROUPS]
    if not plain or any(o.is_sweep_override() for o in groups):
        return
    added = [o for o in parsed if o.key_or_group not in GROUPS and (o.is_add() or o.is_force_add())]
    try:
        cfg = _compose([o.input_line for o in (*groups, *added)], conf_dir)
    except Exception:  # noqa: BLE001 - a composition problem is reported by Hydra itself
        return
    missing = object()
    for override in plain:
        key = override.key_or_group
        if OmegaConf.select(cfg, key, default=missing) is not missing:
            continue
        parent, _, leaf = key.rpartition(".")
        while parent and not isinstance(OmegaConf.select(cfg, parent, default=None), DictConfig):
            parent, _, leaf = parent.rpartition(".")  # the misspelt part is higher up
        node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
        options = [str(k) for k in node] if isinstance(node, DictConfig) else []
        hint = close_matches_hint(leaf, options, prefix=f"{parent}." if parent else "")
        raise ConfigError(
            f"unknown config key {key!r}.{hint} Fix the key's spelling "
            f"(`python train.py --cfg job` prints every key), or add a new key with +{key}=..."
        )


def validate_overrides(overrides: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Check config-group choices (``model=...``, ``quant=a,b``...) and override keys before Hydra runs.

    Hydra's own message for a missing option lists every file; this one names the closest
    matches (registered models for ``model=``) and says how to fix it; a misspelt key gets the
    key it was meant to be. Sweeps that cannot be listed (globs, ranges) are left to Hydra.
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
    _check_keys(parsed, conf_dir)


# Integer settings that reach ``int()``, ``range`` or a DataLoader: (key, minimum).
_INT_KEYS = (
    ("trainer.max_epochs", 0),
    ("quant.epochs", 0),
    ("quant.calib_batches", 1),
    ("precise_bn_batches", 0),
    ("seed", None),
)


def validate_config(cfg: DictConfig) -> None:
    """Check the composed config's integer settings: one message with the key and a valid value."""
    missing = object()
    for key, minimum in _INT_KEYS:
        value = OmegaConf.select(cfg, key, default=missing)
        if value is missing or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not a whole number; set e.g. {key}={max(minimum or 0, 1)}")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{key}={value} must be >= {minimum}; set e.g. {key}={max(minimum, 1)}")


def compose_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (as the CLI would), for tests and tools."""
    validate_overrides(overrides, conf_dir)
    return _compose(overrides, conf_dir)


def _compose(overrides: Sequence[str], conf_dir: Path) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))
