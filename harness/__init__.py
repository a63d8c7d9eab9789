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
