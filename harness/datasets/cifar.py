"""CIFAR-10 and CIFAR-100: the pickled batches of the official python archives.

torchvision's CIFAR10 and CIFAR100 are not used to read them: they accept only files whose MD5
matches the official release (batches.meta included) and then unpickle them with plain
`pickle.load`, so a copy that is not byte-identical, such as a re-pickled batch or a test
fixture, is refused with a bare RuntimeError. The batches are read here with the restricted
unpickler of `harness.datasets.untrusted`, which runs no callable a file names and allocates no more
than the file holds, and every field is checked against CIFAR's shapes.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from harness.datasets.files import DOWNLOAD_FLAG, corrupt, missing, to_labels, to_unit, tv_download
from harness.datasets.registry import NoParams, RawData, register_dataset
from harness.datasets.untrusted import load_pickle, read_small_file

CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR = {
    # name: (folder, train files, test files, label key, classes, torchvision class)
    "cifar10": ("cifar-10-batches-py", CIFAR10_TRAIN, ["test_batch"], b"labels", 10, "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100, "CIFAR100"),
}
# What unpickling a truncated or foreign file raises, and indexing a result that is no batch.
BAD_PICKLE = (
    OSError,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
)
CIFAR_TEST_ROWS = 10_000  # rows of every official CIFAR-10 batch and CIFAR-100 test file
CIFAR_TRAIN_ROWS = 50_000  # split over 5 CIFAR-10 batches, one CIFAR-100 file
# An official file is its rows of 3072 pixels plus labels and file names (about 35 bytes a
# row). Python 3 at protocol 2 writes bytes as latin-1 text, up to twice as long. A file larger
# than that is not a CIFAR batch and is refused before it is read.
CIFAR_ROW_BYTES = 2 * 3072 + 256


def cifar_labels(path: Path, labels) -> np.ndarray:
    if not isinstance(labels, list) or not all(isinstance(v, int) for v in labels):
        raise corrupt(
            path, f"its labels are of type {type(labels).__name__}, not a list of integers"
        )
    try:
        return np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise corrupt(path, "a label does not fit in 64 bits") from None


def read_cifar_batch(
    path: Path, label_key: bytes, classes: int, max_rows: int
) -> tuple[np.ndarray, torch.Tensor]:
    try:
        batch = load_pickle(read_small_file(path, max_rows * CIFAR_ROW_BYTES + 2**20))
        data, labels = batch[b"data"], batch[label_key]
    except BAD_PICKLE as exc:
        raise corrupt(path, f"{type(exc).__name__}: {exc}") from None
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        raise corrupt(path, "data is not an N x 3072 uint8 array")
    if len(data) > max_rows:
        raise corrupt(
            path, f"it holds {len(data)} images, more than the {max_rows} of an official file"
        )
    labels = cifar_labels(path, labels)
    if len(labels) != len(data):
        raise corrupt(path, f"{len(labels)} labels for {len(data)} images")
    # Each row is 1024 red, 1024 green, 1024 blue values, row-major: already CHW.
    return data.reshape(-1, 3, 32, 32), to_labels(labels, classes, path)


def cifar_family(name: str):
    folder_name, train_files, test_files, label_key, num_classes, tv_class = CIFAR[name]
    expected = f"{folder_name}/{{{', '.join(train_files + test_files)}}}"
    fix = (
        f"rerun with {DOWNLOAD_FLAG}, or extract https://www.cs.toronto.edu/~kriz/"
        f"{name.replace('cifar', 'cifar-')}-python.tar.gz into <root>"
    )

    def present(root: Path) -> bool:
        return all((root / folder_name / f).is_file() for f in train_files + test_files)

    def read(files: list[str], folder: Path, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [read_cifar_batch(folder / f, label_key, num_classes, rows) for f in files]
        return to_unit(np.concatenate([p[0] for p in parts])), torch.cat([p[1] for p in parts])

    def load(root: Path, download: bool, params: NoParams) -> RawData:
        if not present(root) and download:
            tv_download(tv_class, root, train=True)  # one archive holds both splits
        if not present(root):
            raise missing(name, root, [root / folder_name], expected, fix)
        x_tr, y_tr = read(train_files, root / folder_name, CIFAR_TRAIN_ROWS // len(train_files))
        x_te, y_te = read(test_files, root / folder_name, CIFAR_TEST_ROWS)
        return RawData(x_tr, y_tr, x_te, y_te, num_classes=num_classes)

    return present, load, fix


for _name, _desc in (("cifar10", "10 classes"), ("cifar100", "100 fine classes")):
    _present, _load, _fix = cifar_family(_name)
    _desc = f"{_name.upper()}, 32x32 colour, {_desc}, 50k train / 10k test"
    # 8/255: RobustBench's Linf threat for CIFAR.
    register_dataset(
        _name,
        default_eps=8 / 255,
        default_archs=("convnet", "resnet18"),
        present=_present,
        fetch_hint=_fix,
        description=_desc,
    )(_load)
