"""Blocks users know from reference code, built from ``qat.nn`` layers.

Every module in this package is imported here and its ``__all__`` re-exported, so a new
block family is added by dropping one file in this folder.
"""

import importlib
import pkgutil

__all__: list[str] = []
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    _mod = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_mod, "__all__", ()):
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
