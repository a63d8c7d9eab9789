"""A RunSpec with every default decided, the one place they are (`resolve_spec`): the
threat's radius from the dataset, the method's effective settings, and the architectures a
trial scores (`resolve_archs`); and the overrides of a `--smoke` run (`smoke_assignments`).

It reads the registries of datasets, architectures and methods (so it imports them, and
with the methods their PyTorch code); nothing downstream re-derives what it decides.
"""

from __future__ import annotations

import json

from harness.datasets import DATASETS, default_eps_for, validate_params
from harness.errors import HarnessInputError
from harness.methods import METHODS, make_method
from harness.protocol.models import IMAGE_ARCHS, MODELS
from harness.spec.schema import RunSpec

SMOKE_DEFAULTS = [
    # Tiny budgets: every method on any dataset in seconds on a laptop CPU.
    "train.epochs=3",
    "eval.models_per_arch=1",
    "eval.epochs=20",
    "eval.max_test=200",
    "eval.max_val=200",
    "threat.steps=5",
    "threat.autoattack=fast",  # still exercised, labelled as the cheap version
]


def smoke_assignments(dataset: str, method: str) -> list[str]:
    out = list(SMOKE_DEFAULTS)
    out.append(f"eval.archs=[{DATASETS.get(dataset, field='dataset.name').default_archs[0]}]")
    if dataset == "synthetic-robust":
        out += ["dataset.n_train=1000", "dataset.n_test=400"]
    else:
        out.append("dataset.subset=20")
    cls = METHODS.get(method, field="method.name")
    out += [f"method.{k}={json.dumps(v)}" for k, v in cls.smoke.items()]
    return out


def resolve_spec(spec: RunSpec) -> RunSpec:
    """`spec` with every default decided, the one place they are: `threat.eps` from the
    dataset (and its parameters), and the method's effective settings (its config's defaults
    and per-dataset tuned values under the user's own). What a trial records and runs;
    resolving a resolved spec changes nothing."""
    if spec.dataset.name in DATASETS:  # checked here, before JSON turns a NaN into None
        validate_params(DATASETS.get(spec.dataset.name), spec.dataset.params())
    tree = spec.model_dump(mode="json")
    if tree["threat"]["eps"] is None:
        tree["threat"]["eps"] = default_eps_for(spec.dataset.name, spec.dataset.params())
    if spec.method.name in METHODS:
        method = make_method(spec.method.name, spec.method.params())
        settings = method.config_for(spec.dataset.name).model_dump(mode="json")
        tree["method"] = {"name": spec.method.name, **settings}
    return RunSpec.model_validate(tree)


def resolve_archs(spec: RunSpec) -> list[str]:
    info = DATASETS.get(spec.dataset.name)
    archs = spec.eval.archs or list(info.default_archs)
    for a in archs:
        MODELS.get(a, field="eval.archs")
        if a in IMAGE_ARCHS and not info.images:
            raise HarnessInputError(
                f"{a!r} is an image architecture, but {info.name!r} gives feature vectors; "
                "use linear or mlp for it.",
                field="eval.archs",
            )
    return archs
