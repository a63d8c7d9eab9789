"""What the sweep driver writes while Tune runs an experiment: the phase a variant thread
serves (`PhaseContext`), the turns variants take to start (`Turnstile`), and the Tune
callback that mirrors each trial into MLflow and the live view (`DriverCallback`).

A trial's MLflow run is keyed by variant, phase and the trial's number in its experiment
(`PhaseContext.key`), not by Tune's trial id: see there for why.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import faults
from harness.results.record import ARCH_PREFIX, PROGRESS_METRICS, TrialRecord, spec_params
from harness.spec.plan import RESOLVED_KEY, Variant
from harness.sweep.progress import SweepProgress, VariantProgress
from harness.sweep.storage import INTERRUPTED_TAG, StorageFault, fault_in, unwritable_message

if TYPE_CHECKING:  # MLflow is the driver's: a trial's worker imports this package, not MLflow
    from harness.tracking.writer import Tracker

from ray import tune  # noqa: E402


@dataclass
class PhaseContext:
    """The live objects one experiment's callback writes to."""

    tracker: Tracker
    variant: Variant
    phase: str  # "search" or "repeat"
    progress: SweepProgress
    objective: str
    live: Any  # the rich Live display, or None
    turnstile: Turnstile | None = None  # the variants' launch turns (search phase only)
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
        return {
            "method": self.variant.method,
            "dataset": self.variant.dataset,
            "variant": self.variant.label,
            "phase": self.phase,
            "objective": self.objective,
            "objective_mode": self.progress.mode,
        }


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
        return open_trial_run(
            self.ctx, trial_number(trial.experiment_tag), trial.trial_id, trial.config
        )

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
            shown = {
                k: v
                for k, v in result.items()
                if k in (*PROGRESS_METRICS, ctx.objective) or k.startswith(ARCH_PREFIX)
            }
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
        raise StorageFault(unwritable_message(ctx.storage, fault), field="--storage")

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
    params = TrialRecord(
        method=ctx.variant.method, dataset=ctx.variant.dataset, params=spec_params(tree), metrics={}
    ).mlflow_params()
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
    chosen = (
        named[-1] if named else (lines[-1] if lines else str(trial.error_file or "see Ray logs"))
    )
    return chosen[:500]
