"""`harness`: the command-line entry point.

Exit codes: 0 ok; 2 bad input (a one-paragraph message, no traceback); 1 internal failure.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.errors import HarnessInputError

err_console = Console(stderr=True)


class HarnessGroup(click.Group):
    """Turns `HarnessInputError` into exit code 2 with its message and no traceback, and a
    diverged run (a method's `FloatingPointError`, whose message names the setting to change)
    into exit code 1 the same way."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HarnessInputError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            sys.exit(2)
        except FloatingPointError as exc:
            err_console.print(f"[bold red]diverged:[/] {escape(str(exc))}", highlight=False,
                              soft_wrap=True)
            sys.exit(1)


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="robust-dataset-harness")
def main() -> None:
    """Benchmark robust dataset learning against adversarial training and dataset
    distillation: sweeps on Ray Tune + Optuna, tracked in MLflow, summarised as leaderboards.

    \b
    Example:
      harness sweep sweeps/quick.yaml && harness leaderboard --format html --output board.html
    """


# ----------------------------------------------------------------------------------- run


class ProgressLog:
    """Compact progress on stderr: at most one line every `every` seconds, plus each model."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self.last = 0.0

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        now = time.monotonic()
        per_model = any(k.startswith("arch.") for k in metrics)
        if not per_model and now - self.last < self.every:
            return
        self.last = now
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        err_console.print(f"[dim]step {step}[/]  {shown}", highlight=False)


def with_options(options):
    def wrap(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return wrap


# Options of the commands that run one trial (`run`, `score`).
trial_options = [
    click.option("--seed", default=0, show_default=True, type=int),
    click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                 help="Override a spec field by dotted key, e.g. --set threat.eps=0.5 "
                      "(repeatable)."),
    click.option("--smoke", is_flag=True, help="Tiny budgets: seconds on a laptop, for checking."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
]


@main.command(short_help="Run one trial and score it (--json for scripts).")
@click.option("--dataset", default=None, help="Dataset name (see `harness datasets`).")
@click.option("--method", default=None, help="Method name (see `harness methods`).")
@click.option("--arch", default=None, help="Evaluate this architecture only.")
@with_options(trial_options)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--data-root", default=None, help="Data directory (default $HARNESS_DATA or ~/.cache/harness/data).")
@click.option("--from-run", default=None, metavar="RUN_ID",
              help="Re-run a sweep's trial from the spec it recorded (instead of --dataset and "
                   "--method); --set, --arch, --seed, --device and --data-root apply on top.")
@click.option("--tracking-uri", default=None,
              help="MLflow store of --from-run (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
def run(dataset, method, arch, seed, assignments, smoke, as_json, device, data_root, from_run,
        tracking_uri) -> None:
    """Run one trial: learn or train, then evaluate under the harness's protocol.

    \b
    Example:
      harness run --dataset digits --method pgd_at --smoke --json
      harness run --from-run 3f2a... --tracking-uri sqlite:///mlflow.db
    """
    from harness.config import apply_overrides, build_run_spec
    from harness.evaluate import run_trial

    if from_run:
        tree = recorded_tree(from_run, tracking_uri, dataset=dataset, method=method, smoke=smoke,
                             given=dict(arch=arch, seed=seed, device=device, data_root=data_root))
        pre: list[str] = []
    else:
        tree, pre = fresh_tree(dataset, method, arch, seed, device, data_root, smoke)
    spec = build_run_spec(apply_overrides(tree, [*pre, *assignments]))
    check_device(spec.device)
    result = run_trial(spec, smoke=smoke, log=ProgressLog())
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)


def fresh_tree(dataset, method, arch, seed, device, data_root, smoke) -> tuple[dict, list[str]]:
    """The spec tree of `harness run --dataset --method`, and --smoke's overrides."""
    from harness.evaluate import smoke_assignments

    if not dataset or not method:
        raise HarnessInputError("give --dataset NAME and --method NAME, or --from-run RUN_ID "
                                "to re-run a recorded trial.", field="--dataset")
    tree: dict[str, Any] = {
        "dataset": {"name": dataset}, "method": {"name": method}, "seed": seed, "device": device,
    }
    if data_root:
        tree["dataset"]["root"] = data_root
    if arch:
        tree.setdefault("eval", {})["archs"] = [arch]
    pre = smoke_assignments(dataset, method) if smoke else []
    if arch and smoke:
        pre = [a for a in pre if not a.startswith("eval.archs=")]
    return tree, pre


# What each `run` flag sets in a recorded spec when given explicitly with --from-run.
FLAG_PATHS = {"arch": "eval.archs", "seed": "seed", "device": "device", "data_root": "dataset.root"}


def recorded_tree(run_id: str, uri: str | None, *, dataset, method, smoke, given) -> dict:
    """The spec tree run `run_id` recorded, with the explicitly given flags applied. The
    dataset, method and budgets come from the record, so flags that would replace them are
    refused rather than silently mixed in."""
    from click.core import ParameterSource

    from harness import tracking
    from harness.config import set_path

    clashing = [flag for flag, value in (("--dataset", dataset), ("--method", method),
                                         ("--smoke", smoke)) if value]
    if clashing:
        raise HarnessInputError(
            f"--from-run takes the dataset, method and budgets from run {run_id!r}; drop "
            f"{', '.join(clashing)} (change a recorded setting with --set key=value).",
            field="--from-run")
    tree = tracking.recorded_spec(uri, run_id)
    ctx = click.get_current_context()
    for name, path in FLAG_PATHS.items():
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            value = [given[name]] if name == "arch" else given[name]
            set_path(tree, path, value, field="--" + name.replace("_", "-"))
    err_console.print(f"re-running the spec recorded by run {run_id}", highlight=False)
    return tree


def check_device(device: str) -> None:
    import torch

    if device == "mps" and not torch.backends.mps.is_available():
        raise HarnessInputError(
            "device 'mps' (Apple's GPU) was asked for but this PyTorch build or machine has "
            "no MPS support; use --device auto or --device cpu.", field="--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HarnessInputError(
            f"device {device!r} was asked for but CUDA is not available on this machine; "
            "use --device auto or --device cpu.",
            field="--device",
        )
    if device not in ("auto", "cpu") and not device.startswith(("cuda", "mps")):
        raise HarnessInputError(
            f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.", field="--device"
        )


def print_result(result) -> None:
    from harness.config import format_eps

    table = Table(title=f"{result.method} on {result.dataset} "
                        f"({result.threat['norm']} eps {format_eps(result.threat['eps'])})")
    for col in ("arch", "n", "clean", "PGD", "AutoAttack"):
        table.add_column(col, justify="right")
    for a in result.per_arch:
        aa = "-" if a.autoattack_acc is None else f"{a.autoattack_acc:.3f} ± {a.autoattack_acc_std:.3f}"
        table.add_row(a.arch, str(a.n), f"{a.clean_acc:.3f} ± {a.clean_acc_std:.3f}",
                      f"{a.robust_acc:.3f} ± {a.robust_acc_std:.3f}", aa)
    Console().print(table)
    click.echo(
        f"val robust acc {result.val_robust_acc:.3f}; learn {result.learn_seconds:.1f}s, "
        f"train {result.train_seconds:.1f}s/model; work {result.work_epochs:.1f} epochs"
    )


# ------------------------------------------------------------------------- sweep, validate


def load_sweep(path: str, assignments: tuple[str, ...], smoke: bool):
    """Read, override, validate and plan a sweep spec (exit 2 on any problem)."""
    import yaml

    from harness.config import apply_overrides, build_sweep_spec, load_yaml
    from harness.plan import make_plan

    # --smoke is for checking a spec on a laptop: no GPU asked for (an explicit --set wins).
    pre = ["resources.gpu=0"] if smoke else []
    tree = apply_overrides(load_yaml(path), [*pre, *assignments])
    spec = build_sweep_spec(tree)
    return spec, yaml.safe_dump(tree, sort_keys=False), make_plan(spec, smoke=smoke)


def print_plan(spec, plan) -> None:
    from harness.plan import describe

    rows = describe(plan)
    click.echo(f"sweep {spec.name!r}: {len(plan)} variants")
    width = max(len(r["variant"]) for r in rows)
    dwidth = max(len(r["dataset"]) for r in rows)
    for r in rows:
        searched = ", ".join(f"{k}: {v}" for k, v in r["searched"].items()) or "nothing searched"
        trials = r["trials"] if r["searched"] else 1
        click.echo(f"  {r['dataset']:{dwidth}s}  {r['variant']:{width}s}  {trials:3d} trials "
                   f"+ {r['repeats']} repeats  ({searched})")
        if r["settings"]:  # what the method runs with, the dataset's tuned defaults included
            shown = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
            click.echo(textwrap.fill(shown, width=100, initial_indent="      settings: ",
                                     subsequent_indent=" " * 16))
    total = sum((r["trials"] if r["searched"] else 1) + r["repeats"] for r in rows)
    budgets = {r["trials"] for r in rows if r["searched"]}
    click.echo(f"{total} trials in all; resources per trial: cpu {spec.resources.cpu}, "
               f"gpu {spec.resources.gpu}; objective: {spec.objective.mode} {spec.objective.metric}")
    if len(budgets) > 1:
        click.echo("note: methods have unequal trial budgets; the comparison favours the larger ones.")


sweep_options = [
    click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False)),
    click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
                 help="Override a spec field by dotted key (repeatable)."),
    click.option("--smoke", is_flag=True, help="Shrink every budget: minutes on a laptop CPU."),
]


@main.command(short_help="Check a sweep spec; print its trial plan.")
@with_options(sweep_options)
def validate(spec_path, assignments, smoke) -> None:
    """Check a sweep spec and print its resolved trial plan.

    \b
    Example:
      harness validate sweeps/cifar10.yaml --set trials=2
    """
    spec, _, plan = load_sweep(spec_path, assignments, smoke)
    print_plan(spec, plan)
    click.echo(f"{spec_path}: valid")


@main.command(short_help="Run a sweep on Ray Tune + Optuna, tracked in MLflow.")
@with_options(sweep_options)
@click.option("--tracking-uri", default=None,
              help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
@click.option("--address", default=None, help="Join a Ray cluster: auto or ray://host:port.")
@click.option("--storage", default=None, help="Ray results path or URI (default ./ray_results).")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep of the same name.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit without running.")
def sweep(spec_path, assignments, smoke, tracking_uri, address, storage, resume, dry_run) -> None:
    """Run a sweep: every method variant tuned by Optuna on Ray Tune, tracked in MLflow.

    \b
    Example:
      harness sweep sweeps/quick.yaml
      harness sweep sweeps/cifar10.yaml --address auto --storage /shared/ray_results
    """
    spec, text, plan = load_sweep(spec_path, assignments, smoke)
    if dry_run:
        print_plan(spec, plan)
        return
    if address is None:  # local run: the data must be here (on a cluster, on the workers)
        check_local_data(spec)
    from harness import tracking

    client = tracking.connect(tracking_uri)

    def tracker_factory(resuming: bool, outbox: str):
        parent = tracking.find_sweep_parent(client, spec.name) if resuming else None
        return tracking.Tracker(client, spec.name, parent, outbox=outbox)

    from harness.sweep import run_sweep

    arm_interrupt_watchdog(spec_path)
    try:
        outcome = run_sweep(spec, text, plan, tracker_factory=tracker_factory, address=address,
                            storage=storage, resume=resume, smoke=smoke, console=err_console)
    except KeyboardInterrupt:
        # Ray is already shut down (run_sweep's finally). Tune saves each experiment's state
        # every few seconds, so finished trials are safe.
        err_console.print(f"interrupted: continue with `harness sweep {spec_path} --resume`")
        os._exit(130)  # the abandoned variant threads hold no state worth waiting for
    uri = tracking.resolve_uri(tracking_uri)
    click.echo(f"sweep {spec.name!r} done: parent run {outcome.parent_run_id}, "
               f"{outcome.failed} failed trials; Ray results in {outcome.storage}")
    if outcome.unsent:
        note = (f"the tracking store {uri} stopped answering during the sweep: "
                f"{outcome.unsent} records (runs, metrics, tags, artifacts) are kept in "
                f"{outcome.outbox}, nothing is lost. Once the store is back, "
                f"`harness sweep {spec_path} --resume` logs them.")
        err_console.print(f"[yellow]{escape(tracking.masked(note, uri))}[/yellow]",
                          highlight=False)
        return  # the leaderboard would read an incomplete store
    show_leaderboard(uri, outcome.experiment)
    click.echo(f"browse the runs: harness ui --tracking-uri {uri}")


INTERRUPT_GRACE_S = 45  # after Ctrl-C: time to shut Ray down before the process just exits


def arm_interrupt_watchdog(spec_path: str) -> None:
    """Ctrl-C raises KeyboardInterrupt as usual (run_sweep then shuts Ray down), and also
    starts a watchdog thread: if the process has not exited INTERRUPT_GRACE_S seconds later,
    it shuts Ray down itself and exits 130. A sweep must never outlive a Ctrl-C."""
    import signal
    import threading

    def watchdog() -> None:
        time.sleep(INTERRUPT_GRACE_S)
        from harness.sweep import stop_ray

        stop_ray(timeout=15)
        err_console.print(f"interrupted: continue with `harness sweep {spec_path} --resume`")
        os._exit(130)

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
        threading.Thread(target=watchdog, name="interrupt-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)


def check_local_data(spec) -> None:
    from harness.datasets import DATASETS, files_present, resolve_root

    for ds in spec.datasets():
        if not ds.download and not files_present(ds.name, ds.root):
            root = resolve_root(ds.root)
            hint = DATASETS.get(ds.name).fetch_hint.replace("<root>", str(root))
            raise HarnessInputError(
                f"the files of dataset {ds.name!r} are not under {root} and the spec does not "
                f"allow a download. To get them: {hint}; or set `download: true` in the spec's "
                "dataset section, or point its `root` (or $HARNESS_DATA) at a copy.",
                field="dataset.root",
            )


def show_leaderboard(uri: str, experiment: str) -> None:
    try:
        from harness import leaderboard, report
    except ImportError:
        return
    records = leaderboard.load_records(tracking_uri=uri, experiment=experiment)
    click.echo(report.render(records, "md"))


# ------------------------------------------------------------------------------ listings


@main.command(short_help="List datasets, default threats, files present.")
@click.option("--data-root", default=None, help="Data directory to check for files.")
@click.option("--json", "as_json", is_flag=True)
def datasets(data_root, as_json) -> None:
    """List datasets, their default threat and whether their files are present.

    \b
    Example:
      harness datasets --data-root /data
    """
    from harness.datasets import DATASETS, files_present, resolve_root

    rows = []
    for name in DATASETS:
        info = DATASETS.get(name)
        rows.append({
            "name": name, "present": files_present(name, data_root), "embedded": info.embedded,
            "default_eps": info.default_eps, "default_archs": list(info.default_archs),
            "description": info.description,
        })
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from harness.config import format_eps

    click.echo(f"data root: {resolve_root(data_root)}")
    click.echo(f"{'name':18s} {'files':9s} {'Linf eps':>9s}  {'archs':18s} description")
    for r in rows:
        state = "embedded" if r["embedded"] else ("present" if r["present"] else "missing")
        click.echo(f"{r['name']:18s} {state:9s} {format_eps(r['default_eps']):>9s}  "
                   f"{', '.join(r['default_archs']):18s} {r['description']}")


@main.command(short_help="List the registered architectures.")
def archs() -> None:
    """List the registered architectures.

    \b
    Example:
      harness archs
    """
    from harness.models import MODELS

    for name in MODELS:
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()
        click.echo(f"{name:10s} {doc[0] if doc else ''}")


@main.command(short_help="List the registered methods and their papers.")
def methods() -> None:
    """List the registered methods with their kind and paper: the built-in ones, those of
    installed packages' `harness.methods` entry points, and those of $HARNESS_PLUGINS.

    \b
    Example:
      HARNESS_PLUGINS=my_methods harness methods
    """
    from harness.methods import METHODS

    for name in METHODS:
        cls = METHODS.get(name)
        doc = (cls.__doc__ or "").strip().splitlines()
        click.echo(f"{name:16s} {cls.kind:8s} {doc[0] if doc else ''}")


# ------------------------------------------------------------------------- leaderboard, ui


@main.command(short_help="Rank a sweep's variants (md, csv, html, json).")
@click.option("--experiment", default=None, help="The sweep's experiment (its name).")
@click.option("--sweep", "sweep_run_id", default=None, metavar="RUN_ID",
              help="The sweep's parent run id (instead of --experiment).")
@click.option("--tracking-uri", default=None,
              help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
@click.option("--format", "fmt", default="md", show_default=True,
              type=click.Choice(["md", "csv", "html", "json"]), help="Output format.")
@click.option("--output", default=None, type=click.Path(dir_okay=False),
              help="Write to this file instead of stdout (an existing file needs --force).")
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
def leaderboard(experiment, sweep_run_id, tracking_uri, fmt, output, force) -> None:
    """Rank each method variant's best configuration (chosen on validation) per dataset and
    threat, by AutoAttack (else PGD) robust accuracy on the test split.

    \b
    Example:
      harness leaderboard --experiment quick --format html --output board.html
    """
    from pathlib import Path

    from harness import leaderboard as board
    from harness.report import render

    if output is not None:
        check_output(Path(output), force)
    records = board.load_records(tracking_uri, experiment, sweep_run_id)
    sweeps = ", ".join(sorted({r.sweep for r in records if r.sweep}))
    title = f"Leaderboard: {sweeps}" if sweeps else "Leaderboard"
    text = render(records, fmt, title)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    try:
        Path(output).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise HarnessInputError(f"cannot write {output!r}: {exc.strerror}.",
                                field="--output") from None
    err_console.print(f"wrote {len(records)} rows to {output}", highlight=False)


SQLITE_MAGIC = b"SQLite format 3\x00"


def check_output(path, force: bool) -> None:
    """Refuse to replace a file unless --force, and a SQLite database (an MLflow store,
    perhaps the one being read) even then: a leaderboard is cheap, recorded runs are not."""
    if not path.exists():
        return
    with open(path, "rb") as handle:
        is_database = handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    if is_database:
        raise HarnessInputError(
            f"{path} is a SQLite database (an MLflow store?); a leaderboard never replaces "
            "one. Choose another --output path; nothing was written.", field="--output")
    if not force:
        raise HarnessInputError(
            f"{path} already exists; pass --force to replace it, or choose another --output "
            "path. Nothing was written.", field="--output")


@main.command(short_help="Serve the MLflow UI on 127.0.0.1.")
@click.option("--tracking-uri", default=None,
              help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def ui(tracking_uri, port) -> None:
    """Serve the MLflow UI on 127.0.0.1 for the store (Ctrl-C stops it).

    \b
    Example:
      harness ui --tracking-uri sqlite:///mlflow.db --port 5001
    """
    import os
    import socket
    from pathlib import Path

    from harness.tracking import require_existing_store

    uri = require_existing_store(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise HarnessInputError(f"{uri} is already a tracking server: open it in a browser.",
                                field="--tracking-uri")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise HarnessInputError(f"port {port} on 127.0.0.1 is in use; pick another with "
                                    "--port.", field="--port")
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        raise click.ClickException(f"{exe} is missing; reinstall the harness (make install).")
    click.echo(f"MLflow UI for {uri} at http://127.0.0.1:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    # exec: the server takes over this process, so Ctrl-C and kill reach it directly. One
    # worker and no GenAI job runner: a single local user browsing runs, and every extra
    # process imports all of mlflow (tens of seconds on a busy laptop).
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    os.execve(str(exe), [str(exe), "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                         "--port", str(port), "--workers", "1"], env)


@main.command(short_help="Score a labelled set made elsewhere (.pt with x, y).")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dataset", required=True, help="The dataset the set stands for (its test split scores it).")
@click.option("--archs", default=None, help="Comma-separated evaluation architectures (default: the dataset's).")
@with_options(trial_options)
def score(path, dataset, archs, seed, assignments, smoke, as_json) -> None:
    """Score a dataset made outside the harness (a distilled or robust set from another
    codebase) under the harness's protocol: fresh models naturally trained on it, attacked on
    the test split. PATH is a .pt file holding {'x': inputs, 'y': labels} (optionally 'soft':
    class probabilities), loaded with torch.load(weights_only=True).

    \b
    Example:
      harness score my_ipc10.pt --dataset fashion-mnist --archs convnet,mlp --json
    """
    from harness import api
    from harness.config import apply_overrides

    x, y, meta = api.load_set(path)
    sections: dict[str, Any] = apply_overrides({}, assignments)
    result = api.score_dataset(x, y, dataset=dataset, seed=seed, smoke=smoke,
                               archs=archs.split(",") if archs else None,
                               info={"file": str(path)}, **sections)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)


if __name__ == "__main__":
    main()
