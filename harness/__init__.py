"""Robust-dataset benchmarking harness.

Compare robust dataset learning against adversarial training and dataset distillation
under one evaluation protocol (see README.md).
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"


class _CheckoutMethods:
    """Finds `harness.methods`, and no other name, in a checkout's top-level `methods/`.

    The methods are the subpackage `harness.methods`, kept in the repository's folder
    `methods/` (pyproject's package-dir puts them under harness/ in an install, where this
    finder is not used). In a checkout this finder goes first on `sys.meta_path`: a source
    run (PYTHONPATH=the checkout, or pytest from its root) needs no install, and a checkout
    never mixes its harness with the methods of another checkout installed (editable) in the
    same environment. Only that one name is mapped: `harness.tests` or `harness.benchmarks`
    do not exist. Its submodules are found through the package's `__path__` as usual."""

    def __init__(self, folder: str):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "harness.methods":
            return None
        from importlib.util import spec_from_file_location

        return spec_from_file_location(
            fullname,
            _os.path.join(self.folder, "__init__.py"),
            submodule_search_locations=[self.folder],
        )


def _find_checkout_methods() -> None:
    here = _os.path.dirname(_os.path.abspath(__file__))
    folder = _os.path.join(_os.path.dirname(here), "methods")
    if _os.path.isdir(_os.path.join(here, "methods")):
        return  # installed: harness/methods is a folder of the package
    if not _os.path.isfile(_os.path.join(folder, "base.py")):
        return
    if not any(isinstance(f, _CheckoutMethods) and f.folder == folder for f in _sys.meta_path):
        _sys.meta_path.insert(0, _CheckoutMethods(folder))


_find_checkout_methods()


# Modules that moved into sub-packages (the 0.1 layout -> this one). A script or plugin that
# imports an old name gets the module itself (one object under both names, so isinstance
# checks and registries agree), with a DeprecationWarning naming its new place.
MOVED = {
    "attacks": "protocol.attacks",
    "autoattack": "protocol.autoattack",
    "checkpoint": "protocol.checkpoint",
    "config": "spec.schema",
    "evaluate": "protocol.evaluate",
    "images": "results.images",
    "leaderboard": "board.leaderboard",
    "masking": "protocol.masking",
    "models": "protocol.models",
    "plan": "spec.plan",
    "plots": "board.plots",
    "progress": "sweep.progress",
    "provenance": "tracking.provenance",
    "ray_node": "sweep.ray_node",
    "record": "results.record",
    "report": "board.report",
    "runs": "tracking.reader",
    "shared_data": "sweep.shared_data",
    "train": "protocol.train",
    "trial": "sweep.trial",
    "untrusted": "datasets.untrusted",
}
# harness.sweep, harness.tracking and harness.estimate are packages now; what the old modules
# held is in their `driver`, `writer` and `cost`.


class _MovedModules:
    """Finds `harness.<old name>` of a moved module (MOVED) as the module at its new place."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("harness.")
        if fullname == old or old not in MOVED:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(fullname, self)

    def create_module(self, spec):
        import importlib
        import warnings

        new = "harness." + MOVED[spec.name.removeprefix("harness.")]
        warnings.warn(
            f"{spec.name} moved to {new}; import it from there", DeprecationWarning, stacklevel=2
        )
        return importlib.import_module(new)

    def exec_module(self, module):
        pass  # it ran under its new name


if not any(isinstance(f, _MovedModules) for f in _sys.meta_path):
    _sys.meta_path.append(_MovedModules())
