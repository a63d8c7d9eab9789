"""Named points where a process can be made to die by SIGKILL, to test that a sweep survives
it: the fault matrix of `tests/test_faults.py`, or a user checking their cluster's resume.

Off unless `HARNESS_FAULT` is set: a comma-separated list of `<point>[@<where>][:<n>]`. The
process dies at its n-th pass (n = 1 when left out) through `<point>`, counting only the
passes made at `<where>` when given: a phase (`search`, `repeat`) at a driver point, a
method name or variant key at a trial point.

With `HARNESS_FAULT_MARK=<folder>`, each entry fires once for each trial (or driver) across
processes: the first firing leaves a file there. A trial that Tune retries, and whose
worker inherits the same setting, then runs to its end, as after a one-off crash.

A driver point kills the driver's whole process group when the driver leads it, as a batch
scheduler or a closing terminal does (Ray's processes with it); else the driver alone. A
trial point kills the trial's worker process alone, as the kernel's OOM killer does:

    trial_start     driver: a trial's MLflow run was opened
    trial_record    driver: a finished trial's record was logged, its run not closed yet
    trial_complete  driver: a trial's run was closed
    phase_end       driver: a variant's search or repeats experiment ended
    sweep_end       driver: every variant ended and the parent run was closed
    leaderboard     driver: the leaderboard's records were read, not printed yet
    learning        trial: a dataset method offered its state between learning steps
    training        trial: a model offered its state at an epoch boundary
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ENV, MARK_ENV = "HARNESS_FAULT", "HARNESS_FAULT_MARK"
DRIVER_POINTS = (
    "trial_start",
    "trial_record",
    "trial_complete",
    "phase_end",
    "sweep_end",
    "leaderboard",
)
TRIAL_POINTS = ("learning", "training")

# Where a trial point is passed: the method and variant of the trial this worker runs (set by
# the trial runner), so that an entry can name them and a mark is kept per trial.
context: tuple[str, ...] = ()

_passes: Counter[str] = Counter()
_lock = threading.Lock()


@dataclass(frozen=True)
class Entry:
    text: str
    point: str
    where: str
    n: int


def parse(value: str) -> list[Entry]:
    """The entries of a `HARNESS_FAULT` value; a ValueError names a mistyped one."""
    entries = []
    for text in (part.strip() for part in value.split(",")):
        found = re.fullmatch(r"([a-z_]+)(?:@([\w.\[\]=,-]+))?(?::(\d+))?", text)
        if not found or found.group(1) not in DRIVER_POINTS + TRIAL_POINTS:
            raise ValueError(
                f"{ENV}={value!r}: {text!r} is not <point>[@<where>][:<n>] with a "
                f"known point ({', '.join(DRIVER_POINTS + TRIAL_POINTS)})"
            )
        n = int(found.group(3) or 1)
        if n < 1:
            raise ValueError(f"{ENV}={value!r}: the pass number of {text!r} must be 1 or more")
        entries.append(Entry(text, found.group(1), found.group(2) or "", n))
    return entries


def point(name: str, *where: str) -> None:
    """Pass through point `name` at `where` (with the trial's `context`): the process dies
    here if an entry of `HARNESS_FAULT` names this pass."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    at = (*where, *context)
    for entry in parse(wanted):
        if entry.point != name or (entry.where and entry.where not in at):
            continue
        with _lock:
            _passes[entry.text] += 1
            due = _passes[entry.text] == entry.n
        if due and _first_firing(entry):
            _die(name)


def _first_firing(entry: Entry) -> bool:
    folder = os.environ.get(MARK_ENV)
    if not folder:
        return True
    scope = re.sub(r"[^\w.=-]", "_", "+".join(context) or "driver")
    mark = Path(folder) / re.sub(r"[^\w.=-]", "_", f"{entry.text}+{scope}")
    try:
        mark.touch(exist_ok=False)
    except FileExistsError:
        return False  # fired once already, in an earlier process
    return True


def _die(name: str) -> None:
    if name in DRIVER_POINTS and os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
