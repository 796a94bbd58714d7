"""Quantizable model zoo. Each file in this folder registers its models with ``@register_model``.

``create_model(name, num_classes=1000, **kwargs)`` builds one; ``list_models()`` lists them.
"""

import importlib
import pkgutil

from qat.models.registry import create_model, is_model, list_models, register_model

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name != "registry":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["create_model", "is_model", "list_models", "register_model"]
