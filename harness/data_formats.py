"""Loaders for datasets stored as files: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN, Tiny ImageNet.

Each loader reads the layout torchvision (or the dataset's own archive) leaves on disk, so a
data folder shared with other projects works as is. Files are parsed here rather than through
torchvision's dataset classes: that keeps the validation ours (a truncated download must give a
one-paragraph `HarnessInputError` naming the file, not a traceback) and avoids unpickling CIFAR
with plain `pickle`. torchvision is used only to download, when `dataset.download` is true.

Default radii are the literature's: MNIST 0.3 (Madry et al. 2018), CIFAR and SVHN 8/255
(RobustBench), Tiny ImageNet 4/255 (common in robust distillation work), Fashion-MNIST 0.1.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from harness.data import NoParams, RawData, register_dataset
from harness.errors import HarnessInputError
from harness.untrusted import inside, load_pickle, read_at_most, read_small_file

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


# --------------------------------------------------------------------------- MNIST (IDX)

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
        raise corrupt(path, f"its {what} are {shape}, not the {'x'.join(map(str, item))} "
                      "this dataset uses; it belongs to another dataset")
    if dims[0] == 0:
        raise corrupt(path, f"the file is empty: its header declares no {what}")
    if dims[0] > IDX_MAX_COUNT:
        raise corrupt(path, f"its header declares {dims[0]} {what}, more than any copy of this "
                      f"dataset holds (the official files hold at most 60000)")
    return dims


def read_idx(path: Path, what: str) -> np.ndarray:
    """The uint8 array of an IDX file of `what` ("images" or "labels"), checked against the
    dataset's shape before its data is read."""
    header_size = 4 + 4 * (1 + len(IDX_ITEM[what]))
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
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
    register_dataset(_name, default_eps=_eps, default_archs=("lenet", "convnet"), present=_present,
                     fetch_hint=_fix, description=f"{_tv}, 28x28 grey, 60k train / 10k test")(_load)


# --------------------------------------------------------------------------- CIFAR (pickles)


CIFAR10_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR = {
    # name: (folder, train files, test files, label key, classes, torchvision class)
    "cifar10": ("cifar-10-batches-py", CIFAR10_TRAIN, ["test_batch"], b"labels", 10, "CIFAR10"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels", 100, "CIFAR100"),
}
# What unpickling a truncated or foreign file raises, and indexing a result that is no batch.
BAD_PICKLE = (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, KeyError,
              IndexError, AttributeError, OverflowError)
CIFAR_TEST_ROWS = 10_000  # rows of every official CIFAR-10 batch and CIFAR-100 test file
CIFAR_TRAIN_ROWS = 50_000  # split over 5 CIFAR-10 batches, one CIFAR-100 file
# An official file is its rows of 3072 pixels plus labels and file names (about 35 bytes a
# row). Python 3 at protocol 2 writes bytes as latin-1 text, up to twice as long. A file larger
# than that is not a CIFAR batch and is refused before it is read.
CIFAR_ROW_BYTES = 2 * 3072 + 256


def cifar_labels(path: Path, labels) -> np.ndarray:
    if not isinstance(labels, list) or not all(isinstance(v, int) for v in labels):
        raise corrupt(path, f"its labels are of type {type(labels).__name__}, not a list of integers")
    try:
        return np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise corrupt(path, "a label does not fit in 64 bits") from None


def read_cifar_batch(path: Path, label_key: bytes, classes: int,
                     max_rows: int) -> tuple[np.ndarray, torch.Tensor]:
    try:
        batch = load_pickle(read_small_file(path, max_rows * CIFAR_ROW_BYTES + 2**20))
        data, labels = batch[b"data"], batch[label_key]
    except BAD_PICKLE as exc:
        raise corrupt(path, f"{type(exc).__name__}: {exc}") from None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        raise corrupt(path, "data is not an N x 3072 uint8 array")
    if len(data) > max_rows:
        raise corrupt(path, f"it holds {len(data)} images, more than the {max_rows} of an "
                      "official file")
    labels = cifar_labels(path, labels)
    if len(labels) != len(data):
        raise corrupt(path, f"{len(labels)} labels for {len(data)} images")
    # Each row is 1024 red, 1024 green, 1024 blue values, row-major: already CHW.
    return data.reshape(-1, 3, 32, 32), to_labels(labels, classes, path)


def cifar_family(name: str):
    folder_name, train_files, test_files, label_key, num_classes, tv_class = CIFAR[name]
    expected = f"{folder_name}/{{{', '.join(train_files + test_files)}}}"
    fix = (f"rerun with {DOWNLOAD_FLAG}, or extract https://www.cs.toronto.edu/~kriz/"
           f"{name.replace('cifar', 'cifar-')}-python.tar.gz into <root>")

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
    register_dataset(_name, default_eps=8 / 255, default_archs=("convnet", "resnet18"),
                     present=_present, fetch_hint=_fix, description=_desc)(_load)


# --------------------------------------------------------------------------- SVHN (.mat)

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
        raise corrupt(path, f"want X 32x32x3xN (N at most {SVHN_MAX_IMAGES}) and y of N labels; "
                      f"got X {x or 'missing'}, y {y or 'missing'}")


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


# --------------------------------------------------------------------------- Tiny ImageNet (JPEG)

TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
TINY_CACHE = ".harness-cache.pt"
TINY_CACHE_FORMAT = 1  # bump when the cached dict changes
TINY_FIX = f"rerun with {DOWNLOAD_FLAG}, or download {TINY_URL} and unzip it into <root>"


def tiny_present(root: Path) -> bool:
    base = root / TINY_FOLDER
    return all(p.exists() for p in (base / "wnids.txt", base / "train", base / "val" / "images"))


def tiny_required(path: Path, base: Path) -> Path:
    if not path.exists():
        raise HarnessInputError(
            f"{path} is missing, so the Tiny ImageNet folder is incomplete. Delete {base} and "
            f"fetch it again ({TINY_FIX}).",
            field="dataset",
        )
    return path


Pairs = list[tuple[Path, int]]


TINY_LISTING_LIMIT = 16 * 2**20  # wnids.txt is 2 KB, val_annotations.txt 300 KB


def tiny_lines(path: Path, base: Path) -> list[str]:
    """The lines of a listing, read within a byte budget and required to be UTF-8."""
    try:
        return read_small_file(tiny_required(path, base), TINY_LISTING_LIMIT).decode().splitlines()
    except UnicodeDecodeError as exc:
        raise corrupt(path, f"not UTF-8 text: byte {exc.start} is {exc.object[exc.start]:#04x}",
                      base) from None
    except (OSError, ValueError) as exc:
        raise corrupt(path, str(exc), base) from None


def tiny_contained(entry: str, folder: Path, base: Path, listing: Path, line_no: int) -> Path:
    """`folder / entry`, refused when the listing's entry leads outside `folder`."""
    path = folder / entry
    if inside(path, folder):
        return path
    raise HarnessInputError(
        f"{listing}, line {line_no}, names {entry[:200]!r}, which lies outside {folder}; the "
        f"harness reads no file outside the dataset folder. Replace {base} with the official "
        f"one ({TINY_FIX.replace('<root>', str(base.parent))}).",
        field="dataset",
    )


def tiny_wnids(base: Path) -> list[str]:
    listing = base / "wnids.txt"
    wnids = []
    for line_no, line in enumerate(tiny_lines(listing, base), 1):
        for wnid in line.split():
            tiny_contained(wnid, base / "train", base, listing, line_no)
            wnids.append(wnid)
    if not wnids:
        raise corrupt(listing, "it names no classes", base)
    return sorted(wnids)


def tiny_index(base: Path) -> tuple[int, Pairs, Pairs]:
    """Class count and (file, label) pairs of both splits; labels follow the sorted wnids."""
    wnids = tiny_wnids(base)
    label_of = {w: i for i, w in enumerate(wnids)}
    train = [
        (path, label_of[wnid])
        for wnid in wnids
        for path in sorted(tiny_required(base / "train" / wnid / "images", base).glob("*.JPEG"))
    ]
    # The official test split has no labels, so the labelled val split serves as the test split.
    annotations = base / "val" / "val_annotations.txt"
    images = base / "val" / "images"
    test = []
    for line_no, line in enumerate(tiny_lines(annotations, base), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in label_of:
            raise corrupt(annotations, f"line {line_no} names no image and known wnid", base)
        path = tiny_contained(fields[0], images, base, annotations, line_no)
        test.append((tiny_required(path, base), label_of[fields[1]]))
    return len(wnids), train, test


def decode_image(path: Path, base: Path) -> np.ndarray:
    """One 64x64 image as HWC uint8 RGB; its size is checked before its pixels are decoded."""
    from PIL import Image

    try:
        with Image.open(path) as img:  # reads the header only
            if img.size != (64, 64):
                raise corrupt(path, f"image is {img.size[0]}x{img.size[1]}, not 64x64", base)
            return np.asarray(img.convert("RGB"))  # a few Tiny ImageNet images are greyscale
    except Image.DecompressionBombError:
        raise corrupt(path, f"image has over {2 * Image.MAX_IMAGE_PIXELS} pixels, not 64x64",
                      base) from None
    except (OSError, SyntaxError, ValueError) as exc:  # what PIL raises for broken files
        raise corrupt(path, f"{type(exc).__name__}: {exc}", base) from None


def decode_jpegs(pairs: Pairs, base: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NCHW images and int64 labels."""
    from PIL import Image

    out = np.empty((len(pairs), 64, 64, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        # PIL warns on opening a huge image; decode_image refuses it before decoding anyway.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, (path, _) in enumerate(pairs):
            out[i] = decode_image(path, base)
    labels = torch.tensor([label for _, label in pairs], dtype=torch.long)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), labels


def tiny_file_count(base: Path) -> int:
    folders = [*(base / "train").glob("*/images"), base / "val" / "images"]
    return sum(1 for folder in folders for _ in folder.glob("*.JPEG"))


def tiny_cached(cache: Path, count: int) -> dict | None:
    """The cached tensors if they were built, in this format, from as many files as there are."""
    if not cache.is_file():
        return None
    try:
        saved = torch.load(cache, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        warnings.warn(f"ignoring unreadable cache {cache} ({exc}); decoding the JPEGs again")
        return None
    fresh = isinstance(saved, dict) and saved.get("key") == [TINY_CACHE_FORMAT, count]
    return saved if fresh else None


def tiny_build(base: Path, count: int) -> dict:
    num_classes, train, test = tiny_index(base)
    x_train, y_train = decode_jpegs(train, base)
    x_test, y_test = decode_jpegs(test, base)
    built = dict(key=[TINY_CACHE_FORMAT, count], num_classes=num_classes, x_train=x_train,
                 y_train=y_train, x_test=x_test, y_test=y_test)
    cache = base / TINY_CACHE
    partial = cache.with_suffix(".tmp")
    try:  # write then rename, so an interrupted save never leaves a half cache behind
        torch.save(built, partial)
        os.replace(partial, cache)
    except OSError as exc:  # a read-only data folder still loads, only slower next time
        warnings.warn(f"could not write the Tiny ImageNet cache {cache} ({exc})")
    return built


@register_dataset(
    "tinyimagenet",
    default_eps=4 / 255,  # half CIFAR's 8/255, the radius usual for Tiny ImageNet
    default_archs=("convnet", "resnet18"),
    present=tiny_present,
    fetch_hint=TINY_FIX,
    description="Tiny ImageNet, 64x64 colour, 200 classes, 100k train / 10k val (used as test)",
)
def load_tinyimagenet(root: Path, download: bool, params: NoParams) -> RawData:
    base = root / TINY_FOLDER
    if not tiny_present(root) and download:
        from torchvision.datasets.utils import download_and_extract_archive

        try:
            download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)
        except (OSError, RuntimeError) as exc:
            raise HarnessInputError(
                f"downloading {TINY_URL} into {root} failed ({exc}).", field="dataset.download"
            ) from None
    if not tiny_present(root):
        expected = "wnids.txt, train/<wnid>/images, val/images, val/val_annotations.txt"
        raise missing("tinyimagenet", root, [base], expected, TINY_FIX)
    count = tiny_file_count(base)
    data = tiny_cached(base / TINY_CACHE, count) or tiny_build(base, count)
    x_train, x_test = (data[k].float().div_(255.0) for k in ("x_train", "x_test"))
    return RawData(x_train, data["y_train"], x_test, data["y_test"], data["num_classes"])
