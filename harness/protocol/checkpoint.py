"""A long trial's progress, saved as it goes so that a restart picks it up instead of
starting over (a preempted node, a worker the OOM killer took, `harness sweep --resume`).

A `TrialCheckpoint` holds named sections; each is what one stage of the trial needs to go
on from where it was:

- `learning`: a dataset method's state between outer steps (`rdl`: every time its network
  is re-initialised);
- `learned`: the finished learned set, so the evaluation that follows does not learn again;
- `models`: the downstream models already trained and scored;
- `training`: the model in training at its last epoch boundary (weights, optimiser and
  scheduler state, random generator, best epoch so far, its work meter).

Sections hold plain values and tensors only, so a saved file loads with
`torch.load(weights_only=True)`. Saving the whole state costs a copy of the model and the set,
so a stage *offers* its state at every boundary and it is saved only when `every_s` seconds
have passed since the last save (a finished stage too): a restart loses at most that much.
Resuming gives the same result as an uninterrupted run: every random stream a stage draws
from is in its section.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import faults

FILE = "progress.pt"  # the file of a checkpoint folder that holds a trial's progress

Persist = Callable[[dict[str, Any]], None]


class TrialCheckpoint:
    """Sections of a trial's progress: `restored` is what the last save held ({} on a first
    start); `persist(sections)` stores them (None: nothing is ever saved)."""

    def __init__(
        self,
        restored: dict[str, Any] | None = None,
        persist: Persist | None = None,
        every_s: float = 600.0,
    ):
        self.sections: dict[str, Any] = dict(restored or {})
        self.persist = persist
        self.every_s = every_s
        self._saved_at = time.monotonic()
        self.saves = 0

    def get(self, section: str) -> Any:
        return self.sections.get(section)

    def offer(self, section: str, make: Callable[[], Any]) -> None:
        """At a boundary where the stage could go on from: save `make()` as `section` when a
        save is due (`make` is not called otherwise)."""
        if self.persist is not None and time.monotonic() - self._saved_at >= self.every_s:
            self.sections[section] = make()
            self._save()
        faults.point(section)  # `learning`, `training`: where a test kills the trial's worker

    def put(self, section: str, value: Any, *, drop: tuple[str, ...] = ()) -> None:
        """A stage finished: keep `value` as `section`, forget the sections in `drop` (the
        finished stage's in-progress state) and save when a save is due (a save per
        finished model would cost short trials more than it saves)."""
        for name in drop:
            self.sections.pop(name, None)
        self.sections[section] = value
        if self.persist is not None and time.monotonic() - self._saved_at >= self.every_s:
            self._save()

    def _save(self) -> None:
        self.persist(self.sections)
        self.saves += 1
        self._saved_at = time.monotonic()


class Stage:
    """One stage's view of a trial's checkpoint: its section, and its wall seconds counted
    across restarts. What a dataset method sees as `ctx.resume` (section `learning`)."""

    def __init__(self, store: TrialCheckpoint, section: str):
        self.store, self.section = store, section
        saved = store.get(section)
        self.before = float(saved["seconds"]) if saved else 0.0
        self.started = time.perf_counter()

    def saved(self) -> dict[str, Any] | None:
        """The stage's state as last saved (None: start from the beginning)."""
        return self.store.get(self.section)

    def offer(self, make: Callable[[], dict[str, Any]]) -> None:
        """At a boundary the stage could go on from: `make()` is its state, saved when due."""
        self.store.offer(self.section, lambda: {**make(), "seconds": self.seconds()})

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.started


def save_file(sections: dict[str, Any], folder: Path) -> Path:
    import torch

    path = Path(folder) / FILE
    torch.save(sections, path)
    return path


def load_file(folder: Path) -> dict[str, Any] | None:
    """The progress saved in `folder`, or None when it holds none (e.g. a trial's final
    artifacts)."""
    import torch

    path = Path(folder) / FILE
    if not path.exists():
        return None
    return torch.load(path, weights_only=True, map_location="cpu")
