"""The `harness` command group, its error handling and the options its commands share.

Exit codes: 0 ok; 2 bad input (a one-paragraph message, no traceback); 1 internal failure.
"""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

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
            err_console.print(
                f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
            sys.exit(2)
        except FloatingPointError as exc:
            err_console.print(
                f"[bold red]diverged:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
            )
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


def with_options(options):
    def wrap(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return wrap


# Options of the commands that run one trial (`run`, `score`).
trial_options = [
    click.option("--seed", default=0, show_default=True, type=int),
    click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a spec field by dotted key, e.g. --set threat.eps=0.5 (repeatable).",
    ),
    click.option("--smoke", is_flag=True, help="Tiny budgets: seconds on a laptop, for checking."),
    click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
]
