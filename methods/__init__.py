"""Methods compared by the harness, one file each, registered by name.

Importing this package imports every module in it, so a new method only needs its file and
its `@register_method("name")` decorator.
"""

import importlib
import pkgutil

from methods.base import METHODS, DatasetMethod, LearnedDataset, MethodContext, ModelMethod, make_method

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["METHODS", "DatasetMethod", "LearnedDataset", "MethodContext", "ModelMethod", "make_method"]
