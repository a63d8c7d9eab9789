"""Methods compared by the harness, one file each, registered by name.

Importing this package imports every module in it, so a new method only needs its file and
its `@register_method("name")` decorator.
"""

import importlib
import os
import pkgutil

from harness.errors import HarnessInputError
from harness.methods.base import (
    METHODS, DatasetMethod, LearnedDataset, Method, MethodContext, ModelMethod, make_method,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")


FIX_MODULE = "fix the module or remove it from HARNESS_PLUGINS"


def _plugin_error(name: str, why: str, fix: str = FIX_MODULE) -> HarnessInputError:
    return HarnessInputError(f"plugin module {name!r} {why}; {fix}.", field="HARNESS_PLUGINS")


def _import_plugin(name: str) -> None:
    if not all(part.isidentifier() for part in name.split(".")):
        raise _plugin_error(name, "is not an absolute module name (a relative name such as "
                            "'.foo' or a file path will not do)", "name it as you would import "
                            "it, e.g. my_methods or mypkg.methods, with its folder on PYTHONPATH")
    try:
        importlib.import_module(name)
    except ImportError as exc:
        why = f"cannot be imported ({str(exc)[:300]})"
        raise _plugin_error(name, why, "put it on PYTHONPATH or remove it from HARNESS_PLUGINS") \
            from None
    except SyntaxError as exc:
        why = f"has a syntax error ({exc.msg}, {exc.filename} line {exc.lineno})"
        raise _plugin_error(name, why) from None
    # A plugin is the user's own code and may raise anything while it runs; whatever it
    # raises is a fault in that input, reported as such rather than as a harness crash.
    except Exception as exc:  # noqa: BLE001
        why = f"raised {type(exc).__name__} on import ({str(exc)[:300]})"
        raise _plugin_error(name, why) from None


def _load_plugins(spec: str) -> None:
    """Import the modules named in $HARNESS_PLUGINS (comma-separated): a researcher's own
    methods, registered with `@register_method`, without editing this package. Ray workers
    inherit the variable from the driver (on a cluster, set it in the runtime environment)."""
    for name in filter(None, (part.strip() for part in spec.split(","))):
        _import_plugin(name)


_load_plugins(os.environ.get("HARNESS_PLUGINS", ""))

__all__ = ["METHODS", "DatasetMethod", "LearnedDataset", "Method", "MethodContext", "ModelMethod",
           "make_method"]
