"""Methods from outside this package, registered when the harness starts (not a method itself).

Two ways in, both running the plugin's code with the user's permissions:
- entry points in the group `harness.methods` of installed distributions. In a plugin's
  pyproject.toml, `[project.entry-points."harness.methods"] myname = "mypkg.mod:MyMethod"`
  registers the class `MyMethod` as method `myname`; a value without `:attribute` names a
  module, imported for the `@register_method` decorators in it (the entry point's name is then
  only a label);
- `$HARNESS_PLUGINS`: comma-separated module names, imported for their decorators.

A plugin that cannot be found, does not parse, raises while it is imported, takes a name
already registered or is not a method is bad input: exit code 2 with one paragraph naming the
plugin (the module; for an entry point also its distribution), never a traceback.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from importlib import metadata
from types import ModuleType
from typing import Any

from harness.errors import HarnessInputError
from harness.methods.base import METHODS, DatasetMethod, ModelMethod, register_method

ENTRY_POINT_GROUP = "harness.methods"
FIX_MODULE = "fix the module or remove it from HARNESS_PLUGINS"

# An entry point's name becomes a method name: a spec key, a CLI value, an MLflow tag and a
# part of a Ray experiment directory, so no dots, slashes or spaces.
METHOD_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# `module` or `module:attribute`, optionally followed by `[extras]` (which the harness ignores).
ENTRY_POINT_VALUE = re.compile(
    r"\s*(?P<module>[^\s:\[]+)\s*(?::\s*(?P<attr>[^\s\[]+)\s*)?"
    r"(?:\[[^\]]*\]\s*)?"
)

Fault = Callable[[str, str | None], HarnessInputError]  # (what is wrong, the fix) -> the error


def dotted_name(text: str | None) -> bool:
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def import_plugin(name: str, fault: Fault, not_found_fix: str | None) -> ModuleType:
    """Import a plugin's module, turning whatever goes wrong in it into `fault`'s error."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise fault(f"cannot be imported ({str(exc)[:300]})", not_found_fix) from None
    except SyntaxError as exc:
        raise fault(
            f"has a syntax error ({exc.msg}, {exc.filename} line {exc.lineno})", None
        ) from None
    # A plugin is the user's own code and may raise anything while it runs; whatever it
    # raises is a fault in that input, reported as such rather than as a harness crash.
    except Exception as exc:  # noqa: BLE001
        raise fault(f"raised {type(exc).__name__} on import ({str(exc)[:300]})", None) from None


# ------------------------------------------------------------------------- HARNESS_PLUGINS


def load_env_plugins(spec: str) -> None:
    """Import the modules named in $HARNESS_PLUGINS (comma-separated): a researcher's own
    methods, registered with `@register_method`, without editing this package. Ray workers
    inherit the variable from the driver (on a cluster, set it in the runtime environment)."""
    for name in filter(None, (part.strip() for part in spec.split(","))):

        def fault(why: str, fix: str | None, name: str = name) -> HarnessInputError:
            return HarnessInputError(
                f"plugin module {name!r} {why}; {fix or FIX_MODULE}.", field="HARNESS_PLUGINS"
            )

        if not dotted_name(name):
            raise fault(
                "is not an absolute module name (a relative name such as '.foo' or a "
                "file path will not do)",
                "name it as you would import it, e.g. "
                "my_methods or mypkg.methods, with its folder on PYTHONPATH",
            )
        import_plugin(name, fault, "put it on PYTHONPATH or remove it from HARNESS_PLUGINS")


# ---------------------------------------------------------------------------- entry points


def load_entry_points() -> None:
    """Register the methods that installed distributions declare in the `harness.methods`
    entry-point group. Every node of a Ray cluster that has the distribution installed finds
    them the same way, so nothing needs to be passed to the workers."""
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        load_entry_point(ep)


def load_entry_point(ep: metadata.EntryPoint) -> None:
    """Register one entry point's method (`module:Class`) or import its module (`module`)."""
    fault = entry_point_fault(ep)
    value = ENTRY_POINT_VALUE.fullmatch(ep.value)
    if (
        not value
        or not dotted_name(value["module"])
        or (value["attr"] is not None and not dotted_name(value["attr"]))
    ):
        raise fault("is not of the form 'module' or 'module:Class' (dotted Python names)", None)
    if value["attr"] is None:  # a module whose @register_method decorators do the registering
        load_method_module(value["module"], fault)
        return
    if not METHOD_NAME.fullmatch(ep.name):
        raise fault(
            f"names the method {ep.name!r}, which is not a method name",
            "rename the entry point: a method name starts with a letter and holds only "
            "letters, digits, '_' and '-'",
        )
    obj = method_class(value["module"], value["attr"], fault)
    register_entry_point(ep.name, obj, fault)


def entry_point_fault(ep: metadata.EntryPoint):
    """`fault(why, fix)`: the bad-input error for this entry point, naming its distribution
    (whoever runs the harness may not be the plugin's author: uninstalling always works)."""
    dist = getattr(ep, "dist", None)  # set by entry_points(); absent on a bare EntryPoint
    dist_name = dist.metadata["Name"] if dist is not None else None
    owner = f"distribution {dist_name} {dist.version}" if dist_name else "a distribution"
    uninstall = f" (pip uninstall {dist_name})" if dist_name else ""

    def fault(why: str, fix: str | None) -> HarnessInputError:
        fix = (
            f"{fix}, or uninstall the distribution"
            if fix
            else "fix the distribution or uninstall it"
        )
        return HarnessInputError(
            f"plugin entry point '{ep.name} = {ep.value}' (group "
            f"{ENTRY_POINT_GROUP}) of {owner} {why}; {fix}{uninstall}."
        )

    return fault


def load_method_module(module_name: str, fault) -> None:
    """Import a plugin module that registers its methods itself; it must register one."""
    known, fresh = set(METHODS.names()), module_name not in sys.modules
    import_plugin(module_name, fault, None)
    if fresh and set(METHODS.names()) == known:
        raise fault(
            "registered no method",
            "decorate its method classes with @register_method, or point the entry point "
            "at one class ('module:Class')",
        )


def method_class(module_name: str, attr: str, fault) -> type:
    """The class `module:attr` names; it must be a method class."""
    obj: Any = import_plugin(module_name, fault, None)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise fault(f"names {attr!r}, which module {module_name!r} does not define", None)
        obj = getattr(obj, part)
    if not (
        isinstance(obj, type)
        and issubclass(obj, (ModelMethod, DatasetMethod))
        and obj not in (ModelMethod, DatasetMethod)
    ):
        what = f"the class {obj.__name__}" if isinstance(obj, type) else f"a {type(obj).__name__}"
        raise fault(
            f"points at {what}, not a method",
            "point it at a subclass of harness.methods.ModelMethod or DatasetMethod (or at "
            "a module whose methods are registered with @register_method)",
        )
    return obj


def register_entry_point(name: str, obj: type, fault) -> None:
    """Register `obj` as method `name`, unless it already is; a name taken by another
    method, or a class registered under another name, is refused."""
    if name in METHODS and METHODS.get(name) is obj:
        return  # its own @register_method already registered it under this name
    if obj.name in METHODS and METHODS.get(obj.name) is obj:
        raise fault(
            f"names the method {name!r}, but its class is registered as "
            f"{obj.name!r} by @register_method",
            "use one name for both",
        )
    if name in METHODS:
        other = METHODS.get(name)
        whose = (
            "a built-in method"
            if other.__module__.startswith("harness.methods.")
            else f"{other.__module__}.{other.__qualname__}"
        )
        raise fault(
            f"names the method {name!r}, which is already taken by {whose}",
            "give the entry point another name",
        )
    register_method(name)(obj)
