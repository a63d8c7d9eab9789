"""The pieces the fault matrix (test_faults.py) relies on, without a sweep: fault-point
settings, the storage check, and torn Tune state set aside before a restore."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness import faults
from harness.cli import main
from harness.sweep.storage import (
    TORN_SUFFIX,
    StorageFault,
    check_writable,
    complete,
    fault_in,
    set_aside_torn_state,
)


def test_fault_settings_parse_and_a_mistyped_one_is_bad_input(tmp_path):
    entries = faults.parse("trial_start,trial_record@repeat:2,training@pgd_at:3")
    assert [(e.point, e.where, e.n) for e in entries] == [
        ("trial_start", "", 1),
        ("trial_record", "repeat", 2),
        ("training", "pgd_at", 3),
    ]
    with pytest.raises(ValueError, match="trial_strat"):
        faults.parse("trial_strat:1")
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ndataset: {name: digits}\nmethods: {erm: {}}\n")
    res = CliRunner().invoke(main, ["sweep", str(spec)], env={"HARNESS_FAULT": "trial_strat"})
    assert res.exit_code == 2 and "HARNESS_FAULT" in res.output and "trial_start" in res.output


def test_a_fault_point_kills_the_process_at_the_pass_it_names_and_once_per_mark(tmp_path):
    code = (
        "from harness import faults\n"
        "for i in range(5):\n"
        "    faults.point('training', 'pgd_at')\n"
        "    print(i, flush=True)\n"
    )

    def run(value: str, mark: Path | None = None) -> subprocess.CompletedProcess:
        env = {**os.environ, "HARNESS_FAULT": value}
        if mark is not None:
            env["HARNESS_FAULT_MARK"] = str(mark)
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )

    killed = run("training:3")
    assert killed.returncode == -9 and killed.stdout.split() == ["0", "1"]
    assert run("training@dc:3").returncode == 0  # another method's pass: not this one
    mark = tmp_path / "marks"
    mark.mkdir()
    assert run("training@pgd_at:1", mark).returncode == -9
    assert run("training@pgd_at:1", mark).returncode == 0  # fired once already


def test_the_storage_check_names_a_folder_that_cannot_be_written(tmp_path):
    check_writable(str(tmp_path), "sweep")  # fine, and it leaves nothing behind
    assert list((tmp_path / "sweep").iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageFault) as err:
        check_writable(str(blocker), "sweep")
    assert err.value.field == "--storage" and str(blocker) in str(err.value)


def test_a_failed_write_is_told_from_a_trial_failure():
    full = "OSError: [Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device"
    assert fault_in(f"Traceback ...\n{full}\n", "/data/ray") == full
    assert fault_in(
        "PermissionError: [Errno 13] Permission denied: '/data/ray/x/progress.pt'", "/data/ray"
    )
    assert (
        fault_in("PermissionError: [Errno 13] Permission denied: '/home/me/notes'", "/data/ray")
        is None
    )  # a method's own file, not the storage
    assert fault_in("RuntimeError: simulated bug", "/data/ray") is None


def _session(folder: Path, stamp: str, *, torn: str = "") -> None:
    state = json.dumps({"trial_data": [], "runner_data": {}})
    files = {
        f"experiment_state-{stamp}.json": state.encode(),
        f"search_gen_state-{stamp}.json": pickle.dumps({"counter": 2}),
        f"searcher-state-{stamp}.pkl": pickle.dumps({"study": [1, 2, 3]}),
    }
    for name, data in files.items():
        (folder / name).write_bytes(
            data[: len(data) // 2] if name.startswith(torn or "-") else data
        )


def test_torn_state_is_set_aside_back_to_the_newest_whole_session(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    _session(tmp_path, "2026-01-01_10-00-00")
    _session(tmp_path, "2026-01-01_11-00-00", torn="experiment_state")
    _session(tmp_path, "2026-01-01_12-00-00", torn="searcher-state")
    moved = set_aside_torn_state(str(tmp_path))
    assert moved == sorted(
        f"{kind}-2026-01-01_{h}-00-00.{ext}"
        for h in ("11", "12")
        for kind, ext in (
            ("experiment_state", "json"),
            ("search_gen_state", "json"),
            ("searcher-state", "pkl"),
        )
    )
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(TORN_SUFFIX))
    assert left == [
        "experiment_state-2026-01-01_10-00-00.json",
        "search_gen_state-2026-01-01_10-00-00.json",
        "searcher-state-2026-01-01_10-00-00.pkl",
        "tuner.pkl",
    ]
    assert set_aside_torn_state(str(tmp_path)) == []  # whole now: nothing more to do


def test_with_no_whole_state_left_the_experiment_starts_afresh(tmp_path):
    (tmp_path / "tuner.pkl").write_bytes(pickle.dumps({"tuner": 1}))
    _session(tmp_path, "2026-01-01_11-00-00", torn="experiment_state")
    moved = set_aside_torn_state(str(tmp_path))
    assert "tuner.pkl" in moved and not (tmp_path / "tuner.pkl").exists()
    assert complete(tmp_path / f"tuner.pkl{TORN_SUFFIX}")  # kept, only renamed
