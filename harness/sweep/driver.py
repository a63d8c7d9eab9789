"""`harness sweep`'s driver: Ray Tune experiments, their MLflow records, the live view.

With `harness.sweep.ray_node` (the driver's Ray), the only modules that import Ray: a trial itself
is `harness.sweep.trial`, plain Python, and the live view is `harness.sweep.progress`.

Each variant (dataset x method x grid point, see `harness.spec.plan`) is one Ray Tune experiment
with its own seeded OptunaSearch and the same trial budget; ASHA stops weak trials on the
per-epoch / per-probe validation metric; then `repeats` extra seeds of the variant's best
configuration run as a second experiment. Trials run in Ray workers; only this driver
writes to MLflow (through `harness.tracking.writer`, records shaped by `harness.results.record`), from
Tune callbacks.

Resume: Tune saves every experiment's state under `<storage>/<sweep>/<variant>`; `--resume`
restores each with `Tuner.restore` (with the param space of the first run, torn state files
set aside: `harness.sweep.storage`), so finished trials are kept and unfinished ones rerun, and
the tracker finds each trial's MLflow run by its `trial_key` tag (variant, phase and the
trial's number in its experiment) instead of making another. `harness.faults` names the
points where the fault matrix (tests/test_faults*.py) kills the driver.
"""

from __future__ import annotations

import contextlib
import logging
import math
import json
import os
import re
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import faults
from harness.protocol.checkpoint import load_file
from harness.spec.schema import SweepSpec, derived_seed
from harness.errors import HarnessInputError
from harness.sweep.storage import (
    INTERRUPTED_TAG, TORN_SUFFIX, StorageFault, check_writable, fault_in, set_aside_torn_state,
    storage_root, unwritable_message,
)
from harness.spec.plan import RESOLVED_KEY, Variant, launch_order, with_resolved
from harness.sweep.progress import SweepProgress, VariantProgress
from harness.results.record import ARCH_PREFIX, PROGRESS_METRICS, TrialRecord, spec_params
from harness.sweep.trial import run_sweep_trial

if TYPE_CHECKING:  # MLflow is the driver's: a trial's worker imports this module, not MLflow
    from harness.tracking.writer import Tracker

# Save experiment state often: a killed driver loses at most this many seconds of bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# A trial reports progress saves (harness.protocol.checkpoint) that carry no objective; Tune would
# otherwise refuse every report without it.
os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from harness.sweep.ray_node import shared_dataset, start_caches, start_ray, stop_ray  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from ray.tune import registry as _tune_registry  # noqa: E402


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

# ----------------------------------------------------------------------------- the driver


@dataclass
class PhaseContext:
    """The live objects one experiment's callback writes to."""

    tracker: Tracker
    variant: Variant
    phase: str  # "search" or "repeat"
    progress: SweepProgress
    objective: str
    live: Any  # the rich Live display, or None
    turnstile: "Turnstile | None" = None  # the variants' launch turns (search phase only)
    counted: set[str] = field(default_factory=set)  # numbers of the trials counted as ended
    storage: str = ""  # the sweep's Ray results folder (`harness.sweep.storage`)

    @property
    def state(self) -> VariantProgress:
        return self.progress.variants[self.variant.key]

    def key(self, number: str) -> str:
        """The trial's key in the tracker (its MLflow tag `trial_key`): variant, phase and
        the trial's number in its experiment. Not Tune's trial id: a trial that a killed
        driver had started but Tune's saved state had not kept yet is handed out again
        under the same number (the searcher's saved state is as old as the trials') and a
        new id, and must find the run it had."""
        return f"{self.variant.key}/{self.phase}/{number}"

    def count(self, number: str, *, ok: bool) -> None:
        """A trial ended: counted once, whether its end was seen here or restored."""
        if number in self.counted:
            return
        self.counted.add(number)
        if ok:
            self.state.done += 1
        else:
            self.state.failed += 1

    def note_best(self, record: TrialRecord) -> None:
        value = record.metric(self.objective)
        if value is not None and self.progress.better(self.state.best, value):
            self.state.best = value

    def identity(self) -> dict[str, str]:
        return {"method": self.variant.method, "dataset": self.variant.dataset,
                "variant": self.variant.label, "phase": self.phase,
                "objective": self.objective, "objective_mode": self.progress.mode}


class Turnstile:
    """Variants start their experiments one at a time, in launch order: each waits until every
    variant before it has a trial running (or has ended). So at most one experiment at a time
    waits for Ray's resources, and a slot that frees goes to the next variant in order, not
    to whichever of several waiting experiments Tune happens to serve first (seen: with two
    waiting, a short variant listed third took the slot of the long one listed first)."""

    def __init__(self, keys: list[str]):
        self._order = list(keys)
        self._passed: set[str] = set()
        self._aborted = False
        self._cond = threading.Condition()

    def wait(self, key: str) -> None:
        before = self._order[: self._order.index(key)]
        with self._cond:
            self._cond.wait_for(lambda: self._aborted or all(k in self._passed for k in before))
            if self._aborted:
                raise RuntimeError("the sweep stopped before this variant's turn")

    def passed(self, key: str) -> None:
        with self._cond:
            self._passed.add(key)
            self._cond.notify_all()

    def abort(self) -> None:
        """Releases every waiting variant thread (Ctrl-C, an error): they end at once."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()


# The phase whose experiment the current variant thread is running (`Tuner.fit` calls its
# callbacks in the thread that called it).
_serving: ContextVar[PhaseContext] = ContextVar("harness_phase")


class DriverCallback(tune.Callback):
    """Mirrors trials into MLflow (driver only) and keeps the progress view current.

    Tune pickles its callbacks into the experiment state and, on `--resume`, calls the
    unpickled ones; so a callback keeps no state of its own and writes to the phase that the
    thread running its experiment serves (`run_phase` sets it)."""

    def __getstate__(self) -> dict:
        return {}

    @property
    def ctx(self) -> PhaseContext:
        return _serving.get()

    def _run(self, trial) -> str:
        """The trial's MLflow run, opened with the resolved settings its config carries as
        params (`plan.with_resolved`)."""
        return open_trial_run(self.ctx, trial_number(trial.experiment_tag), trial.trial_id,
                              trial.config)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)
        faults.point("trial_start", self.ctx.phase)
        self.ctx.state.running += 1
        if self.ctx.turnstile is not None:
            self.ctx.turnstile.passed(self.ctx.variant.key)
        self._refresh()

    def on_trial_recover(self, iteration, trials, trial, **info):
        """A failed attempt that Tune will retry (`max_failures`): it starts again later."""
        run_id, ctx = self._run(trial), self.ctx
        self._stop_if_storage_failed(trial, run_id)
        ctx.tracker.set_tags(run_id, {"retried": str(trial.num_failures)})
        ctx.state.running -= 1
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id, ctx = self._run(trial), self.ctx
        step = int(result.get("training_iteration", 0))
        if "record" in result:  # the trial's end: its whole record
            record = replace(TrialRecord.from_json(result["record"]), **ctx.identity())
            ctx.tracker.log_metrics(run_id, record.mlflow_metrics(), step=step)
            ctx.tracker.set_tags(run_id, record.mlflow_tags())
            ctx.note_best(record)
            faults.point("trial_record", ctx.phase)
        else:  # progress while it trains
            shown = {k: v for k, v in result.items()
                     if k in (*PROGRESS_METRICS, ctx.objective) or k.startswith(ARCH_PREFIX)}
            ctx.tracker.log_metrics(run_id, shown, step=step)
        self._refresh()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        if "record" not in (trial.last_result or {}):
            return  # saved progress (harness.protocol.checkpoint), not the trial's artifacts
        with checkpoint.as_directory() as local:
            self.ctx.tracker.log_artifacts(self._run(trial), local)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id, ctx = self._run(trial), self.ctx
        if "record" not in (trial.last_result or {}):
            ctx.tracker.set_tags(run_id, {"stopped_early": "asha"})  # no final scores
        ctx.tracker.finish(run_id, ok=True)
        ctx.state.running -= 1
        ctx.count(trial_number(trial.experiment_tag), ok=True)
        self._refresh()
        faults.point("trial_complete", ctx.phase)

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id, ctx = self._run(trial), self.ctx
        self._stop_if_storage_failed(trial, run_id)
        trace = trial_error_text(trial)
        ctx.tracker.set_tags(run_id, {"error": error_summary(trace, trial)})
        if trace:
            ctx.tracker.log_text(run_id, trace, "error.txt")
        ctx.tracker.finish(run_id, ok=False)
        ctx.state.running -= 1
        ctx.count(trial_number(trial.experiment_tag), ok=False)
        self._refresh()

    def _stop_if_storage_failed(self, trial, run_id: str) -> None:
        """A trial that could not write to the sweep's storage has not failed: its run is
        marked interrupted (rerun by `--resume`) and the sweep stops (`harness.sweep.storage`)."""
        ctx = self.ctx
        fault = fault_in(trial_error_text(trial), ctx.storage)
        if fault is None:
            return
        ctx.tracker.set_tags(run_id, {INTERRUPTED_TAG: f"storage: {fault}"})
        ctx.tracker.interrupt(run_id)
        ctx.state.running -= 1
        raise StorageFault(unwritable_message(ctx.storage, fault),
                                   field="--storage")

    def _refresh(self):
        if self.ctx.live is not None:
            self.ctx.live.update(self.ctx.progress.table())


def trial_number(experiment_tag: str) -> str:
    """A trial's number in its experiment: Tune's experiment tag starts with it (`3_lr=0.1`)."""
    return str(experiment_tag).split("_", 1)[0]


def open_trial_run(ctx: PhaseContext, number: str, trial_id: str, config: dict) -> str:
    """The MLflow run of trial `number` of the phase, opened once (a resumed sweep finds the
    run it made before), with the resolved settings the trial's config carries as params."""
    key = ctx.key(number)
    known = ctx.tracker.opened(key)
    if known is not None:
        return known
    tree = json.loads(config[RESOLVED_KEY])  # decided when the trial was handed out
    params = TrialRecord(method=ctx.variant.method, dataset=ctx.variant.dataset,
                         params=spec_params(tree), metrics={}).mlflow_params()
    return ctx.tracker.trial_run(key, params, {**ctx.identity(), "trial_id": trial_id})


def settle(ctx: PhaseContext, grid) -> None:
    """After a restored experiment: count in the live view the trials that had ended before
    the restart (Tune calls no callback for them), with their objective."""
    for result in grid:
        metrics = result.metrics or {}
        number = trial_number(metrics.get("experiment_tag") or result_dir_number(result.path))
        if not number:
            continue
        ctx.count(number, ok=result.error is None)
        if "record" in metrics:
            ctx.note_best(TrialRecord.from_json(metrics["record"]))


def result_dir_number(path: str | None) -> str:
    """The trial number in a trial folder's name (`trial_dirname`), '' if it has none."""
    found = re.search(r"_n(\d+)_[0-9a-f]+(?:_\d+)?$", Path(path or "").name)
    return found.group(1) if found else ""


def trial_dirname(trial) -> str:
    """`<trainable>_n<number>_<trial id>`: named by number and id, not by config (which holds
    the whole resolved spec)."""
    return f"{trial.trainable_name}_n{trial_number(trial.experiment_tag)}_{trial.trial_id}"


def trial_error_text(trial) -> str:
    """The failed trial's traceback as Tune stored it ('' when it cannot be read): from the
    driver's own copy (written as the error arrives), else from the sweep's storage (which
    a write that failed for want of space never reached)."""
    with contextlib.suppress(Exception):  # storage trouble must not hide the failure itself
        local = getattr(trial, "error_file", None)
        if local and Path(local).is_file():
            return Path(local).read_text(errors="replace")
    try:
        return str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 (as above)
        return ""


def error_summary(trace: str, trial) -> str:
    """One line for the `error` tag: the exception line of the trace (e.g. `FloatingPointError:
    training diverged ...`, or Ray's word that the worker died), else where the trace is."""
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln)]
    chosen = named[-1] if named else (lines[-1] if lines else str(trial.error_file or "see Ray logs"))
    return chosen[:500]


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


def variant_trainable(variant: Variant, *, objective: str, smoke: bool,
                      checkpoint_every_s: float | None = None, probe: bool = True):
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
        run_sweep_trial(config, variant=variant, objective=objective, smoke=smoke,
                        report=report, threads=int(cpus),
                        node=ray.get_runtime_context().get_node_id(), restored=restored,
                        checkpoint_every_s=checkpoint_every_s, shared_data=shared_dataset,
                        probe=probe)

    trainable.__name__ = trainable.__qualname__ = "trial_" + re.sub(r"\W", "_", variant.key)
    return trainable


def make_tuner(phase: Phase, spec: SweepSpec, *, param_space: dict, num_samples: int,
               smoke: bool, resume: bool, resume_errored: bool = False):
    asha = phase.name == "search" and spec.search.asha
    trainable = tune.with_resources(
        variant_trainable(phase.variant, objective=spec.objective.metric, smoke=smoke,
                          checkpoint_every_s=spec.checkpoint_every_s,
                          probe=asha),  # per-epoch probes only where ASHA reads them
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    param_space, search_alg = phase_space(phase, spec, param_space)
    if resume:
        for name in set_aside_torn_state(phase.path):
            logging.getLogger("harness").warning(
                "%s/%s is torn (a write cut short) or has no whole state beside it: renamed "
                "to %s%s; the state before it is restored, or the experiment starts again",
                phase.path, name, name, TORN_SUFFIX)
    if resume and tune.Tuner.can_restore(phase.path):
        # The same param space as the first run's (Tune refuses any other); the searcher's
        # state, trials and their results come back from the experiment's saved state.
        return tune.Tuner.restore(phase.path, trainable, resume_unfinished=True,
                                  resume_errored=resume_errored, restart_errored=False,
                                  param_space=param_space)
    scheduler = FIFOScheduler()
    if asha:
        # rungs in epochs of the probe, not in reports (progress saves are reports too)
        scheduler = ASHAScheduler(time_attr="progress_step", max_t=100_000,
                                  grace_period=spec.search.grace_period, reduction_factor=3)
    root, _, name = phase.path.rpartition("/")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric, mode=spec.objective.mode, search_alg=search_alg,
            scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=root, verbose=0, callbacks=[DriverCallback()],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures, fail_fast=False),
            # the latest is all a restart needs (the final one holds the trial's artifacts)
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
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
        lambda trial: with_resolved(variant, {k: trial.config[k] for k in keys})[RESOLVED_KEY])
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


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment: str
    storage: str
    failed: int
    variants: list[str]
    unsent: int = 0  # tracking writes still in the outbox (the server did not come back)
    outbox: str = ""


def run_sweep(spec: SweepSpec, spec_text: str, plan: list[Variant], *, tracker_factory,
              address: str | None, storage: str | None, resume: bool, smoke: bool,
              console=None) -> SweepOutcome:
    """Run every variant's search then repeats; returns where the results are.

    A local Ray is started here and shut down on every way out: done, an error, Ctrl-C."""
    root = storage_root(storage)
    phases = [(v, Phase(v, "search", experiment_path(root, spec.name, v.key))) for v in plan]
    existing = [p.path for _, p in phases if tune.Tuner.can_restore(p.path)]
    if existing and not resume:
        raise HarnessInputError(
            f"sweep {spec.name!r} already has results under {root}/{spec.name} "
            f"({len(existing)} of {len(phases)} variants started). Pass --resume to continue it, "
            "or change `name` in the spec (or --storage) to start a new one; nothing was changed.",
            field="name",
        )
    check_writable(root, spec.name)  # before anything is recorded
    tracker: Tracker = tracker_factory(resume, outbox_path(root, spec.name))
    tracker.set_tags(tracker.parent_run_id, {"ray_storage": f"{root}/{spec.name}",
                                             "smoke": str(smoke).lower()})
    if not resume or not existing:
        tracker.log_spec(spec_text)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    local = not ray.is_initialized()  # a Ray this call starts is this call's to stop
    try:  # start_ray inside: a Ctrl-C while Ray is still starting stops it too
        start_ray(address, cpus=None)
        caches = start_caches()  # one dataset copy per node, shared by its trials
        try:
            failed = run_variants(spec, phases, tracker, smoke=smoke, resume=resume,
                                  console=console)
        finally:
            for cache in caches:
                with contextlib.suppress(Exception):  # gone already, or Ray is going down
                    ray.kill(cache)
    finally:
        if local:
            stop_ray()
    unsent = tracker.finish_sweep(ok=True)
    faults.point("sweep_end")
    return SweepOutcome(tracker.parent_run_id, spec.name, f"{root}/{spec.name}", failed,
                        [v.label for v in plan], unsent=unsent,
                        outbox=str(tracker.outbox.root) if tracker.outbox else "")


def outbox_path(root: str, sweep: str) -> str:
    """Where tracking writes wait while the server is away: beside the sweep's Ray results
    when those are local (so `--resume` finds them), else under the working directory."""
    if "://" in root:
        return str(Path.cwd() / ".mlflow-outbox" / sweep)
    return f"{root}/{sweep}/mlflow-outbox"


def run_variants(spec: SweepSpec, phases: list, tracker: Tracker, *, smoke: bool, resume: bool,
                 console=None) -> int:
    """Every variant's experiments, side by side in driver threads; returns failed trials.

    Variants run in threads (Tune skips its signal handlers off the main thread); Ray's
    scheduler shares the CPUs/GPUs out. On Ctrl-C or an error the pool is abandoned, not
    joined: its threads block on Tune and end when Ray is shut down."""
    from rich.live import Live

    progress = SweepProgress(mode=spec.objective.mode)
    for v, _ in phases:
        progress.variants[v.key] = VariantProgress(v.label, v.dataset, v.trials + v.repeats)
    failed = 0
    workers = spec.search.parallel_variants or default_parallel_variants(
        spec, [v for v, _ in phases], ray.cluster_resources())
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="variant")
    ordered = [p for _, p in launch_order(phases, lambda vp: vp[0].method)]
    turnstile = Turnstile([p.variant.key for p in ordered])
    try:
        with Live(progress.table(), console=console, refresh_per_second=2, transient=False) as live:
            jobs = [pool.submit(run_variant, spec, p, tracker=tracker, progress=progress,
                                live=live, smoke=smoke, resume=resume, turnstile=turnstile)
                    for p in ordered]
            pending = set(jobs)
            while pending:
                # Woken twice a second, not only when a variant ends: Python runs a signal's
                # handler in the main thread, and a main thread asleep in a lock wait never
                # wakes for a Ctrl-C that the kernel handed to one of Ray's threads (seen:
                # the driver sat on a SIGINT for good; tests/test_ray_local.py sends one so).
                done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for job in done:
                    failed += job.result()
                live.update(progress.table())
    except BaseException:
        turnstile.abort()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return failed


def default_parallel_variants(spec: SweepSpec, variants: list[Variant],
                              cluster: dict[str, float]) -> int:
    """Enough variants in flight to fill the cluster's slots with trials, plus one whose
    experiment is set up and waiting for the next free slot (the turnstile keeps it at one),
    so a slot that frees starts a trial at once instead of after a variant's set-up.

    A variant runs at most `max_concurrent` trials at once, and one when nothing is searched
    (a single trial says it all); the variant that fills fewest slots sets the count."""
    if spec.resources.gpu > 0:
        slots = cluster.get("GPU", 0) / spec.resources.gpu
    else:
        slots = cluster.get("CPU", 1) / spec.resources.cpu
    per_variant = min((min(max(1, spec.search.max_concurrent), variant_samples(v))
                       for v in variants), default=1)
    return max(1, min(16, math.ceil(slots / per_variant) + 1))


def variant_samples(variant: Variant) -> int:
    """Trials in a variant's search: its `trials` when something is searched, else one."""
    return variant.trials if search_space(variant) else 1


def run_phase(ctx: PhaseContext, phase: Phase, spec: SweepSpec, *, param_space: dict,
              num_samples: int, smoke: bool, resume: bool):
    """Run one experiment to its end, its callbacks writing to `ctx`; Tune's result grid."""
    token = _serving.set(ctx)
    # trials a failed write to the storage interrupted: Tune may have saved them as errored
    rerun = resume and ctx.tracker.any_interrupted(ctx.key(""), INTERRUPTED_TAG)
    try:
        grid = make_tuner(phase, spec, param_space=param_space, num_samples=num_samples,
                          smoke=smoke, resume=resume, resume_errored=rerun).fit()
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


def run_variant(spec: SweepSpec, search: Phase, *, tracker: Tracker, progress: SweepProgress,
                live, smoke: bool, resume: bool, turnstile: Turnstile) -> int:
    """A variant's Optuna search, then its repeats; returns its failed trials."""
    variant = search.variant
    space = search_space(variant)
    samples = variant_samples(variant)
    progress.variants[variant.key].planned = samples + variant.repeats
    context = dict(tracker=tracker, variant=variant, progress=progress,
                   objective=spec.objective.metric, live=live,
                   storage=search.path.rpartition("/")[0])
    turnstile.wait(variant.key)
    try:
        grid = run_phase(PhaseContext(phase="search", turnstile=turnstile, **context), search,
                         spec, param_space=space, num_samples=samples, smoke=smoke,
                         resume=resume)
    finally:  # also when no trial started (all restored, or none could start)
        turnstile.passed(variant.key)
    failed = sum(1 for r in grid if r.error is not None)
    if variant.repeats:
        best = best_config(grid, spec.objective.metric, spec.objective.mode)
        if best is not None:
            seeds = [derived_seed(spec.seed + 1 + i) for i in range(variant.repeats)]
            repeat = Phase(variant, "repeat", search.path + "__repeats")
            rgrid = run_phase(PhaseContext(phase="repeat", **context), repeat, spec,
                              param_space={**best, "seed": tune.grid_search(seeds)},
                              num_samples=1, smoke=smoke, resume=resume)
            failed += sum(1 for r in rgrid if r.error is not None)
    return failed
