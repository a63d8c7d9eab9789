"""A dataset passed through the node-shared form (harness.sweep.shared_data) is the same dataset,
and the trial reads it without a copy of its own (the sweep-level check that trials get the
node's copy is in test_sweep.py)."""

from __future__ import annotations

import pickle

import torch

from harness.protocol.evaluate import load_data
from harness.spec.schema import DatasetSpec
from harness.sweep.shared_data import dataset_key, from_arrays, to_arrays


def test_round_trip_keeps_every_split_and_fact():
    spec = DatasetSpec(name="synthetic-robust", d=20, n_train=200, n_test=100, subset=50)
    data = load_data(spec)
    # what Ray's object store does with numpy arrays: out-of-band buffers, read-only on the way back
    arrays = to_arrays(data)
    buffers: list = []
    blob = pickle.dumps(arrays, protocol=5, buffer_callback=buffers.append)
    back = pickle.loads(blob, buffers=[memoryview(b.raw()).toreadonly() for b in buffers])
    shared = from_arrays(back)
    for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(shared, k), getattr(data, k)), k
        # a view of the shared buffer, not a copy
        assert getattr(shared, k).data_ptr() == back[k].__array_interface__["data"][0], k
    for k in ("name", "num_classes", "bounds", "default_eps", "n_train_full", "params"):
        assert getattr(shared, k) == getattr(data, k), k
    assert shared.input_shape == data.input_shape
    assert (shared.source, data.source) == ("node", "disk")


def test_the_key_tells_apart_every_loading_setting():
    base = DatasetSpec(name="digits", subset=10)
    keys = {
        dataset_key(s)
        for s in (
            base,
            DatasetSpec(name="digits", subset=20),
            DatasetSpec(name="digits", subset=10, split_seed=1),
            DatasetSpec(name="digits", subset=10, val_fraction=0.2),
        )
    }
    assert len(keys) == 4
    assert dataset_key(DatasetSpec(name="digits", subset=10)) == dataset_key(base)
