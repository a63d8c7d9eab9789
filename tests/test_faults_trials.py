"""The fault matrix, trial side: a trial's worker SIGKILLed alone (as the OOM killer does)
mid-learning (rdl, dc) and mid-training (pgd_at), retried from its last saved progress;
the sweep's storage folder full, then read-only: exit 2 naming it, nothing recorded lost,
the interrupted trial run again by `--resume`. The driver's side: test_faults.py.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from sweep_helpers import TINY_RUN, run_sweep, run_with_fault, scores, trials_by_key, write_spec

# A learned-set and a model-producing method with progress saved at every boundary; each
# trial's worker dies once (mark files), at its second learning save (rdl: a network
# re-initialised every 3 of 9 outer steps; dc: after iteration 2 of 4) or, for pgd_at, at
# its third epoch boundary.
WORKERS = {
    "name": "workers",
    "dataset": {"name": "digits", "subset": 15},
    **TINY_RUN,
    "train": {"epochs": 4},
    "eval": {**TINY_RUN["eval"], "archs": ["linear"], "epochs": 10},
    "trials": 1,
    "max_failures": 1,
    "checkpoint_every_s": 0,
    "methods": {
        "rdl": {
            "space": {
                "ipc": 2,
                "outer_steps": 9,
                "reinit_every": 3,
                "unroll_min": 3,
                "unroll_max": 3,
                "probe_every": 0,
            }
        },
        "dc": {"space": {"ipc": 2, "iterations": 4, "batch_real": 16}},
        "pgd_at": {"space": {"steps": 2}},
    },
}
WORKER_KILLS = "learning:2,training@pgd_at:3"


def test_a_trial_worker_killed_mid_learning_or_training_goes_on_from_its_last_save(tmp_path):
    ref = tmp_path / "reference"
    ref.mkdir()
    res = run_sweep(write_spec(ref, WORKERS), ref)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = trials_by_key(ref, "workers")

    killed, marks = tmp_path / "killed", tmp_path / "marks"
    killed.mkdir()
    marks.mkdir()
    res = run_with_fault(write_spec(killed, WORKERS), killed, WORKER_KILLS, mark=marks)
    assert res.returncode == 0, res.stdout[-5000:]
    fired = sorted(p.name for p in marks.iterdir())
    assert len(fired) == 3, fired  # rdl and dc mid-learning, pgd_at mid-training
    runs = trials_by_key(killed, "workers")
    assert sorted(runs) == sorted(expected)
    for key, run in runs.items():
        assert run.info.status == "FINISHED", (key, run.data.tags.get("error"))
        assert run.data.tags.get("retried") == "1", (key, run.data.tags)
        # the retry went on from the progress the killed attempt saved, not from the start,
        # and ended with the scores of the run never killed
        stage = "training" if "pgd_at" in key else "learning"
        assert stage in run.data.tags.get("resumed_from", "").split(","), (key, run.data.tags)
        assert "resumed_from" not in expected[key].data.tags
        assert scores(run) == scores(expected[key]), key


# ----------------------------------------------------------------------------- storage

FILLER = '''"""Test-only method: trains as erm does, after filling the disk it is told to, once."""
import os
from pathlib import Path

from harness.methods.base import ModelMethod, register_method
from harness.methods import natural_loss


@register_method("filler")
class Filler(ModelMethod):
    def loss_step(self, ctx):
        mark = Path(os.environ["FILL_MARK"])
        if not mark.exists():
            mark.touch()
            with open(os.environ["FILL_PATH"], "wb") as out:
                try:
                    while True:
                        out.write(b"\\0" * (1 << 20))
                        out.flush()
                except OSError:  # the disk is full
                    pass
        return natural_loss
'''


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs of its own (root only: mounting needs it)."""
    where = tmp_path / "storage"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_then_read_only_storage_stops_with_exit_2_and_loses_nothing(tmp_path, small_disk):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "harness_filler.py").write_text(FILLER)
    spec = write_spec(
        tmp_path,
        {
            "name": "disk",
            "dataset": {"name": "digits", "subset": 15},
            **TINY_RUN,
            "trials": 1,
            "search": {
                **TINY_RUN["search"],
                "parallel_variants": 1,
            },  # erm ends before filler starts
            "methods": {"erm": {}, "filler": {}},
        },
    )
    filler = small_disk / "filler.bin"
    env = {
        "HARNESS_PLUGINS": "harness_filler",
        "PYTHONPATH": str(tmp_path / "plugins"),
        "FILL_PATH": str(filler),
        "FILL_MARK": str(tmp_path / "filled"),
    }

    def sweep(*extra: str) -> subprocess.CompletedProcess:
        return run_sweep(spec, tmp_path, "--storage", str(small_disk), *extra, env=env)

    def statuses() -> dict[str, tuple[str, int | None]]:
        return {
            k: (r.info.status, r.info.end_time) for k, r in trials_by_key(tmp_path, "disk").items()
        }

    full = sweep()
    assert full.returncode == 2, full.stdout + full.stderr
    assert "--storage" in full.stderr and "No space left on device" in full.stderr, full.stderr
    assert "Traceback" not in full.stderr.split("error:")[-1]
    before = statuses()
    assert before["digits.erm/search/0"][0] == "FINISHED"  # kept
    assert before["digits.filler/search/0"][0] == "KILLED"  # interrupted, not failed
    runs = trials_by_key(tmp_path, "disk")
    assert "No space left" in runs["digits.filler/search/0"].data.tags["harness.interrupted"]

    filler.unlink()  # space again, but the folder goes read-only
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    read_only = sweep("--resume")
    assert read_only.returncode == 2, read_only.stdout + read_only.stderr
    assert "Read-only file system" in read_only.stderr and str(small_disk) in read_only.stderr
    assert statuses() == before  # nothing recorded was touched

    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    fixed = sweep("--resume")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    after = statuses()
    assert set(after) == set(before)
    assert all(status == "FINISHED" for status, _ in after.values()), after
    assert after["digits.erm/search/0"] == before["digits.erm/search/0"]  # not run again
