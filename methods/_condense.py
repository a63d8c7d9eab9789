"""Pieces shared by the dataset-condensation methods `dc` and `dm` (not a method itself).

A condensed set is stored class-major (as `_synthetic_set.init_synthetic_set` builds it):
rows `c * ipc ... (c + 1) * ipc - 1` belong to class `c`, so per-class slices are views.
"""

from __future__ import annotations

import torch

from harness.datasets import DatasetSplits


def class_slice(c: int, ipc: int) -> slice:
    """Rows of class `c` in a class-major set."""
    return slice(c * ipc, (c + 1) * ipc)


class RealSampler:
    """Random batches of real training examples of one class, on the method's device."""

    def __init__(self, data: DatasetSplits, generator: torch.Generator, device: torch.device):
        self.x = data.x_train.to(device)
        self.per_class = [(data.y_train == c).nonzero().flatten() for c in range(data.num_classes)]
        self.generator = generator

    def batch(self, c: int, n: int) -> torch.Tensor:
        """Up to `n` distinct examples of class `c` (all of them if the class is smaller)."""
        idx = self.per_class[c]
        pick = idx[torch.randperm(idx.numel(), generator=self.generator)[:n]]
        return self.x[pick.to(self.x.device)]


class NormalizedSet:
    """A learnable synthetic set parametrised in normalised coordinates z = (x - mean) / std.

    The authors of DC and DM optimise normalised tensors, so their learning rates are in
    those units; the harness's inputs are raw (the model normalises), so the set is kept
    as z with the training split's per-channel (per-feature) statistics and `x()` maps it
    back. `project_()` keeps x inside the data bounds.
    """

    def __init__(self, x: torch.Tensor, data: DatasetSplits, device: torch.device):
        mean, std = data.channel_stats()
        view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        self.mean, self.std = mean.reshape(view).to(device), std.reshape(view).to(device)
        self.bounds = data.bounds
        self.z = ((x.to(device) - self.mean) / self.std).requires_grad_(True)

    def x(self) -> torch.Tensor:
        return self.z * self.std + self.mean

    def project_(self) -> None:
        if self.bounds is None:
            return
        with torch.no_grad():
            lo, hi = ((b - self.mean) / self.std for b in self.bounds)
            self.z.copy_(torch.maximum(torch.minimum(self.z, hi), lo))
