"""Datasets that need no files: `synthetic-robust`, generated in code, and `digits`, shipped
with scikit-learn. Tests and the quick sweep run on these, so they are never missing."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from harness.datasets.registry import NoParams, RawData, register_dataset


class SyntheticParams(NoParams):
    """Parameters of the abstraction model (Tsipras et al. 2019, arXiv 1805.12152)."""

    # d = 400: eps = 2 * eta = 0.4 leaves the robust feature an attacked margin of
    # 2p - 1 - eps = 0.4, so adversarial training has a robust classifier to find. At d = 100
    # (eps 0.8 = 2p - 1, the knife edge) that margin averages zero and every convex margin
    # loss of a linear model is minimised by ignoring the robust feature: PGD-AT collapses to
    # a constant classifier. Ask for d: 100 to study that case (tests/test_adversarial_training.py).
    d: int = Field(400, ge=1, le=100_000, description="number of non-robust features")
    p: float = Field(0.9, gt=0.5, le=1.0, description="P(robust feature agrees with the label)")
    n_train: int = Field(5000, ge=20, le=10_000_000)
    n_test: int = Field(2000, ge=10, le=10_000_000)
    seed: int = Field(0, description="seed of the generated examples")


def synthetic_eta(d: int) -> float:
    """Mean of each non-robust feature: 4/sqrt(d), so together they are highly predictive."""
    return 4.0 / math.sqrt(d)


def sample_synthetic(
    n: int, d: int, p: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """y in {-1,+1}; x1 = y w.p. p else -y; x2..x(d+1) ~ N(eta*y, 1). Returns (x, class 0/1)."""
    y = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
    agree = torch.rand(n, generator=gen) < p
    x1 = torch.where(agree, y, -y).float().unsqueeze(1)
    rest = synthetic_eta(d) * y.float().unsqueeze(1) + torch.randn(n, d, generator=gen)
    return torch.cat([x1, rest], dim=1), (y > 0).long()


def synthetic_eps(params: dict[str, Any]) -> float:
    """The attack radius 2 * eta of the model's d (the default d when the spec gives none)."""
    d = params.get("d")
    return 2 * synthetic_eta(SyntheticParams.model_fields["d"].default if d is None else int(d))


@register_dataset(
    "synthetic-robust",
    default_eps=synthetic_eps({}),  # the default d's; `eps_for` follows the spec's d
    eps_for=synthetic_eps,
    default_archs=("linear", "mlp"),
    params=SyntheticParams,
    bounds=None,
    images=False,
    embedded=True,
    description="Tsipras et al. abstraction model: one robust feature, d weak non-robust ones",
)
def load_synthetic(root: Path, download: bool, params: SyntheticParams) -> RawData:
    gen = torch.Generator().manual_seed(params.seed)
    x_tr, y_tr = sample_synthetic(params.n_train, params.d, params.p, gen)
    x_te, y_te = sample_synthetic(params.n_test, params.d, params.p, gen)
    return RawData(x_tr, y_tr, x_te, y_te, num_classes=2)


@register_dataset(
    "digits",
    # At 0.1 natural training keeps 0.65 PGD-20 accuracy on the validation split, too weak a
    # threat to separate methods; at 0.2 it falls to 0.06 (`harness run --dataset digits
    # --method erm --seed 3 --set dataset.split_seed=3 --set threat.eps=0.1|0.2`, mean of the
    # default convnet and mlp; validation accuracy, split seed 3).
    default_eps=0.2,
    default_archs=("convnet", "mlp"),
    embedded=True,
    description="scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes)",
)
def load_digits(root: Path, download: bool, params: NoParams) -> RawData:
    images, target = digits_arrays()
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    y = torch.tensor(target, dtype=torch.long)
    # sklearn ships one pool; hold out a fixed, stratified-by-shuffle 20% as the test split.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1234))
    n_test = len(y) // 5
    te, tr = perm[:n_test], perm[n_test:]
    return RawData(x[tr], y[tr], x[te], y[te], num_classes=10)


def digits_arrays():
    """(images (1797, 8, 8), labels) of scikit-learn's digits, read from the CSV scikit-learn
    ships (one row per image: 64 pixel values, then the label) without importing
    scikit-learn, whose import costs a fresh worker 0.6 s (measured on the 2-core CPU);
    through `sklearn.datasets.load_digits` if the file is not where it has always been."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # locates the package, runs none of it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",", dtype=np.float64)
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    return bunch.images, bunch.target
