"""One trial's record: the schema between a trial, MLflow and the leaderboard, both ways.

A trial's worker turns its `TrialResult` into a `TrialRecord` (`from_result`); the record
travels to the sweep driver inside Tune's final result (`to_json` / `from_json`); the driver
adds who ran it (sweep, variant, phase, objective) and writes it to MLflow (`to_mlflow`);
the leaderboard reads runs back into records (`from_mlflow`). Nothing else knows how a
field is spelled in MLflow.

In MLflow a record is:
- params: the trial's resolved RunSpec (every default filled in, the method's effective
  settings included) flattened to dotted keys, plus `method` and `dataset`;
- metrics: the `TrialResult` fields marked as metrics (`METRIC` in their field metadata), and
  per architecture `arch.<name>.<clean_acc|robust_acc|autoattack_acc|n>` and the three
  accuracies' `_std` over the trial's models;
- tags: `method`, `dataset`, `variant`, `phase`, `sweep`, `trial_id`, `objective`,
  `objective_mode`, `device`, `ray_node`, `masking_flags` (comma-separated codes), `error`,
  `stopped_early`, `resumed_from` (the saved progress a restarted trial went on from),
  `smoke` ("true" for --smoke budgets), and `info.<key>` for what the method says about its
  learned set;
- artifacts (also what `harness run --output DIR` keeps): `spec.yaml` (the resolved RunSpec),
  `dataset/learned.pt` (a learned set: `x`, `y` and `meta`, see `learned_meta`),
  `dataset/grid.png` (images only) and `model/<arch>.pt` (the first model's weights per
  architecture); a sweep's parent run keeps the sweep spec as given under the same
  `spec.yaml`. Writers and readers take these names from here (`SPEC_ARTIFACT`, ...).

Adding a metric is one change in one place: a field of `harness.results.scores.TrialResult` with
`metadata=METRIC` (its value computed there). It then reaches Tune, MLflow and the
leaderboard's records by itself.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from harness.results.scores import ArchScore

ARCH_PREFIX = "arch."
ARCH_METRICS = (
    "clean_acc",
    "robust_acc",
    "autoattack_acc",
    "n",
    "clean_acc_std",
    "robust_acc_std",
    "autoattack_acc_std",
)
# What the driver logs of a trial's progress reports, while it runs. A trial reports progress
# only where it has a validation probe (`harness.sweep.trial`: what ASHA stops on), so these are the
# probe's keys; a method's per-step `outer_loss` never reaches the driver.
PROGRESS_METRICS = ("epoch", "probe_robust_acc")
FLAGS_TAG = "masking_flags"
# A sweep's parent run carries ROLE_TAG=SWEEP_ROLE; its trials are child runs without it.
ROLE_TAG = "harness.role"
SWEEP_ROLE = "sweep"
SWEEP_PARENTS = f"tags.`{ROLE_TAG}` = '{SWEEP_ROLE}'"  # the MLflow search filter for them


def is_sweep_parent(tags: dict[str, str]) -> bool:
    return tags.get(ROLE_TAG) == SWEEP_ROLE


INFO_PREFIX = "info."
IDENTITY_TAGS = (
    "method",
    "dataset",
    "variant",
    "phase",
    "sweep",
    "trial_id",
    "objective",
    "objective_mode",
)
OUTCOME_TAGS = ("device", "ray_node", "error", "stopped_early", "resumed_from")

SPEC_ARTIFACT = "spec.yaml"
LEARNED_ARTIFACT = "dataset/learned.pt"
GRID_ARTIFACT = "dataset/grid.png"


def model_artifact(arch: str) -> str:
    """The artifact holding the weights (a state dict) of architecture `arch`'s first model."""
    return f"model/{arch}.pt"


class RunLike(Protocol):
    """A run as MLflow keeps it (`harness.tracking.reader.RunData` or anything alike)."""

    run_id: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class TrialRecord:
    """What one trial ran, where, how it scored and what it cost (see the module docstring)."""

    method: str
    dataset: str
    params: dict[str, str]  # the resolved RunSpec, flattened; MLflow keeps params as text
    metrics: dict[str, float]  # finite values only
    per_arch: tuple[ArchScore, ...] = ()
    masking_flags: tuple[str, ...] = ()
    info: dict[str, str] = field(default_factory=dict)
    variant: str = ""
    phase: str = "search"  # or "repeat"
    sweep: str = ""
    trial_id: str = ""
    objective: str = "val_robust_acc"
    objective_mode: str = "max"
    device: str = ""
    ray_node: str = ""
    error: str = ""
    stopped_early: str = ""
    # the saved progress (`harness.protocol.checkpoint` sections, comma-separated) the attempt that
    # finished went on from; '' when it started afresh
    resumed_from: str = ""
    smoke: bool = False  # run with --smoke's shrunken budgets: a check, not a result
    status: str = "FINISHED"  # as MLflow says: FINISHED, FAILED, KILLED, RUNNING
    run_id: str = ""
    start_time: int = 0  # ms since the epoch

    def metric(self, key: str) -> float | None:
        return self.metrics.get(key)

    # -- the worker's side

    @classmethod
    def from_result(cls, result: Any, spec_tree: dict[str, Any], **tags: str) -> TrialRecord:
        """The record of a finished `TrialResult` run from the resolved spec `spec_tree`."""
        metrics = {}
        for f in dataclasses.fields(result):
            if f.metadata.get("metric"):
                value = finite(getattr(result, f.name))
                if value is not None:
                    metrics[f.name] = value
        per_arch = tuple(
            replace(a, **{k: finite(getattr(a, k)) for k in ARCH_METRICS if k != "n"})
            for a in result.per_arch
        )
        learned = getattr(result, "learned", None)
        info = {k: str(v) for k, v in (learned.info if learned is not None else {}).items()}
        return cls(
            method=result.method,
            dataset=result.dataset,
            params=spec_params(spec_tree),
            metrics=metrics,
            per_arch=per_arch,
            masking_flags=tuple(sorted(result.masking_flags)),
            info=info,
            **tags,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrialRecord:
        raw = json.loads(text)
        raw["per_arch"] = tuple(ArchScore(**a) for a in raw.get("per_arch", ()))
        raw["masking_flags"] = tuple(raw.get("masking_flags", ()))
        return cls(**raw)

    # -- MLflow, both ways

    def mlflow_params(self) -> dict[str, str]:
        return {**self.params, "method": self.method, "dataset": self.dataset}

    def mlflow_metrics(self) -> dict[str, float]:
        out = dict(self.metrics)
        for a in self.per_arch:
            for key in ARCH_METRICS:
                value = finite(getattr(a, key))
                if value is not None:
                    out[f"{ARCH_PREFIX}{a.arch}.{key}"] = value
        return out

    def mlflow_tags(self) -> dict[str, str]:
        tags = {k: getattr(self, k) for k in (*IDENTITY_TAGS, *OUTCOME_TAGS) if getattr(self, k)}
        if self.masking_flags:
            tags[FLAGS_TAG] = ",".join(self.masking_flags)
        if self.smoke:
            tags["smoke"] = "true"
        tags.update({f"{INFO_PREFIX}{k}": v for k, v in self.info.items()})
        return tags

    @classmethod
    def from_mlflow(cls, run: RunLike) -> TrialRecord:
        """A stored run read back; runs from before a field existed get its default."""
        tags, params = run.tags, run.params
        metrics = {
            k: v
            for k, v in (
                (k, finite(v)) for k, v in run.metrics.items() if not k.startswith(ARCH_PREFIX)
            )
            if v is not None
        }
        return cls(
            method=tags.get("method") or params.get("method", "?"),
            dataset=tags.get("dataset") or params.get("dataset") or params.get("dataset.name", "?"),
            params={k: v for k, v in params.items() if k not in ("method", "dataset")},
            metrics=metrics,
            per_arch=arch_results(run.metrics),
            masking_flags=tuple(
                sorted({c.strip() for c in tags.get(FLAGS_TAG, "").split(",")} - {""})
            ),
            info={k[len(INFO_PREFIX) :]: v for k, v in tags.items() if k.startswith(INFO_PREFIX)},
            **{
                k: tags[k]
                for k in (*IDENTITY_TAGS, *OUTCOME_TAGS)
                if tags.get(k) and k not in ("method", "dataset")
            },
            smoke=tags.get("smoke") == "true",
            status=run.status,
            run_id=run.run_id,
            start_time=run.start_time or 0,
        )


def learned_meta(tree: dict[str, Any], result: Any) -> dict[str, Any]:
    """What a learned-set file (`LEARNED_ARTIFACT`) says about itself: enough to score it
    again elsewhere (`harness score`, `harness.api.load_learned`). `tree` is the resolved
    RunSpec, so `dataset` and `method` are its sections (name and settings); `bounds` are the
    dataset's input bounds (None for unbounded features). Plain values only, so it loads with
    torch.load(weights_only=True)."""
    import harness
    from harness.datasets import DATASETS

    learned = result.learned
    name = tree["dataset"]["name"]
    bounds = DATASETS.get(name).bounds if name in DATASETS else None  # None: unbounded
    meta = {
        "dataset": tree["dataset"],
        "method": tree["method"],
        "size": len(learned),
        "input_shape": list(learned.x.shape[1:]),
        "bounds": None if bounds is None else list(bounds),
        "labels": "probabilities" if learned.y.dim() == 2 else "class ids",
        "threat": result.threat,
        "seed": tree.get("seed"),
        "harness_version": harness.__version__,
        "info": learned.info,
    }
    return json.loads(json.dumps(meta, default=str))


def meta_dataset(meta: dict[str, Any]) -> str | None:
    """The dataset a learned set's metadata names, or None: the name in its `dataset`
    section (what `learned_meta` writes), or a plain name (what a hand-made file may hold)."""
    named = meta.get("dataset")
    if isinstance(named, dict):
        named = named.get("name")
    return named if isinstance(named, str) and named else None


def spec_params(tree: dict[str, Any]) -> dict[str, str]:
    """A resolved RunSpec tree as MLflow params: dotted keys, text values."""
    return {k: str(v) for k, v in flatten(tree).items()}


def arch_results(metrics: dict[str, float]) -> tuple[ArchScore, ...]:
    """`arch.<name>.<metric>` metrics as per-architecture results, architectures by name."""
    values: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith(ARCH_PREFIX):
            arch, _, name = key[len(ARCH_PREFIX) :].rpartition(".")
            if arch and name in ARCH_METRICS:
                values.setdefault(arch, {})[name] = finite(value)
    return tuple(
        ArchScore(
            arch,
            **{k: v.get(k) for k in ARCH_METRICS if k != "n"},
            n=None if v.get("n") is None else int(v["n"]),
        )
        for arch, v in sorted(values.items())
    )


def finite(value: Any) -> float | None:
    """`value` as a finite float; None for None, NaN, infinities, bools and non-numbers."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys: {"train": {"lr": 0.1}} -> {"train.lr": 0.1}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out
