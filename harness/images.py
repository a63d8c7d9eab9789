"""Image grids of learned datasets (one row per class), for the tracker and reports."""

from __future__ import annotations

from pathlib import Path

import torch


def save_grid(x: torch.Tensor, y: torch.Tensor, path: str | Path, per_class: int = 10) -> None:
    """Save up to `per_class` images of each class as rows of a PNG grid.

    `y` holds class ids or class probabilities (soft labels: the argmax is the row).
    """
    from torchvision.utils import save_image

    labels = y.argmax(dim=1) if y.dim() == 2 else y
    rows = []
    for c in labels.unique(sorted=True):
        imgs = x[labels == c][:per_class]
        if imgs.shape[0] < per_class:  # pad short rows so the grid stays aligned by class
            pad = torch.ones(per_class - imgs.shape[0], *imgs.shape[1:])
            imgs = torch.cat([imgs.cpu(), pad])
        rows.append(imgs.cpu())
    save_image(torch.cat(rows).clamp(0, 1), str(path), nrow=per_class, padding=1, pad_value=1.0)
