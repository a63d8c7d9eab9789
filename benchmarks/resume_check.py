"""Kill a real sweep's driver from outside at several moments, resume it, and compare with the
same sweep never interrupted (issue 20's check, on the shipped demo spec by default).

    python benchmarks/resume_check.py [SPEC] [--kill-after 2,8,14] [--workdir DIR]

The driver runs in its own process group, which is SIGKILLed (as a batch scheduler kills a
job) once the MLflow store holds N finished trials, for each N of --kill-after; then
`--resume` runs to the end. Prints, for the interrupted sweep, how many MLflow runs each
trial has and whether its leaderboard (wall times and run ids left out) equals the
uninterrupted one's. Exit code 0 when every trial has one run and the boards agree.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from sweep_helpers import (  # noqa: E402
    board,
    kill_group,
    run_sweep,
    start_sweep,
    trials_by_key,
    wait_for,
)


def finished(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return con.execute(
                "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                "where t.key = 'trial_key' and r.status = 'FINISHED'"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", nargs="?", default=str(ROOT / "sweeps" / "quick.yaml"))
    parser.add_argument(
        "--kill-after", default="2,8,14", help="finished-trial counts at which the driver is killed"
    )
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    spec = Path(args.spec).resolve()
    name = __import__("yaml").safe_load(spec.read_text())["name"]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="resume-check-"))
    ref, cut = work / "uninterrupted", work / "killed"
    ref.mkdir(parents=True, exist_ok=True)
    cut.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    res = run_sweep(spec, ref, timeout=3600)
    print(f"uninterrupted: exit {res.returncode} in {time.monotonic() - start:.0f} s")
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        return 1

    for i, n in enumerate(int(k) for k in args.kill_after.split(",")):
        proc = start_sweep(spec, cut, *(["--resume"] if i else []), log=cut / f"run{i}.log")
        try:
            reached = wait_for(
                lambda: finished(cut / "mlflow.db") >= n or proc.poll() is not None,
                timeout=3600,
                every=0.2,
            )
        finally:
            alive = proc.poll() is None
            kill_group(proc)
        print(
            f"kill {i + 1}: at {finished(cut / 'mlflow.db')} finished trials "
            f"({'killed' if alive else 'had ended: exit ' + str(proc.returncode)})"
        )
        if not (reached and alive):
            return 1
    start = time.monotonic()
    res = run_sweep(spec, cut, "--resume", timeout=3600)
    print(f"resume: exit {res.returncode} in {time.monotonic() - start:.0f} s")
    if res.returncode != 0:
        print(res.stdout[-3000:], res.stderr[-3000:])
        return 1

    expected, runs = trials_by_key(ref, name), trials_by_key(cut, name)
    statuses = sorted({r.info.status for r in runs.values()})
    same_trials = sorted(runs) == sorted(expected)
    same_board = board(cut, name) == board(ref, name)
    print(
        f"trials: {len(runs)} recorded once each (uninterrupted: {len(expected)}), "
        f"statuses {statuses}, same trials: {same_trials}, same leaderboard: {same_board}"
    )
    return 0 if same_trials and same_board and statuses == ["FINISHED"] else 1


if __name__ == "__main__":
    sys.exit(main())
