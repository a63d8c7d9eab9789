"""Dataset loaders, through `load_dataset`, on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.datasets import DATASETS, files_present, idx, load_dataset, tinyimagenet
from harness.errors import HarnessInputError

N_TRAIN, N_TEST = 40, 10
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def no_system_dirs(monkeypatch):
    """Keep the Debian Fashion-MNIST files out of tests that expect their own fixtures."""
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {})


def pixels(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def labels(n: int, num_classes: int) -> np.ndarray:
    return (np.arange(n) % num_classes).astype(np.uint8)  # every class present


def assert_images(x: torch.Tensor, shape: tuple[int, ...]) -> None:
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == shape
    assert 0.0 <= x.min() and x.max() <= 1.0


def assert_same_pool(splits, y_source: np.ndarray) -> None:
    """Train + val together hold exactly the official training labels."""
    got = torch.cat([splits.y_train, splits.y_val]).sort().values
    assert torch.equal(got, torch.from_numpy(y_source.astype(np.int64)).sort().values)


# --------------------------------------------------------------------------- MNIST (IDX)


def idx_bytes(array: np.ndarray) -> bytes:
    magic = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)  # unsigned bytes, ndim dimensions
    dims = struct.pack(f">{array.ndim}I", *array.shape)
    return magic + dims + array.astype(np.uint8).tobytes()


def write_idx_set(folder: Path, gz: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": pixels(rng, N_TRAIN, 28, 28),
        "train-labels-idx1-ubyte": labels(N_TRAIN, 10),
        "t10k-images-idx3-ubyte": pixels(rng, N_TEST, 28, 28),
        "t10k-labels-idx1-ubyte": labels(N_TEST, 10)[::-1].copy(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        blob = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)
    return arrays


@pytest.mark.parametrize(
    "name, sub, gz",
    [
        ("mnist", "MNIST/raw", True),
        ("mnist", "mnist", False),
        ("fashion-mnist", "FashionMNIST/raw", True),
        ("fashion-mnist", "fashion-mnist", False),
    ],
)
def test_idx_loads_exact_pixels(tmp_path, name, sub, gz):
    assert not files_present(name, tmp_path)
    arrays = write_idx_set(tmp_path / sub, gz)
    assert files_present(name, tmp_path)

    s = load_dataset(name, root=tmp_path)
    assert_images(s.x_train, (1, 28, 28))
    assert s.x_test.shape == (N_TEST, 1, 28, 28) and s.y_test.dtype == torch.int64
    assert s.x_train.shape[0] + s.x_val.shape[0] == N_TRAIN
    expected = torch.from_numpy(arrays["t10k-images-idx3-ubyte"][3].astype(np.float32) / 255)
    assert torch.equal(s.x_test[3, 0], expected)
    assert s.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert_same_pool(s, arrays["train-labels-idx1-ubyte"])


def test_fashion_mnist_reads_system_dir(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    write_idx_set(system, gz=True)
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (system,)})
    root = tmp_path / "empty-root"
    assert files_present("fashion-mnist", root) and not files_present("mnist", root)
    assert load_dataset("fashion-mnist", root=root).x_test.shape == (N_TEST, 1, 28, 28)


@pytest.mark.parametrize(
    "name, searched", [("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw")]
)
def test_idx_missing_names_dirs_and_fix(tmp_path, name, searched):
    with pytest.raises(HarnessInputError) as err:
        load_dataset(name, root=tmp_path)
    assert str(tmp_path / searched) in str(err.value)
    assert "dataset.download=true" in str(err.value)
    if name == "fashion-mnist":
        assert "apt-get install dataset-fashion-mnist" in str(err.value)


@pytest.mark.parametrize(
    "damage",
    [
        lambda blob: b"\x00\x00\x09\x03" + blob[4:],  # wrong magic (dtype code)
        lambda blob: blob[:-100],  # truncated data
    ],
)
def test_idx_corrupt_names_file(tmp_path, damage):
    write_idx_set(tmp_path / "mnist", gz=False)
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte"
    bad.write_bytes(damage(bad.read_bytes()))
    with pytest.raises(HarnessInputError, match="Delete it") as err:
        load_dataset("mnist", root=tmp_path)
    assert str(bad) in str(err.value)


def test_idx_truncated_gzip_names_file(tmp_path):
    write_idx_set(tmp_path / "MNIST" / "raw", gz=True)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(HarnessInputError) as err:
        load_dataset("mnist", root=tmp_path)
    assert str(bad) in str(err.value)


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "SYSTEM_DIRS", {"fashion-mnist": (DEBIAN_FASHION,)})
    s = load_dataset("fashion-mnist", root=tmp_path, val_fraction=0.1)
    assert s.x_train.shape == (54000, 1, 28, 28) and s.x_val.shape == (6000, 1, 28, 28)
    assert s.x_test.shape == (10000, 1, 28, 28) and s.n_train_full == 54000
    assert s.y_test.bincount().tolist() == [1000] * 10  # the official test split is balanced
    assert 0.0 <= s.x_test.min() and s.x_test.max() == 1.0


# --------------------------------------------------------------------------- CIFAR (pickles)

CIFAR_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        "test_batch",
        b"labels",
        10,
    ),
    "cifar100": ("cifar-100-python", ["train"], "test", b"fine_labels", 100),
}


def py2_batch(data: np.ndarray, y: np.ndarray, label_key: bytes) -> bytes:
    """A batch as Python 2 with numpy 1 pickled the original CIFAR files, opcode by opcode."""

    def text(b: bytes) -> bytes:  # SHORT_BINSTRING: a Python 2 str
        return b"U" + bytes([len(b)]) + b

    def num(n: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", n)

    dtype = b"cnumpy\ndtype\n" + text(b"u1") + num(0) + num(1) + b"\x87R"
    dtype += b"(" + num(3) + text(b"|") + b"NNN" + num(-1) + num(-1) + num(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + num(0) + b"\x85"
    array += text(b"b") + b"\x87R(" + num(1) + num(data.shape[0]) + num(data.shape[1]) + b"\x86"
    array += dtype + b"\x89T" + struct.pack("<i", data.size) + data.tobytes() + b"tb"
    labels = b"](" + b"".join(num(int(v)) for v in y) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(label_key) + labels + b"u."


def write_cifar_batch(path: Path, data: np.ndarray, y: np.ndarray, label_key: bytes) -> None:
    if label_key == b"labels":  # CIFAR-10 fixtures: the exact bytes of the Python 2 originals
        path.write_bytes(py2_batch(data, y, label_key))
        return
    # CIFAR-100 fixtures: the same dict as pickled by Python 3 at protocol 2.
    batch = {
        b"batch_label": b"fixture",
        label_key: [int(v) for v in y],
        b"data": data,
        b"coarse_labels": [int(v) // 5 for v in y],
        b"filenames": [b"img_%d.png" % i for i in range(len(y))],
    }
    with open(path, "wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def write_cifar(root: Path, name: str) -> dict[str, np.ndarray]:
    folder_name, train_files, test_file, key, k = CIFAR_LAYOUT[name]
    rng = np.random.default_rng(1)
    folder = root / folder_name
    folder.mkdir(parents=True)
    n_train = 5 * k  # the validation split takes at least one example per class
    per_file = n_train // len(train_files)
    y_train = (np.arange(n_train) * 7 % k).astype(np.int64)
    for i, f in enumerate(train_files):
        sl = slice(i * per_file, (i + 1) * per_file)
        write_cifar_batch(folder / f, pixels(rng, per_file, 3072), y_train[sl], key)
    x_test, y_test = pixels(rng, N_TEST, 3072), (np.arange(N_TEST) * 3 % k)
    write_cifar_batch(folder / test_file, x_test, y_test, key)
    return {"x_test": x_test, "y_test": y_test, "y_train": y_train}


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_exact_pixels(tmp_path, name):
    assert not files_present(name, tmp_path)
    arrays = write_cifar(tmp_path, name)
    assert files_present(name, tmp_path)

    s = load_dataset(name, root=tmp_path, val_fraction=0.2)
    assert_images(s.x_train, (3, 32, 32))
    assert s.num_classes == CIFAR_LAYOUT[name][4]
    # A CIFAR row is 1024 red, then green, then blue values: pixel (c, h, w) is row[c*1024+h*32+w].
    row = arrays["x_test"][2]
    assert s.x_test[2, 1, 5, 7].item() == pytest.approx(row[1024 + 5 * 32 + 7] / 255, abs=1e-7)
    expected = torch.from_numpy(row.reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(s.x_test[2], expected)
    assert s.y_test.tolist() == arrays["y_test"].tolist()
    assert_same_pool(s, arrays["y_train"])


def test_cifar_missing_names_dir(tmp_path):
    with pytest.raises(HarnessInputError) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value)


def test_cifar_truncated_batch_names_file(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:500])
    with pytest.raises(HarnessInputError, match="Delete it") as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(bad) in str(err.value)


class Payload:
    """A pickle that would create a directory when loaded with plain pickle.load."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_cifar_refuses_foreign_globals(tmp_path):
    write_cifar(tmp_path, "cifar100")
    bad = tmp_path / "cifar-100-python" / "test"
    marker = tmp_path / "pwned"
    bad.write_bytes(pickle.dumps({b"data": Payload(str(marker))}, protocol=2))
    with pytest.raises(HarnessInputError, match="not allowed") as err:
        load_dataset("cifar100", root=tmp_path)
    assert str(bad) in str(err.value) and not marker.exists()


# --------------------------------------------------------------------------- SVHN (.mat)


def write_svhn(folder: Path) -> dict[str, np.ndarray]:
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x = pixels(rng, 32, 32, 3, n)  # SVHN stores H x W x C x N
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # digits 1..9, then 10 for "0"
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


@pytest.mark.parametrize("sub", ["svhn", "."])
def test_svhn_maps_ten_to_zero(tmp_path, sub):
    assert not files_present("svhn", tmp_path)
    arrays = write_svhn(tmp_path / sub)
    assert files_present("svhn", tmp_path)

    s = load_dataset("svhn", root=tmp_path)
    assert_images(s.x_train, (3, 32, 32))
    assert s.y_test.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    expected = arrays["x_test"][:, :, :, 4].transpose(2, 0, 1).astype(np.float32) / 255
    assert torch.equal(s.x_test[4], torch.from_numpy(np.ascontiguousarray(expected)))
    assert_same_pool(s, arrays["y_train"].reshape(-1) % 10)


def test_svhn_missing_and_corrupt(tmp_path):
    with pytest.raises(HarnessInputError) as err:
        load_dataset("svhn", root=tmp_path)
    assert str(tmp_path / "svhn") in str(err.value)

    write_svhn(tmp_path / "svhn")
    bad = tmp_path / "svhn" / "train_32x32.mat"
    bad.write_bytes(bad.read_bytes()[:300])
    with pytest.raises(HarnessInputError, match="Delete it") as err:
        load_dataset("svhn", root=tmp_path)
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------- Tiny ImageNet (JPEG)

WNIDS = ["n02", "n01", "n03"]  # unsorted on purpose: labels follow the sorted order


def colour(label: int, i: int) -> tuple[int, int, int]:
    return (40 + 80 * label, 20 * i, 200 - 30 * i)


def write_tiny(root: Path, per_class: int = 4, val_per_class: int = 2) -> Path:
    from PIL import Image

    base = root / "tiny-imagenet-200"
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        label = sorted(WNIDS).index(wnid)
        folder = base / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (64, 64), colour(label, i))
            img.save(folder / f"{wnid}_{i}.JPEG", quality=95)
    lines = []
    for j in range(val_per_class * len(WNIDS)):
        wnid = WNIDS[j % len(WNIDS)]
        label = sorted(WNIDS).index(wnid)
        # The first val image is greyscale, as a few real Tiny ImageNet images are.
        rgb = Image.new("RGB", (64, 64), colour(label, 1))
        img = Image.new("L", (64, 64), 128) if j == 0 else rgb
        img.save(base / "val" / "images" / f"val_{j}.JPEG", quality=95)
        lines.append(f"val_{j}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tinyimagenet_loads_and_caches(tmp_path, monkeypatch):
    assert not files_present("tinyimagenet", tmp_path)
    base = write_tiny(tmp_path)
    assert files_present("tinyimagenet", tmp_path)

    s = load_dataset("tinyimagenet", root=tmp_path, val_fraction=0.25)
    assert_images(s.x_train, (3, 64, 64))
    assert s.num_classes == 3 and s.x_test.shape == (6, 3, 64, 64)  # one class per wnid
    assert s.y_test.tolist() == [1, 0, 2, 1, 0, 2]  # n02, n01, n03 under sorted wnids
    grey = torch.full((3, 64, 64), 128 / 255)
    assert torch.allclose(s.x_test[0], grey, atol=3 / 255)  # converted to three equal channels
    want = torch.tensor(colour(0, 1), dtype=torch.float32).view(3, 1, 1) / 255
    assert (s.x_test[1] - want).abs().max() < 6 / 255  # JPEG is lossy
    assert_same_pool(s, np.repeat([0, 1, 2], 4))
    assert (base / ".harness-cache.pt").is_file()

    def no_decoding(pairs, base):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(tinyimagenet, "decode_jpegs", no_decoding)
    again = load_dataset("tinyimagenet", root=tmp_path, val_fraction=0.25)
    assert torch.equal(again.x_test, s.x_test) and torch.equal(again.x_train, s.x_train)

    # One more training image changes the file count, so the cache is rebuilt.
    extra = base / "train" / "n01" / "images" / "extra.JPEG"
    extra.write_bytes((base / "val" / "images" / "val_1.JPEG").read_bytes())
    with pytest.raises(AssertionError, match="cache should have been used"):
        load_dataset("tinyimagenet", root=tmp_path, val_fraction=0.25)


def test_tinyimagenet_missing_annotations_names_file(tmp_path):
    base = write_tiny(tmp_path)
    (base / "val" / "val_annotations.txt").unlink()
    with pytest.raises(HarnessInputError) as err:
        load_dataset("tinyimagenet", root=tmp_path)
    assert str(base / "val" / "val_annotations.txt") in str(err.value)


def test_tinyimagenet_corrupt_jpeg_names_file(tmp_path):
    base = write_tiny(tmp_path)
    bad = base / "train" / "n03" / "images" / "n03_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(HarnessInputError, match=f"Delete {base} and fetch") as err:
        load_dataset("tinyimagenet", root=tmp_path)
    assert str(bad) in str(err.value)
    assert not (base / ".harness-cache.pt").exists()


def test_tinyimagenet_missing_names_folder(tmp_path):
    with pytest.raises(HarnessInputError) as err:
        load_dataset("tinyimagenet", root=tmp_path)
    assert str(tmp_path / "tiny-imagenet-200") in str(err.value)
    assert "tiny-imagenet-200.zip" in str(err.value)


# --------------------------------------------------------------------------- split, subset, registr


def test_split_is_seeded_and_subset_is_per_class(tmp_path):
    write_idx_set(tmp_path / "mnist", gz=False)
    a = load_dataset("mnist", root=tmp_path, split_seed=3)
    b = load_dataset("mnist", root=tmp_path, split_seed=3)
    c = load_dataset("mnist", root=tmp_path, split_seed=4)
    assert a.x_val.shape[0] == 10  # at least one example per class: max(10, 0.1 * 40)
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)
    sub = load_dataset("mnist", root=tmp_path, split_seed=3, subset=1)
    assert sub.y_train.bincount(minlength=10).max() == 1 and sub.n_train_full == 30
    assert torch.equal(sub.x_val, a.x_val)  # subsetting never moves the validation split


def test_digits_read_without_sklearn_equal_sklearns_loader():
    """The digits are read from scikit-learn's bundled file without importing scikit-learn
    (a fresh trial worker's start-up); they must be exactly what its loader returns."""
    import numpy as np
    from sklearn.datasets import load_digits

    from harness.datasets.embedded import digits_arrays

    images, labels = digits_arrays()
    reference = load_digits()
    assert np.array_equal(images, reference.images) and images.shape == (1797, 8, 8)
    assert np.array_equal(labels, reference.target)


def test_digits_split_and_subset():
    a = load_dataset("digits", split_seed=0)
    assert_images(a.x_train, (1, 8, 8))
    n_test = 1797 // 5  # digits ships one pool of 1797; the loader holds out a fifth
    assert a.x_test.shape[0] == n_test and a.x_train.shape[0] + a.x_val.shape[0] == 1797 - n_test
    assert a.x_val.shape[0] == round(0.1 * (1797 - n_test))
    assert torch.equal(a.x_val, load_dataset("digits", split_seed=0).x_val)
    assert not torch.equal(a.x_val, load_dataset("digits", split_seed=1).x_val)
    sub = load_dataset("digits", subset=5)
    assert sub.y_train.bincount(minlength=10).tolist() == [5] * 10
    assert files_present("digits", "/nonexistent")


def test_synthetic_robust_shapes_and_seeds():
    params = {"d": 20, "n_train": 200, "n_test": 50}
    a = load_dataset("synthetic-robust", params=params, split_seed=0)
    assert a.x_train.shape == (180, 21) and a.x_val.shape == (20, 21) and a.x_test.shape == (50, 21)
    assert a.bounds is None and set(a.y_train.unique().tolist()) <= {0, 1}
    assert a.default_eps == pytest.approx(2 * 4 / 20**0.5)
    same = load_dataset("synthetic-robust", params=params, split_seed=0)
    assert torch.equal(a.x_val, same.x_val) and torch.equal(a.x_test, same.x_test)
    other_split = load_dataset("synthetic-robust", params=params, split_seed=1)
    assert torch.equal(a.x_test, other_split.x_test) and not torch.equal(a.x_val, other_split.x_val)
    other_data = load_dataset("synthetic-robust", params={**params, "seed": 1}, split_seed=0)
    assert not torch.equal(a.x_test, other_data.x_test)
    sub = load_dataset("synthetic-robust", params=params, subset=7)
    assert sub.y_train.bincount().tolist() == [7, 7]


@pytest.mark.parametrize(
    "name, eps, archs",
    [
        ("mnist", 0.3, ("lenet", "convnet")),
        ("fashion-mnist", 0.1, ("lenet", "convnet")),
        ("cifar10", 8 / 255, ("convnet", "resnet18")),
        ("cifar100", 8 / 255, ("convnet", "resnet18")),
        ("svhn", 8 / 255, ("convnet", "resnet18")),
        ("tinyimagenet", 4 / 255, ("convnet", "resnet18")),
    ],
)
def test_registered_defaults(name, eps, archs):
    info = DATASETS.get(name)
    assert info.default_eps == pytest.approx(eps) and info.default_archs == archs
    assert info.present is not None and info.fetch_hint and not info.embedded
