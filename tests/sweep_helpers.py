"""Running real sweeps in tests: the CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

HARNESS = [sys.executable, "-m", "harness.cli"]


def write_spec(directory: Path, tree: dict) -> Path:
    path = directory / f"{tree['name']}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def sweep_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_sweep(spec: Path, cwd: Path, *extra: str, timeout: float = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HARNESS, "sweep", str(spec), *extra], cwd=cwd, env=sweep_env(env), capture_output=True,
        text=True, timeout=timeout,
    )


def start_sweep(spec: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    """The driver in its own process group, so the test can SIGKILL it with its Ray children."""
    return subprocess.Popen(
        [*HARNESS, "sweep", str(spec), *extra], cwd=cwd, env=sweep_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for(predicate, timeout: float, every: float = 1.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False
