"""Time and memory of one rdl outer step against its stated budget (issue 10, item 1).

The budget (README, "What we measured"): at ipc 10 on Fashion-MNIST with a ConvNet-32 pool
and rdl's Fashion-MNIST defaults (a 10-step unroll, PGD-10 on the CW margin over 128 real
images), one outer step holds at most 2 GB above the process's start and takes at most 3 s on
2 CPU cores. Prints the measured seconds (median of the timed steps after a warm-up step) and
peak memory, and their ratios to the budget on the last lines (<= 1.0: within it):

    python benchmarks/rdl_step.py [--width 32] [--ipc 10] [--unroll 10] [--steps 5] [--threads 2]

The data are random images of Fashion-MNIST's shape (cost does not depend on the pixels), so
it runs anywhere; `--device cuda` measures a GPU (allocator peak instead of resident memory).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.datasets.splits import DatasetSplits
from harness.estimate.cost import PeakMemory, gigabytes
from harness.methods import MethodContext, make_method
from harness.methods.rdl import _Learner
from harness.protocol.attacks import Threat
from harness.protocol.train import TrainConfig, WorkMeter

BUDGET_SECONDS = 3.0
BUDGET_BYTES = 2 * 2**30


def fake_fashion(n_per_class: int = 200, seed: int = 0) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)

    def split(n):
        return torch.rand(n * 10, 1, 28, 28, generator=g), torch.arange(n * 10) % 10

    (xt, yt), (xv, yv), (xs, ys) = split(n_per_class), split(20), split(20)
    return DatasetSplits(
        name="fashion-mnist",
        x_train=xt,
        y_train=yt,
        x_val=xv,
        y_val=yv,
        x_test=xs,
        y_test=ys,
        num_classes=10,
        bounds=(0.0, 1.0),
        default_eps=0.1,
        n_train_full=60000,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="timed outer steps after a warm-up one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    data = fake_fashion()
    ctx = MethodContext(
        data=data,
        threat=Threat("linf", 0.1),
        train=TrainConfig(),
        device=device,
        generator=torch.Generator().manual_seed(0),
        seed=0,
        archs=["convnet"],
        meter=WorkMeter(),
        arch_settings={"convnet": {"width": a.width}},
    )
    method = make_method("rdl", {"ipc": a.ipc, "unroll_min": a.unroll, "unroll_max": a.unroll})
    cfg = method.config_for("fashion-mnist")  # rdl's Fashion-MNIST defaults, then ours
    learner = _Learner(cfg, ctx)
    learner.outer_step(0)  # warm-up: allocations, first network
    times = []
    with PeakMemory(device) as memory:
        for step in range(1, a.steps + 1):
            start = time.perf_counter()
            learner.outer_step(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    print(
        f"rdl outer step, ConvNet-{a.width}, ipc {a.ipc}, unroll {a.unroll}, "
        f"{a.threads} threads, {device}: {seconds:.2f} s (median of {a.steps}), peak "
        f"{gigabytes(memory.peak)} above the start"
    )
    print(f"budget: {BUDGET_SECONDS:.1f} s and {gigabytes(BUDGET_BYTES)} per outer step")
    print(f"time_ratio={seconds / BUDGET_SECONDS:.2f}")
    if memory.peak is not None:
        print(f"memory_ratio={memory.peak / BUDGET_BYTES:.2f}")


if __name__ == "__main__":
    main()
