"""What a method is, and what the harness hands it: the contract every method, built in or
a plugin, keeps (tests/test_method_contract.py checks it for every registered method).

Two kinds:
- `ModelMethod` produces trained models. It gives the harness a per-batch `loss_step`; the
  harness's one training loop (`harness.protocol.train.train_model`) does the rest.
- `DatasetMethod` produces a labelled dataset (`learn`). The harness scores it by *naturally*
  training fresh models of several architectures and seeds on it.

What a method receives: its typed `Config` (pydantic, unknown keys rejected; every field has
a default, commented with units and the paper's value) and, per trial, a `MethodContext`:
the data splits (inputs in [0, 1]; it learns from `x_train`/`x_val` only, never the test
split), the spec's threat and training recipe, the device, a `torch.Generator` and the
trial's seed, the evaluation architectures, a work meter, a log function and a checkpoint
stage.

What it may call: `ctx.build(arch)` for every network it makes (its forward passes are then
counted as the method's learning work, in `ctx.meter`); the attacks and losses re-exported by
`harness.methods` (`pgd`, `natural_loss`, ...); `ctx.log_step(step, loss)` once per learning step (of `planned_steps()`: a progress bar and
the cost estimate count these), `ctx.log(metrics, step)` for other progress;
`ctx.meter.alike(range(...))` for a loop whose items cost alike (a per-class loop), which a
cost estimate then runs for its first item only;
`ctx.resume.offer(make)` at boundaries where it could go on after a restart (`make()` returns
plain values and tensors; `ctx.resume.saved()` is what a restarted trial gets back, or None).

What it must not do: draw from PyTorch's global random state (use `ctx.generator`, or seed a
`torch.Generator` from it: the same seed must give the same result), score itself (the
harness evaluates every method by one protocol), or read the test split.

What it returns: `learn` a `LearnedDataset` (finite inputs within the data's bounds, labels
as class ids or (N, C) probabilities; the harness refuses NaN or infinite values);
`loss_step` a function `(model, x, y) -> loss` the training loop calls on each batch (it may
attack `x`, and may change the recipe through `train_config`).

`smoke` holds config overrides that shrink the budget to seconds for `--smoke` runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from harness.datasets import DatasetSplits
from harness.errors import HarnessInputError
from harness.protocol.attacks import Threat
from harness.protocol.checkpoint import Stage, TrialCheckpoint
from harness.protocol.models import build_model
from harness.protocol.train import Augment, LossStep, TrainConfig, WorkMeter
from harness.registry import Registry

LogFn = Callable[[dict[str, float], int], None]

# The metric a dataset method logs once per learning step (`MethodContext.log_step`): progress
# bars and the cost estimate count steps by it.
STEP_METRIC = "outer_loss"


class MethodConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Examples per class of a learned or sampled set (`ipc`, `n_per_class`). No built-in dataset
# has more in one class than this (SVHN's largest class, about 13.9k, is the most), so a
# larger set would only repeat examples, and a mistyped 10**9 would ask for tens of GB.
MAX_PER_CLASS = 20_000


def _at_most_max_per_class(value: int) -> int:
    if value > MAX_PER_CLASS:
        raise ValueError(
            f"at most {MAX_PER_CLASS} examples per class: no built-in dataset has more in a "
            "class, so a larger set would only repeat examples and could exhaust memory"
        )
    return value


PerClass = Annotated[int, Field(ge=1), AfterValidator(_at_most_max_per_class)]


@dataclass
class MethodContext:
    """Everything a method may use. Randomness comes only from `generator` and `seed`."""

    data: DatasetSplits
    threat: Threat  # the spec's threat model (adversarial methods train against it)
    train: TrainConfig  # the spec's training recipe
    device: torch.device
    generator: torch.Generator
    seed: int
    archs: list[str]  # the evaluation architectures; dataset methods learn with these
    meter: WorkMeter  # the learning cost: every network `build` makes is counted in it
    log: LogFn = lambda metrics, step: None  # progress metrics (tracker, progress bar)
    smoke: bool = False
    # the spec's `eval.arch_settings`: keyword settings of each arch, for every network built
    arch_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # where a long `learn` saves its state between steps and finds it after a restart
    # (`harness.protocol.checkpoint.Stage`; by default nothing is saved)
    resume: Stage = field(default_factory=lambda: Stage(TrialCheckpoint(), "learning"))

    def log_step(self, step: int, loss: float, **metrics: float) -> None:
        """One learning step done (of `Method.planned_steps`), with its loss and any other
        progress metrics: what progress bars and the cost estimate count."""
        self.log({STEP_METRIC: float(loss), **metrics}, step)

    def build(self, arch: str, seed: int | None = None, *, metered: bool = True) -> nn.Module:
        """A fresh network of `arch` for this data, initialised from `seed` (or the generator),
        with the spec's settings of that arch. Its forward passes count in `meter` (the
        method's learning cost) unless `metered=False` (the harness's downstream models,
        which have meters of their own)."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))
        mean, std = self.data.channel_stats()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_model(
                arch,
                self.data.input_shape,
                self.data.num_classes,
                mean=mean,
                std=std,
                **self.arch_settings.get(arch, {}),
            )
        net = net.to(self.device)
        return self.meter.watch(net, arch) if metered else net


@dataclass
class LearnedDataset:
    """A dataset-producing method's output: inputs, labels (class ids, or class
    probabilities of shape (N, C) for soft labels) and facts worth logging.

    `augment` is the batch augmentation with which the method's paper trains its evaluation
    models on the learned set (DSA for DM and for DC learned with DSA); the harness's
    downstream training applies it. None: no augmentation."""

    x: torch.Tensor
    y: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    augment: Augment | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Method:
    kind: ClassVar[Literal["model", "dataset"]]
    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    smoke: ClassVar[dict[str, Any]] = {}  # config overrides for --smoke

    def __init__(self, config: MethodConfig | None = None):
        self.cfg = config if config is not None else self.Config()

    def planned_steps(self) -> int | None:
        """Learning steps this run will take, for progress displays: the config's
        `outer_steps` or `iterations` (each step logs `outer_loss` once); None if neither."""
        for name in ("outer_steps", "iterations"):
            value = getattr(self.cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def config_for(self, dataset: str) -> MethodConfig:
        """The settings a run on `dataset` uses (methods with per-dataset tuned defaults
        override this); `harness.spec.resolve.resolve_spec` records them with the trial."""
        return self.cfg


class ModelMethod(Method):
    kind = "model"

    def loss_step(self, ctx: MethodContext) -> LossStep:
        raise NotImplementedError

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The training recipe this method uses; most keep the spec's."""
        return base


class DatasetMethod(Method):
    kind = "dataset"

    def learn(self, ctx: MethodContext) -> LearnedDataset:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register_method(name: str):
    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.register(name)(cls)

    return add


def make_method(name: str, params: dict[str, Any] | None = None) -> Method:
    cls = METHODS.get(name, field="method.name")
    try:
        cfg = cls.Config(**(params or {}))
    except ValidationError as exc:
        from harness.spec.schema import describe_validation_error

        err = describe_validation_error(exc, prefix="method")
        keys = ", ".join(cls.Config.model_fields) or "none"
        text = str(err).removeprefix(f"{err.field}: ")
        raise HarnessInputError(
            f"{text} Settings of method {name!r}: {keys}.", field=err.field
        ) from None
    return cls(cfg)


__all__ = [
    "METHODS",
    "DatasetMethod",
    "LearnedDataset",
    "MethodConfig",
    "MethodContext",
    "ModelMethod",
    "make_method",
    "register_method",
]
