"""The live view of a running sweep: trials done, running and failed per variant, and the
best objective so far (a rich table the driver refreshes from Tune's callbacks)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class VariantProgress:
    label: str
    dataset: str
    planned: int
    done: int = 0
    running: int = 0
    failed: int = 0
    best: float | None = None


@dataclass
class SweepProgress:
    """What the live view shows: trials done / running / failed and best objective."""

    mode: str
    variants: dict[str, VariantProgress] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def better(self, a: float | None, b: float) -> bool:
        return a is None or (b > a if self.mode == "max" else b < a)

    def table(self):
        from rich.table import Table

        elapsed = time.monotonic() - self.started
        t = Table(title=f"sweep progress  ({elapsed:.0f} s)", title_justify="left")
        for col in ("dataset", "variant", "done", "running", "failed", "planned", "best objective"):
            t.add_column(col, justify="right" if col not in ("dataset", "variant") else "left")
        for v in self.variants.values():
            best = "-" if v.best is None else f"{v.best:.4f}"
            t.add_row(
                v.dataset, v.label, str(v.done), str(v.running), str(v.failed), str(v.planned), best
            )
        return t
