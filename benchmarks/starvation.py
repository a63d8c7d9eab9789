"""Does a local sweep survive a starved machine? Stops one of its Ray processes (SIGSTOP) for
a while, as a machine too busy to schedule it would, then lets it go on, and reports whether
the sweep still finished.

    python benchmarks/starvation.py [--process raylet|gcs_server] [--seconds 180]

Measured on the 2-core CPU machine (issue 11), a digits sweep of 2 trials: with Ray's default
health checks (5 misses of a 3 s / 10 s check) a 180 s raylet stop got the node "marked dead
because the detector has missed too many heartbeats" and the raylet and the sweep died; a 60 s
stop and a 100 s GCS stop were survived. With the harness's `LOCAL_RAY_CONFIG` (60 misses) the
same 180 s raylet stop is survived: `survived=1`.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sweep_helpers import session_pids, start_sweep, wait_for, write_spec  # noqa: E402
from test_ray_local import spec_tree, trial_started  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--process", default="raylet", choices=["raylet", "gcs_server"])
    ap.add_argument("--seconds", type=float, default=180.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tree = spec_tree("starved", epochs=300)
        tree["trials"] = 2
        proc = start_sweep(write_spec(d, tree), d, log=d / "out.log")
        try:
            if not wait_for(lambda: trial_started(d / "mlflow.db"), timeout=180, every=0.5):
                sys.exit("the sweep did not start a trial:\n" + (d / "out.log").read_text())
            pids = [
                p
                for p in session_pids(proc.pid)
                if Path(f"/proc/{p}/comm").read_text().strip() == args.process
            ]
            print(f"stopping {args.process} {pids} for {args.seconds:.0f} s", flush=True)
            for p in pids:
                os.kill(p, signal.SIGSTOP)
            time.sleep(args.seconds)
            for p in pids:
                os.kill(p, signal.SIGCONT)
            try:
                code = proc.wait(timeout=900)
            except subprocess.TimeoutExpired:
                code = None
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log = (d / "out.log").read_text()
        dead = "marked dead" in log or "Raylet is terminated" in log
        print(f"exit={code} node_marked_dead={dead}")
        print(f"survived={int(code == 0 and not dead)}")


if __name__ == "__main__":
    main()
