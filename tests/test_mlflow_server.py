"""`harness sweep` against a real MLflow tracking server (started here, on 127.0.0.1 only),
and against one that is down."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweep_helpers import (TINY_RUN, is_loopback, listening_addresses, run_sweep, session_pids,
                           sweep_env, trial_runs, wait_for, write_spec)

MLFLOW = Path(sys.executable).with_name("mlflow")
LOCAL = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick, released again)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it forks a worker), SIGKILL if that hangs."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """http://127.0.0.1:PORT of a fresh `mlflow server` on an sqlite store, one worker."""
    if not MLFLOW.exists():
        pytest.skip(f"{MLFLOW} is not installed")
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    cmd = [str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'store.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    env = {**os.environ, **LOCAL, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        up = wait_for(lambda: proc.poll() is not None or healthy(url), timeout=180)
        assert up and proc.poll() is None, f"server did not come up:\n{log.read_text()[-3000:]}"
        bound = listening_addresses(session_pids(proc.pid))
        assert bound and all(is_loopback(a) for a in bound), bound
        yield url
    finally:
        stop(proc)


def test_sweep_records_every_trial_in_a_tracking_server(server, tmp_path, monkeypatch):
    for key, value in LOCAL.items():
        monkeypatch.setenv(key, value)
    spec = write_spec(tmp_path, {
        "name": "served",
        "dataset": {"name": "digits", "subset": 10},
        **TINY_RUN,
        "trials": 2,
        "methods": {"erm": {"space": {"train.lr": {"loguniform": [0.01, 0.2]}}},
                    "random": {"space": {"ipc": {"grid": [2]}}}},
    })
    proc = run_sweep(spec, tmp_path, "--tracking-uri", server, env=LOCAL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "erm" in proc.stdout and "random" in proc.stdout  # the leaderboard, read back
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    client = MlflowClient(tracking_uri=server)
    trials, parents = trial_runs(client, "served")
    assert len(parents) == 1 and len(trials) == 3  # 2 erm searches + 1 random
    for run in trials:
        check_trial(client, run, parents[0].info.run_id)


def check_trial(client: MlflowClient, run, parent: str) -> None:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == parent and tags["sweep"] == "served"
    assert tags["method"] == params["method"] and tags["dataset"] == params["dataset"] == "digits"
    assert {"trial_id", "git_sha", "git_dirty", "torch_version", "ray_version",
            "mlflow_version", "harness_version", "device"} <= set(tags)
    assert params["threat.autoattack"] == "fast" and float(params["threat.eps"]) > 0
    for key in ("clean_acc", "robust_acc", "autoattack_acc", "val_robust_acc", "work_epochs"):
        assert 0 <= metrics[key], key
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "model"} <= files
    ran = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "spec.yaml")).read_text())
    assert ran["method"]["name"] == tags["method"] and str(ran["seed"]) == params["seed"]


def test_sweep_with_the_tracking_server_down_exits_2_quickly(tmp_path):
    spec = write_spec(tmp_path, {"name": "down", "dataset": {"name": "digits", "subset": 5},
                                 "methods": {"erm": {}}})
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(spec),
                           "--tracking-uri", uri], cwd=tmp_path, env=sweep_env(LOCAL),
                          capture_output=True, text=True, timeout=60)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert uri in proc.stderr and "Traceback" not in proc.stderr
    assert took < 10, f"took {took:.1f} s to report the server down"
    assert not (tmp_path / "ray_results").exists()
