"""Validation scores of a standard distillation baseline (dc or dm, the harness's methods) at
ipc 10 on the same Fashion-MNIST split, pool network and scorer as unroll.py (issue 10): the
sets rdl must beat. The budget is cut to CPU size (--iterations); the scorer trains without
augmentation for every set alike."""

import argparse
import json
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from evalval import score_val

from harness.datasets import load_dataset
from harness.methods import MethodContext, make_method
from harness.protocol.attacks import Threat
from harness.protocol.train import TrainConfig, WorkMeter

ap = argparse.ArgumentParser()
ap.add_argument("--method", choices=["dc", "dm"], required=True)
ap.add_argument("--iterations", type=int, default=200)
ap.add_argument("--width", type=int, default=32)
ap.add_argument("--out", default=None)
a = ap.parse_args()
torch.set_num_threads(2)
data = load_dataset("fashion-mnist", subset=1000, split_seed=1)
ctx = MethodContext(
    data=data,
    threat=Threat("linf", 0.1),
    train=TrainConfig(),
    device=torch.device("cpu"),
    generator=torch.Generator().manual_seed(0),
    seed=0,
    archs=["convnet"],
    meter=WorkMeter(),
    arch_settings={"convnet": {"width": a.width}},
    log=lambda m, s: print(f"step {s} {m}", flush=True) if s % 25 == 0 else None,
)
m = make_method(a.method, {"ipc": 10, "iterations": a.iterations, "arch": "convnet"})
t0 = time.time()
learned = m.learn(ctx)
y = learned.y if learned.y.dim() == 2 else torch.nn.functional.one_hot(learned.y, 10).float()
res = {
    "args": vars(a),
    "learn_s": time.time() - t0,
    "learned": score_val(data, learned.x, y, ["convnet", "mlp", "lenet"], width=a.width),
}
print(res, flush=True)
if a.out:
    json.dump(res, open(a.out, "w"), indent=1)
