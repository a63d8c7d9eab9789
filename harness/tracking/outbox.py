"""Tracking writes that wait on disk, in order, while the tracking server is away."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


class Outbox:
    """Tracking writes that could not reach the server, kept on disk in order until they can:
    `ops.jsonl` (one write per line) and `artifacts/<n>/` (copies of artifact folders, which
    may be temporary). A sweep that outlives its server loses nothing; what is here is sent
    when the server answers again, or by `harness sweep ... --resume`."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.ops_file = self.root / "ops.jsonl"

    def pending(self) -> list[dict[str, Any]]:
        if not self.ops_file.exists():
            return []
        import json

        lines = self.ops_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def add(self, op: dict[str, Any]) -> None:
        import json
        import shutil

        self.root.mkdir(parents=True, exist_ok=True)
        if op["op"] == "artifacts":  # the folder may be gone by the time the server is back
            copy = self.root / "artifacts" / f"{time.time_ns()}"
            shutil.copytree(op["dir"], copy)
            op = {**op, "dir": str(copy)}
        with open(self.ops_file, "a") as out:
            out.write(json.dumps(op) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def waiting(self) -> bool:
        """Whether writes wait here (a stat, no read: asked before every tracking write)."""
        try:
            return self.ops_file.stat().st_size > 0
        except FileNotFoundError:
            return False

    def keep_only(self, ops: list[dict[str, Any]]) -> None:
        """Rewrite the outbox with `ops` (the ones still unsent), atomically."""
        import json
        import shutil

        kept = {op["dir"] for op in ops if op["op"] == "artifacts"}
        tmp = self.ops_file.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(op) + "\n" for op in ops))
        os.replace(tmp, self.ops_file)
        for folder in (self.root / "artifacts").glob("*"):
            if str(folder) not in kept:
                shutil.rmtree(folder, ignore_errors=True)
