"""One read-only copy of each dataset per Ray node, shared by the node's trials.

Without this every trial loads its dataset from disk and holds its own tensors (Fashion-MNIST:
~190 MB a trial, CIFAR-10 ~600 MB, Tiny ImageNet ~2.4 GB). The sweep driver starts one small
`DataCache` actor on every node (no CPU of its own, pinned to the node); the first trial on a
node that asks for a dataset has the actor load it and put its arrays into the node's object
store, and every trial on that node then maps the same shared memory (Ray hands numpy arrays
out of its object store without copying). The tensors a trial gets are read-only views: the
harness only ever indexes them, which copies.

A node without a cache (one that joined after the sweep started) or a trial run outside a
sweep loads its data itself, as before.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import numpy as np
import torch

from harness.config import DatasetSpec
from harness.datasets import DatasetSplits

TENSORS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def cache_name(node_id: str) -> str:
    return f"harness-data-{node_id}"


def dataset_key(ds: DatasetSpec) -> str:
    """What identifies a loaded dataset: every loading setting (name, root, subset, split)."""
    return json.dumps(ds.model_dump(mode="json"), sort_keys=True)


def to_arrays(data: DatasetSplits) -> dict[str, Any]:
    out = {k: np.ascontiguousarray(getattr(data, k).numpy()) for k in TENSORS}
    out["meta"] = {"name": data.name, "num_classes": data.num_classes, "bounds": data.bounds,
                   "default_eps": data.default_eps, "n_train_full": data.n_train_full,
                   "params": data.params}
    return out


def from_arrays(arrays: dict[str, Any]) -> DatasetSplits:
    with warnings.catch_warnings():  # the shared arrays are read-only, and stay unwritten
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(arrays[k]) for k in TENSORS}
    meta = dict(arrays["meta"])
    if meta["bounds"] is not None:
        meta["bounds"] = tuple(meta["bounds"])
    return DatasetSplits(**tensors, **meta, source="node")


def make_cache_class():
    import ray

    @ray.remote(num_cpus=0, max_concurrency=1)
    class DataCache:
        """Loads each dataset once on its node and keeps its arrays in the object store."""

        def __init__(self) -> None:
            self.refs: dict[str, Any] = {}

        def get(self, key: str) -> list:
            if key not in self.refs:
                from harness.evaluate import load_data

                spec = DatasetSpec.model_validate(json.loads(key))
                self.refs[key] = ray.put(to_arrays(load_data(spec)))
            return [self.refs[key]]  # in a list: the caller gets the reference, not the data

    return DataCache


def start_caches() -> list:
    """One cache actor on every alive node, owned by the caller (the sweep driver): they
    and the data they hold go away with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cls = make_cache_class()
    return [
        cls.options(name=cache_name(node["NodeID"]),
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                    ).remote()
        for node in ray.nodes() if node.get("Alive")
    ]


def shared_dataset(ds: DatasetSpec) -> DatasetSplits | None:
    """The dataset from this node's cache (None when the node has none: load it yourself)."""
    import ray

    try:
        cache = ray.get_actor(cache_name(ray.get_runtime_context().get_node_id()))
    except ValueError:
        return None
    (ref,) = ray.get(cache.get.remote(dataset_key(ds)))
    return from_arrays(ray.get(ref))
