"""Keep the memory PyTorch frees on CPU for reuse instead of handing it back to the kernel.

PyTorch's CPU tensors come from the C library's malloc. With glibc's defaults, a freed
block of a few megabytes (a small ConvNet's activation map: 128 x 32 x 32 x 32 floats is
16 MB) is returned to the kernel, so the next tensor of that size is mapped afresh and
every one of its pages faults on first touch. A training step allocates hundreds of such
tensors. `keep_freed_memory()` sets glibc's thresholds (mallopt) so that blocks up to 32 MB
come from the heap and the heap is not trimmed: the process keeps its peak footprint and
reuses it. This is what PyTorch's CPU performance guides get by preloading jemalloc or
tcmalloc, without a library to install. Measured on rdl's outer step (ConvNet-32,
Fashion-MNIST shapes, 2 cores): `python benchmarks/rdl_step.py` prints the ratio.

Set HARNESS_KEEP_FREED_MEMORY=0 to leave malloc as it is (e.g. to share a node's memory
with other jobs); on other C libraries this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest: blocks above it are still mapped on their own
TOP_PAD = 64 * 2**20  # grow the heap in steps of this much
NEVER_TRIM = 2**31 - 1

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Set it once per process; True when it is in effect (glibc, not switched off)."""
    global _done
    if _done is None:
        _done = os.environ.get("HARNESS_KEEP_FREED_MEMORY", "1") != "0" and _mallopt()
    return _done


def _mallopt() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, NEVER_TRIM),
        (M_TOP_PAD, TOP_PAD),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
