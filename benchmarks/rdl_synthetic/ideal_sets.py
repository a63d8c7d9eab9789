"""What natural training makes of hand-built sets on the abstraction model (issue 21).

Each set: x1 = c * y, the d non-robust features label-free Gaussian noise of std s, labels
soft at q (or hard). A fresh `linear` model is trained on it by the harness's downstream
protocol (300 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4, batch 256, lr x0.1 at
half) and scored on the validation split, clean and PGD-20. It shows what a learned set has
to achieve, and how many rows per feature that takes (docs/notes/rdl.md).

    python benchmarks/rdl_synthetic/ideal_sets.py [--d 400 --p 0.9] [--arch linear]
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.datasets import load_dataset
from harness.methods.base import MethodContext
from harness.protocol.attacks import Threat, accuracy, robust_accuracy
from harness.protocol.train import TrainConfig, WorkMeter, train_model

CPU = torch.device("cpu")


def hand_set(d: int, rows: int, s: float, q: float | None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(2).repeat_interleave(rows // 2)
    x = torch.cat([(2 * y - 1).float().unsqueeze(1), s * torch.randn(len(y), d, generator=gen)], 1)
    if q is None:
        return x, y
    return x, torch.stack([torch.where(y == 0, q, 1 - q), torch.where(y == 1, q, 1 - q)], 1)


def score(data, x, y, arch: str, seed: int) -> tuple[float, float]:
    threat = Threat("linf", data.default_eps, steps=20)
    ctx = MethodContext(
        data=data,
        threat=threat,
        train=TrainConfig(),
        device=CPU,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        archs=[arch],
        meter=WorkMeter(),
        log=lambda metrics, step: None,
    )
    model = ctx.build(arch, seed=seed)
    recipe = TrainConfig(
        epochs=300,
        batch_size=min(256, len(x)),
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="halfway",
    )
    train_model(model, x, y, recipe, generator=torch.Generator().manual_seed(seed), device=CPU)
    attack = threat.attack(bounds=data.bounds, generator=torch.Generator().manual_seed(0))
    return accuracy(model, data.x_val, data.y_val), robust_accuracy(
        model, data.x_val, data.y_val, attack
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=400)
    ap.add_argument("--p", type=float, default=0.9)
    ap.add_argument("--arch", default="linear")
    ap.add_argument("--n-train", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_dataset(
        "synthetic-robust",
        params={"d": args.d, "p": args.p, "n_train": args.n_train, "n_test": 500},
    )
    print(f"d={args.d} p={args.p} eps={data.default_eps:.3f} arch={args.arch}")
    for ratio in (0.75, 1.0, 1.5, 2.5, 5.0):
        for s, q in ((1.0, 0.9), (2.0, 0.9), (4.0, 0.9), (2.0, None)):
            rows = 2 * round(ratio * (args.d + 1) / 2)
            start = time.perf_counter()
            clean, robust = score(data, *hand_set(args.d, rows, s, q), args.arch, seed=1)
            print(
                f"rows/(d+1)={ratio:<4} s={s} labels={'hard' if q is None else q}: "
                f"clean {clean:.3f}  PGD-20 {robust:.3f}  ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
