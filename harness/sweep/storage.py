"""The sweep's Ray results folder (`--storage`): checked before a sweep writes to it, and a
write that fails there mid-sweep (a full disk, a folder turned read-only) told apart from a
trial's own failure.

A trial that cannot save its progress or artifacts has not failed: nothing is wrong with its
method or settings. The driver stops the sweep with exit code 2 and says which folder to free
or fix; the trial's MLflow run is marked interrupted (status KILLED, tag
`harness.interrupted` naming the failed write), not FAILED, and `--resume` runs it again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path

from harness.errors import HarnessInputError

INTERRUPTED_TAG = "harness.interrupted"

# What a failed write says in a trial's trace (Python's OSError, or pyarrow's copy that Tune
# uses to persist checkpoints: "[errno 28] No space left on device").
_FULL_OR_READ_ONLY = re.compile(
    r"\[errno (28|30|122)\]|No space left on device|Read-only file system|Disk quota exceeded",
    re.IGNORECASE,
)


class StorageFault(HarnessInputError):
    """A write to the sweep's storage failed: bad input of the user's machine, exit code 2."""


def storage_root(storage: str | None) -> str:
    if storage and "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage or "ray_results").expanduser().resolve())


def check_writable(root: str, sweep: str) -> None:
    """Write and remove a small file in the sweep's folder under a local `root` (URIs are
    left to their filesystem): a read-only, full or unwritable folder is reported before any
    trial starts, and nothing already there is touched."""
    if "://" in root:
        return
    folder = Path(root) / sweep
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as out:
            out.write(b"\0" * 65536)  # a checkpoint's worth of blocks, not just an inode
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        raise StorageFault(
            unwritable_message(str(folder), exc.strerror or str(exc)), field="--storage"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


def fault_in(trace: str, root: str) -> str | None:
    """The line of a trial's trace that says a write failed for want of space or of write
    access (else None): at any path for a full or read-only disk, and under `root` for a
    permission error."""
    for line in trace.splitlines():
        if _FULL_OR_READ_ONLY.search(line) or (f"[Errno {errno.EACCES}]" in line and root in line):
            return line.strip()[:500]
    return None


def unwritable_message(folder: str, reason: str) -> str:
    return (
        f"the sweep's Ray results folder {folder} cannot be written ({reason}). Free space "
        "there (or on the machine's temporary folder), make it writable, or point --storage "
        "at another folder; then run the same command with --resume. Trials already "
        "finished are kept, in that folder and in MLflow, and a trial the failed write "
        "interrupted runs again."
    )


# Tune's saved state of one experiment: one file of each kind per driver session, named by
# the session's start time, overwritten as the session goes on.
_STATE_FILE = re.compile(
    r"^(experiment_state|search_gen_state|basic-variant-state|searcher-state)-(.+)\.(json|pkl)$"
)
TORN_SUFFIX = ".torn"


def complete(path: Path) -> bool:
    """Whether a state file is whole: JSON that parses, or a pickle stream that reaches its
    STOP opcode (read without running it)."""
    import io
    import json
    import pickletools

    data = path.read_bytes()
    try:
        json.loads(data)
        return True
    except ValueError:
        pass
    try:
        ops = [op.name for op, _, _ in pickletools.genops(io.BytesIO(data))]
    except Exception:  # noqa: BLE001 (any parse failure: the stream is torn)
        return False
    return bool(ops) and ops[-1] == "STOP"


def set_aside_torn_state(experiment: str) -> list[str]:
    """Rename the newest driver sessions' state files that are torn (a write the full disk
    cut short) to `<name>.torn`, back to the newest session whose files are all whole, and
    return their names. Tune then restores that session's state, whole and consistent; with
    none left, the experiment starts again (its trials find their MLflow runs by number).

    Left alone, Tune fails to read a torn file, logs it and restarts the experiment inside
    the restored one: seen here, a search of four trials that then ran one."""
    folder = Path(experiment)
    if "://" in experiment or not folder.is_dir():
        return []
    sessions: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        found = _STATE_FILE.match(path.name)
        if found:
            sessions.setdefault(found.group(2), []).append(path)
    moved = []
    for stamp in sorted(sessions, reverse=True):
        files = sessions[stamp]
        has_trials = any(p.name.startswith("experiment_state") for p in files)
        if has_trials and all(complete(p) for p in files):
            break
        for path in files:
            path.rename(path.with_name(path.name + TORN_SUFFIX))
            moved.append(path.name)
    # No whole state left (the driver died before its first save, or every save is torn):
    # Tune's own way on, restarting the experiment inside the restored one, ran one trial of
    # a four-trial search here. Without its set-up file the experiment starts afresh instead.
    tuner = folder / "tuner.pkl"
    whole = any(
        p.name.startswith("experiment_state") and p.suffix == ".json" for p in folder.iterdir()
    )
    if tuner.exists() and (not whole or not complete(tuner)):
        tuner.rename(tuner.with_name(tuner.name + TORN_SUFFIX))
        moved.append(tuner.name)
    return sorted(moved)
