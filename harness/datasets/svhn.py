"""SVHN (cropped digits): train_32x32.mat and test_32x32.mat, MATLAB v7 files.

torchvision's SVHN is not used to read them: it accepts only the official files (by MD5) and
then loads every variable with `scipy.io.loadmat` without looking at its shape. Here any v7
file with SVHN's variables is read, its variable headers are checked before the data is, and a
v7.3 (HDF5) file, which scipy cannot read, gets a message saying how to re-save it.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch

from harness.datasets.files import DOWNLOAD_FLAG, corrupt, missing, to_labels, to_unit, tv_download
from harness.datasets.registry import NoParams, RawData, register_dataset
from harness.errors import HarnessInputError

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_FIX = (
    f"rerun with {DOWNLOAD_FLAG}, or download train_32x32.mat and test_32x32.mat from "
    "http://ufldl.stanford.edu/housenumbers/ into <root>/svhn"
)


def svhn_folder(root: Path) -> Path | None:
    for folder in (root / "svhn", root):
        if all((folder / f).is_file() for f in SVHN_FILES.values()):
            return folder
    return None


# Train 73257 and test 26032 images; the 531131 "extra" ones would fit too, if merged into train.
SVHN_MAX_IMAGES = 700_000
MAT_ERRORS = (OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error)


def svhn_v73(path: Path) -> HarnessInputError:
    return HarnessInputError(
        f"{path} is a MATLAB v7.3 file (HDF5 inside), which the harness does not read. Re-save "
        "it in MATLAB as v7 (`save(file, 'X', 'y', '-v7')`), or replace it with the official "
        f"{path.name} from http://ufldl.stanford.edu/housenumbers/ (or delete it and rerun "
        f"with {DOWNLOAD_FLAG}).",
        field="dataset",
    )


def svhn_check_header(path: Path) -> None:
    """Refuse a file whose X and y are not SVHN's shapes, reading only the variable headers."""
    from scipy.io import whosmat
    from scipy.io.matlab import MatReadError

    try:
        shapes = {name: shape for name, shape, _ in whosmat(path)}
    except NotImplementedError:  # what scipy raises for a v7.3 (HDF5) file
        raise svhn_v73(path) from None
    except (MatReadError, *MAT_ERRORS) as exc:
        raise corrupt(path, f"{type(exc).__name__}: {exc}") from None
    x, y = shapes.get("X", ()), shapes.get("y", ())
    if len(x) != 4 or x[:3] != (32, 32, 3) or x[3] > SVHN_MAX_IMAGES or math.prod(y) != x[3]:
        raise corrupt(
            path,
            f"want X 32x32x3xN (N at most {SVHN_MAX_IMAGES}) and y of N labels; "
            f"got X {x or 'missing'}, y {y or 'missing'}",
        )


def read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    svhn_check_header(path)
    try:
        mat = loadmat(path, variable_names=["X", "y"])
        x, y = mat["X"], mat["y"]
    except (MatReadError, *MAT_ERRORS) as exc:
        raise corrupt(path, f"{type(exc).__name__}: {exc}") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
        raise corrupt(path, f"want X 32x32x3xN uint8, y N; got X {x.shape} {x.dtype}, y {y.shape}")
    labels = y.reshape(-1).astype(np.int64)
    labels[labels == 10] = 0  # SVHN writes the digit 0 as class 10
    return to_unit(x.transpose(3, 2, 0, 1)), to_labels(labels, 10, path)  # HWCN -> NCHW


@register_dataset(
    "svhn",
    default_eps=8 / 255,  # as CIFAR-10 in RobustBench-style evaluations
    default_archs=("convnet", "resnet18"),
    present=lambda root: svhn_folder(root) is not None,
    fetch_hint=SVHN_FIX,
    description="Street View House Numbers (cropped digits), 32x32 colour, 73k train / 26k test",
)
def load_svhn(root: Path, download: bool, params: NoParams) -> RawData:
    if svhn_folder(root) is None and download:
        for split in SVHN_FILES:
            tv_download("SVHN", root / "svhn", split=split)
    folder = svhn_folder(root)
    if folder is None:
        expected = ", ".join(SVHN_FILES.values())
        raise missing("svhn", root, [root / "svhn", root], expected, SVHN_FIX)
    x_tr, y_tr = read_svhn(folder / SVHN_FILES["train"])
    x_te, y_te = read_svhn(folder / SVHN_FILES["test"])
    return RawData(x_tr, y_tr, x_te, y_te, num_classes=10)
