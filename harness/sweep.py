"""`harness sweep`: the only module that imports Ray.

Each variant (dataset x method x grid point, see `harness.plan`) is one Ray Tune experiment
with its own seeded OptunaSearch and the same trial budget; ASHA stops weak trials on the
per-epoch / per-probe validation metric; then `repeats` extra seeds of the variant's best
configuration run as a second experiment. Trials run in Ray workers; only this driver
writes to MLflow (through `harness.tracking`), from Tune callbacks.

Resume: Tune saves every experiment's state under `<storage>/<sweep>/<variant>`; `--resume`
restores each with `Tuner.restore`, so finished trials are kept and unfinished ones rerun,
and the tracker finds each trial's MLflow run by its `trial_id` tag instead of making another.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.config import SweepSpec, build_run_spec
from harness.datasets import default_eps_for
from harness.errors import HarnessInputError
from harness.plan import Variant, sample_tree
from harness.tracking import Tracker, flatten

# Save experiment state often: a killed driver loses at most this many seconds of bookkeeping.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
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

FINAL_KEYS = (
    "clean_acc", "robust_acc", "autoattack_acc", "val_clean_acc", "val_robust_acc",
    "val_autoattack_acc",
    "learn_seconds", "train_seconds", "learn_work_epochs", "train_work_epochs", "work_epochs",
    "dataset_size",
)


# ------------------------------------------------------------------------ inside a worker


def trial_fn(config: dict[str, Any], *, variant: Variant, objective: str, smoke: bool) -> None:
    """One trial in a Ray worker: resolve the spec, run it, report progress and results."""
    import torch

    from harness.evaluate import run_trial

    torch.set_num_threads(max(1, int(tune.get_context().get_trial_resources().required_resources.get("CPU", 1))))
    searched = {k: v for k, v in config.items() if k != "seed"}
    tree = sample_tree(variant, searched)
    if "seed" in config:
        tree["seed"] = config["seed"]
    spec = build_run_spec(tree)

    def progress(metrics: dict[str, float], step: int) -> None:
        probe = metrics.get("val_robust_acc", metrics.get("probe_robust_acc"))
        if probe is not None and objective == "val_robust_acc":
            numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            tune.report({**numeric, objective: float(probe), "progress_step": step})

    result = run_trial(spec, smoke=smoke, log=progress, probe_epochs=True)
    final = final_metrics(result)
    final["device"] = str(spec.device)
    final["ray_node"] = ray.get_runtime_context().get_node_id()  # where the trial ran
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(Path(tmp), spec.model_dump(mode="json"), result)
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


def variant_trainable(variant: Variant, objective: str, smoke: bool):
    """The trial function of one variant, under a name of its own.

    Tune registers trainables by name in one global registry; variants running side by side
    must not share a name, or one variant's trials would run another's settings.
    """

    def trainable(config: dict[str, Any]) -> None:
        trial_fn(config, variant=variant, objective=objective, smoke=smoke)

    trainable.__name__ = trainable.__qualname__ = "trial_" + re.sub(r"\W", "_", variant.key)
    return trainable


def final_metrics(result) -> dict[str, Any]:
    out = {k: getattr(result, k) for k in FINAL_KEYS if getattr(result, k) is not None}
    for a in result.per_arch:
        for key in ("clean_acc", "robust_acc", "autoattack_acc", "n"):
            value = getattr(a, key)
            if value is not None:
                out[f"arch.{a.arch}.{key}"] = value
    out["masking_flags"] = ",".join(result.masking_flags)  # a tag, not a metric
    out["final"] = 1
    return out


def write_artifacts(root: Path, tree: dict[str, Any], result) -> None:
    """spec.yaml (the RunSpec with every default filled in, so `harness run --from-run`
    repeats the trial even after a default changes), the learned dataset (tensor file +
    image grid) and final model weights."""
    import torch

    (root / "spec.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    if result.learned is not None:
        (root / "dataset").mkdir()
        learned = result.learned
        torch.save({"x": learned.x.cpu(), "y": learned.y.cpu(), "meta": learned_meta(tree, result)},
                   root / "dataset" / "learned.pt")
        if learned.x.dim() == 4:
            from harness.images import save_grid

            save_grid(learned.x, learned.y, root / "dataset" / "grid.png")
    if result.weights:
        (root / "model").mkdir()
        for arch, state in result.weights.items():
            torch.save(state, root / "model" / f"{arch}.pt")


def learned_meta(tree: dict[str, Any], result) -> dict[str, Any]:
    """What a learned-set file says about itself: enough to score it again elsewhere
    (`harness score`, `harness.api.load_learned`). Plain values only, so it loads with
    torch.load(weights_only=True)."""
    import json

    import harness

    learned = result.learned
    meta = {
        "dataset": tree["dataset"], "method": tree["method"], "size": len(learned),
        "input_shape": list(learned.x.shape[1:]),
        "labels": "probabilities" if learned.y.dim() == 2 else "class ids",
        "threat": result.threat, "seed": tree.get("seed"),
        "harness_version": harness.__version__, "info": learned.info,
    }
    return json.loads(json.dumps(meta, default=str))


# ----------------------------------------------------------------------------- the driver


@dataclass
class VariantProgress:
    label: str
    dataset: str
    planned: int
    done: int = 0
    running: int = 0
    failed: int = 0
    best: float | None = None


@dataclass
class SweepProgress:
    """What the live view shows: trials done / running / failed and best objective."""

    mode: str
    variants: dict[str, VariantProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def better(self, a: float | None, b: float) -> bool:
        return a is None or (b > a if self.mode == "max" else b < a)

    def table(self):
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        t = Table(title=f"sweep progress  ({elapsed:.0f} s)", title_justify="left")
        for col in ("dataset", "variant", "done", "running", "failed", "planned", "best objective"):
            t.add_column(col, justify="right" if col not in ("dataset", "variant") else "left")
        for v in self.variants.values():
            best = "-" if v.best is None else f"{v.best:.4f}"
            t.add_row(v.dataset, v.label, str(v.done), str(v.running), str(v.failed),
                      str(v.planned), best)
        return t


# Live driver objects (tracker, progress view) by phase key. Tune pickles its callbacks into
# the experiment state and restores *those* on --resume, so a callback holds only its key
# and finds the current run's live objects here.
_DRIVER: dict[str, dict[str, Any]] = {}


class DriverCallback(tune.Callback):
    """Mirrors trials into MLflow (driver only) and keeps the progress view current."""

    def __init__(self, key: str):
        self.key = key

    def __getattr__(self, name: str) -> Any:
        try:
            return _DRIVER[self.__dict__["key"]][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def state(self) -> VariantProgress:
        return self.progress.variants[self.variant.key]

    def _run(self, trial) -> str:
        searched = {k: v for k, v in trial.config.items() if k != "seed"}
        tree = sample_tree(self.variant, searched)
        if "seed" in trial.config:
            tree["seed"] = trial.config["seed"]
        if tree["threat"].get("eps") is None:  # record the radius actually used
            tree["threat"]["eps"] = default_eps_for(self.variant.dataset, tree["dataset"])
        params = {**flatten(tree), "method": self.variant.method, "dataset": self.variant.dataset,
                  "variant": self.variant.label}
        tags = {"method": self.variant.method, "dataset": self.variant.dataset,
                "variant": self.variant.label, "phase": self.phase,
                "objective": self.objective, "objective_mode": self.mode}
        return self.tracker.trial_run(trial.trial_id, params, tags)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)
        self.state.running += 1
        self._refresh()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self._run(trial)
        numeric = {k: v for k, v in result.items() if k in FINAL_KEYS or "." in k or
                   k in ("outer_loss", "probe_robust_acc", "epoch")}
        self.tracker.log_metrics(run_id, numeric, step=int(result.get("training_iteration", 0)))
        if result.get("final") and self.objective in result:
            self.tracker.set_tags(run_id, {k: result[k] for k in ("device", "ray_node",
                                                                  "masking_flags")
                                           if result.get(k)})
            if self.progress.better(self.state.best, result[self.objective]):
                self.state.best = result[self.objective]
        self._refresh()

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        with checkpoint.as_directory() as local:
            self.tracker.log_artifacts(self._run(trial), local)

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        if not (trial.last_result or {}).get("final"):
            self.tracker.set_tags(run_id, {"stopped_early": "asha"})  # no final scores
        self.tracker.finish(run_id, ok=True)
        self.state.running -= 1
        self.state.done += 1
        self._refresh()

    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self._run(trial)
        trace = trial_error_text(trial)
        self.tracker.set_tags(run_id, {"error": error_summary(trace, trial)})
        if trace:
            self.tracker.log_text(run_id, trace, "error.txt")
        self.tracker.finish(run_id, ok=False)
        self.state.running -= 1
        self.state.failed += 1
        self._refresh()

    def _refresh(self):
        if self.live is not None:
            self.live.update(self.progress.table())


# Ray's switch for a single-machine node (its default on macOS and Windows): the node takes the
# loopback address, so the GCS, raylet, object manager, workers and agents all listen on
# 127.0.0.1 only. Ray has no per-server bind option; without this every gRPC server of a
# local sweep listens on all interfaces, where anyone who reaches the machine can submit code.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def trial_error_text(trial) -> str:
    """The failed trial's traceback as Tune stored it ('' when it cannot be read)."""
    try:
        return str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 (storage trouble must not hide the failure itself)
        return ""


def error_summary(trace: str, trial) -> str:
    """One line for the `error` tag: the exception line of the trace (e.g. `FloatingPointError:
    training diverged ...`, or Ray's word that the worker died), else where the trace is."""
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip()]
    named = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln)]
    chosen = named[-1] if named else (lines[-1] if lines else str(trial.error_file or "see Ray logs"))
    return chosen[:500]


def start_ray(address: str | None, cpus: float | None = None) -> bool:
    """Join the cluster at `address`, or start a loopback-only local Ray; True if we started it.

    A local Ray is checked after start: if its node is not on a loopback address it is shut
    down again and the sweep refuses to run (an internal error: Ray changed underneath us)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    try:
        if address and not is_loopback_address(address):
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        elif address:  # a cluster on this machine's loopback: its nodes say 127.0.0.1 too
            with _single_machine_mode():
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            _become_subreaper()
            with _single_machine_mode():
                ray.init(num_cpus=int(cpus or os.cpu_count() or 1), **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise HarnessInputError(
            f"cannot join the Ray cluster at {address!r} ({exc}). Check that `ray status` works "
            "on this machine, or leave --address out to run locally.",
            field="--address",
        ) from None
    if not address:
        node_ip = ray.util.get_node_ip_address()
        if node_ip not in _LOOPBACK:
            stop_ray()
            raise RuntimeError(
                f"the local Ray node came up on {node_ip}, not on the loopback address, so it "
                "would be reachable from the network; refusing to run. Start a cluster yourself "
                "(`ray start --head`) and pass --address if that is what you want."
            )
    return True


def is_loopback_address(address: str) -> bool:
    """True for `127.0.0.1:6379`, `localhost:6379`, `[::1]:6379` (not `auto`, not ray://)."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in _LOOPBACK or host.startswith("127.")


class _single_machine_mode:
    """Ray's single-machine switch, on for the processes `ray.init` starts, then put back.

    The variable reaches the GCS, raylet and agents (their environment is copied at start);
    the constant is what this already-imported driver reads."""

    def __enter__(self):
        from ray._private import ray_constants

        self.constants = ray_constants
        self.saved = (os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER)
        os.environ[_SINGLE_MACHINE_ENV] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc):
        env, flag = self.saved
        if env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = env
        self.constants.ENABLE_RAY_CLUSTER = flag
        return False


def stop_ray(timeout: float = 60.0) -> None:
    """Shut Ray down (a local one with all its processes, agents included), bounded in time.

    Runs in a helper thread so a wedged shutdown cannot keep a Ctrl-C'd sweep alive. Then
    every Ray process below this one still alive is killed: seen after a slow Ctrl-C in a
    loaded test run, where two of them outlived the driver. A driver that starts a local Ray
    is made a child subreaper (`start_ray`), so Ray processes orphaned during the shutdown
    stay below it and are found too. Other children of this process are left alone, and
    joining someone else's cluster starts no process here, so nothing is killed then."""
    if not ray.is_initialized():
        return
    before = ray_processes(os.getpid())
    done = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    done.start()
    done.join(timeout)
    _kill_until_gone(set(before), os.getpid())


def _kill_until_gone(known: set[int], root: int, patience: float = 10.0) -> None:
    """SIGKILL `known` and every Ray process below `root`, again until none is left (one may
    be starting a child as it is killed); killed children of ours are reaped."""
    end = time.monotonic() + patience
    while known and time.monotonic() < end:
        for pid in known:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # already gone
        for pid in known:
            try:
                os.waitpid(pid, os.WNOHANG)  # not left as a zombie of ours
            except ChildProcessError:
                pass  # not our child, or already reaped by its owner (Ray's Popen)
        time.sleep(0.1)
        known = set(ray_processes(root))


def ray_processes(root: int) -> list[int]:
    """Live Ray processes below `root` (Linux /proc; [] elsewhere): its children that run
    Ray's programs (GCS, raylet, monitors) or Ray workers and agents (`ray::...`), and every
    process below those."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found = [pid for pid in children.get(root, []) if _runs_ray(pid)]
    todo = list(found)
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


_RAY_DIR = os.path.dirname(ray.__file__)  # its programs run from below here


def _runs_ray(pid: int) -> bool:
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return cmdline.startswith("ray::") or _RAY_DIR + os.sep in cmdline


def _become_subreaper() -> None:
    """Linux: orphaned processes below this one are re-parented to it, not to init, so a
    Ray process whose parent dies first is still found and stopped by `stop_ray`."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # then orphans go to init, as everywhere else


def storage_root(storage: str | None) -> str:
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage or "ray_results").expanduser().resolve())


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


def make_tuner(phase: Phase, spec: SweepSpec, param_space: dict, num_samples: int,
               callback: DriverCallback, smoke: bool, resume: bool):
    trainable = tune.with_resources(
        variant_trainable(phase.variant, spec.objective.metric, smoke),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    if resume and tune.Tuner.can_restore(phase.path):
        return tune.Tuner.restore(phase.path, trainable, resume_unfinished=True,
                                  resume_errored=False, restart_errored=False,
                                  param_space=param_space)
    searching = phase.name == "search" and bool(param_space)
    if searching:
        search_alg = OptunaSearch(seed=spec.search.seed)
    else:
        search_alg = None
    scheduler = FIFOScheduler()
    if phase.name == "search" and spec.search.asha:
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=100_000,
                                  grace_period=spec.search.grace_period, reduction_factor=3)
    root, _, name = phase.path.rpartition("/")
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric, mode=spec.objective.mode, search_alg=search_alg,
            scheduler=scheduler, num_samples=num_samples,
            max_concurrent_trials=spec.search.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=root, verbose=0, callbacks=[callback],
            failure_config=tune.FailureConfig(max_failures=spec.max_failures, fail_fast=False),
        ),
    )


def best_config(grid, metric: str, mode: str) -> dict[str, Any] | None:
    try:
        best = grid.get_best_result(metric=metric, mode=mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        return None  # every trial failed
    return None if best is None or best.config is None else dict(best.config)


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
    tracker: Tracker = tracker_factory(resume, outbox_path(root, spec.name))
    tracker.set_tags(tracker.parent_run_id, {"ray_storage": f"{root}/{spec.name}",
                                             "smoke": str(smoke).lower()})
    if not resume or not existing:
        tracker.log_spec(spec_text)
    local = not ray.is_initialized()  # a Ray this call starts is this call's to stop
    try:  # start_ray inside: a Ctrl-C while Ray is still starting stops it too
        start_ray(address, cpus=None)
        failed = run_variants(spec, phases, tracker, smoke=smoke, resume=resume, console=console)
    finally:
        if local:
            stop_ray()
    unsent = tracker.finish_sweep(ok=True)
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
    workers = spec.search.parallel_variants or default_parallel_variants(spec)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="variant")
    try:
        with Live(progress.table(), console=console, refresh_per_second=2, transient=False) as live:
            jobs = [pool.submit(run_variant, spec, v, p, tracker, progress, live, smoke, resume)
                    for v, p in phases]
            for job in as_completed(jobs):
                failed += job.result()
                live.update(progress.table())
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return failed


def default_parallel_variants(spec: SweepSpec) -> int:
    """Enough variants in flight to fill the cluster with trials, and no more."""
    total = ray.cluster_resources()
    if spec.resources.gpu > 0:
        slots = total.get("GPU", 0) / spec.resources.gpu
    else:
        slots = total.get("CPU", 1) / spec.resources.cpu
    per_variant = max(1, spec.search.max_concurrent)
    return max(1, min(16, math.ceil(slots / per_variant) + 1))


def driver_callback(phase: Phase, tracker, progress, objective, live) -> DriverCallback:
    key = f"{phase.variant.key}:{phase.name}"
    _DRIVER[key] = dict(tracker=tracker, variant=phase.variant, phase=phase.name,
                        progress=progress, objective=objective, mode=progress.mode, live=live)
    return DriverCallback(key)


def run_variant(spec, variant, search: Phase, tracker, progress, live, smoke, resume) -> int:
    space = search_space(variant)
    samples = variant.trials if space else 1  # nothing to search: one trial says it all
    progress.variants[variant.key].planned = samples + variant.repeats
    cb = driver_callback(search, tracker, progress, spec.objective.metric, live)
    grid = make_tuner(search, spec, space, samples, cb, smoke, resume).fit()
    failed = sum(1 for r in grid if r.error is not None)
    if variant.repeats:
        best = best_config(grid, spec.objective.metric, spec.objective.mode)
        if best is not None:
            seeds = [spec.seed + 1 + i for i in range(variant.repeats)]
            repeat = Phase(variant, "repeat", search.path + "__repeats")
            cb = driver_callback(repeat, tracker, progress, spec.objective.metric, live)
            rgrid = make_tuner(repeat, spec, {**best, "seed": tune.grid_search(seeds)}, 1, cb,
                               smoke, resume).fit()
            failed += sum(1 for r in rgrid if r.error is not None)
    return failed
