"""One Tune experiment of a variant (`Phase`: its Optuna search, or the repeats of its best
configuration): the search space, the trial function, the Tuner (fresh or restored, with the
same param space either way), and running it to its end (`run_phase`).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune import registry as _tune_registry  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from harness import faults
from harness.protocol.checkpoint import load_file
from harness.spec.plan import RESOLVED_KEY, Variant, with_resolved
from harness.spec.schema import SweepSpec
from harness.sweep.callback import DriverCallback, PhaseContext, _serving, settle, trial_dirname
from harness.sweep.ray_node import shared_dataset  # noqa: E402
from harness.sweep.storage import INTERRUPTED_TAG, TORN_SUFFIX, StorageFault, set_aside_torn_state
from harness.sweep.trial import run_sweep_trial


def _guard_tune_registry() -> None:
    """Serialise Tune's global trainable registry.

    Tune registers each experiment's trainable in a module-level dict and flushes it while
    iterating; two variant threads starting experiments at once can break that iteration
    ("dictionary changed size during iteration"). A lock around `register` makes the
    driver's threads take turns there, and nowhere else.
    """
    cls = _tune_registry._Registry
    if getattr(cls.register, "_harness_locked", False):
        return
    original, lock = cls.register, threading.Lock()

    def register(self, *args, **kwargs):
        with lock:
            return original(self, *args, **kwargs)

    register._harness_locked = True
    cls.register = register


_guard_tune_registry()


def experiment_path(root: str, sweep: str, name: str) -> str:
    return f"{root}/{sweep}/{name}"


def search_space(variant: Variant) -> dict[str, Any]:
    space = {}
    for path, dim in variant.dims.items():
        lo, hi = (dim.values + [None, None])[:2]
        space[path] = {
            "uniform": lambda: tune.uniform(lo, hi),
            "loguniform": lambda: tune.loguniform(lo, hi),
            "int": lambda: tune.randint(lo, hi + 1),  # inclusive upper bound, as the spec reads
            "choice": lambda: tune.choice(dim.values),
        }[dim.kind]()
    return space


@dataclass
class Phase:
    """One Tune experiment of a variant: its Optuna search, or its repeats."""

    variant: Variant
    name: str  # "search" or "repeat"
    path: str


def variant_trainable(
    variant: Variant,
    *,
    objective: str,
    smoke: bool,
    checkpoint_every_s: float | None = None,
    probe: bool = True,
):
    """The trial function of one variant, under a name of its own.

    Tune registers trainables by name in one global registry; variants running side by side
    must not share a name, or one variant's trials would run another's settings. A trial
    that Tune restarts (a retry, `--resume`) goes on from the progress it last saved."""

    def trainable(config: dict[str, Any]) -> None:
        def report(metrics: dict[str, Any], folder: Path | None) -> None:
            checkpoint = tune.Checkpoint.from_directory(str(folder)) if folder else None
            tune.report(metrics, checkpoint=checkpoint)

        restored = None
        last = tune.get_checkpoint()
        if last is not None:
            with last.as_directory() as folder:
                restored = load_file(Path(folder))
        cpus = tune.get_context().get_trial_resources().required_resources.get("CPU", 1)
        run_sweep_trial(
            config,
            variant=variant,
            objective=objective,
            smoke=smoke,
            report=report,
            threads=int(cpus),
            node=ray.get_runtime_context().get_node_id(),
            restored=restored,
            checkpoint_every_s=checkpoint_every_s,
            shared_data=shared_dataset,
            probe=probe,
        )

    trainable.__name__ = trainable.__qualname__ = "trial_" + re.sub(r"\W", "_", variant.key)
    return trainable


def make_tuner(
    phase: Phase,
    spec: SweepSpec,
    *,
    param_space: dict,
    num_samples: int,
    smoke: bool,
    resume: bool,
    resume_errored: bool = False,
):
    """The phase's Tuner: restored from its saved state on `--resume` (torn state files set
    aside first), else a new one."""
    asha = phase.name == "search" and spec.search.asha
    trainable = tune.with_resources(
        variant_trainable(
            phase.variant,
            objective=spec.objective.metric,
            smoke=smoke,
            checkpoint_every_s=spec.checkpoint_every_s,
            probe=asha,  # per-epoch probes only where ASHA reads them
        ),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    param_space, search_alg = phase_space(phase, spec, param_space)
    if resume:
        set_aside_torn(phase.path)
    if resume and tune.Tuner.can_restore(phase.path):
        # The same param space as the first run's (Tune refuses any other); the searcher's
        # state, trials and their results come back from the experiment's saved state.
        return tune.Tuner.restore(
            phase.path,
            trainable,
            resume_unfinished=True,
            resume_errored=resume_errored,
            restart_errored=False,
            param_space=param_space,
        )
    root, _, name = phase.path.rpartition("/")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=spec.objective.mode,
            search_alg=search_alg,
            scheduler=scheduler(spec, asha),
            num_samples=num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=root,
            verbose=0,
            callbacks=[DriverCallback()],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures, fail_fast=False),
            # the latest is all a restart needs (the final one holds the trial's artifacts)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def set_aside_torn(path: str) -> None:
    for name in set_aside_torn_state(path):
        logging.getLogger("harness").warning(
            "%s/%s is torn (a write cut short) or has no whole state beside it: renamed "
            "to %s%s; the state before it is restored, or the experiment starts again",
            path,
            name,
            name,
            TORN_SUFFIX,
        )


def scheduler(spec: SweepSpec, asha: bool):
    """ASHA on the per-epoch probe where the spec asks for it, else first in, first out."""
    if not asha:
        return FIFOScheduler()
    # rungs in epochs of the probe, not in reports (progress saves are reports too)
    return ASHAScheduler(
        time_attr="progress_step",
        max_t=100_000,
        grace_period=spec.search.grace_period,
        reduction_factor=3,
    )


def phase_space(phase: Phase, spec: SweepSpec, param_space: dict):
    """The experiment's param space and searcher, the same on a first run and on `--resume`.

    Each trial's config carries its resolved RunSpec (`plan.with_resolved`): where Optuna
    picks values, its searcher adds it; where every value is fixed (a grid of seeds at most),
    Tune's own generator does, through a `sample_from` entry of the param space."""
    if phase.name == "search" and param_space:
        return param_space, ProgressOptuna(phase.variant, seed=spec.search.seed)
    keys, variant = list(param_space), phase.variant
    resolved = tune.sample_from(
        lambda trial: with_resolved(variant, {k: trial.config[k] for k in keys})[RESOLVED_KEY]
    )
    return {**param_space, RESOLVED_KEY: resolved}, None


class ProgressOptuna(OptunaSearch):
    """Optuna search that passes over reports without the objective (saved progress):
    Tune's Optuna searcher reads the objective from every report. Each configuration it hands
    out carries the trial's resolved RunSpec (`plan.with_resolved`)."""

    def __init__(self, variant: Variant, **kwargs):
        super().__init__(**kwargs)
        self.variant = variant

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        return with_resolved(self.variant, config) if isinstance(config, dict) else config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if self.metric in result:
            super().on_trial_result(trial_id, result)


def best_config(grid, metric: str, mode: str) -> dict[str, Any] | None:
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        return None  # every trial failed
    if best is None or best.config is None:
        return None
    return {k: v for k, v in best.config.items() if k != RESOLVED_KEY}


def run_phase(
    ctx: PhaseContext,
    phase: Phase,
    spec: SweepSpec,
    *,
    param_space: dict,
    num_samples: int,
    smoke: bool,
    resume: bool,
):
    """Run one experiment to its end, its callbacks writing to `ctx`; Tune's result grid."""
    token = _serving.set(ctx)
    # trials a failed write to the storage interrupted: Tune may have saved them as errored
    rerun = resume and ctx.tracker.any_interrupted(ctx.key(""), INTERRUPTED_TAG)
    try:
        grid = make_tuner(
            phase,
            spec,
            param_space=param_space,
            num_samples=num_samples,
            smoke=smoke,
            resume=resume,
            resume_errored=rerun,
        ).fit()
    except Exception as exc:  # Tune wraps what a callback raised in its own TuneError
        fault = cause_of_type(exc, StorageFault)
        if fault is not None:
            raise fault from None
        raise
    finally:
        _serving.reset(token)
    if resume:
        settle(ctx, grid)
    faults.point("phase_end", ctx.phase)
    return grid


def cause_of_type(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`exc` or the first exception of type `kind` in its chain of causes and contexts."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
