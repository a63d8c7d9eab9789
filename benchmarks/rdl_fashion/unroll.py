"""Prototype (issue 10): the harness's rdl (truncated unroll middle level) on Fashion-MNIST
with a ConvNet-32 pool; scored on validation only."""

import argparse
import json
import sys
import time

import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from evalval import score_val

from harness.datasets import load_dataset
from harness.methods import MethodContext, make_method
from harness.methods.rdl import _Learner
from harness.protocol.attacks import Threat
from harness.protocol.train import TrainConfig, WorkMeter

ap = argparse.ArgumentParser()
ap.add_argument("--steps", type=int, default=150)
ap.add_argument("--unroll", type=int, default=10)
ap.add_argument("--reinit", type=int, default=20)
ap.add_argument("--lr", type=float, default=0.01)
ap.add_argument("--out", default=None)
ap.add_argument("--width", type=int, default=32)
ap.add_argument("--archs", default="convnet", help="the learning pool, comma-separated")
ap.add_argument("--ipc", type=int, default=10)
ap.add_argument("--networks", type=int, default=1, help="networks per outer step (issue 21)")
ap.add_argument("--seed", type=int, default=0, help="the learning run's seed")
ap.add_argument("--eval-archs", default="convnet,mlp,lenet")
ap.add_argument("--n-aa", type=int, default=200, help="validation images AutoAttack scores")
a = ap.parse_args()
torch.set_num_threads(2)
data = load_dataset("fashion-mnist", subset=1000, split_seed=1)
ctx = MethodContext(
    data=data,
    threat=Threat("linf", 0.1),
    train=TrainConfig(),
    device=torch.device("cpu"),
    generator=torch.Generator().manual_seed(a.seed),
    seed=a.seed,
    archs=["convnet"],
    meter=WorkMeter(),
    arch_settings={"convnet": {"width": a.width}},
)
m = make_method(
    "rdl",
    {
        "ipc": a.ipc,
        "unroll_min": a.unroll,
        "unroll_max": a.unroll,
        "archs": a.archs.split(","),
        "attack_steps": 10,
        "real_batch": 128,
        "reinit_every": a.reinit,
        "soft_labels": True,
        "attack_loss": "margin",
        "outer_lr": a.lr,
        "outer_steps": a.steps,
        "probe_every": 0,
        "networks": a.networks,
    },
)
L = _Learner(m.config_for("fashion-mnist"), ctx)
t0 = time.time()
for s in range(a.steps):
    loss = L.outer_step(s)
    if s % 25 == 0 or s == a.steps - 1:
        print(f"step {s} loss {loss:.3f} t {time.time() - t0:.0f}s", flush=True)
res = {
    "args": vars(a),
    "learn_s": time.time() - t0,
    "learned": score_val(
        data,
        L.x.detach(),
        L.labels().detach(),
        a.eval_archs.split(","),
        width=a.width,
        n_aa=a.n_aa,
    ),
}
print(res, flush=True)
if a.out:
    json.dump(res, open(a.out, "w"), indent=1)
    torch.save({"x": L.x.detach(), "y": L.labels().detach()}, a.out.replace(".json", ".pt"))
