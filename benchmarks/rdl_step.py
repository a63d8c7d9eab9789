"""One rdl outer step: its speed-up over the step as it was, at equal results, and its budget.

Three measurements, side by side in one run, each pair of variants stepped in turn from the
same seed so drift in the machine's speed hits both alike (issue 21, item 4):

1. `speed-up`: today's step against the step before issue 21's profiling, each in its own
   process (`--rounds` of each in turn): before, ConvNet's 2x2 average pooling was
   `nn.AvgPool2d(2)` (now `AvgPool2x2`, a depthwise convolution on CPU) and malloc handed
   freed memory back to the kernel (now `harness.protocol.allocator.keep_freed_memory`).
   Equal results: how far apart the two sets end, as a fraction of how far learning moved
   them (0, or float rounding).
2. `batched`: `--networks N` networks per outer step in one vmapped call against a loop
   over them (`method.batch_networks` on / off); the same check of equal results.
3. The budget (README, "What we measured"): at ipc 10 on Fashion-MNIST with a ConvNet-32 pool
   and rdl's Fashion-MNIST defaults (a 10-step unroll, PGD-10 on the CW margin over 128 real
   images), one outer step holds at most 2 GB above the process's start and takes at most
   3 s on 2 CPU cores: `time_ratio` and `memory_ratio` (<= 1.0: within it).

    python benchmarks/rdl_step.py [--width 32] [--ipc 10] [--unroll 10] [--steps 5]
                                  [--rounds 3] [--networks 4] [--threads 2] [--device cpu]

The data are random images of Fashion-MNIST's shape (cost does not depend on the pixels), so
it runs anywhere; `--device cuda` measures a GPU (allocator peak instead of resident memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from harness.datasets.splits import DatasetSplits
from harness.estimate.cost import PeakMemory, gigabytes
from harness.methods import MethodContext, make_method
from harness.methods.rdl import _Learner
from harness.protocol.allocator import keep_freed_memory
from harness.protocol.attacks import Threat
from harness.protocol.models import AvgPool2x2
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


class ReferenceContext(MethodContext):
    """The method context of the step before the pooling change: ConvNets built with
    `nn.AvgPool2d(2)` in place of `AvgPool2x2` (same values; the old CPU kernel)."""

    def build(self, arch, seed=None, *, metered=True):
        net = super().build(arch, seed, metered=metered)
        for module in list(net.modules()):
            for child_name, child in list(module.named_children()):
                if isinstance(child, AvgPool2x2):
                    setattr(module, child_name, nn.AvgPool2d(2))
        return net


def learner(a, device, *, reference=False, **params) -> _Learner:
    cls = ReferenceContext if reference else MethodContext
    ctx = cls(
        data=fake_fashion(),
        threat=Threat("linf", 0.1),
        train=TrainConfig(),
        device=device,
        generator=torch.Generator().manual_seed(0),
        seed=0,
        archs=["convnet"],
        meter=WorkMeter(),
        arch_settings={"convnet": {"width": a.width}},
    )
    base = {"ipc": a.ipc, "unroll_min": a.unroll, "unroll_max": a.unroll, "probe_every": 0}
    method = make_method("rdl", {**base, **params})
    return _Learner(method.config_for("fashion-mnist"), ctx)  # its Fashion-MNIST defaults


def timed_step(lr: _Learner, step: int, device: torch.device) -> float:
    start = time.perf_counter()
    lr.outer_step(step)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def side_by_side(a, device, before: _Learner, after: _Learner) -> tuple[float, float, float]:
    """Median seconds per step of `before` and `after`, stepped in turn (a warm-up step
    first), and how far apart their sets end: ||S_before - S_after|| / ||S_before - S_0||,
    the difference as a fraction of how far learning moved the set."""
    times: tuple[list[float], list[float]] = ([], [])
    start = before.x.clone()
    for step in range(a.steps + 1):
        for lr, out in ((before, times[0]), (after, times[1])):
            seconds = timed_step(lr, step, device)
            if step:
                out.append(seconds)
    moved = float((before.x - start).norm())
    diff = float((before.x - after.x).norm()) / moved
    return statistics.median(times[0]), statistics.median(times[1]), diff


def child(a, device) -> None:
    """One variant of the step in this process: time it, save where its set ends."""
    if a.child == "today":
        keep_freed_memory()
    lr = learner(a, device, reference=a.child == "before")
    start = lr.x.clone()
    lr.outer_step(0)  # warm-up
    seconds = statistics.median(timed_step(lr, s, device) for s in range(1, a.steps + 1))
    torch.save({"start": start, "end": lr.x.cpu()}, a.out)
    print(json.dumps({"seconds": seconds}))


def before_and_today(a) -> tuple[float, float, float]:
    """Median seconds per step of the step before and today's, over `rounds` processes of
    each in turn, and how far apart their sets end (a fraction of their move)."""
    times: dict[str, list[float]] = {"before": [], "today": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            for variant in times:
                args = [
                    sys.executable,
                    __file__,
                    "--child",
                    variant,
                    "--out",
                    f"{tmp}/{variant}.pt",
                ]
                for key in ("width", "ipc", "unroll", "steps", "threads", "device"):
                    args += [f"--{key}", str(getattr(a, key))]
                out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
                times[variant].append(json.loads(out.splitlines()[-1])["seconds"])
        old, new = (torch.load(Path(tmp, f"{v}.pt"), weights_only=True) for v in times)
    moved = float((old["end"] - old["start"]).norm())
    diff = float((old["end"] - new["end"]).norm()) / moved
    return statistics.median(times["before"]), statistics.median(times["today"]), diff


def hypergradient(a, device, *, batched: bool) -> torch.Tensor:
    """One outer step's hypergradient in the set's inputs, in float64, for `a.networks`
    networks in one vmapped call or in a loop. float64 so that rounding (which Adam's
    normalised steps amplify in the set, see docs/notes/rdl.md) hides no real difference."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        lr = learner(a, device, networks=a.networks)
        lr.x, lr.x_real = lr.x.double(), lr.x_real.double()
        lr.label_logits = lr.label_logits.double()
        states = [lr._fresh_network() for _ in range(a.networks)]
        leaves = [lr.x.clone().requires_grad_(True), lr.label_logits.clone().requires_grad_(True)]
        xr, yr = lr._real_batch()
        groups = [states] if batched else [[s] for s in states]
        return sum(lr._hypergradient(g, leaves, lr.y, a.unroll, xr, yr)[1][0] for g in groups)
    finally:
        torch.set_default_dtype(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--unroll", type=int, default=10)
    ap.add_argument("--steps", type=int, default=5, help="timed outer steps after a warm-up one")
    ap.add_argument("--networks", type=int, default=4, help="networks per step, batched vs loop")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3, help="processes of each variant, in turn")
    ap.add_argument("--child", choices=["before", "today"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.child:
        return child(a, device)
    where = f"ConvNet-{a.width}, ipc {a.ipc}, unroll {a.unroll}, {a.threads} threads, {device}"

    # The budget first, while the process holds nothing else.
    keep_freed_memory()  # as a trial does on CPU
    with PeakMemory(device) as memory:  # memory from before the learner (malloc keeps its peak)
        lr = learner(a, device)
        lr.outer_step(0)  # warm-up: allocations, first network
        seconds = statistics.median(timed_step(lr, s, device) for s in range(1, a.steps + 1))
    print(f"budget: {BUDGET_SECONDS:.1f} s and {gigabytes(BUDGET_BYTES)} per outer step; peak")
    print(f"  {gigabytes(memory.peak)} above the start")
    print(f"time_ratio={seconds / BUDGET_SECONDS:.2f}")
    if memory.peak is not None:
        print(f"memory_ratio={memory.peak / BUDGET_BYTES:.2f}")

    old, new, diff = before_and_today(a)
    print(f"rdl outer step, {where}, median of {a.rounds} processes x {a.steps} steps:")
    print(f"  before issue 21        {old:.2f} s")
    print(f"  today                  {new:.2f} s    sets apart by {diff:.1e} of their move")
    print(f"speedup={old / new:.2f}")

    if a.networks > 1:
        n = a.networks
        loop, batched, diff = side_by_side(
            a,
            device,
            learner(a, device, networks=n, batch_networks="off"),
            learner(a, device, networks=n, batch_networks="on"),
        )
        print(f"{n} networks per outer step, {where}, median of {a.steps}:")
        print(f"  loop                   {loop:.2f} s")
        loop_g = hypergradient(a, device, batched=False)
        gap = float((hypergradient(a, device, batched=True) - loop_g).norm() / loop_g.norm())
        print(f"  one vmapped call       {batched:.2f} s    sets apart by {diff:.1e} of their move")
        print(f"  hypergradients in float64 apart by {gap:.1e} (relative); the float32 sets")
        print("  part by rounding, which Adam's normalised steps amplify")
        print(f"batched_speedup={loop / batched:.2f}")


if __name__ == "__main__":
    main()
