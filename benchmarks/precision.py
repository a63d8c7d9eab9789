"""Does the harness's fast path change what a model learns? On CUDA the training loop runs under
bf16 autocast with channels_last tensors (`harness.protocol.train.autocast`, `to_device`); this trains
the same network from the same initialisation, on the same data in the same batch order, with
that loop and with a plain fp32 loop (`throughput.hand_loop`), naturally and with PGD
adversarial training, and compares clean and PGD accuracy on validation images (the test
split is left for reported numbers). The gap between two fp32 seeds is printed beside it as
the scale of ordinary run-to-run noise.

On a CPU both loops run in fp32, so their gap must be about zero: a check that the comparison
is like for like. On a GPU it is the effect of bf16 and channels_last.

The last line is `precision_gap=<largest |harness - fp32| over the accuracies>`, and the line
before it `seed_gap=<the same between fp32 seeds 0 and 1>`.

    python benchmarks/precision.py [--quick] [--device auto] [--dataset fashion-mnist]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import hand_loop, harness_loop  # noqa: E402


def train_and_score(loop, data, args, device, *, seed: int, adversarial: bool) -> dict[str, float]:
    from harness.protocol.attacks import accuracy, pgd, robust_accuracy
    from harness.protocol.models import build_model

    mean, std = data.channel_stats()
    torch.manual_seed(seed)
    model = build_model(
        "convnet", data.input_shape, data.num_classes, mean=mean, std=std, width=args.width
    ).to(device)
    n = args.n_train
    x, y = data.x_train[:n].to(device), data.y_train[:n].to(device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def attack(m, xb, yb):  # PGD-7 at the evaluation radius, as the adversarial training
        m.eval()
        out = pgd(
            m,
            xb,
            yb,
            eps=args.eps,
            alpha=args.eps / 4,
            steps=7,
            random_start=True,
            bounds=data.bounds,
            generator=gen,
        )
        m.train()
        return out

    loop(
        model,
        x,
        y,
        epochs=args.epochs,
        batch=128,
        lr=0.05,
        attack=attack if adversarial else None,
        gen=torch.Generator().manual_seed(seed),
    )
    model.eval()
    xt, yt = data.x_val[: args.n_val].to(device), data.y_val[: args.n_val].to(device)

    def evaluation_pgd(m, xb, yb):
        return pgd(
            m,
            xb,
            yb,
            eps=args.eps,
            alpha=args.eps / 4,
            steps=10,
            random_start=True,
            bounds=data.bounds,
            generator=torch.Generator(device=device).manual_seed(0),
        )

    return {
        "clean": accuracy(model, xt, yt),
        "pgd10": robust_accuracy(model, xt, yt, evaluation_pgd),
    }


def main() -> None:
    from harness.datasets import load_dataset
    from harness.protocol.train import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer images and epochs (~3 min on 2 CPU cores)"
    )
    ap.add_argument("--dataset", default="fashion-mnist", help="any harness dataset of images")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument(
        "--eps", type=float, default=0.1, help="Linf radius of training and evaluation PGD"
    )
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    args.n_train, args.n_val, args.epochs = (4000, 500, 2) if args.quick else (12000, 2000, 5)
    device = pick_device(args.device)
    data = load_dataset(args.dataset, root=args.data_root)
    path = (
        "bf16 autocast + channels_last" if device.type == "cuda" else "fp32 (no autocast on a CPU)"
    )
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"{args.dataset}, ConvNet width {args.width}, {args.n_train} training images x "
        f"{args.epochs} epochs, {args.n_val} validation images, Linf {args.eps}; harness loop: {path}"
    )
    precision_gap = seed_gap = 0.0
    for regime, adversarial in (("natural", False), ("pgd_at", True)):
        fp32 = train_and_score(hand_loop, data, args, device, seed=0, adversarial=adversarial)
        ours = train_and_score(harness_loop, data, args, device, seed=0, adversarial=adversarial)
        other = train_and_score(hand_loop, data, args, device, seed=1, adversarial=adversarial)
        for metric in ("clean", "pgd10"):
            precision_gap = max(precision_gap, abs(ours[metric] - fp32[metric]))
            seed_gap = max(seed_gap, abs(other[metric] - fp32[metric]))
        print(
            f"{regime:8s} fp32 seed 0: clean {fp32['clean']:.3f} PGD-10 {fp32['pgd10']:.3f} | "
            f"harness seed 0: clean {ours['clean']:.3f} PGD-10 {ours['pgd10']:.3f} | "
            f"fp32 seed 1: clean {other['clean']:.3f} PGD-10 {other['pgd10']:.3f}"
        )
    print(f"seed_gap={seed_gap:.3f}")
    print(f"precision_gap={precision_gap:.3f}")


if __name__ == "__main__":
    main()
