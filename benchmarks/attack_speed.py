"""PGD throughput: the harness's `pgd` against torchattacks' PGD, side by side in one run.

Both attack the same trained-from-scratch model on the same inputs with the same budget
(random start off, so both compute identical iterates); the script prints examples per second
for each and their ratio. Usage:

    python benchmarks/attack_speed.py [--arch convnet] [--shape 3,32,32] [--batch 256]
                                      [--steps 10] [--repeats 5] [--device auto]
"""

from __future__ import annotations

import argparse
import time

import torch


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, cuDNN autotuning)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    import torchattacks

    from harness.protocol.attacks import pgd
    from harness.protocol.models import build_model
    from harness.protocol.train import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="convnet")
    ap.add_argument("--shape", default="3,32,32")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = pick_device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    torch.manual_seed(0)
    model = build_model(args.arch, shape, 10).to(device).eval()
    x = torch.rand(args.batch, *shape, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    eps, alpha = 8 / 255, 2 / 255

    ours = timed(
        lambda: pgd(model, x, y, eps=eps, alpha=alpha, steps=args.steps, random_start=False),
        args.repeats,
        device,
    )
    theirs_attack = torchattacks.PGD(
        model, eps=eps, alpha=alpha, steps=args.steps, random_start=False
    )
    theirs = timed(lambda: theirs_attack(x, y), args.repeats, device)
    same = torch.equal(
        pgd(model, x, y, eps=eps, alpha=alpha, steps=args.steps, random_start=False),
        theirs_attack(x, y),
    )
    print(
        f"device {device}, arch {args.arch}, input {shape}, batch {args.batch}, "
        f"PGD-{args.steps}, torch threads {torch.get_num_threads()}"
    )
    print(f"harness pgd:      {args.batch / ours:10.1f} examples/s")
    print(f"torchattacks PGD: {args.batch / theirs:10.1f} examples/s")
    print(f"ratio (harness / torchattacks): {theirs / ours:.2f}x; identical iterates: {same}")


if __name__ == "__main__":
    main()
