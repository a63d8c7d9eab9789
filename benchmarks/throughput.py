"""Is the harness fast where it matters? Side by side, in one run, on this machine:

1. training: images/s of the harness's training loop (`harness.protocol.train.train_model`: work meter,
   schedule, autocast, augment hooks) against a minimal hand-written PyTorch loop on the same
   model, batch, data and optimiser, natural and PGD-adversarial (both loops call the same
   attack, so the loop itself is what is compared). Target >= 0.95.
2. PGD: the harness's `pgd` against torchattacks' PGD at equal steps and batch, random start
   off so both compute the same iterates (checked: equal robust accuracy). Target >= 1.0.
3. AutoAttack: the harness's standard version against Croce & Hein's reference
   (`pyautoattack`) on a PGD-trained model, robust accuracy compared in the same run; the
   time ratio is printed (the reference is skipped if it is not installed).

The last lines are `train_ratio=<harness/hand, the lower of natural and PGD>` and
`attack_ratio=<harness PGD / torchattacks PGD>`.

    python benchmarks/throughput.py [--quick] [--arch convnet] [--width 32] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def synced(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand_loop(model, x, y, *, epochs: int, batch: int, lr: float, attack, gen) -> float:
    """The plainest loop: shuffle, (attack,) forward, backward, step. Returns seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x), batch):
            xb, yb = x[order[i : i + batch]], y[order[i : i + batch]]
            if attack is not None:
                xb = attack(model, xb, yb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    synced(x.device)
    return time.perf_counter() - start


def harness_loop(model, x, y, *, epochs: int, batch: int, lr: float, attack, gen) -> float:
    from harness.protocol.train import TrainConfig, WorkMeter, natural_loss, train_model

    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch,
        lr=lr,
        optimizer="sgd",
        momentum=0.9,
        weight_decay=5e-4,
        schedule="constant",
    )

    def adversarial(m, xb, yb):
        return natural_loss(m, attack(m, xb, yb), yb)

    start = time.perf_counter()
    train_model(
        model,
        x,
        y,
        cfg,
        generator=gen,
        device=x.device,
        meter=WorkMeter(),
        loss_step=natural_loss if attack is None else adversarial,
    )
    synced(x.device)
    return time.perf_counter() - start


def compare_training(args, device, shape) -> dict[str, float]:
    from harness.protocol.attacks import pgd
    from harness.protocol.models import build_model

    n = 1024 if args.quick else 4096
    x = torch.rand(n, *shape, device=device)
    y = torch.randint(0, 10, (n,), device=device)

    def attack(model, xb, yb):
        model.eval()
        out = pgd(
            model,
            xb,
            yb,
            eps=0.1,
            alpha=0.025,
            steps=args.pgd_steps,
            random_start=True,
            generator=torch.Generator(device=device).manual_seed(0),
        )
        model.train()
        return out

    ratios = {}
    loops = (("hand", hand_loop), ("harness", harness_loop))
    for _name, loop in loops:  # warm-up: imports, allocator, kernels' first calls
        loop(
            build_model(args.arch, shape, 10, **arch_settings(args)).to(device),
            x[:256],
            y[:256],
            epochs=1,
            batch=128,
            lr=0.01,
            attack=attack,
            gen=torch.Generator(),
        )
    for label, atk, epochs in (("natural", None, 2 if args.quick else 4), ("pgd", attack, 1)):
        times = {"hand": [], "harness": []}
        for rep in range(args.repeats):  # alternate the order, so drift hits both alike
            for name, loop in loops if rep % 2 == 0 else loops[::-1]:
                torch.manual_seed(rep)
                model = build_model(args.arch, shape, 10, **arch_settings(args)).to(device)
                t = loop(
                    model,
                    x,
                    y,
                    epochs=epochs,
                    batch=128,
                    lr=0.01,
                    attack=atk,
                    gen=torch.Generator().manual_seed(rep),
                )
                times[name].append(t)
        best = {k: min(v) for k, v in times.items()}
        ratios[label] = best["hand"] / best["harness"]
        print(
            f"train {label:8s}: hand {n * epochs / best['hand']:9.1f} img/s, harness "
            f"{n * epochs / best['harness']:9.1f} img/s, ratio {ratios[label]:.3f} "
            f"(best of {args.repeats})"
        )
    return ratios


def compare_pgd(args, device, shape) -> float:
    import torchattacks

    from harness.protocol.attacks import pgd
    from harness.protocol.models import build_model

    torch.manual_seed(0)
    model = build_model(args.arch, shape, 10, **arch_settings(args)).to(device).eval()
    batch = 256
    x = torch.rand(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    eps, alpha, steps = 0.1, 0.025, args.pgd_steps
    ours_fn = lambda: pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False)  # noqa: E731
    ref = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    times = {"harness": [], "torchattacks": []}
    fns = (("harness", ours_fn), ("torchattacks", lambda: ref(x, y)))
    for _, fn in fns:  # warm-up
        fn()
    for rep in range(2 * args.repeats):  # alternate the order, so drift hits both alike
        for name, fn in fns if rep % 2 == 0 else fns[::-1]:
            synced(device)
            t = time.perf_counter()
            fn()
            synced(device)
            times[name].append(time.perf_counter() - t)
    adv_ours, adv_ref = ours_fn(), ref(x, y)
    with torch.no_grad():
        acc_ours = float((model(adv_ours).argmax(1) == y).float().mean())
        acc_ref = float((model(adv_ref).argmax(1) == y).float().mean())
    best = {k: min(v) for k, v in times.items()}
    ratio = best["torchattacks"] / best["harness"]
    print(
        f"PGD-{steps} batch {batch}: harness {batch / best['harness']:9.1f} img/s, torchattacks "
        f"{batch / best['torchattacks']:9.1f} img/s, ratio {ratio:.3f}; robust accuracy "
        f"{acc_ours:.3f} vs {acc_ref:.3f}; identical iterates: {torch.equal(adv_ours, adv_ref)}"
    )
    if abs(acc_ours - acc_ref) > 1e-6:
        print("WARNING: the two PGDs disagree on robust accuracy")
    return ratio


def compare_autoattack(args, device) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from reference_autoattack import reference_autoattack, reference_robust_mask

    from harness.protocol.autoattack import robust_mask
    from harness.protocol.evaluate import run_trial
    from harness.spec.schema import build_run_spec

    if reference_autoattack() is None:
        print("AutoAttack: the reference (pip install pyautoattack) is not installed; skipped")
        return
    # a PGD-trained digits MLP: robust enough that every attack of the ensemble runs
    spec = build_run_spec(
        {
            "dataset": {"name": "digits"},
            "method": {"name": "pgd_at", "steps": 5},
            "train": {"epochs": 10},
            "threat": {"autoattack": "off", "steps": 1},
            "eval": {"archs": ["mlp"], "models_per_arch": 1},
        }
    )
    result = run_trial(spec)
    from harness.datasets import load_dataset
    from harness.protocol.models import build_model

    data = load_dataset("digits")
    mean, std = data.channel_stats()
    model = build_model("mlp", data.input_shape, 10, mean=mean, std=std)
    model.load_state_dict(result.weights["mlp"])
    model.eval()
    n = 100 if args.quick else 300
    x, y = data.x_test[:n], data.y_test[:n]
    t = time.perf_counter()
    ours = robust_mask(
        model,
        x,
        y,
        norm="linf",
        eps=0.2,
        num_classes=10,
        version="standard",
        seed=0,
        bounds=data.bounds,
    )
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = reference_robust_mask(model, x, y, norm="linf", eps=0.2)
    t_ref = time.perf_counter() - t
    print(
        f"AutoAttack standard, PGD-trained digits MLP, Linf 0.2, {n} images: harness "
        f"{float(ours.float().mean()):.3f} in {t_ours:.1f} s, reference "
        f"{float(ref.float().mean()):.3f} in {t_ref:.1f} s; time ratio (reference/harness) "
        f"{t_ref / t_ours:.2f}"
    )


def arch_settings(args) -> dict:
    return {"width": args.width} if args.arch == "convnet" else {}


def main() -> None:
    from harness.protocol.train import pick_device

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and repeats (~1 min)")
    ap.add_argument("--arch", default="convnet")
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--shape", default="1,28,28")
    ap.add_argument("--pgd-steps", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--no-autoattack", action="store_true")
    args = ap.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 5)  # best of: a shared machine is noisy
    device = pick_device(args.device)
    shape = tuple(int(s) for s in args.shape.split(","))
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"arch {args.arch} (width {args.width}), input {shape}"
    )
    train = compare_training(args, device, shape)
    attack = compare_pgd(args, device, shape)
    if not args.no_autoattack:
        compare_autoattack(args, device)
    print(f"train_ratio={min(train.values()):.3f}")
    print(f"attack_ratio={attack:.3f}")


if __name__ == "__main__":
    main()
