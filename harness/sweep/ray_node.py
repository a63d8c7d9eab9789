"""The sweep driver's Ray: a local, loopback-only node it starts and stops itself (every
Ray process included, on every way out), or a cluster it joins (`--address`); and the
dataset cache on each node that the node's trials share (`harness.sweep.shared_data`)."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray

from harness.errors import HarnessInputError
from harness.spec.schema import DatasetSpec
from harness.sweep.shared_data import cache_name, dataset_key, from_arrays, to_arrays

# Ray's switch for a single-machine node (its default on macOS and Windows): the node takes the
# loopback address, so the GCS, raylet, object manager, workers and agents all listen on
# 127.0.0.1 only. Ray has no per-server bind option; without this every gRPC server of a
# local sweep listens on all interfaces, where anyone who reaches the machine can submit code.
_SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


# A local Ray on a starved machine: the GCS health-checks the raylet (every 3 s, 10 s timeout)
# and declares the node dead after 5 misses in a row; the raylet then exits and takes the
# sweep with it ("marked dead because the detector has missed too many heartbeats", the
# fatal error once seen mid-sweep under heavy load). Reproduced by stopping the raylet
# (SIGSTOP) for 180 s in a running sweep (benchmarks/starvation.py); it survived 60 s. On one
# machine a raylet that stops answering is slow, not gone (if it crashed, the driver's own
# connection to it says so at once), so a local node tolerates ~60 misses (~13 minutes).
LOCAL_RAY_CONFIG = {"health_check_failure_threshold": 60}


def start_ray(address: str | None, cpus: float | None = None) -> bool:
    """Join the cluster at `address`, or start a loopback-only local Ray; True if we started it.

    A local Ray is checked after start: if its node is not on a loopback address it is shut
    down again and the sweep refuses to run (an internal error: Ray changed underneath us)."""
    if ray.is_initialized():
        return False
    quiet = dict(
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    try:
        if address and not is_loopback_address(address):
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        elif address:  # a cluster on this machine's loopback: its nodes say 127.0.0.1 too
            with _single_machine_mode():
                ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            _become_subreaper()
            with _single_machine_mode():
                # "local": always a new instance of our own, never a Ray someone else
                # started on this machine (found through /tmp/ray: seen with two test
                # workers, one sweep joining the other's cluster and failing)
                ray.init(
                    address="local",
                    num_cpus=int(cpus or os.cpu_count() or 1),
                    _system_config=LOCAL_RAY_CONFIG,
                    **quiet,
                )
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise HarnessInputError(
            f"cannot join the Ray cluster at {address!r} ({exc}). Check that `ray status` works "
            "on this machine, or leave --address out to run locally.",
            field="--address",
        ) from None
    if not address:
        node_ip = ray.util.get_node_ip_address()
        if node_ip not in _LOOPBACK:
            stop_ray()
            raise RuntimeError(
                f"the local Ray node came up on {node_ip}, not on the loopback address, so it "
                "would be reachable from the network; refusing to run. Start a cluster yourself "
                "(`ray start --head`) and pass --address if that is what you want."
            )
    return True


def is_loopback_address(address: str) -> bool:
    """True for `127.0.0.1:6379`, `localhost:6379`, `[::1]:6379` (not `auto`, not ray://)."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in _LOOPBACK or host.startswith("127.")


class _single_machine_mode:
    """Ray's single-machine switch, on for the processes `ray.init` starts, then put back.

    The variable reaches the GCS, raylet and agents (their environment is copied at start);
    the constant is what this already-imported driver reads."""

    def __enter__(self):
        from ray._private import ray_constants

        self.constants = ray_constants
        self.saved = (os.environ.get(_SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER)
        os.environ[_SINGLE_MACHINE_ENV] = "0"
        ray_constants.ENABLE_RAY_CLUSTER = False
        return self

    def __exit__(self, *exc):
        env, flag = self.saved
        if env is None:
            os.environ.pop(_SINGLE_MACHINE_ENV, None)
        else:
            os.environ[_SINGLE_MACHINE_ENV] = env
        self.constants.ENABLE_RAY_CLUSTER = flag
        return False


def stop_ray(timeout: float = 60.0) -> None:
    """Shut Ray down (a local one with all its processes, agents included), bounded in time.

    Runs in a helper thread so a wedged shutdown cannot keep a Ctrl-C'd sweep alive. Then
    every Ray process below this one still alive is killed: seen after a slow Ctrl-C in a
    loaded test run, where two of them outlived the driver. A driver that starts a local Ray
    is made a child subreaper (`start_ray`), so Ray processes orphaned during the shutdown
    stay below it and are found too. Other children of this process are left alone, and
    joining someone else's cluster starts no process here, so nothing is killed then."""
    if not ray.is_initialized():
        return
    before = ray_processes(os.getpid())
    done = threading.Thread(target=ray.shutdown, name="ray-shutdown", daemon=True)
    done.start()
    done.join(timeout)
    _kill_until_gone(set(before), os.getpid())


def _kill_until_gone(known: set[int], root: int, patience: float = 10.0) -> None:
    """SIGKILL `known` and every Ray process below `root`, again until none is left (one may
    be starting a child as it is killed); killed children of ours are reaped."""
    end = time.monotonic() + patience
    while known and time.monotonic() < end:
        for pid in known:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # already gone
        for pid in known:
            try:
                os.waitpid(pid, os.WNOHANG)  # not left as a zombie of ours
            except ChildProcessError:
                pass  # not our child, or already reaped by its owner (Ray's Popen)
        time.sleep(0.1)
        known = set(ray_processes(root))


def live_processes() -> list[tuple[int, list[str]]]:
    """(pid, the fields of /proc/<pid>/stat after "pid (comm) ") of every live process
    (Linux; [] elsewhere); zombies are left out. fields[1] is the parent, fields[3] the
    session."""
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z":
            out.append((int(entry.name), fields))
    return out


def descendants(root: int, keep=lambda pid: True) -> list[int]:
    """Live processes below `root`: its children for which `keep(pid)` holds, and every
    process below those."""
    children: dict[int, list[int]] = {}
    for pid, fields in live_processes():
        children.setdefault(int(fields[1]), []).append(pid)
    found = [pid for pid in children.get(root, []) if keep(pid)]
    todo = list(found)
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def ray_processes(root: int) -> list[int]:
    """Live Ray processes below `root` (Linux /proc; [] elsewhere): its children that run
    Ray's programs (GCS, raylet, monitors) or Ray workers and agents (`ray::...`), and every
    process below those."""
    return descendants(root, keep=_runs_ray)


_RAY_DIR = os.path.dirname(ray.__file__)  # its programs run from below here


def _runs_ray(pid: int) -> bool:
    try:
        cmdline = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return cmdline.startswith("ray::") or _RAY_DIR + os.sep in cmdline


def _become_subreaper() -> None:
    """Linux: orphaned processes below this one are re-parented to it, not to init, so a
    Ray process whose parent dies first is still found and stopped by `stop_ray`."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # then orphans go to init, as everywhere else


# ------------------------------------------------------ one dataset copy per node (shared_data)


@ray.remote(num_cpus=0, max_concurrency=1)
class DataCache:
    """Loads each dataset once on its node and keeps its arrays in the object store."""

    def __init__(self) -> None:
        self.refs: dict[str, Any] = {}

    def get(self, key: str) -> list:
        if key not in self.refs:
            from harness.protocol.evaluate import load_data

            spec = DatasetSpec.model_validate(json.loads(key))
            self.refs[key] = ray.put(to_arrays(load_data(spec)))
        return [self.refs[key]]  # in a list: the caller gets the reference, not the data


def start_caches() -> list:
    """One cache actor on every alive node, owned by the caller (the sweep driver): they
    and the data they hold go away with it."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return [
        DataCache.options(
            name=cache_name(node["NodeID"]),
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
        ).remote()
        for node in ray.nodes()
        if node.get("Alive")
    ]


def shared_dataset(ds: DatasetSpec):
    """The dataset from this node's cache (`DatasetSplits`); None when the node has none (a
    node that joined after the sweep started): load it yourself."""
    try:
        cache = ray.get_actor(cache_name(ray.get_runtime_context().get_node_id()))
    except ValueError:
        return None
    (ref,) = ray.get(cache.get.remote(dataset_key(ds)))
    return from_arrays(ray.get(ref))
