"""Published figures reproduced with the harness's own pieces: Fashion-MNIST, DC protocol.

Zhao, Mopuri, Bilen, "Dataset Condensation with Gradient Matching" (ICLR 2021, arXiv
2006.05929), Table 1, ConvNet-3 on Fashion-MNIST, mean ± std over trained models:

    random subset, 1 image per class     51.4 ± 3.8
    random subset, 10 images per class   73.8 ± 0.7
    whole training set                   93.5 ± 0.1

Every number printed here goes through the harness: `load_dataset("fashion-mnist")`, the
`random` method (`methods/random_subset.py`), `MethodContext.build` (the registry's
`convnet`, normalisation inside `forward` from the pool's statistics) and the one training
loop `train_model`; test accuracy is `harness.protocol.attacks.accuracy`. So a gap is a gap of the
harness, not of a side script. Usage:

    python benchmarks/reproduce.py [--quick] [--models N] [--device auto|cpu|cuda]
                                   [--threads 1] [--rows ipc1,ipc10,whole]
                                   [--whole-epochs E] [--max-test N]

The protocol (DC paper, Sec. 4 and its evaluation recipe):
- ConvNet-3: three blocks of conv3x3(128) -> instance norm -> ReLU -> 2x2 average pooling,
  28x28 inputs padded by 3 in the first conv; `convnet` with width 128, depth 3, norm
  instance, which are also its defaults (set explicitly here so a change of default shows).
- SGD, lr 0.01, momentum 0.9, weight decay 5e-4, batch 256 (the whole set when smaller),
  300 epochs, lr x0.1 once at epoch 150: the loop's `halfway` schedule. This is the
  harness's downstream protocol itself: `harness.protocol.evaluate.downstream_config` at
  `eval.epochs: 300` gives the same recipe field for field (tests/test_recipes.py).
- No augmentation: the authors apply it for MNIST and batch-normed ConvNets, not for
  Fashion-MNIST with instance norm.
- Training pool: the official 60,000 training images. The harness carves a 10% validation
  split (54,000 / 6,000); here the two are joined again, since nothing is tuned and the
  paper draws from all 60k. Random subsets draw from that pool; the whole-set row trains on it.
- Normalisation: the pool's mean / std (0.2860 / 0.3530), the constants of the authors' code
  (0.2861 / 0.3530) to three decimals.
- Test: the official 10,000 test images (capped by --max-test / --quick; a cap is printed).
- Spread: each model gets a fresh random subset and a fresh initialisation (model k: seed k),
  as the paper's std spans several subsets and several models.

Departures (printed with the table): `--quick` trains 5 / 3 models (ipc 1 / ipc 10) instead
of the paper's many and scores them on the first 2000 test images (a sampling error shared
by all models, about ±1 point at 74%). The whole-set row at the paper's budget (60k images x
300 epochs) takes 1.5-3 days per model on one CPU thread, so on CPU `--quick` times ten
batches and prints the estimate instead (`--whole-epochs 0`); on CUDA it trains 5 epochs,
labelled as not comparable. Any `--whole-epochs` other than 300 is labelled the same way.
On CUDA the loop trains under bf16 autocast, the paper in fp32.

The published std is over models; "in 2σ" asks whether our mean lies within the published
mean ± 2 published std. Remaining differences from the authors' code, judged negligible: their
loop makes 301 passes and decays after pass 152 with a fresh optimiser (momentum reset), ours
300 passes, 150 + 150, momentum kept; their models are seeded from the clock, ours from k.
Their code averages 5 condensed sets x 20 models for its own method; how many subsets and
models the Random row used is not stated.

Measured (README, "What we measured"; 2-core CPU shared with other jobs, one torch thread,
`--quick`): ipc 1 48.6 ± 3.5 (n=5), ipc 10 72.8 ± 0.5 (n=3), both inside the published
mean ± 2 std and both below the published mean (by 0.7 and 1.4 published std). With 5 and
3 models and 2000 test images that is within sampling noise: the standard error of our
ipc-10 mean is ~0.3 points from the models alone, and the 2000-image test subset adds an
error of ~1 point shared by all models. No recipe, normalisation or split difference was
found. The whole-set row was not measured here: no GPU was lent, and one thread of this
shared machine would need an estimated 34-68 h per model (two timings).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from dataclasses import dataclass

import torch

from harness.datasets import DatasetSplits, load_dataset
from harness.methods import MethodContext, make_method
from harness.protocol.attacks import Threat, accuracy
from harness.protocol.train import TrainConfig, WorkMeter, pick_device, train_model

ARCH = "convnet"
ARCH_SETTINGS = {"width": 128, "depth": 3, "norm": "instance"}  # DC's ConvNet-3
PAPER_RECIPE = TrainConfig(
    epochs=300,
    batch_size=256,
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    weight_decay=5e-4,
    schedule="halfway",
    augment="none",
)
DC_NORMALISATION = (0.2861, 0.3530)  # mean, std of Fashion-MNIST in the authors' code


@dataclass(frozen=True)
class Row:
    name: str
    ipc: int | None  # images per class of a random subset; None: the whole pool
    published: tuple[float, float]  # mean, std in percent (DC paper, Table 1)


ROWS = {
    "ipc1": Row("random, ipc 1", 1, (51.4, 3.8)),
    "ipc10": Row("random, ipc 10", 10, (73.8, 0.7)),
    "whole": Row("whole training set", None, (93.5, 0.1)),
}
QUICK_MODELS = {"ipc1": 5, "ipc10": 3, "whole": 1}
QUICK_WHOLE_EPOCHS = {"cpu": 0, "cuda": 5}  # CPU: one epoch of 60k is ~10 min on one thread


def full_training_pool(data: DatasetSplits) -> DatasetSplits:
    """The official training set: the harness's training and validation splits joined."""
    x = torch.cat([data.x_train, data.x_val])
    y = torch.cat([data.y_train, data.y_val])
    return dataclasses.replace(data, x_train=x, y_train=y, n_train_full=len(y))


def context(pool: DatasetSplits, seed: int, device: torch.device) -> MethodContext:
    return MethodContext(
        data=pool,
        threat=Threat("linf", pool.default_eps),
        train=PAPER_RECIPE,
        device=device,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        archs=[ARCH],
        meter=WorkMeter(),
        arch_settings={ARCH: ARCH_SETTINGS},
    )


def train_one(
    row: Row, pool: DatasetSplits, cfg: TrainConfig, seed: int, device: torch.device
) -> tuple[torch.nn.Module, float]:
    """Draw the row's training set for this seed, train a fresh ConvNet-3 on it, and
    return the model with its training throughput (examples per second)."""
    ctx = context(pool, seed, device)
    if row.ipc is None:
        x, y = pool.x_train, pool.y_train
    else:
        learned = make_method("random", {"ipc": row.ipc}).learn(ctx)
        x, y = learned.x, learned.y
    model = ctx.build(ARCH, seed=seed)
    stats = train_model(
        model, x, y, cfg, generator=torch.Generator().manual_seed(seed), device=device
    )
    return model, cfg.epochs * len(y) / stats.seconds


def whole_set_rate(pool: DatasetSplits, device: torch.device) -> float:
    """Examples per second of the loop on 10 full batches (for an estimate only)."""
    probe = dataclasses.replace(pool, x_train=pool.x_train[:2560], y_train=pool.y_train[:2560])
    _, rate = train_one(
        ROWS["whole"], probe, dataclasses.replace(PAPER_RECIPE, epochs=1), 0, device
    )
    return rate


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def run_row(key: str, pool: DatasetSplits, args, device: torch.device) -> dict:
    row = ROWS[key]
    n_models = args.models or (QUICK_MODELS[key] if args.quick else 5)
    cfg = PAPER_RECIPE
    notes = []
    if row.ipc is None and args.whole_epochs != PAPER_RECIPE.epochs:
        if args.whole_epochs == 0:
            start = time.perf_counter()
            est = PAPER_RECIPE.epochs * len(pool.y_train) / whole_set_rate(pool, device)
            return {
                "row": row,
                "accs": [],
                "seconds": time.perf_counter() - start,
                "notes": [
                    f"skipped (timed 10 batches); paper budget ~{fmt_hours(est)} per model here"
                ],
            }
        cfg = dataclasses.replace(PAPER_RECIPE, epochs=args.whole_epochs)
        notes.append(f"DEPARTURE: {args.whole_epochs} of 300 epochs, not comparable")
    xt = pool.x_test[: args.max_test].to(device)
    yt = pool.y_test[: args.max_test].to(device)
    accs, rates, start = [], [], time.perf_counter()
    for k in range(n_models):
        seed = args.seed * 1000 + k
        model, rate = train_one(row, pool, cfg, seed, device)
        accs.append(100 * accuracy(model, xt, yt))
        rates.append(rate)
        print(
            f"  {row.name}: model {k + 1}/{n_models} (seed {seed}) test {accs[-1]:.2f}%, "
            f"{rate:.0f} img/s",
            flush=True,
        )
    if cfg is not PAPER_RECIPE:
        est = PAPER_RECIPE.epochs * len(pool.y_train) / statistics.fmean(rates)
        notes.append(f"paper budget ~{fmt_hours(est)} per model here")
    return {"row": row, "accs": accs, "seconds": time.perf_counter() - start, "notes": notes}


def table_line(result: dict) -> str:
    row, accs = result["row"], result["accs"]
    pub_mean, pub_std = row.published
    published = f"{pub_mean:.1f} ± {pub_std:.1f}"
    if not accs:
        ours, inside = "-", "-"
    else:
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        ours = f"{mean:.1f} ± {std:.1f} (n={len(accs)})"
        inside = "yes" if abs(mean - pub_mean) <= 2 * pub_std else "no"
    wall = f"{result['seconds']:.0f} s"
    return (
        f"| {row.name:<18} | {ours:<18} | {published:<11} | {inside:<6} | {wall:>7} | "
        f"{'; '.join(result['notes'])} |"
    )


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"CPU ({platform.processor() or platform.machine()})"
    return f"{where}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help="5 / 3 / 1 models, 2000 test images; the whole set is estimated "
        "and skipped on CPU, trained 5 epochs on CUDA",
    )
    ap.add_argument("--models", type=int, default=None, help="models per row (default 5)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--rows", default="ipc1,ipc10,whole")
    ap.add_argument(
        "--whole-epochs",
        type=int,
        default=None,
        help="epochs of the whole-set row (300 = paper; 0 = estimate and skip)",
    )
    ap.add_argument("--max-test", type=int, default=None, help="test images (default all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    keys = [k.strip() for k in args.rows.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ROWS]
    if unknown:
        ap.error(f"unknown row {unknown[0]!r}; rows are {', '.join(ROWS)}")

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    if args.whole_epochs is None:
        quick = QUICK_WHOLE_EPOCHS.get(device.type, 0)
        args.whole_epochs = quick if args.quick else PAPER_RECIPE.epochs
    if args.max_test is None:
        args.max_test = 2000 if args.quick else None
    pool = full_training_pool(load_dataset("fashion-mnist"))
    mean, std = (float(v) for v in pool.channel_stats())
    n_test = len(pool.y_test[: args.max_test])
    print(f"machine: {machine(device)}")
    print(
        f"training pool: official training set, {len(pool.y_train)} images (harness train + "
        f"val splits joined); normalisation in the model: mean {mean:.4f} std {std:.4f} "
        f"(DC code: {DC_NORMALISATION[0]} / {DC_NORMALISATION[1]})"
    )
    print(
        f"test: {n_test} of {len(pool.y_test)} official test images; recipe: ConvNet-3 "
        f"width 128 instance norm, SGD lr 0.01 m 0.9 wd 5e-4, batch 256, 300 epochs, "
        f"lr x0.1 at 150"
    )
    results = [run_row(k, pool, args, device) for k in keys]
    print()
    print("| row                | ours (%)           | DC Table 1  | in 2σ  |    wall | notes |")
    print("|--------------------|--------------------|-------------|--------|---------|-------|")
    for result in results:
        print(table_line(result))


if __name__ == "__main__":
    main()
