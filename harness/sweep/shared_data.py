"""One read-only copy of each dataset per Ray node, shared by the node's trials: what a
shared dataset is (its key, its arrays), without Ray. The Ray side, the cache actors and a
trial's way to them, is `harness.sweep.ray_node` (`start_caches`, `shared_dataset`).

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

from harness.datasets import DatasetSplits
from harness.spec.schema import DatasetSpec

TENSORS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def cache_name(node_id: str) -> str:
    return f"harness-data-{node_id}"


def dataset_key(ds: DatasetSpec) -> str:
    """What identifies a loaded dataset: every loading setting (name, root, subset, split)."""
    return json.dumps(ds.model_dump(mode="json"), sort_keys=True)


def to_arrays(data: DatasetSplits) -> dict[str, Any]:
    out = {k: np.ascontiguousarray(getattr(data, k).numpy()) for k in TENSORS}
    out["meta"] = {
        "name": data.name,
        "num_classes": data.num_classes,
        "bounds": data.bounds,
        "default_eps": data.default_eps,
        "n_train_full": data.n_train_full,
        "params": data.params,
    }
    return out


def from_arrays(arrays: dict[str, Any]) -> DatasetSplits:
    with warnings.catch_warnings():  # the shared arrays are read-only, and stay unwritten
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {k: torch.from_numpy(arrays[k]) for k in TENSORS}
    meta = dict(arrays["meta"])
    if meta["bounds"] is not None:
        meta["bounds"] = tuple(meta["bounds"])
    return DatasetSplits(**tensors, **meta, source="node")
