"""The one training loop.

Every method trains through `train_model`: natural training, adversarial training and the
downstream evaluation of a learned dataset differ only in the `loss_step` they pass, never in
the loop. The loop owns the optimiser, the schedule, batching from a seeded `torch.Generator`,
mixed precision on CUDA, the work count, per-batch data augmentation and early stopping on a
validation score.

Work is counted in forward passes over examples (each followed by at most one backward),
measured by a forward hook on the model; `WorkMeter.epochs(n)` turns it into "natural epochs
over the full training set", a hardware-independent cost: one epoch of natural training costs
1.0, one epoch of PGD-10 adversarial training about 11.
"""

from __future__ import annotations

import math
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessInputError
from harness.registry import Registry

LossStep = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
EpochHook = Callable[[int, nn.Module], None]
# A validation score of the model after an epoch (higher is better), for early stopping.
Selector = Callable[[int, nn.Module], float]
# A random transform of one raw training batch (N, C, H, W), drawn from the loop's generator.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training run (units in the comments)."""

    epochs: int = 30  # passes over the training data
    batch_size: int = 128  # examples per step
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05  # peak learning rate
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4  # L2 penalty, as in most CIFAR recipes
    # cosine: to zero; step: x0.1 at 50% and 75%; halfway: x0.1 once at 50% (the evaluation
    # schedule of dataset condensation, Zhao et al. 2021, arXiv 2006.05929); cyclic: triangular
    # 0 -> lr -> 0 (Wong et al. 2020's fast-AT schedule); constant.
    schedule: Literal["cosine", "step", "halfway", "cyclic", "constant"] = "cosine"
    augment: str = "none"  # a name in AUGMENTS, applied to every training batch


# ----------------------------------------------------------------------------- augmentation

CROP_PAD = 4  # pixels of zero padding of the CIFAR recipe (32x32 images)


def crop_padding(height: int, width: int) -> int:
    """4 pixels on 32x32 and larger images; 1/8 of the shorter side (at least 1) below that,
    so 8x8 digits shift by 1 pixel rather than by half the image."""
    return min(CROP_PAD, max(1, round(min(height, width) / 8)))


def _draw(generator: torch.Generator, high: int, n: int, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def random_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per example: zero-pad by `crop_padding` pixels, cut a random window of the original size."""
    n, c, h, w = x.shape
    pad = crop_padding(h, w)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (_draw(generator, 2 * pad + 1, n, x.device) for _ in range(2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per example: mirror left-right with probability 1/2."""
    flip = _draw(generator, 2, x.shape[0], x.device).bool()[:, None, None, None]
    return torch.where(flip, x.flip(-1), x)


AUGMENTS: Registry[Augment | None] = Registry("augmentation")
# The standard-data-augmentation recipe of adversarial training on CIFAR-10 (Madry et al.
# 2018; Zhang et al. 2019; Rice et al. 2020, arXiv 2002.11569): random crop with 4-pixel
# zero padding and random horizontal flip. Digits change meaning when mirrored, and the
# MNIST recipes train without augmentation; `crop` alone is offered for such data.
AUGMENTS.register("none")(None)
AUGMENTS.register("crop")(random_crop)
AUGMENTS.register("crop_flip")(lambda x, g: random_flip(random_crop(x, g), g))


def resolve_augment(name: str, x: torch.Tensor) -> Augment | None:
    """The named augmentation, refused for inputs that are not images (N, C, H, W)."""
    augment = AUGMENTS.get(name, field="train.augment")
    if augment is not None and x.dim() != 4:
        raise HarnessInputError(
            f"augmentation {name!r} crops and flips images, but the training inputs have shape "
            f"{tuple(x.shape[1:])}; set train.augment to 'none' for feature vectors.",
            field="train.augment",
        )
    return augment


class WorkMeter:
    """Counts the examples the watched models see in forward passes (their work).

    The hook sits on a model's input layer (its first module with parameters of its own), so
    a pass through the whole network and a pass through its feature extractor alone (as DM
    and robust_features make) both count once, and watching a model twice counts it once.
    `by_arch` splits the count by the arch a watched model was labelled with (None: not
    labelled, or added by hand), for a cost in FLOPs (`harness.estimate.cost`); `forward_only`
    holds the part of it that went through with autograd off (no backward can follow, as
    DM's real batches under `torch.no_grad`), a third of a training pass's FLOPs."""

    def __init__(self, *, count_only: bool = False) -> None:
        # A count-only estimate's meter (`harness.estimate.cost`): `train_model` runs one batch
        # and charges the rest of the run at its rate; `alike` loops run their first item.
        self.count_only = count_only
        self.examples = 0
        self.by_arch: Counter[str | None] = Counter()
        self.forward_only: Counter[str | None] = Counter()
        self.counting = True
        self._hooks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> handle

    def _hook(self, arch: str | None, module: nn.Module, args: tuple, output: object) -> None:
        if self.counting and args and isinstance(args[0], torch.Tensor):
            self.add(int(args[0].shape[0]), arch, forward_only=not torch.is_grad_enabled())

    def add(self, examples: int, arch: str | None = None, *, forward_only: bool = False) -> None:
        """Work the hooks cannot see, in examples (e.g. a second-order backward pass)."""
        if self.counting:
            self.examples += int(examples)
            self.by_arch[arch] += int(examples)
            if forward_only:
                self.forward_only[arch] += int(examples)

    def state(self) -> dict[str, Any]:
        """The counts as plain values (a trial checkpoint's part, `harness.protocol.checkpoint`)."""
        return {
            "examples": self.examples,
            "by_arch": [[k, v] for k, v in self.by_arch.items()],
            "forward_only": [[k, v] for k, v in self.forward_only.items()],
        }

    def load_state(self, saved: dict[str, Any]) -> None:
        self.examples = int(saved["examples"])
        self.by_arch = Counter({k: int(v) for k, v in saved["by_arch"]})
        self.forward_only = Counter({k: int(v) for k, v in saved["forward_only"]})

    def charge_rest(self, before: WorkCount, done: int, total: int) -> None:
        """Charge `total - done` more units of work at the rate of the `done` units counted
        since `before` (a `snapshot()`), arch by arch, forward-only passes apart."""
        spent = self.snapshot() - before
        for arch, n in spent.by_arch.items():
            fwd = spent.forward_only[arch]
            self.add((n - fwd) * (total - done) // done, arch)
            self.add(fwd * (total - done) // done, arch, forward_only=True)

    def alike(self, items: range) -> Iterator[int]:
        """`items`, for a loop whose items cost alike per unit (a condensation step's classes,
        matching batches `range(0, n, batch)`: an item at i covers i up to the next one). A
        count-only meter runs the first item alone and charges the whole range at its cost,
        so a cost estimate need not run every class of a 200-class dataset."""
        if not (self.count_only and len(items) > 1):
            yield from items
            return
        total = items.stop - items.start
        done = min(items.step, total)
        before = self.snapshot()
        yield items[0]
        self.charge_rest(before, done, total)

    def snapshot(self) -> WorkCount:
        return WorkCount(Counter(self.by_arch), Counter(self.forward_only))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes in here (validation probes) are not part of the training cost."""
        was, self.counting = self.counting, False
        try:
            yield
        finally:
            self.counting = was

    def watch(self, model: nn.Module, arch: str | None = None) -> nn.Module:
        """Count `model`'s forward passes from now on, for as long as it lives (under `arch`
        in `by_arch`)."""
        layer = input_layer(model)
        if layer not in self._hooks:
            self._hooks[layer] = layer.register_forward_hook(partial(self._hook, arch))
        return model

    @contextmanager
    def attach(self, model: nn.Module) -> Iterator[None]:
        """Count `model`'s forward passes inside the block (a no-op if already watched)."""
        layer = input_layer(model)
        if layer in self._hooks:
            yield
            return
        self._hooks[layer] = layer.register_forward_hook(partial(self._hook, None))
        try:
            yield
        finally:
            self._hooks.pop(layer).remove()

    def epochs(self, n_train_full: int) -> float:
        return self.examples / max(1, n_train_full)


@dataclass(frozen=True)
class WorkCount:
    """A `WorkMeter`'s count at one moment: examples by arch, and the forward-only part."""

    by_arch: Counter
    forward_only: Counter

    def __sub__(self, other: WorkCount) -> WorkCount:
        return WorkCount(self.by_arch - other.by_arch, self.forward_only - other.forward_only)


def input_layer(model: nn.Module) -> nn.Module:
    """The first module of `model` with parameters of its own (the model if it has none)."""
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            return module
    return model


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
    if schedule == "halfway":
        return 0.1 if t >= 0.5 else 1.0
    if schedule == "cyclic":
        return 2 * t if t < 0.5 else 2 * (1 - t)
    return 1.0


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@dataclass
class ResumePoint:
    """Where one training run keeps its epoch-boundary state in a trial's checkpoint (the
    `training` section, see `harness.protocol.checkpoint`). `tag` names the run (e.g. `mlp/0`): a
    saved state of another run is not taken. `generators`: random streams the loss step
    draws from besides the loop's own (an adversarial method's attack noise)."""

    store: Any  # harness.protocol.checkpoint.TrialCheckpoint
    tag: str
    generators: tuple[torch.Generator, ...] = ()

    def saved(self) -> dict[str, Any] | None:
        state = self.store.get("training")
        return state if state is not None and state.get("tag") == self.tag else None

    def offer(self, make: Callable[[], dict[str, Any]]) -> None:
        self.store.offer("training", make)

    def generator_states(self, loop: torch.Generator) -> list[torch.Tensor]:
        return [g.get_state() for g in (loop, *self.generators)]

    def restore_generators(self, states: list[torch.Tensor], loop: torch.Generator) -> None:
        for g, s in zip((loop, *self.generators), states, strict=True):
            g.set_state(s)


@dataclass
class TrainStats:
    seconds: float
    steps: int
    final_loss: float
    kept_epoch: int  # the epoch whose weights the model holds (the last, unless early-stopped)
    kept_score: float | None = None  # its validation score when a selector chose it


class BestEpoch:
    """Early stopping (Rice, Wong, Kolter 2020, "Overfitting in adversarially robust deep
    learning", arXiv 2002.11569): remember the weights of the epoch with the best validation
    score and put them back at the end. Ties go to the later epoch, so a score that never
    moves (robust accuracy 0 under natural training) keeps the fully trained model."""

    def __init__(self) -> None:
        self.epoch, self.score = 0, -math.inf
        self.state: dict[str, torch.Tensor] | None = None

    def offer(self, epoch: int, score: float, model: nn.Module) -> None:
        if score >= self.score:
            self.epoch, self.score = epoch, score
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


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
    select: Selector | None = None,
    augment: Augment | None = None,
    resume: ResumePoint | None = None,
) -> TrainStats:
    """Train `model` in place on (x, y) with `loss_step` and return timing statistics.

    `loss_step(model, xb, yb)` returns the scalar loss of one batch; it may switch the model
    to eval mode to craft adversarial examples but must leave it in train mode. `on_epoch`
    is called after every epoch (for validation probes and early stopping by a scheduler).
    `select(epoch, model)` scores the model on validation data after every epoch; the weights
    of the best epoch are restored at the end (`BestEpoch`). Every batch passes through
    `cfg.augment`, or through `augment` when a caller brings its own transform (a learned
    dataset's evaluation protocol); giving both is an error. `resume`: where the loop saves
    its state at epoch boundaries and, after a restart, the state it goes on from.
    """
    if augment is not None and cfg.augment != "none":
        raise ValueError(f"two augmentations given: cfg.augment={cfg.augment!r} and a callable")
    run = _Run(
        model,
        to_device(x, device),
        y.to(device),
        cfg,
        generator=generator,
        device=device,
        augment=augment or resolve_augment(cfg.augment, x),
        resume=resume,
    )
    saved = resume.saved() if resume else None
    first = run.restore(saved, meter) if saved is not None else 1
    counting = meter is not None and meter.count_only and saved is None
    with meter.attach(model) if meter else nullcontext():
        for epoch in range(first, cfg.epochs + 1):
            if counting:  # one batch, the rest of the run charged at its rate
                return run.count_only(meter, loss_step)
            run.epoch(epoch, loss_step)
            model.eval()
            with meter.paused() if meter else nullcontext():
                if select is not None:
                    run.best.offer(epoch, select(epoch, model), model)
                if on_epoch is not None:
                    on_epoch(epoch, model)
            if resume is not None and epoch < cfg.epochs:
                resume.offer(lambda: run.state(epoch, meter))
    return run.finish()


class _Run:
    """The state of one `train_model` run: the optimiser, its schedule, the best epoch so far,
    the last loss and the seconds spent (with those before a restart)."""

    def __init__(self, model, x, y, cfg: TrainConfig, *, generator, device, augment, resume):
        self.model, self.x, self.y, self.cfg = model, x, y, cfg
        self.generator, self.device, self.augment, self.resume = generator, device, augment, resume
        model.to(device)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)
        self.batch = min(cfg.batch_size, x.shape[0])
        self.steps_per_epoch = math.ceil(x.shape[0] / self.batch)
        self.total = cfg.epochs * self.steps_per_epoch
        self.opt = make_optimizer(model.parameters(), cfg)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(cfg.schedule, s, self.total)
        )
        self.best = BestEpoch()
        self.start, self.before, self.last = time.perf_counter(), 0.0, float("nan")

    def batches(self, epoch_order: torch.Tensor):
        for i in range(self.steps_per_epoch):
            idx = epoch_order[i * self.batch : (i + 1) * self.batch]
            xb = self.x[idx] if self.augment is None else self.augment(self.x[idx], self.generator)
            yield xb, self.y[idx]

    def step(self, loss_step: LossStep, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        with autocast(self.device):
            loss = loss_step(self.model, xb, yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss

    def order(self) -> torch.Tensor:
        return torch.randperm(self.x.shape[0], generator=self.generator).to(self.device)

    def epoch(self, epoch: int, loss_step: LossStep) -> None:
        self.model.train()
        for xb, yb in self.batches(self.order()):
            loss = self.step(loss_step, xb, yb)
        self.last = float(loss.detach())
        if not math.isfinite(self.last):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (loss {self.last}); lower the learning rate"
            )

    def count_only(self, meter: WorkMeter, loss_step: LossStep) -> TrainStats:
        """A count-only estimate's run: its first batch, the rest charged at that rate."""
        before = meter.snapshot()
        self.model.train()
        xb, yb = next(self.batches(self.order()))
        loss = self.step(loss_step, xb, yb)
        meter.charge_rest(before, len(xb), self.cfg.epochs * self.x.shape[0])
        self.model.eval()
        return TrainStats(
            seconds=time.perf_counter() - self.start,
            steps=self.total,
            final_loss=float(loss.detach()),
            kept_epoch=self.cfg.epochs,
        )

    def restore(self, saved: dict[str, Any], meter: WorkMeter | None) -> int:
        """Go back to a restarted run's saved epoch; returns the epoch to go on from."""
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.resume.restore_generators(saved["generators"], self.generator)
        best = self.best
        best.epoch, best.score, best.state = (
            saved["best_epoch"],
            saved["best_score"],
            saved["best_state"],
        )
        self.last, self.before = saved["loss"], saved["seconds"]
        if meter is not None:
            meter.examples = saved["examples"]
        return saved["epoch"] + 1

    def state(self, epoch: int, meter: WorkMeter | None) -> dict[str, Any]:
        best = self.best
        return {
            "tag": self.resume.tag,
            "epoch": epoch,
            "loss": self.last,
            "seconds": self.before + time.perf_counter() - self.start,
            "model": _copy(self.model.state_dict()),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generators": self.resume.generator_states(self.generator),
            "best_epoch": best.epoch,
            "best_score": best.score,
            "best_state": best.state,
            "examples": meter.examples if meter is not None else 0,
        }

    def finish(self) -> TrainStats:
        self.best.restore(self.model)
        self.model.eval()
        kept = self.best.state is not None
        return TrainStats(
            seconds=self.before + time.perf_counter() - self.start,
            steps=self.total,
            final_loss=self.last,
            kept_epoch=self.best.epoch if kept else self.cfg.epochs,
            kept_score=self.best.score if kept else None,
        )
