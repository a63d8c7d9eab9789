"""Methods compared by the harness, one file each, registered by name.

Importing this package imports every module in it, so a new method only needs its file and
its `@register_method("name")` decorator. Then it registers the methods of plugins: the
`harness.methods` entry points of installed distributions, and the modules named in
$HARNESS_PLUGINS (see `_plugins.py`).

In the repository this package is the top-level folder `methods/`; its import name is
`harness.methods` (pyproject's package-dir), which a user's own `methods` cannot shadow.
"""

import importlib
import os
import pkgutil

from harness.datasets import DatasetSplits
from harness.methods._plugins import load_entry_points, load_env_plugins
from harness.methods.base import (
    METHODS,
    STEP_METRIC,
    DatasetMethod,
    LearnedDataset,
    Method,
    MethodConfig,
    MethodContext,
    ModelMethod,
    PerClass,
    make_method,
    register_method,
)
from harness.protocol.attacks import Threat, accuracy, fgsm, pgd, robust_accuracy
from harness.protocol.train import (
    LossStep,
    TrainConfig,
    WorkMeter,
    natural_loss,
    soft_cross_entropy,
)

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base" and not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

# Entry points first: an installed distribution is part of the environment, while
# $HARNESS_PLUGINS is the last word of one command.
load_entry_points()
load_env_plugins(os.environ.get("HARNESS_PLUGINS", ""))

# What a plugin needs, in one place (the method contract is in `base`'s docstring).
__all__ = [
    "METHODS",
    "STEP_METRIC",
    "DatasetMethod",
    "DatasetSplits",
    "LearnedDataset",
    "LossStep",
    "Method",
    "MethodConfig",
    "MethodContext",
    "ModelMethod",
    "PerClass",
    "Threat",
    "TrainConfig",
    "WorkMeter",
    "accuracy",
    "fgsm",
    "make_method",
    "natural_loss",
    "pgd",
    "register_method",
    "robust_accuracy",
    "soft_cross_entropy",
]
