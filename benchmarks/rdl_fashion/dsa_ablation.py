"""Is it the set or the augmentation? (issue 10) Scores sets on the validation split only, each
twice: natural training without augmentation, and with DSA (the DSA/DM papers' evaluation
augmentation, per-image draws). Same protocol as evalval.py otherwise (Fashion-MNIST subset
1000/class, split seed 1, Linf 0.1, ConvNet-32 / LeNet / MLP trained 300 epochs, PGD-10 on 500
validation images, AutoAttack-fast on 200).

    python benchmarks/rdl_fashion/dsa_ablation.py --rdl-set rdl.pt [--dm-iterations 200]

`--rdl-set`: a set saved by unroll.py (its defaults are rdl's Fashion-MNIST defaults).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from evalval import score_val  # noqa: E402

from harness.datasets import load_dataset  # noqa: E402
from harness.methods import MethodContext, make_method  # noqa: E402
from harness.methods._augment import DEFAULT_STRATEGY, DSATrainAugment  # noqa: E402
from harness.protocol.attacks import Threat  # noqa: E402
from harness.protocol.train import TrainConfig, WorkMeter  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--rdl-set", required=True)
ap.add_argument("--dm-iterations", type=int, default=200)
ap.add_argument("--archs", default="convnet,lenet,mlp")
ap.add_argument("--out", default=None)
a = ap.parse_args()
torch.set_num_threads(2)
data = load_dataset("fashion-mnist", subset=1000, split_seed=1)
archs = a.archs.split(",")


def one_hot(y):
    return y if y.dim() == 2 else torch.nn.functional.one_hot(y, data.num_classes).float()


sets = {}
saved = torch.load(a.rdl_set, weights_only=True)
sets["rdl"] = (saved["x"], one_hot(saved["y"]))
ctx = MethodContext(
    data=data,
    threat=Threat("linf", 0.1),
    train=TrainConfig(),
    device=torch.device("cpu"),
    generator=torch.Generator().manual_seed(0),
    seed=0,
    archs=["convnet"],
    meter=WorkMeter(),
    arch_settings={"convnet": {"width": 32}},
)
for name, params in (
    ("random", {"ipc": 10}),
    ("dm", {"ipc": 10, "iterations": a.dm_iterations, "arch": "convnet"}),
):
    t = time.time()
    learned = make_method(name, params).learn(ctx)
    sets[name] = (learned.x, one_hot(learned.y))
    print(f"{name}: learned in {time.time() - t:.0f} s", flush=True)

res = {}
for name, (x, y) in sets.items():
    for aug_name, aug in (("none", None), ("dsa", DSATrainAugment(DEFAULT_STRATEGY))):
        res[f"{name}/{aug_name}"] = score_val(data, x, y, archs, augment=aug)
        print(name, aug_name, json.dumps(res[f"{name}/{aug_name}"]), flush=True)
if a.out:
    Path(a.out).write_text(json.dumps(res, indent=1))
