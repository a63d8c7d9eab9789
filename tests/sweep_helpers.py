"""Running real sweeps in tests: the CLI in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import yaml

from harness.sweep.ray_node import descendants, live_processes  # noqa: F401 (tests import descendants from here)

HARNESS = [sys.executable, "-m", "harness.cli"]


# Budgets of a sweep that runs in seconds per trial on a CPU.
TINY_RUN = {
    "threat": {"steps": 3, "autoattack": "fast"},
    "train": {"epochs": 2},
    "eval": {"models_per_arch": 1, "archs": ["mlp"], "max_test": 100, "max_val": 100},
    "search": {"max_concurrent": 2, "asha": False},
}


def trial_runs(client, sweep: str):
    """(trial runs, sweep parent runs) of the sweep's experiment."""
    exp = client.get_experiment_by_name(sweep)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if "trial_id" in r.data.tags], [
        r for r in runs if r.data.tags.get("harness.role") == "sweep"
    ]


def write_spec(directory: Path, tree: dict) -> Path:
    path = directory / f"{tree['name']}.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def sweep_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_sweep(
    spec: Path, cwd: Path, *extra: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HARNESS, "sweep", str(spec), *extra],
        cwd=cwd,
        env=sweep_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_sweep(spec: Path, cwd: Path, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """The driver in its own session and process group, so the test can signal it with its Ray
    children and find them all by session id. `log`: where its stdout and stderr go."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    return subprocess.Popen(
        [*HARNESS, "sweep", str(spec), *extra],
        cwd=cwd,
        env=sweep_env(),
        stdout=out,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


# Figures that differ between two runs of the same trials: wall time, and run ids.
VOLATILE = ("seconds", "run_id")


def run_with_fault(
    spec: Path, cwd: Path, fault: str | None, *extra: str, mark: Path | None = None
) -> subprocess.CompletedProcess:
    """The driver in its own process group (so that a driver point kills Ray with it)."""
    env = sweep_env({"HARNESS_FAULT": fault} if fault else {})
    if mark is not None:
        env["HARNESS_FAULT_MARK"] = str(mark)
    proc = subprocess.Popen(
        [*HARNESS, "sweep", str(spec), *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        kill_group(proc)  # anything left of a group whose leader died
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def trials_by_key(cwd: Path, sweep: str) -> dict[str, object]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs, parents = trial_runs(client, sweep)
    assert len(parents) == 1, "a resumed sweep continues its parent run"
    counts = Counter(r.data.tags["trial_key"] for r in runs)
    doubled = {k: n for k, n in counts.items() if n > 1}
    assert not doubled, f"trials recorded more than once: {doubled}"
    return {r.data.tags["trial_key"]: r for r in runs}


def board(cwd: Path, sweep: str) -> list[dict]:
    """The sweep's leaderboard records, without the figures that no two runs share."""
    from harness.board import leaderboard, report

    records = leaderboard.load_records(
        tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}", experiment=sweep
    )

    def steady(value):
        if isinstance(value, dict):
            return {
                k: steady(v) for k, v in value.items() if not any(word in k for word in VOLATILE)
            }
        if isinstance(value, list):
            return [steady(v) for v in value]
        return value

    return steady(json.loads(report.render(records, "json"))["records"])


def scores(run) -> dict[str, float]:
    return {k: v for k, v in run.data.metrics.items() if not any(w in k for w in VOLATILE)}


def wait_for(predicate, timeout: float, every: float = 1.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(every)
    return False


# ------------------------------------------------------------------ processes and sockets


def session_pids(sid: int) -> list[int]:
    """Live processes of session `sid` (a driver started with start_new_session and every Ray
    process it spawned), read from /proc; zombies are left out."""
    return [pid for pid, fields in live_processes() if int(fields[3]) == sid]


def describe(pids: list[int]) -> str:
    """`pid (parent) command line` for each process, for a failure message."""
    lines = []
    for pid in pids:
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
            cmd = (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        ppid = stat[stat.rindex(")") + 2 :].split()[1]
        lines.append(f"{pid} (parent {ppid}) {cmd.decode(errors='replace')[:160]}")
    return "\n".join(lines)


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in (Path("/proc") / str(pid) / "fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def _decode(hex_addr: str) -> str:
    """An address from /proc/net/tcp{,6} (little-endian 32-bit words) as text."""
    import ipaddress

    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening_addresses(pids: list[int]) -> dict[str, list[int]]:
    """Local addresses on which any of `pids` has a listening TCP socket -> ports."""
    wanted = set().union(*(_socket_inodes(p) for p in pids)) if pids else set()
    found: dict[str, list[int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in wanted:  # 0A: LISTEN
                addr, port = local.split(":")
                found.setdefault(_decode(addr), []).append(int(port, 16))
    return found


def is_loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
