"""`harness validate` and `harness sweep`: a sweep spec checked, planned and run."""

from __future__ import annotations

import os
import textwrap
import time

import click
from rich.markup import escape

from harness import faults
from harness.cli.app import err_console, main, with_options
from harness.errors import HarnessInputError


def load_sweep(path: str, assignments: tuple[str, ...], smoke: bool):
    """Read, override, validate and plan a sweep spec (exit 2 on any problem)."""
    import yaml

    from harness.spec.plan import make_plan
    from harness.spec.schema import apply_overrides, build_sweep_spec, load_yaml

    # --smoke is for checking a spec on a laptop: no GPU asked for (an explicit --set wins).
    pre = ["resources.gpu=0"] if smoke else []
    tree = apply_overrides(load_yaml(path), [*pre, *assignments])
    spec = build_sweep_spec(tree)
    return spec, yaml.safe_dump(tree, sort_keys=False), make_plan(spec, smoke=smoke)


def print_plan(spec, plan) -> None:
    from harness.spec.plan import describe

    rows = describe(plan)
    click.echo(f"sweep {spec.name!r}: {len(plan)} variants")
    width = max(len(r["variant"]) for r in rows)
    dwidth = max(len(r["dataset"]) for r in rows)
    for r in rows:
        searched = ", ".join(f"{k}: {v}" for k, v in r["searched"].items()) or "nothing searched"
        trials = r["trials"]
        click.echo(
            f"  {r['dataset']:{dwidth}s}  {r['variant']:{width}s}  {trials:3d} trials "
            f"+ {r['repeats']} repeats  ({searched})"
        )
        if r["settings"]:  # what the method runs with, the dataset's tuned defaults included
            shown = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
            click.echo(
                textwrap.fill(
                    shown, width=100, initial_indent="      settings: ", subsequent_indent=" " * 16
                )
            )
    total = sum(r["trials"] + r["repeats"] for r in rows)
    budgets = {r["trials"] for r in rows if r["searched"]}
    click.echo(
        f"{total} trials in all; resources per trial: cpu {spec.resources.cpu}, "
        f"gpu {spec.resources.gpu}; objective: {spec.objective.mode} {spec.objective.metric}"
    )
    if len(budgets) > 1:
        click.echo(
            "note: methods have unequal trial budgets; the comparison favours the larger ones."
        )


sweep_options = [
    click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False)),
    click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a spec field by dotted key (repeatable).",
    ),
    click.option("--smoke", is_flag=True, help="Shrink every budget: minutes on a laptop CPU."),
]


def estimate_options(f):
    f = click.option(
        "--assume-tflops",
        "tflops",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        metavar="R",
        help="Instead of timing here, count each trial's work in FLOPs with small stand-in "
        "networks (no GPU needed; the data's files must be here) and give device-hours "
        "at an assumed sustained R TFLOP/s per trial.",
    )(f)
    return click.option(
        "--estimate",
        is_flag=True,
        help="Also time a short calibration of every variant here and print the expected "
        "work and wall time per trial and for the sweep (needs the data on this "
        "machine).",
    )(f)


def print_estimate(spec, plan, tflops: float | None = None) -> None:
    """Each variant's cost as soon as it is known, then the sweep's."""
    from harness.estimate.cost import CostReport, concurrency, estimate_plan
    from harness.protocol.train import pick_device

    count_only = tflops is not None  # nothing is timed: every core here counts
    threads = (os.cpu_count() or 1) if count_only else max(1, int(spec.resources.cpu))
    report = CostReport(
        device=str(pick_device(spec.device)), concurrent=concurrency(spec), tflops=tflops
    )
    click.echo(report.header())
    for est in estimate_plan(plan, threads=threads, count_only=count_only):
        click.echo(report.line(est))
    for line in report.totals():
        click.echo(line)


@main.command(short_help="Check a sweep spec; print its trial plan.")
@with_options(sweep_options)
@estimate_options
def validate(spec_path, assignments, smoke, estimate, tflops) -> None:
    """Check a sweep spec and print its resolved trial plan (with --estimate, its cost).

    \b
    Example:
      harness validate sweeps/cifar10.yaml --set trials=2
      harness validate sweeps/quick.yaml --estimate
      harness validate sweeps/cifar10.yaml --assume-tflops 77
    """
    spec, _, plan = load_sweep(spec_path, assignments, smoke)
    print_plan(spec, plan)
    if estimate or tflops is not None:
        print_estimate(spec, plan, tflops)
    click.echo(f"{spec_path}: valid")
    for message in missing_data(spec):  # valid, but `harness sweep` would stop here
        err_console.print(f"warning: {escape(message)}", highlight=False)


@main.command(short_help="Run a sweep on Ray Tune + Optuna, tracked in MLflow.")
@with_options(sweep_options)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
)
@click.option("--address", default=None, help="Join a Ray cluster: auto or ray://host:port.")
@click.option("--storage", default=None, help="Ray results path or URI (default ./ray_results).")
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep of the same name.")
@click.option("--dry-run", is_flag=True, help="Print the plan and exit without running.")
@estimate_options
def sweep(
    spec_path, assignments, smoke, tracking_uri, address, storage, resume, dry_run, estimate, tflops
) -> None:
    """Run a sweep: every method variant tuned by Optuna on Ray Tune, tracked in MLflow.

    \b
    Example:
      harness sweep sweeps/quick.yaml
      harness sweep sweeps/cifar10.yaml --address auto --storage /shared/ray_results
    """
    spec, text, plan = load_sweep(spec_path, assignments, smoke)
    if dry_run:
        print_plan(spec, plan)
        if estimate or tflops is not None:
            print_estimate(spec, plan, tflops)
        return
    check_fault_setting()
    if address is None:  # local run: the data must be here (on a cluster, on the workers)
        check_local_data(spec)
    from harness.tracking import store, writer

    client = store.connect(tracking_uri)

    def tracker_factory(resuming: bool, outbox: str):
        parent = writer.find_sweep_parent(client, spec.name) if resuming else None
        return writer.Tracker(client, spec.name, parent, outbox=outbox)

    from harness.sweep.driver import run_sweep

    arm_interrupt_watchdog(spec_path)
    try:
        outcome = run_sweep(
            spec,
            text,
            plan,
            tracker_factory=tracker_factory,
            address=address,
            storage=storage,
            resume=resume,
            smoke=smoke,
            console=err_console,
        )
    except KeyboardInterrupt:
        # Ray is already shut down (run_sweep's finally). Tune saves each experiment's state
        # every few seconds, so finished trials are safe.
        err_console.print(f"interrupted: continue with `harness sweep {spec_path} --resume`")
        os._exit(130)  # the abandoned variant threads hold no state worth waiting for
    report_outcome(outcome, spec.name, spec_path, store.resolve_uri(tracking_uri))


def report_outcome(outcome, name: str, spec_path: str, uri: str) -> None:
    """Where the sweep's results are, and its leaderboard (or, if the tracking store went
    away, where its records wait)."""
    from harness.tracking import store

    click.echo(
        f"sweep {name!r} done: parent run {outcome.parent_run_id}, "
        f"{outcome.failed} failed trials; Ray results in {outcome.storage}"
    )
    if outcome.unsent:
        note = (
            f"the tracking store {uri} stopped answering during the sweep: "
            f"{outcome.unsent} records (runs, metrics, tags, artifacts) are kept in "
            f"{outcome.outbox}, nothing is lost. Once the store is back, "
            f"`harness sweep {spec_path} --resume` logs them."
        )
        err_console.print(f"[yellow]{escape(store.masked(note, uri))}[/yellow]", highlight=False)
        return  # the leaderboard would read an incomplete store
    show_leaderboard(uri, outcome.experiment)
    click.echo(store.masked(f"browse the runs: harness ui --tracking-uri {uri}", uri))


INTERRUPT_GRACE_S = 45  # after Ctrl-C: time to shut Ray down before the process just exits


def arm_interrupt_watchdog(spec_path: str) -> None:
    """Ctrl-C raises KeyboardInterrupt as usual (run_sweep then shuts Ray down), and also
    starts a watchdog thread: if the process has not exited INTERRUPT_GRACE_S seconds later,
    it shuts Ray down itself and exits 130. A sweep must never outlive a Ctrl-C."""
    import signal
    import threading

    def watchdog() -> None:
        time.sleep(INTERRUPT_GRACE_S)
        from harness.sweep.ray_node import stop_ray

        stop_ray(timeout=15)
        err_console.print(f"interrupted: continue with `harness sweep {spec_path} --resume`")
        os._exit(130)

    def on_interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: at once
        threading.Thread(target=watchdog, name="interrupt-watchdog", daemon=True).start()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_interrupt)


def check_fault_setting() -> None:
    """A mistyped `HARNESS_FAULT` (fault injection, `harness.faults`) is bad input, caught
    before anything starts rather than in every trial."""
    value = os.environ.get(faults.ENV)
    if value:
        try:
            faults.parse(value)
        except ValueError as exc:
            raise HarnessInputError(
                f"{exc}. Unset it to run without fault injection.", field=faults.ENV
            ) from None


def missing_data(spec) -> list[str]:
    """One sentence per dataset of the spec whose files are not here and may not be
    downloaded: where they were looked for and how to get them."""
    from harness.datasets import DATASETS, files_present, resolve_root

    out = []
    for ds in spec.datasets():
        if not ds.download and not files_present(ds.name, ds.root):
            root = resolve_root(ds.root)
            hint = DATASETS.get(ds.name).fetch_hint.replace("<root>", str(root))
            out.append(
                f"the files of dataset {ds.name!r} are not under {root} and the spec does not "
                f"allow a download. To get them: {hint}; or set `download: true` in the spec's "
                "dataset section, or point its `root` (or $HARNESS_DATA) at a copy."
            )
    return out


def check_local_data(spec) -> None:
    for message in missing_data(spec)[:1]:
        raise HarnessInputError(message, field="dataset.root")


def show_leaderboard(uri: str, experiment: str) -> None:
    try:
        from harness.board import leaderboard, report
    except ImportError:
        return
    records = leaderboard.load_records(tracking_uri=uri, experiment=experiment)
    faults.point("leaderboard")
    click.echo(report.render(records, "md"))
