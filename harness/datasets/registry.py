"""The dataset registry: what a registered dataset is, where its files live, its defaults.

This module imports no loader. Loaders (`embedded`, `idx`, `cifar`, `svhn`, `tinyimagenet`)
import it to register themselves, and the package's `__init__` imports them all, so the
registry is full once `harness.datasets` is imported and no module imports one that imports it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import HarnessInputError
from harness.registry import Registry

DEFAULT_ROOT = Path("~/.cache/harness/data")


@dataclass
class RawData:
    """What a loader returns: the official train and test splits, before any carving."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: its loader and the defaults the literature uses for it."""

    name: str
    loader: Callable[[Path, bool, Any], RawData]
    default_eps: float  # Linf radius on the [0, 1] scale unless `bounds` is None
    default_archs: tuple[str, ...]
    params: type[BaseModel] = NoParams
    bounds: tuple[float, float] | None = (0.0, 1.0)  # None: unbounded features (synthetic)
    images: bool = True  # (C, H, W) inputs; False: feature vectors (image archs refused)
    embedded: bool = False  # generated in code or shipped by a package: never missing
    present: Callable[[Path], bool] | None = None  # are the files under this root?
    fetch_hint: str = ""  # how to get the files, quoted in the missing-files message
    description: str = ""
    # The radius when it depends on the dataset's parameters (synthetic-robust: on d). It gets
    # the spec's dataset section as a plain dict, where any parameter may be absent.
    eps_for: Callable[[dict[str, Any]], float] | None = None


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str, **info: Any) -> Callable:
    """Decorator: `@register_dataset("digits", default_eps=0.2, default_archs=("convnet",))`."""

    def add(loader: Callable) -> Callable:
        DATASETS.register(name)(DatasetInfo(name=name, loader=loader, **info))
        return loader

    return add


def resolve_root(root: str | Path | None = None) -> Path:
    """Explicit root, else $HARNESS_DATA, else ~/.cache/harness/data."""
    chosen = root or os.environ.get("HARNESS_DATA") or DEFAULT_ROOT
    try:
        return Path(chosen).expanduser()
    except RuntimeError:  # "~someone" for a user this machine does not know
        raise HarnessInputError(
            f"cannot expand the data root {str(chosen)[:200]!r}: no such user's home directory. "
            "Give an absolute path (--data-root, dataset.root or $HARNESS_DATA).",
            field="dataset.root",
        ) from None


@contextlib.contextmanager
def reading_root(root: Path):
    """A file-system error while a dataset's files are looked for or read under `root` (a
    path component longer than the file system allows, no permission, a file where a folder
    should be) as exit 2 naming the data root and the fix. Errors without a file name (a
    failed download) pass on unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            raise

        def short(path: object) -> str:
            text = str(path)
            return repr(text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}")

        raise HarnessInputError(
            f"cannot use the data root {short(root)}: {exc.strerror or type(exc).__name__} "
            f"({short(exc.filename)}). Give a data root that exists and can be read, each "
            "part of the path at most 255 characters: --data-root, dataset.root in the spec, "
            "or $HARNESS_DATA.",
            field="dataset.root",
        ) from None


def validate_params(info: DatasetInfo, params: dict[str, Any] | None) -> BaseModel:
    try:
        return info.params(**(params or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        allowed = ", ".join(info.params.model_fields) or "none"
        raise HarnessInputError(
            f"{err['msg']} (got {err.get('input')!r}). Parameters of dataset {info.name!r}: "
            f"{allowed}.",
            field=f"dataset.{loc}" if loc else "dataset",
        ) from None


def default_eps_for(name: str, params: dict[str, Any] | None = None) -> float:
    """The dataset's default Linf radius, from its parameters where it depends on them."""
    info = DATASETS.get(name)
    if info.eps_for is not None:
        return info.eps_for(params or {})
    return info.default_eps


def files_present(name: str, root: str | Path | None = None) -> bool:
    info = DATASETS.get(name)
    if info.embedded or info.present is None:
        return True
    root = resolve_root(root)
    with reading_root(root):
        return info.present(root)
