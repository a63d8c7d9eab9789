"""Datasets: a registry of loaders, and the train / validation / test splits they feed.

Layered one way, each module importing only those above it:

    registry      DatasetInfo, DATASETS, register_dataset, data root, parameters, default eps
    splits        DatasetSplits and load_dataset: seeded validation split, per-class subsets
    embedded      digits, synthetic-robust (no files)
    files         what the on-disk readers share: error messages, pixel conversion, download
    idx, cifar, svhn, tinyimagenet    one reader per on-disk format, each registering itself

Importing the package imports every reader, so the registry is complete whichever name is
imported from here.
"""

from harness.datasets import cifar, embedded, idx, svhn, tinyimagenet  # noqa: F401  (register)
from harness.datasets.registry import (
    DATASETS,
    DatasetInfo,
    NoParams,
    RawData,
    default_eps_for,
    files_present,
    register_dataset,
    resolve_root,
    validate_params,
)
from harness.datasets.splits import DatasetSplits, load_dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "DatasetSplits",
    "NoParams",
    "RawData",
    "default_eps_for",
    "files_present",
    "load_dataset",
    "register_dataset",
    "resolve_root",
    "validate_params",
]
