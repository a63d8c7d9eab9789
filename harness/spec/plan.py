"""A sweep spec resolved into its trial plan (no Ray here: `harness validate` uses it too).

The unit of comparison is a *variant*: one dataset x one method x one point of the grid
settings (e.g. `rdl[ipc=10]`). Each variant gets its own Optuna study with the same trial
budget, then `repeats` extra seeds of its best configuration.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from harness.datasets import DATASETS, validate_params
from harness.methods import make_method
from harness.spec.resolve import resolve_archs, resolve_spec, smoke_assignments
from harness.spec.schema import (
    Dimension,
    HarnessInputError,
    RunSpec,
    SweepSpec,
    apply_overrides,
    build_run_spec,
    format_eps,
    parse_dimension,
    set_path,
)

SMOKE_MAX_TRIALS = 2
SMOKE_MAX_REPEATS = 1


@dataclass
class Variant:
    dataset: str
    threat: str  # "" when the sweep has one threat; else e.g. "linf-0.03137"
    method: str
    grid: dict[str, Any]  # spec path -> value, fixed for this variant
    base: dict[str, Any]  # the RunSpec tree with every fixed and grid value applied
    dims: dict[str, Dimension]  # spec path -> searched distribution (Optuna)
    trials: int
    repeats: int
    label: str = ""
    key: str = ""  # file-system-safe identifier (Ray experiment directory name)
    phase_keys: dict[str, str] = field(default_factory=dict)
    # the spec sections it comes from: `dataset[1]`, `threat[0]` (no index when there is one)
    sections: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shown = ",".join(f"{k.removeprefix('method.')}={v}" for k, v in self.grid.items())
        self.label = f"{self.method}[{shown}]" if shown else self.method
        where = f"{self.dataset}.{self.threat}" if self.threat else self.dataset
        self.key = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{where}.{self.label}").strip("-")

    @property
    def searched_trials(self) -> int:
        """Trials of the variant's search: its `trials` when something is searched, else one."""
        return self.trials if self.dims else 1

    def first_values(self) -> dict[str, Any]:
        """Each searched setting at its first value (spec path -> value): the one trial that
        stands for the variant where a single example is needed (checks, settings, estimate)."""
        return {p: d.example() for p, d in self.dims.items()}


def spec_path(key: str) -> str:
    """Space keys without a dot are the method's own settings."""
    return key if "." in key else f"method.{key}"


def make_plan(spec: SweepSpec, *, smoke: bool = False) -> list[Variant]:
    plan = []
    threats = spec.threats()
    datasets = spec.datasets()
    for (di, ds), (ti, threat) in itertools.product(enumerate(datasets), enumerate(threats)):
        sections = {
            "dataset": f"dataset[{di}]" if len(datasets) > 1 else "dataset",
            "threat": f"threat[{ti}]" if len(threats) > 1 else "threat",
        }
        DATASETS.get(ds.name, field=f"{sections['dataset']}.name")
        tname = f"{threat.norm}-{format_eps(threat.eps)}" if len(threats) > 1 and threat.eps else ""
        if len(threats) > 1 and not threat.eps:
            tname = f"{threat.norm}-default"
        for method, msweep in spec.methods.items():
            where = f"methods.{method}"
            fixed, grids, dims = {}, {}, {}
            for key, raw in msweep.space.items():
                path = spec_path(key)
                if path in FIXED_BY_STRUCTURE:
                    raise HarnessInputError(
                        "the method and dataset are chosen by the spec's structure, not set or "
                        "searched in a space: list another method under `methods` or another "
                        "dataset under `dataset` instead.",
                        field=f"{where}.space.{key}",
                    )
                dim = parse_dimension(f"{where}.space.{key}", raw)
                if dim is None:
                    fixed[path] = raw
                elif dim.kind == "grid":
                    grids[path] = dim.values
                else:
                    dims[path] = dim
            for combo in itertools.product(*grids.values()):
                grid = dict(zip(grids, combo))
                base = base_tree(
                    spec, ds.model_dump(exclude_none=True), threat, method, {**fixed, **grid}
                )
                if smoke:
                    base = apply_overrides(base, smoke_assignments(ds.name, method))
                trials = msweep.trials or spec.trials
                repeats = spec.repeats
                if smoke:
                    trials, repeats = min(trials, SMOKE_MAX_TRIALS), min(repeats, SMOKE_MAX_REPEATS)
                variant = Variant(
                    ds.name, tname, method, grid, base, dims, trials, repeats, sections=sections
                )
                check_variant(
                    variant, where, {spec_path(k): f"{where}.space.{k}" for k in msweep.space}
                )
                plan.append(variant)
    check_unique_keys(plan)
    return plan


def launch_order(items: list, method_of) -> list:
    """`items` (variants, or pairs holding them) in the order their variants start: by the
    method's place in the spec, each method across all its datasets and threats together.
    A sweep ends no sooner than its last-started long variant ends, so listing the longest
    methods first lets the short ones fill the slots around them (longest-first scheduling)."""
    rank: dict[str, int] = {}
    for item in items:
        rank.setdefault(method_of(item), len(rank))
    return sorted(items, key=lambda item: rank[method_of(item)])


def base_tree(
    spec: SweepSpec, dataset: dict, threat, method: str, values: dict[str, Any]
) -> dict[str, Any]:
    tree = {
        "dataset": dataset,
        "method": {"name": method},
        "threat": threat.model_dump(),
        "train": spec.train.model_dump(),
        "eval": {**spec.eval.model_dump(), **objective_needs(spec)},
        "seed": spec.seed,
        "device": spec.device,
    }
    for path, value in values.items():
        set_path(tree, path, value, field=path)
    return tree


def objective_needs(spec: SweepSpec) -> dict[str, Any]:
    """Evaluation settings the objective depends on: selecting by AutoAttack accuracy on the
    validation split needs AutoAttack run there (the fast version, as in any search)."""
    if spec.objective.metric == "val_autoattack_acc" and spec.eval.val_autoattack == "off":
        return {"val_autoattack": "fast"}
    return {}


def sample_tree(variant: Variant, values: dict[str, Any]) -> dict[str, Any]:
    """The variant's RunSpec tree with the searched values filled in."""
    tree = apply_overrides(variant.base, [])
    for path, value in values.items():
        set_path(tree, path, value, field=path)
    return tree


# The key of a Tune trial's config that carries its resolved RunSpec (a JSON dump): decided
# once, when the driver's searcher hands the trial out, and read back by the worker that runs
# it and the driver that records it.
RESOLVED_KEY = "resolved_spec"


def resolve_trial(variant: Variant, config: dict[str, Any]) -> RunSpec:
    """The resolved RunSpec of one trial, the one way a trial's settings are decided: the
    variant's tree, the searched values and seed Tune chose (`config`: spec path -> value, plus
    `seed` for repeats), then every default (`harness.spec.resolve.resolve_spec`: the dataset's
    eps, the method's effective settings). A sweep runs it once per trial (`with_resolved`)."""
    config = {k: v for k, v in config.items() if k != RESOLVED_KEY}
    tree = sample_tree(variant, {k: v for k, v in config.items() if k != "seed"})
    if "seed" in config:
        tree["seed"] = config["seed"]
    return resolve_spec(build_run_spec(tree))


def with_resolved(variant: Variant, config: dict[str, Any]) -> dict[str, Any]:
    """`config` with its trial's resolved RunSpec under RESOLVED_KEY."""
    spec = resolve_trial(variant, config)
    return {**config, RESOLVED_KEY: json.dumps(spec.model_dump(mode="json"), sort_keys=True)}


def trial_spec(config: dict[str, Any]) -> RunSpec:
    """The RunSpec a trial's config carries (see `with_resolved`), rebuilt without resolving."""
    if RESOLVED_KEY not in config:
        raise KeyError(f"a sweep trial's config lacks {RESOLVED_KEY!r}: {sorted(config)}")
    return build_run_spec(json.loads(config[RESOLVED_KEY]))


FIXED_BY_STRUCTURE = ("method.name", "dataset.name")


def check_variant(variant: Variant, where: str, space: dict[str, str]) -> None:
    """Build the RunSpec and method config a trial would build, so a bad spec fails now:
    once per value a searched setting can take (both ends of a range, every choice), the
    other searched settings at their first value. `space`: RunSpec path -> spec path of the
    settings the method's space sets, so that an error names the field as the spec has it."""
    first = variant.first_values()
    samples = [first] + [{**first, p: v} for p, d in variant.dims.items() for v in d.extremes()]
    for values in samples:
        try:
            run = resolve_trial(variant, values)
            make_method(run.method.name, run.method.params())
            resolve_archs(run)
            validate_params(DATASETS.get(run.dataset.name), run.dataset.params())
        except HarnessInputError as exc:
            text = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
            context = f"Variant: {variant.label} on {variant.dataset} {variant.threat}".rstrip()
            raise HarnessInputError(
                f"{text} {context}.", field=field_in_spec(exc.field, variant, where, space)
            ) from None


def field_in_spec(
    name: str | None, variant: Variant, where: str, space: dict[str, str]
) -> str | None:
    """A trial's RunSpec field (`method.beta`, `dataset.p`) as the sweep spec's path: where
    the method's space sets it (`methods.trades.space.beta`), else in its section of the
    spec (`dataset[1].p`, `threat[0].eps`); a method setting is set in the space."""
    if not name or name in space:
        return space.get(name, name) if name else name
    head, dot, rest = name.partition(".")
    if head == "method" and dot:
        return f"{where}.space.{rest}"
    if head in variant.sections and dot:
        return f"{variant.sections[head]}.{rest}"
    return name


def check_unique_keys(plan: list[Variant]) -> None:
    """Two variants with one key would share a Ray experiment directory and a leaderboard
    row (e.g. `grid: [0.1, 0.1]`, two entries of one dataset with other parameters, or two
    threats whose eps agree to 4 digits): refuse, naming the two sections and what differs."""
    seen: dict[str, Variant] = {}
    for v in plan:
        if v.key not in seen:
            seen[v.key] = v
            continue
        other = seen[v.key]
        for section, fix in (
            ("dataset", "list each parameter setting of the dataset in a sweep of its own"),
            (
                "threat",
                "make the threats' eps differ in their first 4 digits "
                "or remove the repeated threat",
            ),
        ):
            if other.sections[section] != v.sections[section]:
                raise HarnessInputError(
                    f"{other.sections[section]} and {v.sections[section]} would be recorded "
                    f"under the same name {v.key!r}, so their runs could not be told apart "
                    f"({differences(other.base[section], v.base[section])}). To compare "
                    f"them, {fix}.",
                    field=section,
                )
        raise HarnessInputError(
            f"two variants would be recorded under the same name {v.key!r}: {other.label} and "
            f"{v.label} on {v.dataset} {v.threat}".rstrip()
            + ". Remove the repeated grid "
            "value.",
            field=f"methods.{v.method}.space",
        )


def differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """`d: 20 vs 50, p: 0.9 vs 0.8`: the keys whose values differ (or none)."""
    keys = [k for k in {**a, **b} if a.get(k) != b.get(k)]
    shown = ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:5])
    return f"they differ in {shown}" if keys else "they are identical"


def describe(plan: list[Variant]) -> list[dict[str, Any]]:
    """Rows of the trial plan for `harness validate` and `--dry-run`."""
    return [
        {
            "dataset": f"{v.dataset} {v.threat}".strip(),
            "variant": v.label,
            "trials": v.searched_trials,
            "repeats": v.repeats,
            "searched": {p: f"{d.kind}{d.values}" for p, d in v.dims.items()},
            "settings": effective_settings(v),
        }
        for v in plan
    ]


def effective_settings(variant: Variant) -> dict[str, Any]:
    """The method settings a trial of `variant` runs with, per-dataset defaults included
    (searched ones at their first value; `harness validate` shows them)."""
    method = resolve_trial(variant, variant.first_values()).method.params()
    return {k: method[k] for k in sorted(method)}
