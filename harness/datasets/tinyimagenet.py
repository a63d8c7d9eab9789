"""Tiny ImageNet: the JPEG folders of tiny-imagenet-200.zip, decoded once and cached as tensors.

torchvision has no Tiny ImageNet class; it is used only to fetch and checksum the zip. The
listings (wnids.txt, val_annotations.txt) are read within a byte budget and every path they
name must stay inside the dataset folder; each image's size is checked before it is decoded.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import torch

from harness.datasets.files import DOWNLOAD_FLAG, corrupt, missing
from harness.datasets.registry import NoParams, RawData, register_dataset
from harness.datasets.untrusted import inside, read_small_file
from harness.errors import HarnessInputError

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
        raise corrupt(
            path, f"not UTF-8 text: byte {exc.start} is {exc.object[exc.start]:#04x}", base
        ) from None
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
        raise corrupt(
            path, f"image has over {2 * Image.MAX_IMAGE_PIXELS} pixels, not 64x64", base
        ) from None
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
        warnings.warn(
            f"ignoring unreadable cache {cache} ({exc}); decoding the JPEGs again", stacklevel=2
        )
        return None
    fresh = isinstance(saved, dict) and saved.get("key") == [TINY_CACHE_FORMAT, count]
    return saved if fresh else None


def tiny_build(base: Path, count: int) -> dict:
    num_classes, train, test = tiny_index(base)
    x_train, y_train = decode_jpegs(train, base)
    x_test, y_test = decode_jpegs(test, base)
    built = dict(
        key=[TINY_CACHE_FORMAT, count],
        num_classes=num_classes,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
    )
    cache = base / TINY_CACHE
    partial = cache.with_suffix(".tmp")
    try:  # write then rename, so an interrupted save never leaves a half cache behind
        torch.save(built, partial)
        os.replace(partial, cache)
    except OSError as exc:  # a read-only data folder still loads, only slower next time
        warnings.warn(f"could not write the Tiny ImageNet cache {cache} ({exc})", stacklevel=2)
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
