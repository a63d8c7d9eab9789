"""Robust-dataset benchmarking harness.

Compare robust dataset learning against adversarial training and dataset distillation
under one evaluation protocol (see README.md and DESIGN.md).
"""

import os as _os

__version__ = "0.1.0"

# The methods are the subpackage `harness.methods`, kept in the repository's top-level folder
# `methods/` (pyproject's package-dir puts them under harness/ in an install). In a checkout
# that folder is looked up beside this package before anything installed: a source run
# (PYTHONPATH=the checkout, or pytest from its root) needs no install, and a checkout never
# mixes its harness with the methods of another checkout installed in the same environment.
_here = _os.path.dirname(_os.path.abspath(__file__))
_checkout = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "methods"))
        and _os.path.isfile(_os.path.join(_checkout, "methods", "base.py"))):
    __path__.append(_checkout)
