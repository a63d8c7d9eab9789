"""What Ray Tune + Optuna + MLflow add to a sweep: the same N small trials run as a plain
Python loop (each trial with every core's threads, one after another) and through
`harness sweep` (one trial per core at once, and one at a time with every core), side by side
in one run on this machine. Also times a local Ray's start and stop and MLflow's logging of N
trial records on their own.

Prints the wall seconds of each and, last, `overhead_ratio=<best sweep / plain loop>`
(target <= 1.10 for trials of about 30 s).

    python benchmarks/overhead.py [--quick] [--trials N] [--epochs E]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

CPUS = os.cpu_count() or 1


def spec_tree(n: int, epochs: int, *, cpu: float, concurrent: int) -> dict:
    lrs = [round(0.05 + 0.001 * i, 4) for i in range(n)]  # N variants of one trial each
    return {
        "name": "overhead",
        "dataset": {"name": "fashion-mnist", "subset": 300},
        "threat": {"steps": 5, "autoattack": "off"},
        "train": {"epochs": epochs},
        "eval": {
            "archs": ["convnet"],
            "models_per_arch": 1,
            "max_test": 500,
            "max_val": 200,
            "arch_settings": {"convnet": {"width": 16}},
        },
        "search": {"asha": False, "max_concurrent": concurrent},
        "resources": {"cpu": cpu},
        "checkpoint_every_s": None,
        "methods": {"erm": {"space": {"train.lr": {"grid": lrs}}}},
    }


def plain_loop(tree: dict) -> float:
    """Every trial of the spec, one after another, in this process (all threads)."""
    import torch

    from harness.protocol.evaluate import run_trial
    from harness.spec.plan import make_plan, resolve_trial
    from harness.spec.schema import build_sweep_spec

    torch.set_num_threads(CPUS)
    plan = make_plan(build_sweep_spec(tree))
    start = time.perf_counter()
    for variant in plan:
        run_trial(resolve_trial(variant, {}))
    return time.perf_counter() - start


def sweep(tree: dict, folder: Path) -> float:
    folder.mkdir(parents=True)
    (folder / "spec.yaml").write_text(yaml.safe_dump(tree))
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "sweep", "spec.yaml"],
        cwd=folder,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def ray_start_stop() -> float:
    from harness.sweep.ray_node import start_ray, stop_ray

    start = time.perf_counter()
    start_ray(None)
    stop_ray()
    return time.perf_counter() - start


def mlflow_logging(n: int, folder: Path) -> float:
    """N trial records (open, params, progress, final metrics and tags, artifacts, finish)."""
    from harness.tracking.store import connect
    from harness.tracking.writer import Tracker

    art = folder / "art"
    (art / "model").mkdir(parents=True)
    (art / "spec.yaml").write_text("x: 1\n")
    (art / "model" / "convnet.pt").write_bytes(os.urandom(200_000))
    start = time.perf_counter()
    tracker = Tracker(connect(f"sqlite:///{folder / 'mlflow.db'}"), "logging")
    for i in range(n):
        run = tracker.trial_run(f"t{i}", {f"p{k}": k for k in range(40)}, {"method": "erm"})
        for epoch in range(10):
            tracker.log_metrics(run, {"val_robust_acc": 0.1, "epoch": epoch}, step=epoch)
        tracker.log_metrics(run, {f"m{k}": 0.5 for k in range(20)}, step=10)
        tracker.set_tags(run, {"device": "cpu"})
        tracker.log_artifacts(run, art)
        tracker.finish(run)
    tracker.finish_sweep()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter trials (about 5 s each)")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="training epochs per trial (default 12, ~15 s a trial; 24: ~30 s)",
    )
    a = ap.parse_args()
    n = a.trials or (4 if a.quick else 6)
    epochs = a.epochs or (2 if a.quick else 12)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plain = plain_loop(spec_tree(n, epochs, cpu=1, concurrent=1))
        per_trial = plain / n
        print(f"plain loop: {n} trials in {plain:.1f} s ({per_trial:.1f} s each, {CPUS} threads)")
        parallel = sweep(spec_tree(n, epochs, cpu=1, concurrent=CPUS), root / "parallel")
        print(f"harness sweep, {CPUS} trials at once, 1 thread each: {parallel:.1f} s")
        serial = sweep(spec_tree(n, epochs, cpu=CPUS, concurrent=1), root / "serial")
        print(f"harness sweep, 1 trial at a time, {CPUS} threads: {serial:.1f} s")
        ray_s = ray_start_stop()
        print(f"local Ray start + stop alone: {ray_s:.1f} s")
        mlflow_s = mlflow_logging(n, root / "mlflow")
        print(f"MLflow (sqlite) logging of {n} trial records alone: {mlflow_s:.1f} s")
    print(f"overhead_ratio={min(parallel, serial) / plain:.3f}")


if __name__ == "__main__":
    main()
