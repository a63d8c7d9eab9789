"""Train / validation / test splits, the one shape every dataset is handed on in.

Every dataset gives float32 tensors (NCHW in [0, 1] for images; plain feature vectors for
`synthetic-robust`), integer labels, the class count and the input shape. The validation split
is carved from the training set with its own seed (`split_seed`), so every method and every
trial of a sweep sees the same validation examples whatever its training seed; the test split
is never touched by model selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.datasets.registry import (
    DATASETS,
    default_eps_for,
    reading_root,
    resolve_root,
    validate_params,
)
from harness.errors import HarnessInputError


@dataclass
class DatasetSplits:
    """Train / val / test tensors of one dataset, ready for training and attack."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    bounds: tuple[float, float] | None
    default_eps: float
    n_train_full: int  # size of the training split before `subset`: the unit of work epochs
    params: dict[str, Any] = field(default_factory=dict)
    # "disk": loaded by this process; "node": read-only views of the copy a sweep's trials on
    # this node share (harness.sweep.shared_data)
    source: str = "disk"
    _stats: tuple[torch.Tensor, torch.Tensor] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (images) or per-feature mean and std of the training split.

        Models normalise inside `forward` with these, so attacks always work on raw inputs.
        Computed once (every network a method builds asks for them, and on a 100k-image
        split each pass takes seconds; the splits are never changed in place), handed out
        as copies so that no model's buffers alias them.
        """
        if self._stats is None:
            x = self.x_train
            dims = (0, 2, 3) if x.dim() == 4 else (0,)
            self._stats = x.mean(dim=dims), x.std(dim=dims).clamp_min(1e-3)
        mean, std = self._stats
        return mean.clone(), std.clone()


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    subset: int | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    params: dict[str, Any] | None = None,
) -> DatasetSplits:
    """Load a registered dataset and carve a seeded validation split from its training set."""
    info = DATASETS.get(name, field="dataset.name")
    if not 0.0 < val_fraction < 1.0:
        raise HarnessInputError(
            f"val_fraction must lie strictly between 0 and 1, got {val_fraction}; 0.1 is usual.",
            field="dataset.val_fraction",
        )
    if subset is not None and subset < 1:
        raise HarnessInputError(
            f"subset is a count of training examples per class and must be >= 1, got {subset}; "
            "leave it out to use the whole training set.",
            field="dataset.subset",
        )
    parsed = validate_params(info, params)
    root = resolve_root(root)
    with reading_root(root):
        raw = info.loader(root, download, parsed)
    gen = torch.Generator().manual_seed(split_seed)

    n = raw.x_train.shape[0]
    n_val = max(raw.num_classes, int(round(val_fraction * n)))
    if n_val >= n:
        raise HarnessInputError(
            f"a validation fraction of {val_fraction} leaves no training data out of {n} "
            "examples; lower dataset.val_fraction.",
            field="dataset.val_fraction",
        )
    perm = torch.randperm(n, generator=gen)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    n_train_full = train_idx.numel()
    if subset is not None:
        train_idx = train_idx[
            per_class_subset(raw.y_train[train_idx], subset, gen, raw.num_classes)
        ]

    return DatasetSplits(
        name=name,
        x_train=raw.x_train[train_idx].float(),
        y_train=raw.y_train[train_idx].long(),
        x_val=raw.x_train[val_idx].float(),
        y_val=raw.y_train[val_idx].long(),
        x_test=raw.x_test.float(),
        y_test=raw.y_test.long(),
        num_classes=raw.num_classes,
        bounds=info.bounds,
        default_eps=default_eps_for(name, parsed.model_dump()),
        n_train_full=n_train_full,
        params=parsed.model_dump(),
    )


def per_class_subset(
    labels: torch.Tensor, per_class: int, gen: torch.Generator, num_classes: int
) -> torch.Tensor:
    """Indices of up to `per_class` examples of each class, chosen with `gen`."""
    picks = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.cat(picks).sort().values
