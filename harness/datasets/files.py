"""What every reader of on-disk data shares: the two messages (files missing, file corrupt),
the conversion of uint8 pixels and labels to tensors, and the download through torchvision.

Each reader reads the layout torchvision (or the dataset's own archive) leaves on disk, so a
data folder shared with other projects works as is. torchvision fetches and checksums the
official archives when `dataset.download` is true; why it does not also read them is said in
each reader's docstring. Any damaged file ends as one `HarnessInputError` naming it and the fix,
which the CLI turns into exit code 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.errors import HarnessInputError

DOWNLOAD_FLAG = "--set dataset.download=true"


def corrupt(path: Path, why: str, remove: Path | None = None) -> HarnessInputError:
    """`remove`: what to delete so that a download replaces it, when not the file itself."""
    return HarnessInputError(
        f"the data file {path} is unreadable ({why}); it is probably truncated or corrupt. "
        f"Delete {remove or 'it'} and fetch it again (rerun with {DOWNLOAD_FLAG}).",
        field="dataset",
    )


def missing(
    name: str, root: Path, searched: list[Path], expected: str, fix: str
) -> HarnessInputError:
    where = ", ".join(str(p) for p in searched)
    return HarnessInputError(
        f"the {name} files ({expected}) were not found; searched {where}. To get them, "
        f"{fix.replace('<root>', str(root))} (the data root {root} is dataset.root, else "
        "$HARNESS_DATA, else ~/.cache/harness/data).",
        field="dataset",
    )


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 NCHW array -> float32 tensor in [0, 1] (one float copy; the input may be read-only)."""
    unit = np.ascontiguousarray(images, dtype=np.float32)
    unit /= 255.0
    return torch.from_numpy(unit)


def to_labels(labels: np.ndarray, num_classes: int, path: Path) -> torch.Tensor:
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise corrupt(path, f"labels outside 0..{num_classes - 1}")
    return torch.from_numpy(labels)


def tv_download(tv_class: str, root: Path, **kwargs) -> None:
    """Let torchvision fetch (and checksum) the official archive into its usual layout."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, tv_class)(str(root), download=True, **kwargs)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; bad checksums are RuntimeError
        raise HarnessInputError(
            f"downloading {tv_class} into {root} failed ({exc}). Check the network, or copy the "
            "files into that folder by hand and rerun without dataset.download.",
            field="dataset.download",
        ) from None
