"""Reading data files the harness did not write: sizes checked before memory is spent.

A data file is input like a spec, and may be damaged or made to hurt: a header that asks for
a terabyte, a pickle that names a callable, a listing whose paths climb out of the dataset
folder. The helpers here read such files within a byte budget and raise `ValueError` (or
`pickle.UnpicklingError`) with a short reason; the dataset loaders turn that into a
`HarnessInputError` naming the file.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import pickletools
from pathlib import Path
from typing import BinaryIO

import numpy as np

CHUNK = 1 << 24  # read in 16 MiB pieces: file.read(n) would reserve all n bytes up front


def read_at_most(fh: BinaryIO, limit: int) -> bytes:
    """Up to `limit` bytes of `fh`, so memory follows the data present, not a declared size."""
    parts, left = [], limit
    while left > 0:
        part = fh.read(min(CHUNK, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def read_small_file(path: Path, limit: int) -> bytes:
    """The whole file, refused unread when it is larger than `limit` bytes."""
    size = os.stat(path).st_size
    if size > limit:
        raise ValueError(f"it is {size} bytes, more than the {limit} bytes such a file can hold")
    with open(path, "rb") as fh:
        return read_at_most(fh, limit)


def check_pickle_lengths(blob: bytes) -> None:
    """Walk the opcodes without building anything: a length field (bytes, string, long) that
    claims more data than the file holds raises `ValueError` here, before the unpickler
    would reserve that much memory for it."""
    for _ in pickletools.genops(io.BytesIO(blob)):
        pass


class NdarrayName:
    """Stands in for `numpy.ndarray` in a pickle: the file may name the type, never call it."""


def empty_array(subtype, shape, dtype):
    """numpy pickles an array as `_reconstruct(ndarray, (0,), b'b')` and then sets its state,
    whose length numpy checks against the data present. Any other shape here would allocate
    whatever the file asks for, so it is refused."""
    if subtype is not NdarrayName or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"array constructor asked for shape {shape!r}, not (0,)")
    return np.ndarray((0,), np.uint8)


def latin1_bytes(text: str, encoding: str) -> bytes:
    """How Python 3 pickles bytes at protocol 2: `_codecs.encode(text, 'latin1')`."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not 'latin1'")
    return codecs.encode(text, "latin1")


class ArrayUnpickler(pickle.Unpickler):
    """Unpickle only plain containers, numbers, bytes and numpy arrays of a checked size.

    A plain `pickle.load` would run any callable a tampered file names; here every global
    outside this table is refused, and the ones allowed cannot allocate beyond the file.
    """

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): empty_array,  # numpy 1 (the CIFAR originals)
        ("numpy._core.multiarray", "_reconstruct"): empty_array,  # numpy 2
        ("numpy", "ndarray"): NdarrayName,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): latin1_bytes,
    }

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed") from None


def load_pickle(blob: bytes):
    """Unpickle `blob` (a whole file, already size-checked) as a Python 2 pickle of arrays."""
    check_pickle_lengths(blob)
    # encoding="bytes" as torchvision: the CIFAR batches were written by Python 2.
    return ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()


def inside(path: Path, folder: Path) -> bool:
    """Whether `path` stays under `folder` once `..`, absolute parts and symlinks are resolved."""
    return path.resolve().is_relative_to(folder.resolve())
