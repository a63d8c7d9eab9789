"""The fault matrix, driver side: a real sweep whose driver is SIGKILLed with its process
group (as a batch scheduler or a closed terminal kills a job) at named points of its work
(`harness.faults`), resumed after each; it ends with every trial recorded once and the
results of the same sweep never interrupted.

The rest of the matrix: test_faults_trials.py (a trial's worker killed mid-learning and
mid-training; the storage folder full, then read-only), test_sweep.py (a trial that raises,
one whose loss or learned set is NaN, a worker killed for good, the driver killed from
outside at an arbitrary moment), test_mlflow_server.py (the tracking server going away),
test_ray_local.py (Ctrl-C). docs/faults.md lists each case with what is kept.
"""

from __future__ import annotations

import signal

import pytest
from sweep_helpers import (
    TINY_RUN,
    board,
    run_sweep,
    run_with_fault,
    scores,
    trials_by_key,
    write_spec,
)

# The smallest sweep with every phase: a searched variant (two Optuna trials, then a repeat
# of the best) and a fixed one (one trial, then a repeat). Five trials, about 30 s.
PHASES = {
    "name": "faults",
    "dataset": {"name": "digits", "subset": 15},
    **TINY_RUN,
    "trials": 2,
    "repeats": 1,
    "methods": {
        "erm": {"space": {"train.lr": {"loguniform": [0.01, 0.3]}}},
        "random": {"space": {"ipc": 3}},
    },
}
TRIALS = 5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The phases sweep, never interrupted."""
    cwd = tmp_path_factory.mktemp("reference")
    res = run_sweep(write_spec(cwd, PHASES), cwd)
    assert res.returncode == 0, res.stdout + res.stderr
    runs = trials_by_key(cwd, "faults")
    assert len(runs) == TRIALS
    return runs, board(cwd, "faults")


# Each kill in turn, every one on the sweep the one before it left; the last run has none.
KILLS = [
    "trial_start:1",  # during the first trials: a run opened, nothing finished
    "trial_complete:1",  # while searches run: a trial's run just closed
    "trial_record@repeat:1",  # during the repeats: a record logged, its run still open
    "phase_end@repeat:1",  # between variants: one variant's last experiment ended
    "leaderboard",  # every trial done, the leaderboard being written
]


def test_a_driver_killed_at_every_phase_resumes_to_the_uninterrupted_results(reference, tmp_path):
    ref_runs, ref_board = reference
    spec = write_spec(tmp_path, PHASES)
    for i, fault in enumerate(KILLS):
        res = run_with_fault(spec, tmp_path, fault, *(["--resume"] if i else []))
        assert res.returncode == -signal.SIGKILL, (
            f"the driver did not reach {fault} (exit {res.returncode}):\n{res.stdout[-3000:]}"
        )
    res = run_with_fault(spec, tmp_path, None, "--resume")
    assert res.returncode == 0, res.stdout[-5000:]
    assert "# Leaderboard" in res.stdout  # the resumed sweep prints what the killed one did not

    runs = trials_by_key(tmp_path, "faults")
    assert sorted(runs) == sorted(ref_runs), "other trials than the uninterrupted sweep's"
    for key, run in runs.items():
        assert run.info.status == "FINISHED", (key, run.info.status)
        assert scores(run) == scores(ref_runs[key]), key
        assert run.data.params == ref_runs[key].data.params, key
    assert board(tmp_path, "faults") == ref_board
