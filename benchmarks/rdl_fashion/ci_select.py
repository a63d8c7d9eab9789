"""Issue 10, item 4: can a CI-sized Fashion-MNIST run tell rdl's set from random, dc and dm
sets of the same size? Each method learns at a CI budget and its set is scored by the harness's
own protocol (`run_trial`: fresh models trained 300 epochs on the set, dm's with DSA as its
paper), on the VALIDATION split only (split seed 1, seed 1): PGD-10 and AutoAttack-fast on
`--max-val` validation images. The test split is cut to one image and never printed.

    python benchmarks/rdl_fashion/ci_select.py --methods random,rdl --rdl-steps 150
    python benchmarks/rdl_fashion/ci_select.py --methods dm,dc,rdl --dm-it 60 --dc-it 3 \
        --rdl-steps 100 --archs convnet,lenet
"""

import argparse
import json
import time

from harness.protocol.evaluate import run_trial
from harness.spec.schema import build_run_spec

ap = argparse.ArgumentParser()
ap.add_argument("--methods", default="random,rdl,dm,dc")
ap.add_argument("--width", type=int, default=16)
ap.add_argument("--subset", type=int, default=300)
ap.add_argument("--rdl-steps", type=int, default=150)
ap.add_argument("--dm-it", type=int, default=100)
ap.add_argument("--dc-it", type=int, default=5)
ap.add_argument("--split-seed", type=int, default=1)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--max-val", type=int, default=300)
ap.add_argument("--archs", default="convnet,lenet,mlp")
a = ap.parse_args()
COMMON = {
    "dataset": {"name": "fashion-mnist", "subset": a.subset, "split_seed": a.split_seed},
    "seed": a.seed,
    "threat": {"norm": "linf", "eps": 0.1, "steps": 10, "autoattack": "off"},
    "eval": {
        "archs": a.archs.split(","),
        "arch_settings": {"convnet": {"width": a.width}},
        "models_per_arch": 1,
        "epochs": 300,
        "max_test": 1,
        "max_val": a.max_val,
        "val_autoattack": "fast",
    },
}
P = {
    "random": {"ipc": 10},
    "rdl": {"ipc": 10, "outer_steps": a.rdl_steps, "probe_every": 0},
    "dm": {"ipc": 10, "iterations": a.dm_it, "arch": "convnet"},
    "dc": {"ipc": 10, "iterations": a.dc_it, "arch": "convnet"},
}
for name in a.methods.split(","):
    t0 = time.time()
    r = run_trial(build_run_spec({**COMMON, "method": {"name": name, **P[name]}}))
    row = {
        m.arch: (
            round(m.val_clean_acc, 3),
            round(m.val_robust_acc, 3),
            round(m.val_autoattack_acc, 3),
        )
        for m in r.models
    }
    print(
        json.dumps(
            {
                "method": name,
                "params": P[name],
                "learn_s": round(r.learn_seconds, 1),
                "total_s": round(time.time() - t0, 1),
                "val clean/pgd/aa": row,
            }
        ),
        flush=True,
    )
