"""`harness leaderboard`, `harness ui` and the listings (datasets, archs, methods)."""

from __future__ import annotations

import json
import os
import sys

import click

from harness.cli.app import err_console, main
from harness.errors import HarnessInputError


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
        rows.append(
            {
                "name": name,
                "present": files_present(name, data_root),
                "embedded": info.embedded,
                "default_eps": info.default_eps,
                "default_archs": list(info.default_archs),
                "description": info.description,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from harness.spec.schema import format_eps

    click.echo(f"data root: {resolve_root(data_root)}")
    click.echo(f"{'name':18s} {'files':9s} {'Linf eps':>9s}  {'archs':18s} description")
    for r in rows:
        state = "embedded" if r["embedded"] else ("present" if r["present"] else "missing")
        click.echo(
            f"{r['name']:18s} {state:9s} {format_eps(r['default_eps']):>9s}  "
            f"{', '.join(r['default_archs']):18s} {r['description']}"
        )


@main.command(short_help="List the registered architectures.")
def archs() -> None:
    """List the registered architectures.

    \b
    Example:
      harness archs
    """
    from harness.protocol.models import MODELS

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
@click.option(
    "--sweep",
    "sweep_run_id",
    default=None,
    metavar="RUN_ID",
    help="The sweep's parent run id (instead of --experiment).",
)
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
)
@click.option(
    "--format",
    "fmt",
    default="md",
    show_default=True,
    type=click.Choice(["md", "csv", "html", "json"]),
    help="Output format.",
)
@click.option(
    "--output",
    default=None,
    type=click.Path(dir_okay=False),
    help="Write to this file instead of stdout (an existing file needs --force).",
)
@click.option("--force", is_flag=True, help="Replace an existing --output file.")
def leaderboard(experiment, sweep_run_id, tracking_uri, fmt, output, force) -> None:
    """Rank each method variant's best configuration (chosen on validation) per dataset and
    threat, by AutoAttack (else PGD) robust accuracy on the test split.

    \b
    Example:
      harness leaderboard --experiment quick --format html --output board.html
    """
    from pathlib import Path

    from harness.board import leaderboard as board
    from harness.board.report import render

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
        raise HarnessInputError(
            f"cannot write {output!r}: {exc.strerror}.", field="--output"
        ) from None
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
            "one. Choose another --output path; nothing was written.",
            field="--output",
        )
    if not force:
        raise HarnessInputError(
            f"{path} already exists; pass --force to replace it, or choose another --output "
            "path. Nothing was written.",
            field="--output",
        )


@main.command(short_help="Serve the MLflow UI on 127.0.0.1.")
@click.option(
    "--tracking-uri",
    default=None,
    help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db).",
)
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
def ui(tracking_uri, port) -> None:
    """Serve the MLflow UI on 127.0.0.1 for the store (Ctrl-C stops it).

    \b
    Example:
      harness ui --tracking-uri sqlite:///mlflow.db --port 5001
    """
    import socket
    from pathlib import Path

    from harness.tracking.store import check_sqlite_store, masked, require_existing_store

    uri = require_existing_store(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise HarnessInputError(
            f"{masked(uri, uri)} is already a tracking server: open it in a browser.",
            field="--tracking-uri",
        )
    check_sqlite_store(uri)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise HarnessInputError(
                f"port {port} on 127.0.0.1 is in use; pick another with --port.", field="--port"
            )
    exe = Path(sys.executable).parent / "mlflow"
    if not exe.exists():
        raise click.ClickException(f"{exe} is missing; reinstall the harness (make install).")
    click.echo(f"MLflow UI for {masked(uri, uri)} at http://127.0.0.1:{port}  (Ctrl-C stops it)")
    sys.stdout.flush()
    # exec: the server takes over this process, so Ctrl-C and kill reach it directly. One
    # worker and no GenAI job runner: a single local user browsing runs, and every extra
    # process imports all of mlflow (tens of seconds on a busy laptop).
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    os.execve(
        str(exe),
        [
            str(exe),
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env,
    )
