"""`harness sweep`'s driver: every variant's experiments, side by side in driver threads, on
a Ray it starts (or joins), tracked in MLflow, shown in a live view.

Each variant (dataset x method x grid point, see `harness.spec.plan`) is one Ray Tune
experiment with its own seeded OptunaSearch and the same trial budget; ASHA stops weak
trials on the per-epoch / per-probe validation metric; then `repeats` extra seeds of the
variant's best configuration run as a second experiment (`harness.sweep.experiment`).
Trials run in Ray workers (`harness.sweep.trial`, plain Python); only the driver writes to
MLflow (`harness.tracking.writer`, records shaped by `harness.results.record`), from Tune
callbacks (`harness.sweep.callback`).

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
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness import faults
from harness.errors import HarnessInputError
from harness.spec.plan import Variant, launch_order
from harness.spec.schema import SweepSpec, derived_seed
from harness.sweep.callback import PhaseContext, Turnstile
from harness.sweep.experiment import (
    Phase,
    best_config,
    experiment_path,
    run_phase,
    search_space,
)
from harness.sweep.progress import SweepProgress, VariantProgress
from harness.sweep.storage import check_writable, storage_root

if TYPE_CHECKING:  # MLflow is the driver's: a trial's worker imports this package, not MLflow
    from harness.tracking.writer import Tracker

import ray  # noqa: E402
from ray import tune  # noqa: E402

from harness.sweep.ray_node import start_caches, start_ray, stop_ray  # noqa: E402


@dataclass
class SweepOutcome:
    parent_run_id: str
    experiment: str
    storage: str
    failed: int
    variants: list[str]
    unsent: int = 0  # tracking writes still in the outbox (the server did not come back)
    outbox: str = ""


def run_sweep(
    spec: SweepSpec,
    spec_text: str,
    plan: list[Variant],
    *,
    tracker_factory,
    address: str | None,
    storage: str | None,
    resume: bool,
    smoke: bool,
    console=None,
) -> SweepOutcome:
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
    tracker.set_tags(
        tracker.parent_run_id, {"ray_storage": f"{root}/{spec.name}", "smoke": str(smoke).lower()}
    )
    if not resume or not existing:
        tracker.log_spec(spec_text)
    failed = on_ray(
        address,
        lambda: run_variants(spec, phases, tracker, smoke=smoke, resume=resume, console=console),
    )
    unsent = tracker.finish_sweep(ok=True)
    faults.point("sweep_end")
    return SweepOutcome(
        tracker.parent_run_id,
        spec.name,
        f"{root}/{spec.name}",
        failed,
        [v.label for v in plan],
        unsent=unsent,
        outbox=str(tracker.outbox.root) if tracker.outbox else "",
    )


def on_ray(address: str | None, work):
    """`work()` on Ray (a local one started here, or the cluster at `address`) with one
    dataset cache per node; a Ray started here is shut down on every way out: done, an
    error, Ctrl-C (also one that comes while Ray is still starting)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    local = not ray.is_initialized()  # a Ray this call starts is this call's to stop
    try:
        start_ray(address, cpus=None)
        caches = start_caches()  # one dataset copy per node, shared by its trials
        try:
            return work()
        finally:
            for cache in caches:
                with contextlib.suppress(Exception):  # gone already, or Ray is going down
                    ray.kill(cache)
    finally:
        if local:
            stop_ray()


def outbox_path(root: str, sweep: str) -> str:
    """Where tracking writes wait while the server is away: beside the sweep's Ray results
    when those are local (so `--resume` finds them), else under the working directory."""
    if "://" in root:
        return str(Path.cwd() / ".mlflow-outbox" / sweep)
    return f"{root}/{sweep}/mlflow-outbox"


def run_variants(
    spec: SweepSpec, phases: list, tracker: Tracker, *, smoke: bool, resume: bool, console=None
) -> int:
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
        spec, [v for v, _ in phases], ray.cluster_resources()
    )
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="variant")
    ordered = [p for _, p in launch_order(phases, lambda vp: vp[0].method)]
    turnstile = Turnstile([p.variant.key for p in ordered])
    try:
        with Live(progress.table(), console=console, refresh_per_second=2, transient=False) as live:
            jobs = [
                pool.submit(
                    run_variant,
                    spec,
                    p,
                    tracker=tracker,
                    progress=progress,
                    live=live,
                    smoke=smoke,
                    resume=resume,
                    turnstile=turnstile,
                )
                for p in ordered
            ]
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


def default_parallel_variants(
    spec: SweepSpec, variants: list[Variant], cluster: dict[str, float]
) -> int:
    """Enough variants in flight to fill the cluster's slots with trials, plus one whose
    experiment is set up and waiting for the next free slot (the turnstile keeps it at one),
    so a slot that frees starts a trial at once instead of after a variant's set-up.

    A variant runs at most `max_concurrent` trials at once, and one when nothing is searched
    (a single trial says it all); the variant that fills fewest slots sets the count."""
    if spec.resources.gpu > 0:
        slots = cluster.get("GPU", 0) / spec.resources.gpu
    else:
        slots = cluster.get("CPU", 1) / spec.resources.cpu
    per_variant = min(
        (min(max(1, spec.search.max_concurrent), v.searched_trials) for v in variants), default=1
    )
    return max(1, min(16, math.ceil(slots / per_variant) + 1))


def run_variant(
    spec: SweepSpec,
    search: Phase,
    *,
    tracker: Tracker,
    progress: SweepProgress,
    live,
    smoke: bool,
    resume: bool,
    turnstile: Turnstile,
) -> int:
    """A variant's Optuna search, then its repeats; returns its failed trials."""
    variant = search.variant
    space = search_space(variant)
    samples = variant.searched_trials
    progress.variants[variant.key].planned = samples + variant.repeats
    context = dict(
        tracker=tracker,
        variant=variant,
        progress=progress,
        objective=spec.objective.metric,
        live=live,
        storage=search.path.rpartition("/")[0],
    )
    turnstile.wait(variant.key)
    try:
        grid = run_phase(
            PhaseContext(phase="search", turnstile=turnstile, **context),
            search,
            spec,
            param_space=space,
            num_samples=samples,
            smoke=smoke,
            resume=resume,
        )
    finally:  # also when no trial started (all restored, or none could start)
        turnstile.passed(variant.key)
    failed = sum(1 for r in grid if r.error is not None)
    if variant.repeats:
        best = best_config(grid, spec.objective.metric, spec.objective.mode)
        if best is not None:
            seeds = [derived_seed(spec.seed + 1 + i) for i in range(variant.repeats)]
            repeat = Phase(variant, "repeat", search.path + "__repeats")
            rgrid = run_phase(
                PhaseContext(phase="repeat", **context),
                repeat,
                spec,
                param_space={**best, "seed": tune.grid_search(seeds)},
                num_samples=1,
                smoke=smoke,
                resume=resume,
            )
            failed += sum(1 for r in rgrid if r.error is not None)
    return failed
