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
from sweep_helpers import (
    TINY_RUN,
    is_loopback,
    listening_addresses,
    run_sweep,
    session_pids,
    sweep_env,
    trial_runs,
    wait_for,
    write_spec,
)

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


def start_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1:port over root's sqlite store, one worker, checked up."""
    url = f"http://127.0.0.1:{port}"
    log = root / "server.log"
    cmd = [
        str(MLFLOW),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{root / 'store.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--workers",
        "1",
    ]
    env = {**os.environ, **LOCAL, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "a") as out:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    up = wait_for(lambda: proc.poll() is not None or healthy(url), timeout=180)
    if not (up and proc.poll() is None):
        stop(proc)
        raise AssertionError(f"server did not come up:\n{log.read_text()[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """http://127.0.0.1:PORT of a fresh `mlflow server` on an sqlite store, one worker."""
    if not MLFLOW.exists():
        pytest.skip(f"{MLFLOW} is not installed")
    port = free_port()
    proc = start_server(tmp_path_factory.mktemp("mlflow-server"), port)
    try:
        bound = listening_addresses(session_pids(proc.pid))
        assert bound and all(is_loopback(a) for a in bound), bound
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_sweep_records_every_trial_in_a_tracking_server(server, tmp_path, monkeypatch):
    for key, value in LOCAL.items():
        monkeypatch.setenv(key, value)
    spec = write_spec(
        tmp_path,
        {
            "name": "served",
            "dataset": {"name": "digits", "subset": 10},
            **TINY_RUN,
            "trials": 2,
            "methods": {
                "erm": {"space": {"train.lr": {"loguniform": [0.01, 0.2]}}},
                "random": {"space": {"ipc": {"grid": [2]}}},
            },
        },
    )
    proc = run_sweep(spec, tmp_path, "--tracking-uri", server, env=LOCAL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "erm" in proc.stdout and "random" in proc.stdout  # the leaderboard, read back
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to a local store

    client = MlflowClient(tracking_uri=server)
    trials, parents = trial_runs(client, "served")
    assert len(parents) == 1 and len(trials) == 3  # 2 erm searches + 1 random
    for run in trials:
        check_trial(client, run, parents[0].info.run_id)


def check_trial(client: MlflowClient, run, parent: str, sweep: str = "served") -> None:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["mlflow.parentRunId"] == parent and tags["sweep"] == sweep
    assert tags["method"] == params["method"] and tags["dataset"] == params["dataset"] == "digits"
    assert {
        "trial_id",
        "git_sha",
        "git_dirty",
        "torch_version",
        "ray_version",
        "mlflow_version",
        "harness_version",
        "device",
    } <= set(tags)
    assert params["threat.autoattack"] == "fast" and float(params["threat.eps"]) > 0
    for key in ("clean_acc", "robust_acc", "autoattack_acc", "val_robust_acc", "work_epochs"):
        assert 0 <= metrics[key], key
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "model"} <= files
    ran = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "spec.yaml")).read_text())
    assert ran["method"]["name"] == tags["method"] and str(ran["seed"]) == params["seed"]


def test_sweep_with_the_tracking_server_down_exits_2_quickly(tmp_path):
    spec = write_spec(
        tmp_path,
        {"name": "down", "dataset": {"name": "digits", "subset": 5}, "methods": {"erm": {}}},
    )
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--tracking-uri", uri],
        cwd=tmp_path,
        env=sweep_env(LOCAL),
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert uri in proc.stderr and "Traceback" not in proc.stderr
    assert took < 10, f"took {took:.1f} s to report the server down"
    assert not (tmp_path / "ray_results").exists()


def test_a_server_that_goes_down_mid_sweep_loses_no_result(tmp_path, monkeypatch):
    """The server is killed once the first trial is recorded and stays down to the end of
    the sweep: the sweep still finishes (exit 0) and says where its records wait; with the
    server back, `--resume` logs them, and every trial is there as if nothing happened."""
    if not MLFLOW.exists():
        pytest.skip(f"{MLFLOW} is not installed")
    for key, value in LOCAL.items():
        monkeypatch.setenv(key, value)
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spec = write_spec(
        tmp_path,
        {
            "name": "outage",
            "dataset": {"name": "digits", "subset": 10},
            **TINY_RUN,
            "train": {"epochs": 6},
            "search": {"max_concurrent": 1, "asha": False},
            "trials": 3,
            "methods": {"erm": {"space": {"train.lr": {"loguniform": [0.01, 0.2]}}}},
        },
    )
    server_proc = start_server(store, port)
    try:
        log = tmp_path / "out.log"
        sweep = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "sweep", str(spec), "--tracking-uri", url],
            cwd=tmp_path,
            env=sweep_env(LOCAL),
            stdout=open(log, "w"),
            stderr=subprocess.STDOUT,
        )
        client = MlflowClient(tracking_uri=url)

        def first_trial_recorded() -> bool:
            try:
                return bool(trial_runs(client, "outage")[0])
            except Exception:  # noqa: BLE001 (experiment not made yet)
                return False

        assert wait_for(first_trial_recorded, timeout=240, every=0.5), log.read_text()
        stop(server_proc)  # the server goes away with two trials still to run
        assert sweep.wait(timeout=400) == 0, log.read_text()
        out = log.read_text()
        assert "stopped answering" in out and "--resume" in out, out
        outbox = tmp_path / "ray_results" / "outage" / "mlflow-outbox" / "ops.jsonl"
        assert outbox.read_text().strip(), "nothing was kept while the server was down"

        server_proc = start_server(store, port)
        resumed = run_sweep(spec, tmp_path, "--tracking-uri", url, "--resume", env=LOCAL)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert "stopped answering" not in resumed.stderr
        assert not outbox.read_text().strip()
        trials, parents = trial_runs(client, "outage")
        assert len(parents) == 1 and len(trials) == 3
        assert parents[0].info.status == "FINISHED"
        for run in trials:
            check_trial(client, run, parents[0].info.run_id, sweep="outage")
    finally:
        stop(server_proc)
