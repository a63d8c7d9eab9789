"""The one training loop.

Every method trains through `train_model`: natural training, adversarial training and the
downstream evaluation of a learned dataset differ only in the `loss_step` they pass, never in
the loop. The loop owns the optimiser, the schedule, batching from a seeded `torch.Generator`,
mixed precision on CUDA, and the work count.

Work is counted in forward passes over examples (each followed by at most one backward),
measured by a forward hook on the model; `WorkMeter.epochs(n)` turns it into "natural epochs
over the full training set", a hardware-independent cost: one epoch of natural training costs
1.0, one epoch of PGD-10 adversarial training about 11.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

LossStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EpochHook = Callable[[int, nn.Module], None]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (units in the comments)."""

    epochs: int = 30  # passes over the training data
    batch_size: int = 128  # examples per step
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4  # L2 penalty, as in most CIFAR recipes
    # cosine: to zero; step: x0.1 at 50% and 75%; cyclic: triangular 0 -> lr -> 0 (Wong et al.
    # 2020's fast-AT schedule); constant.
    schedule: Literal["cosine", "step", "cyclic", "constant"] = "cosine"


class WorkMeter:
    """Counts the examples every attached model sees in forward passes."""

    def __init__(self) -> None:
        self.examples = 0
        self.counting = True

    def _hook(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.counting and args and isinstance(args[0], torch.Tensor):
            self.examples += int(args[0].shape[0])

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes in here (validation probes) are not part of the training cost."""
        was, self.counting = self.counting, False
        try:
            yield
        finally:
            self.counting = was

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        handle = model.register_forward_hook(self._hook)
        try:
            yield
        finally:
            handle.remove()

    def epochs(self, n_train_full: int) -> float:
        return self.examples / max(1, n_train_full)


def pick_device(requested: str | None = None) -> torch.device:
    """`auto` (or None): CUDA when present, else CPU; otherwise exactly what was asked."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling needed), full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.dim() == 4 and device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for hard labels (N,) or class-probability labels (N, C)."""
    if target.dim() == 1:
        return F.cross_entropy(logits, target)
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def natural_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return soft_cross_entropy(model(x), y)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=False
    )


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the peak learning rate at optimiser step `step` of `total`."""
    t = step / max(1, total)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.01 if t >= 0.75 else 0.1 if t >= 0.5 else 1.0
    if schedule == "cyclic":
        return 2 * t if t < 0.5 else 2 * (1 - t)
    return 1.0


@dataclass
class TrainStats:
    seconds: float
    steps: int
    final_loss: float


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    *,
    generator: torch.Generator,
    device: torch.device,
    loss_step: LossStep = natural_loss,
    meter: WorkMeter | None = None,
    on_epoch: EpochHook | None = None,
) -> TrainStats:
    """Train `model` in place on (x, y) with `loss_step` and return timing statistics.

    `loss_step(model, xb, yb)` returns the scalar loss of one batch; it may switch the model
    to eval mode to craft adversarial examples but must leave it in train mode. `on_epoch`
    is called after every epoch (for validation probes and early stopping by a scheduler).
    """
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    x, y = to_device(x, device), y.to(device)
    n = x.shape[0]
    batch = min(cfg.batch_size, n)
    steps_per_epoch = math.ceil(n / batch)
    total = cfg.epochs * steps_per_epoch
    opt = make_optimizer(model.parameters(), cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(cfg.schedule, s, total)
    )
    start = time.perf_counter()
    last = float("nan")
    with meter.attach(model) if meter else nullcontext():
        for epoch in range(cfg.epochs):
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            for i in range(steps_per_epoch):
                idx = order[i * batch : (i + 1) * batch]
                with autocast(device):
                    loss = loss_step(model, x[idx], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            last = float(loss.detach())
            if not math.isfinite(last):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch + 1} (loss {last}); lower the learning rate"
                )
            if on_epoch is not None:
                model.eval()
                with meter.paused() if meter else nullcontext():
                    on_epoch(epoch + 1, model)
    model.eval()
    return TrainStats(seconds=time.perf_counter() - start, steps=total, final_loss=last)
