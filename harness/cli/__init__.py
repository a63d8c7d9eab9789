"""`harness`: the command-line entry point (`harness.cli:main`).

Exit codes: 0 ok; 2 bad input (a one-paragraph message, no traceback); 1 internal failure.
The commands live by job in `trial` (run, score), `sweeps` (validate, sweep) and `board`
(leaderboard, ui, listings); importing them registers them on `main`.
"""

from harness.cli import board, sweeps, trial  # noqa: F401 (registers the commands)
from harness.cli.app import main

__all__ = ["main"]
