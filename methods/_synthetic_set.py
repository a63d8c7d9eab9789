"""Shared pieces of methods that produce a training set: initialising it from real examples
or noise (`init_synthetic_set`, used by random, dc, dm, robust_features, rdl and rdl_gm: keep
its signature and its class-major row order), keeping it inside the data bounds, a row-wise
outer optimiser, and a cheap robust-accuracy probe.

Not a method: the leading underscore keeps `methods/__init__` from importing it as one.
"""

from __future__ import annotations

from typing import Literal

import torch

from harness.datasets import DatasetSplits
from harness.protocol.attacks import Bounds, accuracy, pgd, robust_accuracy
from harness.protocol.train import TrainConfig, train_model

Init = Literal["real", "noise"]


def draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def class_balanced_indices(
    labels: torch.Tensor, per_class: int, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """`per_class` indices of each class in class order; drawn without replacement while the
    class has enough examples, topped up with replacement otherwise (tiny subsets)."""
    picks = []
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() == 0:
            raise ValueError(f"class {c} has no training examples to initialise from")
        order = idx[torch.randperm(idx.numel(), generator=generator)]
        if order.numel() < per_class:
            extra = idx[
                torch.randint(0, idx.numel(), (per_class - order.numel(),), generator=generator)
            ]
            order = torch.cat([order, extra])
        picks.append(order[:per_class])
    return torch.cat(picks)


def indices_by_class(labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """Indices of each class's examples, one tensor per class."""
    return [(labels == c).nonzero().flatten() for c in range(num_classes)]


def noise_like(
    x_real: torch.Tensor, n: int, bounds: Bounds, generator: torch.Generator
) -> torch.Tensor:
    """`n` noise inputs: uniform in the box for bounded data, otherwise Gaussian with the
    real data's per-feature mean and standard deviation (so the scale is right)."""
    shape = (n, *x_real.shape[1:])
    if bounds is not None:
        lo, hi = bounds
        return lo + (hi - lo) * torch.rand(shape, generator=generator)
    mean, std = x_real.mean(dim=0), x_real.std(dim=0)
    return mean + std * torch.randn(shape, generator=generator)


def init_synthetic_set(
    data: DatasetSplits, ipc: int | None, init: Init, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The starting synthetic set (x, class ids) on the CPU.

    `ipc=None` is the full-size mode: a copy of the whole training split. Otherwise `ipc`
    examples per class, real ones drawn with `generator` or noise (`init="noise"`), with
    class-balanced labels in class order.
    """
    if ipc is None:
        return data.x_train.clone(), data.y_train.clone()
    labels = torch.arange(data.num_classes).repeat_interleave(ipc)
    if init == "noise":
        return noise_like(data.x_train, labels.numel(), data.bounds, generator), labels
    idx = class_balanced_indices(data.y_train, ipc, data.num_classes, generator)
    return data.x_train[idx].clone(), data.y_train[idx].clone()


def clamp_to_bounds_(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Project `x` into the data box in place (no-op for unbounded features)."""
    if bounds is not None:
        with torch.no_grad():
            x.clamp_(bounds[0], bounds[1])
    return x


def soft_label_logits(y: torch.Tensor, num_classes: int, confidence: float = 0.9) -> torch.Tensor:
    """Logits whose softmax puts `confidence` on the given class and spreads the rest evenly.

    Not one-hot: a saturated softmax would pass almost no gradient to the labels.
    """
    if num_classes < 2:
        raise ValueError("soft labels need at least two classes")
    gap = torch.log(torch.tensor(confidence * (num_classes - 1) / (1.0 - confidence)))
    return torch.nn.functional.one_hot(y, num_classes).float() * gap


class RowOptimizer:
    """Adam or SGD-with-momentum on the rows of one tensor, updating only the rows given.

    Full-size robust dataset learning updates a random minibatch of a 50k-image set per step;
    a stock optimiser would keep moving every other row on stale momentum. Here each row has
    its own step count (lazy Adam), so rows that got no gradient stay where they are.
    """

    def __init__(
        self,
        shape: torch.Size,
        *,
        kind: Literal["adam", "sgd"],
        lr: float,
        momentum: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        device: torch.device | None = None,
    ):
        self.kind, self.lr, self.momentum, self.betas, self.eps = kind, lr, momentum, betas, eps
        self.m = torch.zeros(shape, device=device)
        self.v = torch.zeros(shape, device=device) if kind == "adam" else None
        self.t = torch.zeros(shape[0], device=device)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        return {
            k: None if t is None else t.detach().cpu().clone()
            for k, t in (("m", self.m), ("v", self.v), ("t", self.t))
        }

    def load_state_dict(self, state: dict[str, torch.Tensor | None]) -> None:
        for k in ("m", "v", "t"):
            if state[k] is not None:
                setattr(self, k, state[k].to(self.m.device))

    def step(
        self, target: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor, lr: float | None = None
    ) -> None:
        """target[rows] -= update(grad); `grad` has one row per index in `rows` (unique);
        `lr` overrides the learning rate for this step (schedules)."""
        lr = self.lr if lr is None else lr
        with torch.no_grad():
            if self.kind == "sgd":
                self.m[rows] = self.momentum * self.m[rows] + grad
                target[rows] -= lr * self.m[rows]
                return
            b1, b2 = self.betas
            self.t[rows] += 1
            self.m[rows] = b1 * self.m[rows] + (1 - b1) * grad
            self.v[rows] = b2 * self.v[rows] + (1 - b2) * grad.square()
            t = self.t[rows].reshape(-1, *([1] * (grad.dim() - 1)))
            m_hat = self.m[rows] / (1 - b1**t)
            v_hat = self.v[rows] / (1 - b2**t)
            target[rows] -= lr * m_hat / (v_hat.sqrt() + self.eps)


def robust_probe(
    net: torch.nn.Module,
    x_syn: torch.Tensor,
    y_syn: torch.Tensor,
    data: DatasetSplits,
    *,
    eps: float,
    norm: str,
    steps: int,
    lr: float,
    n_val: int,
    attack_steps: int,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, float]:
    """Clean and PGD accuracy on `n_val` validation examples of `net` (fresh, passed in)
    after `steps` full-batch natural SGD steps on the synthetic set: a quick progress signal,
    not the harness's evaluation."""
    cfg = TrainConfig(
        epochs=steps,
        batch_size=x_syn.shape[0],
        optimizer="sgd",
        lr=lr,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="constant",
    )
    train_model(net, x_syn.detach(), y_syn.detach(), cfg, generator=generator, device=device)
    xv, yv = data.x_val[:n_val].to(device), data.y_val[:n_val].to(device)

    def attack(model, xb, yb):
        return pgd(
            model,
            xb,
            yb,
            norm=norm,
            eps=eps,
            steps=attack_steps,
            bounds=data.bounds,
            generator=generator,
        )

    return accuracy(net, xv, yv), robust_accuracy(net, xv, yv, attack)
