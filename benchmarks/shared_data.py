"""Memory a trial holds for its dataset: loading its own copy vs mapping the node's shared
copy (harness.sweep.shared_data; its cache actors are in harness.sweep.ray_node), measured side by side
on one local Ray node.

Each of N Ray tasks stands in for a trial: it gets the dataset one way or the other, touches
every byte of it (as training does over an epoch), and reports its process's unique memory
(USS: pages no other process shares) and proportional set size (PSS: shared pages split
among the processes that map them) before and after. Prints per-trial means and, last,
`uss_ratio=<shared/own>` (target well below 1: the data no longer count per trial).

    python benchmarks/shared_data.py [--dataset fashion-mnist] [--trials 2] [--subset N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import ray

from harness.spec.schema import DatasetSpec
from harness.sweep.ray_node import shared_dataset, start_caches


def memory_mb() -> dict[str, float]:
    import psutil

    info = psutil.Process(os.getpid()).memory_full_info()
    return {"uss": info.uss / 2**20, "pss": getattr(info, "pss", float("nan")) / 2**20}


@ray.remote(num_cpus=1)
def trial(spec_json: str, shared: bool) -> dict:
    import torch

    from harness.protocol.evaluate import load_data

    spec = DatasetSpec.model_validate(json.loads(spec_json))
    before = memory_mb()
    data = shared_dataset(spec) if shared else load_data(spec)
    total = sum(float(t.double().sum()) for t in (data.x_train, data.x_val, data.x_test))
    after = memory_mb()
    return {
        "before": before,
        "after": after,
        "source": data.source,
        "checksum": total,
        "data_mb": sum(
            t.numel() * t.element_size() for t in (data.x_train, data.x_val, data.x_test)
        )
        / 2**20,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--trials", type=int, default=2)
    a = ap.parse_args()
    spec = DatasetSpec(name=a.dataset, subset=a.subset)
    ray.init(num_cpus=a.trials, include_dashboard=False, logging_level="ERROR")
    try:
        results = {}
        for shared in (False, True):
            caches = start_caches() if shared else []
            results[shared] = ray.get(
                [trial.remote(spec.model_dump_json(), shared) for _ in range(a.trials)]
            )
            for c in caches:
                ray.kill(c)
    finally:
        ray.shutdown()
    own, shared = results[False], results[True]
    assert {r["checksum"] for r in own} == {r["checksum"] for r in shared}, "different data"
    print(
        f"dataset {a.dataset} (subset {a.subset}): {own[0]['data_mb']:.0f} MB of inputs, "
        f"{a.trials} trials at once"
    )
    for label, rs in (("own copy", own), ("node-shared", shared)):
        grow = {
            k: statistics.mean(r["after"][k] - r["before"][k] for r in rs) for k in ("uss", "pss")
        }
        print(
            f"{label:12s} per trial: USS +{grow['uss']:.0f} MB, PSS +{grow['pss']:.0f} MB "
            f"(source {rs[0]['source']})"
        )
    uss = [
        statistics.mean(r["after"]["uss"] - r["before"]["uss"] for r in rs) for rs in (own, shared)
    ]
    print(f"uss_ratio={uss[1] / uss[0]:.3f}")


if __name__ == "__main__":
    main()
