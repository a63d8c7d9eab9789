"""Cost of one rdl outer step on Fashion-MNIST with ConvNets (issue 10): seconds and peak RSS."""

import resource
import sys
import time

import torch

from harness.datasets import load_dataset
from harness.methods import MethodContext, make_method
from harness.methods.rdl import _Learner
from harness.protocol.attacks import Threat
from harness.protocol.train import TrainConfig, WorkMeter

torch.set_num_threads(2)
arch, width, unroll, ipc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = load_dataset("fashion-mnist", subset=500)
ctx = MethodContext(
    data=data,
    threat=Threat("linf", 0.1),
    train=TrainConfig(),
    device=torch.device("cpu"),
    generator=torch.Generator().manual_seed(0),
    seed=0,
    archs=[arch],
    meter=WorkMeter(),
    arch_settings={arch: {"width": width}} if arch == "convnet" else {},
)
m = make_method(
    "rdl",
    {
        "ipc": ipc,
        "unroll_min": unroll,
        "unroll_max": unroll,
        "archs": [arch],
        "attack_steps": 10,
        "real_batch": 128,
        "reinit_every": 1,
        "soft_labels": True,
        "attack_loss": "margin",
        "outer_lr": 0.01,
    },
)
learner = _Learner(m.config_for("fashion-mnist"), ctx)
times = []
for step in range(3):
    t = time.perf_counter()
    loss = learner.outer_step(step)
    times.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(
    f"arch={arch} width={width} unroll={unroll} ipc={ipc} step_s={min(times):.2f} peak_rss_mb={rss:.0f} loss={loss:.3f}"
)
