"""`harness run` and `harness score`: one trial, scored under the harness's protocol."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from harness.cli.app import err_console, main, trial_options, with_options
from harness.errors import HarnessInputError


class ProgressLog:
    """Progress of one trial on stderr: bars with elapsed time and an ETA for the learning
    steps and the downstream models, and above them at most one metrics line every `every`
    seconds, plus each model's scores. Use as a context manager."""

    def __init__(self, every: float = 2.0):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.every = every
        self.last = 0.0
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=err_console,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> ProgressLog:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        now = time.monotonic()
        per_model = any(k.startswith("arch.") for k in metrics)
        if not per_model and now - self.last < self.every:
            return
        self.last = now
        shown = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.bars.console.print(f"[dim]step {step}[/]  {shown}", highlight=False)

    def advance(self, phase: str, done: int, total: int) -> None:
        if phase not in self.tasks:
            label = {"learning": "learning the set", "models": "training + scoring models"}
            self.tasks[phase] = self.bars.add_task(label.get(phase, phase), total=total)
        self.bars.update(self.tasks[phase], completed=done, total=total)


@main.command(short_help="Run one trial and score it (--json for scripts).")
@click.option("--dataset", default=None, help="Dataset name (see `harness datasets`).")
@click.option("--method", default=None, help="Method name (see `harness methods`).")
@click.option("--arch", default=None, help="Evaluate this architecture only.")
@with_options(trial_options)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option(
    "--data-root",
    default=None,
    help="Data directory (default $HARNESS_DATA or ~/.cache/harness/data).",
)
@click.option(
    "--from-run",
    default=None,
    metavar="RUN_ID",
    help="Re-run a sweep's trial from the spec it recorded (instead of --dataset and "
    "--method); --set, --arch, --seed, --device and --data-root apply on top.",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store of --from-run (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
)
@click.option(
    "--output",
    default=None,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Keep what the trial made in DIR (new or empty): resolved spec.yaml, "
    "result.json, the learned set and the models' weights.",
)
def run(
    dataset,
    method,
    arch,
    seed,
    assignments,
    smoke,
    as_json,
    device,
    data_root,
    from_run,
    tracking_uri,
    output,
) -> None:
    """Run one trial: learn or train, then evaluate under the harness's protocol.

    \b
    Example:
      harness run --dataset digits --method pgd_at --smoke --json
      harness run --from-run 3f2a... --tracking-uri sqlite:///mlflow.db
      harness run --dataset digits --method rdl --output runs/rdl-digits
    """
    from harness.protocol.evaluate import run_trial
    from harness.spec.resolve import resolve_spec
    from harness.spec.schema import apply_overrides, build_run_spec

    if from_run:
        tree = recorded_tree(
            from_run,
            tracking_uri,
            dataset=dataset,
            method=method,
            smoke=smoke,
            given=dict(arch=arch, seed=seed, device=device, data_root=data_root),
        )
        pre: list[str] = []
    else:
        tree, pre = fresh_tree(
            dataset, method, arch=arch, seed=seed, device=device, data_root=data_root, smoke=smoke
        )
    spec = resolve_spec(build_run_spec(apply_overrides(tree, [*pre, *assignments])))
    check_device(spec.device)
    if output is not None:
        check_output_dir(output)
    with ProgressLog() as shown:
        result = run_trial(spec, smoke=smoke, log=shown, progress=shown.advance)
    if output is not None:
        keep_outputs(output, spec, result)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)


def check_output_dir(output: str) -> None:
    """--output must be a new or empty directory: a run never overwrites what another kept."""
    from pathlib import Path

    path = Path(output)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise HarnessInputError(
            f"{output} already exists and is not an empty directory; choose a new --output "
            "directory (nothing was run or written).",
            field="--output",
        )


def keep_outputs(output: str, spec, result) -> None:
    from pathlib import Path

    from harness.sweep.trial import write_artifacts

    root = Path(output)
    root.mkdir(parents=True, exist_ok=True)
    write_artifacts(root, spec.model_dump(mode="json"), result)
    (root / "result.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    err_console.print(f"kept the spec, result, learned set and weights in {root}", highlight=False)


def fresh_tree(dataset, method, *, arch, seed, device, data_root, smoke) -> tuple[dict, list[str]]:
    """The spec tree of `harness run --dataset --method`, and --smoke's overrides."""
    from harness.spec.resolve import smoke_assignments

    if not dataset or not method:
        raise HarnessInputError(
            "give --dataset NAME and --method NAME, or --from-run RUN_ID "
            "to re-run a recorded trial.",
            field="--dataset",
        )
    tree: dict[str, Any] = {
        "dataset": {"name": dataset},
        "method": {"name": method},
        "seed": seed,
        "device": device,
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

    from harness.spec.schema import set_path
    from harness.tracking import reader as runs

    clashing = [
        flag
        for flag, value in (("--dataset", dataset), ("--method", method), ("--smoke", smoke))
        if value
    ]
    if clashing:
        raise HarnessInputError(
            f"--from-run takes the dataset, method and budgets from run {run_id!r}; drop "
            f"{', '.join(clashing)} (change a recorded setting with --set key=value).",
            field="--from-run",
        )
    tree = runs.recorded_spec(uri, run_id)
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
            "no MPS support; use --device auto or --device cpu.",
            field="--device",
        )
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
    from harness.spec.schema import format_eps

    table = Table(
        title=f"{result.method} on {result.dataset} "
        f"({result.threat['norm']} eps {format_eps(result.threat['eps'])})"
    )
    for col in ("arch", "n", "clean", "PGD", "AutoAttack"):
        table.add_column(col, justify="right")
    for a in result.per_arch:
        aa = (
            "-"
            if a.autoattack_acc is None
            else f"{a.autoattack_acc:.3f} ± {a.autoattack_acc_std:.3f}"
        )
        table.add_row(
            a.arch,
            str(a.n),
            f"{a.clean_acc:.3f} ± {a.clean_acc_std:.3f}",
            f"{a.robust_acc:.3f} ± {a.robust_acc_std:.3f}",
            aa,
        )
    Console().print(table)
    click.echo(
        f"val robust acc {result.val_robust_acc:.3f}; learn {result.learn_seconds:.1f}s, "
        f"train {result.train_seconds:.1f}s/model; work {result.work_epochs:.1f} epochs"
    )
    if result.smoke:
        from harness.board.report import SMOKE_NOTE

        click.echo(f"SMOKE RUN, not a result: {SMOKE_NOTE}")


@main.command(short_help="Score a labelled set made elsewhere (.pt with x, y).")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--dataset", required=True, help="The dataset the set stands for (its test split scores it)."
)
@click.option(
    "--archs",
    default=None,
    help="Comma-separated evaluation architectures (default: the dataset's).",
)
@click.option(
    "--allow-other-dataset",
    is_flag=True,
    help="Score the set on --dataset even when its metadata names another dataset.",
)
@with_options(trial_options)
def score(path, dataset, archs, allow_other_dataset, seed, assignments, smoke, as_json) -> None:
    """Score a dataset made outside the harness (a distilled or robust set from another
    codebase) under the harness's protocol: fresh models naturally trained on it, attacked on
    the test split. PATH is a .pt file holding {'x': inputs, 'y': labels} (optionally 'soft':
    class probabilities, and 'meta'), loaded with torch.load(weights_only=True). A set
    whose meta names another dataset than --dataset is refused unless --allow-other-dataset.

    \b
    Example:
      harness score my_ipc10.pt --dataset fashion-mnist --archs convnet,mlp --json
    """
    from harness import api
    from harness.results.record import meta_dataset
    from harness.spec.schema import apply_overrides

    x, y, meta = api.load_set(path)
    named = meta_dataset(meta)
    if named is not None and named != dataset and not allow_other_dataset:
        raise HarnessInputError(
            f"{path} was made for dataset {named!r} (its meta['dataset']), not {dataset!r}. "
            f"Score it with --dataset {named}, or pass --allow-other-dataset to score it on "
            f"{dataset} anyway.",
            field="--dataset",
        )
    sections: dict[str, Any] = apply_overrides({}, assignments)
    result = api.score_dataset(
        x,
        y,
        dataset=dataset,
        seed=seed,
        smoke=smoke,
        archs=archs.split(",") if archs else None,
        info={"file": str(path)},
        **sections,
    )
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        print_result(result)
