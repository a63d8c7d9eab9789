"""A local sweep keeps Ray on the loopback interface and leaves no Ray process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweep_helpers import (
    describe, is_loopback, kill_group, listening_addresses, session_pids, start_sweep, wait_for,
    write_spec,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def spec_tree(name: str, epochs: int) -> dict:
    return {
        "name": name,
        "dataset": {"name": "digits", "subset": 15},
        "threat": {"steps": 3, "autoattack": "off"},
        "train": {"epochs": epochs},
        "eval": {"models_per_arch": 1, "archs": ["mlp"], "max_test": 100, "max_val": 100},
        "search": {"max_concurrent": 1, "asha": False},
        "trials": 2,
        "methods": {"erm": {"space": {"train.lr": {"loguniform": [0.01, 0.2]}}}},
    }


def ray_is_up(pids: list[int]) -> bool:
    names = set()
    for pid in pids:
        try:
            names.add((Path("/proc") / str(pid) / "comm").read_text().strip())
        except OSError:
            pass
    return "raylet" in names and "gcs_server" in names


def trial_started(store: Path) -> bool:
    import sqlite3

    if not store.exists():
        return False
    try:
        with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute("select count(*) from tags where key = 'trial_id'").fetchone()
    except sqlite3.Error:  # the store is still being created
        return False
    return rows[0] > 0


def watch_sockets(proc, seconds: float) -> dict[str, set[int]]:
    """Every listening address seen in the sweep's session while it runs (polled)."""
    seen: dict[str, set[int]] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        for addr, ports in listening_addresses(session_pids(proc.pid)).items():
            seen.setdefault(addr, set()).update(ports)
        time.sleep(0.5)
    return seen


def test_local_sweep_listens_on_loopback_only_and_cleans_up(tmp_path):
    spec = write_spec(tmp_path, spec_tree("loopback", epochs=3))
    proc = start_sweep(spec, tmp_path, log=tmp_path / "out.log")
    try:
        assert wait_for(lambda: ray_is_up(session_pids(proc.pid)), timeout=120, every=0.5), \
            (tmp_path / "out.log").read_text()
        seen = watch_sockets(proc, seconds=300)
        assert proc.wait(timeout=300) == 0, (tmp_path / "out.log").read_text()
    finally:
        kill_group(proc)
    assert seen, "no listening socket was seen: the check looked at the wrong processes"
    exposed = {a: p for a, p in seen.items() if not is_loopback(a)}
    assert not exposed, f"Ray listened beyond loopback: {exposed}"
    # Normal exit: the GCS, raylet, workers and agents are gone with the driver.
    assert wait_for(lambda: not session_pids(proc.pid), timeout=30), \
        describe(session_pids(proc.pid))


# Known issue (issue 11): once, in two full-suite CI runs, the driver had not exited 90 s
# after Ctrl-C (it always does within ~20 s when this file runs alone, also under CPU load).
# A stall is marked as an expected failure while it is investigated; a wrong exit code or a
# Ray process left behind still fails this test.
@pytest.mark.xfail(raises=subprocess.TimeoutExpired, strict=False,
                   reason="driver stall after Ctrl-C seen only in full-suite runs (issue 11)")
def test_ctrl_c_shuts_ray_down_with_its_agents(tmp_path):
    spec = write_spec(tmp_path, spec_tree("interrupt", epochs=50_000))  # minutes: still running
    proc = start_sweep(spec, tmp_path, log=tmp_path / "out.log")
    try:
        # Ctrl-C once a trial has started (its MLflow run exists): Ray is up and working.
        assert wait_for(lambda: trial_started(tmp_path / "mlflow.db"), timeout=180, every=0.5), \
            (tmp_path / "out.log").read_text()
        time.sleep(2)
        assert proc.poll() is None, "the sweep ended before Ctrl-C: the test would prove nothing"
        proc.send_signal(signal.SIGINT)  # Ctrl-C reaches the driver ...
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            print((tmp_path / "out.log").read_text()[-5000:])  # shown for the investigation
            raise
        assert code == 130, (tmp_path / "out.log").read_text()
        # ... and nothing it started survives it: no raylet, GCS, worker or agent.
        assert wait_for(lambda: not session_pids(proc.pid), timeout=30), \
            describe(session_pids(proc.pid))
    finally:
        kill_group(proc)
    assert "--resume" in (tmp_path / "out.log").read_text()


def test_a_local_ray_tolerates_a_raylet_that_stops_answering_for_minutes():
    """A starved machine's raylet can miss the GCS's health checks for a minute or more;
    with Ray's default (5 misses) the node is declared dead and the sweep dies with it
    (benchmarks/starvation.py stops a raylet for 180 s to show both). The local Ray the
    harness starts runs with the longer tolerance, in its workers too."""
    import ray

    from harness.ray_node import LOCAL_RAY_CONFIG, start_ray, stop_ray

    assert not ray.is_initialized()
    assert start_ray(None, cpus=1)
    try:
        @ray.remote
        def threshold() -> int:
            from ray._raylet import Config

            return Config.health_check_failure_threshold()

        assert ray.get(threshold.remote()) == LOCAL_RAY_CONFIG["health_check_failure_threshold"]
        assert LOCAL_RAY_CONFIG["health_check_failure_threshold"] >= 30  # minutes, not seconds
    finally:
        stop_ray()


def test_sweep_on_a_two_node_cluster_uses_both_nodes(tmp_path, monkeypatch):
    """A real two-node Ray cluster on this machine's loopback (head + one more node, one CPU
    each), started and stopped by the test; `harness sweep --address` runs trials on both."""
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    from sweep_helpers import run_sweep

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # nodes on 127.0.0.1 only
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        tree = spec_tree("cluster", epochs=8)
        tree["trials"] = 4
        tree["search"]["max_concurrent"] = 2
        spec = write_spec(tmp_path, tree)
        res = run_sweep(spec, tmp_path, "--address", cluster.address, timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    finally:
        cluster.shutdown()
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cluster")
    trials = [r for r in client.search_runs([exp.experiment_id]) if "trial_id" in r.data.tags]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    nodes = {r.data.tags["ray_node"] for r in trials}
    assert len(nodes) == 2, nodes  # one CPU per node, two trials at a time: both nodes work
