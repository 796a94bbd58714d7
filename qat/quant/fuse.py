"""Automatic fusion from what the blocks declare -- no per-model fusion lists.

Patterns come from two places:

1. modules defining ``fuse_patterns()`` (every ``qat.nn`` block), giving runs of submodule paths;
2. ``nn.Sequential`` containers, scanned for Conv2d→BatchNorm2d(→ReLU/ReLU6), Conv2d→ReLU,
   Linear→ReLU, Linear→BatchNorm1d and BatchNorm2d→ReLU.

A module with ``fold_into`` (``qat.nn.ChannelScale2d``) ending a pattern is folded into the conv
or BN before it. ReLU6 is handled explicitly: conv+bn+ReLU6 is fused as conv+bn+ReLU and the
fused module is marked with the fixed output grid [0, 6] (``scale=6/255``); the int8 grid's
saturation is then exactly the clamp at 6, in fake-quant and in int8 alike.
"""

from __future__ import annotations

from torch import nn

from qat.quant.backend import tq

__all__ = ["RELU6_QPARAMS", "collect_patterns", "fuse_model", "replace_module"]

RELU6_QPARAMS = (6.0 / 255.0, 0)
FIXED_QPARAMS_ATTR = "qat_fixed_qparams"

_SEQ_RULES: tuple[tuple[type[nn.Module], ...], ...] = (
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU),
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU6),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv2d, nn.ReLU),
    (nn.Conv2d, nn.ReLU6),
    (nn.Linear, nn.ReLU),
    (nn.Linear, nn.BatchNorm1d),
    (nn.BatchNorm2d, nn.ReLU),
)
_TORCH_FUSABLE = {
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv2d, nn.ReLU),
    (nn.Linear, nn.ReLU),
    (nn.Linear, nn.BatchNorm1d),
    (nn.BatchNorm2d, nn.ReLU),
}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _sequential_patterns(prefix: str, seq: nn.Sequential) -> list[list[str]]:
    names = list(seq._modules)
    found: list[list[str]] = []
    i = 0
    while i < len(names):
        for rule in _SEQ_RULES:
            window = names[i : i + len(rule)]
            if len(window) == len(rule) and all(type(seq._modules[n]) is t for n, t in zip(window, rule)):
                found.append([_join(prefix, n) for n in window])
                i += len(rule)
                break
        else:
            i += 1
    return found


def collect_patterns(model: nn.Module) -> list[list[str]]:
    """Every fusion pattern in ``model`` as lists of full submodule paths."""
    patterns: list[list[str]] = []
    for name, module in model.named_modules():
        declared = getattr(module, "fuse_patterns", None)
        if callable(declared):
            patterns.extend([_join(name, p) for p in pattern] for pattern in declared())
        elif isinstance(module, nn.Sequential):
            patterns.extend(_sequential_patterns(name, module))
    claimed: set[str] = set()
    unique = []
    for p in patterns:
        if claimed.isdisjoint(p):
            unique.append(p)
            claimed.update(p)
    return unique


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put ``new`` where ``model``'s submodule ``path`` is."""
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def fuse_model(model: nn.Module) -> nn.Module:
    """Fuse ``model`` in place (QAT-style fused modules; train or eval mode) and return it."""
    to_fuse: list[list[str]] = []
    relu6_heads: list[str] = []
    for pattern in collect_patterns(model):
        mods = [model.get_submodule(p) for p in pattern]
        if hasattr(mods[-1], "fold_into"):
            targets = [m for m in mods[:-1] if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
            if not targets or type(mods[-2]) not in (nn.Conv2d, nn.BatchNorm2d):
                raise ValueError(f"fusion pattern {pattern}: {pattern[-1]} must follow a Conv2d or BatchNorm2d")
            mods[-1].fold_into(mods[-2])
            replace_module(model, pattern[-1], nn.Identity())
            pattern, mods = pattern[:-1], mods[:-1]
        keep = [(p, m) for p, m in zip(pattern, mods) if not isinstance(m, nn.Identity)]
        if len(keep) < 2:
            continue
        pattern = [p for p, _ in keep]
        types = tuple(type(m) for _, m in keep)
        if types[-1] is nn.ReLU6 and types[:-1] in {(nn.Conv2d, nn.BatchNorm2d), (nn.Conv2d,)}:
            replace_module(model, pattern[-1], nn.ReLU(inplace=False))
            relu6_heads.append(pattern[0])
            types = (*types[:-1], nn.ReLU)
        if types not in _TORCH_FUSABLE:
            raise ValueError(
                f"fusion pattern {pattern} has types {[t.__name__ for t in types]}, which torch cannot fuse; "
                f"supported: {sorted(tuple(t.__name__ for t in r) for r in _TORCH_FUSABLE)}"
            )
        to_fuse.append(pattern)
    if to_fuse:
        was_training = model.training
        model.train()
        tq.fuse_modules_qat(model, to_fuse, inplace=True)
        model.train(was_training)
    for head in relu6_heads:
        setattr(model.get_submodule(head), FIXED_QPARAMS_ATTR, RELU6_QPARAMS)
    return model
