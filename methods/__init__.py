"""Methods compared by the harness, one file each, registered by name.

Importing this package imports every module in it, so a new method only needs its file and
its `@register_method("name")` decorator.
"""

import importlib
import os
import pkgutil

from methods.base import (
    METHODS, DatasetMethod, LearnedDataset, Method, MethodContext, ModelMethod, make_method,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


def _load_plugins(spec: str) -> None:
    """Import the modules named in $HARNESS_PLUGINS (comma-separated): a researcher's own
    methods, registered with `@register_method`, without editing this package. Ray workers
    inherit the variable from the driver (on a cluster, set it in the runtime environment)."""
    from harness.errors import HarnessInputError

    for name in filter(None, (part.strip() for part in spec.split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise HarnessInputError(
                f"cannot import plugin module {name!r} ({exc}); put it on PYTHONPATH or remove "
                "it from HARNESS_PLUGINS.",
                field="HARNESS_PLUGINS",
            ) from None


_load_plugins(os.environ.get("HARNESS_PLUGINS", ""))

__all__ = ["METHODS", "DatasetMethod", "LearnedDataset", "Method", "MethodContext", "ModelMethod",
           "make_method"]
