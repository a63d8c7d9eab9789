"""Validation scores of a random real subset (ipc 10, the learned sets' starting point)."""

import json
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from evalval import score_val

from harness.datasets import load_dataset
from harness.methods._synthetic_set import init_synthetic_set

torch.set_num_threads(2)
data = load_dataset("fashion-mnist", subset=1000, split_seed=1)
x, y = init_synthetic_set(data, 10, "real", torch.Generator().manual_seed(0))
print(json.dumps(score_val(data, x, F.one_hot(y, 10).float(), ["convnet", "mlp", "lenet"])))
