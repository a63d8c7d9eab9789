"""Hostile data files and plugin modules (issue 11): each is refused with a `HarnessInputError`
(exit code 2) that names the file or setting, quickly and without allocating what it asks for.

Every file is built in a tmp dir in the dataset's real on-disk format, then damaged.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_data_formats import idx_bytes, py2_batch, write_cifar, write_idx_set, write_tiny

from harness.cli import main
from harness.datasets import idx, load_dataset
from harness.errors import HarnessInputError

REPO = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 256 * 2**20  # far below any array these files ask for


@pytest.fixture(autouse=True)
def no_system_dirs(monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {})


def refused(name: str, root: Path, blamed: Path, **kwargs) -> str:
    """Load `name` from `root`; assert a quick, small refusal whose message names `blamed`.

    tracemalloc sees Python's and numpy's allocations, so a refusal that first allocated the
    array a header asks for would fail the memory bound.
    """
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(HarnessInputError) as err:
            load_dataset(name, root=root, **kwargs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.monotonic() - start < 10
    assert peak < MEMORY_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    message = str(err.value)
    assert str(blamed) in message, message
    return message


# --------------------------------------------------------------------------- CIFAR-10 pickles

CIFAR_DIR = "cifar-10-batches-py"


def num(n: int) -> bytes:  # BININT
    return b"J" + struct.pack("<i", n)


def text(b: bytes) -> bytes:  # SHORT_BINSTRING
    return b"U" + bytes([len(b)]) + b


RECONSTRUCT = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"


def huge_reconstruct() -> bytes:
    """numpy's array constructor called with a 10^6 x 10^6 shape: 931 GiB if obeyed."""
    array = RECONSTRUCT + num(1_000_000) + num(1_000_000) + b"\x86" + text(b"b") + b"\x87R"
    return b"\x80\x02}(" + text(b"data") + array + text(b"labels") + b"](" + num(1) + b"eu."


def huge_state() -> bytes:
    """An array header (its pickled state) declaring 10^6 x 10^6 bytes over 6 bytes of data."""
    good = py2_batch(np.zeros((2, 3072), np.uint8), np.array([0, 1]), b"labels")
    shape = num(2) + num(3072) + b"\x86"
    assert good.count(shape) == 1
    return good.replace(shape, num(1_000_000) + num(1_000_000) + b"\x86")


def huge_bytes() -> bytes:
    """A bytes object (BINBYTES8) whose length field claims 10^12 bytes."""
    return b"\x80\x04\x8e" + struct.pack("<Q", 10**12) + b"abc."


def py3_batch(data, labels) -> bytes:
    return pickle.dumps({b"batch_label": b"x", b"data": data, b"labels": labels}, protocol=2)


def random_bytes(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()


ROWS = np.zeros((4, 3072), np.uint8)
BAD_CIFAR = {
    **{f"random-{seed}": random_bytes(seed) for seed in range(4)},
    "pickle-header-random-body": b"\x80\x02" + random_bytes(9),
    "reconstruct-931GiB": huge_reconstruct(),
    "array-state-931GiB": huge_state(),
    "bytes-length-931GiB": huge_bytes(),
    "labels-not-a-list": py3_batch(ROWS, 5),
    "labels-of-text": py3_batch(ROWS, [b"a", b"b", b"c", b"d"]),
    "fewer-labels": py3_batch(ROWS, [0, 1, 2]),
    "rows-of-3000": py3_batch(np.zeros((4, 3000), np.uint8), [0, 1, 2, 3]),
    "flat-data": py3_batch(np.zeros(3072 * 4, np.uint8), [0, 1, 2, 3]),
    "data-not-an-array": py3_batch(b"\x00" * 3072, [0]),
    "not-a-dict": pickle.dumps([1, 2, 3], protocol=2),
    "empty-file": b"",
}


@pytest.mark.parametrize("case", BAD_CIFAR)
def test_cifar_hostile_batch(tmp_path, case):
    write_cifar(tmp_path, "cifar10")
    bad = tmp_path / CIFAR_DIR / "data_batch_2"
    bad.write_bytes(BAD_CIFAR[case])
    message = refused("cifar10", tmp_path, bad)
    assert "Traceback" not in message


def test_cifar_oversized_file_refused_unread(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bad = tmp_path / CIFAR_DIR / "test_batch"
    with open(bad, "r+b") as fh:  # sparse: 1 GiB on paper, nothing on disk
        fh.truncate(2**30)
    assert "bytes" in refused("cifar10", tmp_path, bad)


# --------------------------------------------------------------------------- SVHN (.mat)


def matlab73_file(path: Path) -> None:
    """What MATLAB's `save -v7.3` writes: a 128-byte MAT header in a 512-byte user block,
    version 0x0200, then the HDF5 file (here only its signature)."""
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    header = header.ljust(116, b" ") + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    path.write_bytes(header.ljust(512, b"\x00") + b"\x89HDF\r\n\x1a\n" + bytes(1024))


def test_svhn_matlab_v73_says_resave(tmp_path):
    from test_data_formats import write_svhn

    write_svhn(tmp_path / "svhn")
    bad = tmp_path / "svhn" / "test_32x32.mat"
    matlab73_file(bad)
    message = refused("svhn", tmp_path, bad)
    assert "7.3" in message and "-v7" in message and "ufldl.stanford.edu" in message


def test_svhn_wrong_shape_refused_before_reading(tmp_path):
    from scipy.io import savemat
    from test_data_formats import write_svhn

    write_svhn(tmp_path / "svhn")
    bad = tmp_path / "svhn" / "train_32x32.mat"
    savemat(bad, {"X": np.zeros((28, 28, 1, 5), np.uint8), "y": np.ones((5, 1), np.uint8)})
    assert "28" in refused("svhn", tmp_path, bad)


def test_svhn_compressed_mat_with_bad_checksum(tmp_path):
    from scipy.io import savemat
    from test_data_formats import write_svhn

    write_svhn(tmp_path / "svhn")
    bad = tmp_path / "svhn" / "train_32x32.mat"
    savemat(
        bad,
        {"X": np.zeros((32, 32, 3, 5), np.uint8), "y": np.ones((5, 1), np.uint8)},
        do_compression=True,
    )
    blob = bytearray(bad.read_bytes())
    blob[-1] ^= 0xFF  # the last byte of y's zlib stream: its checksum
    bad.write_bytes(bytes(blob))
    refused("svhn", tmp_path, bad)


# --------------------------------------------------------------------------- Tiny ImageNet


def png_bytes(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG, all black: about 100 KB on disk at 30000 x 30000."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = bytes(1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row * 1000) for _ in range(height // 1000))
    idat += packer.compress(row * (height % 1000)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "side", [30000, 10000, 65]
)  # over PIL's bomb limit, over its warning, off by one
def test_tinyimagenet_large_png_refused_before_decoding(tmp_path, side):
    base = write_tiny(tmp_path)
    bad = base / "train" / "n01" / "images" / "n01_1.JPEG"  # PIL goes by content, not name
    bad.write_bytes(png_bytes(side, side))
    message = refused("tinyimagenet", tmp_path, bad)
    assert "64x64" in message
    if side < 20000:  # beyond that PIL refuses the header before the size can be read
        assert f"{side}x{side}" in message


@pytest.mark.parametrize("listing", ["wnids.txt", "val/val_annotations.txt"])
def test_tinyimagenet_non_utf8_listing(tmp_path, listing):
    base = write_tiny(tmp_path)
    bad = base / listing
    bad.write_bytes(b"\xff\xfe" + bad.read_bytes())
    assert "UTF-8" in refused("tinyimagenet", tmp_path, bad)


def outside_image(tmp_path: Path) -> Path:
    """A valid 64x64 image outside the data root, which an escaping path would load."""
    from PIL import Image

    target = tmp_path / "elsewhere" / "images" / "secret.JPEG"
    target.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(target)
    return target


@pytest.mark.parametrize("style", ["relative", "absolute", "passwd"])
def test_tinyimagenet_annotation_escaping_root(tmp_path, style):
    base = write_tiny(tmp_path)
    target = outside_image(tmp_path)
    name = {
        "relative": "../../../elsewhere/images/secret.JPEG",
        "absolute": str(target),
        "passwd": "../../../../../../../../etc/passwd",
    }[style]
    annotations = base / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    lines[1] = f"{name}\tn01\t0\t0\t63\t63"
    annotations.write_text("\n".join(lines) + "\n")
    assert "outside" in refused("tinyimagenet", tmp_path, annotations)


def test_tinyimagenet_wnid_escaping_root(tmp_path):
    base = write_tiny(tmp_path)
    outside_image(tmp_path)
    wnids = base / "wnids.txt"
    wnids.write_text(wnids.read_text() + "../../elsewhere\n")
    assert "outside" in refused("tinyimagenet", tmp_path, wnids)


def test_tinyimagenet_no_classes(tmp_path):
    base = write_tiny(tmp_path)
    (base / "wnids.txt").write_text("\n")
    assert "no class" in refused("tinyimagenet", tmp_path, base / "wnids.txt")


# --------------------------------------------------------------------------- IDX (MNIST)

MNIST_DIR = "mnist"


def test_idx_images_of_wrong_size(tmp_path):
    write_idx_set(tmp_path / MNIST_DIR, gz=False)
    bad = tmp_path / MNIST_DIR / "train-images-idx3-ubyte"
    bad.write_bytes(idx_bytes(np.zeros((40, 5, 5), np.uint8)))
    assert "28x28" in refused("mnist", tmp_path, bad)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_empty_file_is_named_not_val_fraction(tmp_path, gz):
    write_idx_set(tmp_path / MNIST_DIR, gz=gz)
    for stem, empty in (
        ("train-images-idx3-ubyte", np.zeros((0, 28, 28))),
        ("train-labels-idx1-ubyte", np.zeros(0)),
    ):
        path = tmp_path / MNIST_DIR / (stem + (".gz" if gz else ""))
        blob = idx_bytes(empty)
        path.write_bytes(gzip_bytes(blob) if gz else blob)
    bad = tmp_path / MNIST_DIR / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    message = refused("mnist", tmp_path, bad)
    assert "no images" in message and "val_fraction" not in message


def gzip_bytes(blob: bytes) -> bytes:
    import gzip

    return gzip.compress(blob)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_count_beyond_file_size(tmp_path, gz):
    write_idx_set(tmp_path / MNIST_DIR, gz=gz)
    stem = "t10k-images-idx3-ubyte" + (".gz" if gz else "")
    bad = tmp_path / MNIST_DIR / stem
    header = struct.pack(">BBBBIII", 0, 0, 8, 3, 2**32 - 1, 28, 28)  # 3.1 TiB declared
    blob = header + bytes(10 * 28 * 28)
    bad.write_bytes(gzip_bytes(blob) if gz else blob)
    refused("mnist", tmp_path, bad)


def test_idx_label_count_differs(tmp_path):
    write_idx_set(tmp_path / MNIST_DIR, gz=False)
    bad = tmp_path / MNIST_DIR / "t10k-labels-idx1-ubyte"
    bad.write_bytes(idx_bytes(np.zeros(9, np.uint8)))
    assert "9 labels" in refused("mnist", tmp_path, bad)


def test_cli_exit_code_for_a_hostile_file(tmp_path):
    write_idx_set(tmp_path / MNIST_DIR, gz=False)
    bad = tmp_path / MNIST_DIR / "train-images-idx3-ubyte"
    bad.write_bytes(idx_bytes(np.zeros((40, 5, 5), np.uint8)))
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--dataset",
            "mnist",
            "--method",
            "erm",
            "--smoke",
            "--device",
            "cpu",
            "--data-root",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2, result.output
    assert str(bad) in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- plugins

PLUGINS = {
    "syntax": ("bad_syntax", "def broken(:\n", "syntax error"),
    "raises": (
        "bad_raises",
        "raise RuntimeError('plugin exploded on import')\n",
        "plugin exploded on import",
    ),
    "duplicate": (
        "bad_duplicate",
        "from harness.methods.base import ModelMethod, register_method\n\n\n"
        "@register_method('erm')\nclass Again(ModelMethod):\n    pass\n",
        "'erm'",
    ),
    "relative": (".bad_relative", None, "relative"),
}


@pytest.mark.parametrize("case", PLUGINS)
def test_bad_plugin_exits_2(tmp_path, case):
    module, source, summary = PLUGINS[case]
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    env = {
        **os.environ,
        "HARNESS_PLUGINS": f"{module}",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "methods"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    err = " ".join(result.stderr.split())
    assert "HARNESS_PLUGINS" in err and module in err and summary in err, err
