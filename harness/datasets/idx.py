"""MNIST and Fashion-MNIST: four IDX files each, plain or gzipped.

The files are looked for where torchvision keeps them (<root>/MNIST/raw), in <root>/<name>,
and, for Fashion-MNIST, where Debian's dataset-fashion-mnist package puts its .gz files.
torchvision's IDX reader (`datasets.mnist.read_image_file`) is not used: it opens only
uncompressed files, reads the whole file before looking at the header, and accepts images of
any size, so a damaged or foreign file would end in an assertion or a shape error rather than a
message naming it; the reader here checks the header first and reads no more than it declares.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from harness.datasets.files import DOWNLOAD_FLAG, corrupt, missing, to_labels, to_unit, tv_download
from harness.datasets.registry import NoParams, RawData, register_dataset
from harness.datasets.untrusted import read_at_most

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_EXPECTED = ", ".join(stem for pair in IDX_FILES.values() for stem in pair) + ", each maybe .gz"
# Places outside the data root that a system package fills; a module constant so tests can
# point it elsewhere. Debian's dataset-fashion-mnist ships the four .gz files here.
SYSTEM_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}


# The largest official IDX file holds 60000 images; refusing counts far beyond that bounds the
# memory a hostile header (or a gzip bomb behind it) can make the loader spend.
IDX_MAX_COUNT = 1_000_000
IDX_ITEM = {"images": (28, 28), "labels": ()}  # MNIST and Fashion-MNIST are 28x28 grey


def idx_shape(path: Path, header: bytes, what: str) -> tuple[int, ...]:
    """The dims an IDX header declares: magic 0x0000 08 <ndim>, then big-endian uint32 dims."""
    item = IDX_ITEM[what]
    ndim = 1 + len(item)
    if len(header) < 4 + 4 * ndim or header[:4] != bytes([0, 0, 0x08, ndim]):
        raise corrupt(path, f"not an IDX file of {ndim}-d unsigned bytes (bad magic number)")
    dims = struct.unpack(f">{ndim}I", header[4:])
    if dims[1:] != item:
        shape = "x".join(map(str, dims[1:]))
        raise corrupt(
            path,
            f"its {what} are {shape}, not the {'x'.join(map(str, item))} "
            "this dataset uses; it belongs to another dataset",
        )
    if dims[0] == 0:
        raise corrupt(path, f"the file is empty: its header declares no {what}")
    if dims[0] > IDX_MAX_COUNT:
        raise corrupt(
            path,
            f"its header declares {dims[0]} {what}, more than any copy of this "
            f"dataset holds (the official files hold at most 60000)",
        )
    return dims


def read_idx(path: Path, what: str) -> np.ndarray:
    """The uint8 array of an IDX file of `what` ("images" or "labels"), checked against the
    dataset's shape before its data is read."""
    header_size = 4 + 4 * (1 + len(IDX_ITEM[what]))
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as fh:
            dims = idx_shape(path, fh.read(header_size), what)
            size = math.prod(dims)
            blob = read_at_most(fh, size + 1)  # one byte more reveals trailing data
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise corrupt(path, f"{type(exc).__name__}: {exc}") from None
    if len(blob) != size:
        held = f"{len(blob)}" if len(blob) <= size else "more than that"
        raise corrupt(path, f"header says {dims} ({size} bytes of data) but the file holds {held}")
    return np.frombuffer(blob, dtype=np.uint8).reshape(dims)


def idx_file(folder: Path, stem: str) -> Path | None:
    # Prefer the uncompressed file: torchvision keeps both and it reads faster.
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def idx_folder(candidates: list[Path]) -> Path | None:
    for folder in candidates:
        if all(idx_file(folder, stem) for pair in IDX_FILES.values() for stem in pair):
            return folder
    return None


def idx_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_path, labels_path = (idx_file(folder, stem) for stem in IDX_FILES[split])
    images = read_idx(images_path, "images")
    labels = read_idx(labels_path, "labels")
    if len(images) != len(labels):
        raise corrupt(labels_path, f"{len(labels)} labels, {len(images)} images in {images_path}")
    return to_unit(images[:, None]), to_labels(labels, 10, labels_path)


def mnist_family(name: str, tv_class: str, fix: str):
    """`present` and loader of an IDX dataset that torchvision keeps in root/<tv_class>/raw."""

    def candidates(root: Path) -> list[Path]:
        return [root / tv_class / "raw", root / name, *SYSTEM_DIRS.get(name, ())]

    def present(root: Path) -> bool:
        return idx_folder(candidates(root)) is not None

    def load(root: Path, download: bool, params: NoParams) -> RawData:
        folder = idx_folder(candidates(root))
        if folder is None and download:
            tv_download(tv_class, root)
            folder = idx_folder(candidates(root))
        if folder is None:
            raise missing(name, root, candidates(root), IDX_EXPECTED, fix)
        x_tr, y_tr = idx_split(folder, "train")
        x_te, y_te = idx_split(folder, "test")
        return RawData(x_tr, y_tr, x_te, y_te, num_classes=10)

    return present, load


for _name, _tv, _eps, _extra in (
    ("mnist", "MNIST", 0.3, ""),  # Madry et al. 2018
    # 0.1: the radius common in Fashion-MNIST robustness work, milder than MNIST's 0.3.
    ("fashion-mnist", "FashionMNIST", 0.1, "run `sudo apt-get install dataset-fashion-mnist`, or "),
):
    _fix = (
        f"{_extra}rerun with {DOWNLOAD_FLAG} (torchvision fetches them into <root>/{_tv}/raw), "
        "or copy the four IDX files there by hand"
    )
    _present, _load = mnist_family(_name, _tv, _fix)
    register_dataset(
        _name,
        default_eps=_eps,
        default_archs=("lenet", "convnet"),
        present=_present,
        fetch_hint=_fix,
        description=f"{_tv}, 28x28 grey, 60k train / 10k test",
    )(_load)
