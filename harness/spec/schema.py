"""Typed specs (pydantic, unknown keys rejected) and the `--set` override machinery.

`RunSpec` describes one trial: a dataset, a threat model, one method with its settings, the
training recipe of model-producing methods and the evaluation protocol. A sweep spec (see
`harness.sweep`) resolves to one `RunSpec` per trial.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from harness.errors import HarnessInputError

if TYPE_CHECKING:  # the protocol's runtime (PyTorch) is imported where a value is checked
    from harness.protocol.train import TrainConfig


# Seeds seed torch.Generator, whose seeds are 64-bit: keep them in the signed range every
# library (numpy, Optuna, Ray) accepts.
SEED_MAX = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
# Optuna's TPE sampler seeds numpy's RandomState, which takes 32-bit seeds only.
SEARCH_SEED_MAX = 2**32 - 1


def derived_seed(value: int) -> int:
    """A seed computed from a spec's seed (a model's `seed * 1000 + k`, a repeat's
    `seed + 1 + i`, the attack's `seed + 1`) wrapped into 0..SEED_MAX, so a seed near the top
    of the range cannot overflow torch's 64-bit seeds. Ordinary seeds are unchanged."""
    return value % (SEED_MAX + 1)


# auto: CUDA when present, else the CPU; cuda and cuda:N need CUDA; mps Apple's GPU.
Device = Annotated[str, Field(pattern=r"^(auto|cpu|mps|cuda(:[0-9]{1,3})?)$")]


class Strict(BaseModel):
    # allow_inf_nan=False: an infinite eps or lr is always a typo, and breaks JSON output.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def format_eps(eps: float) -> str:
    """A radius as people write it, the inverse of ThreatSpec's "8/255" parsing: a short
    decimal as itself (0.2, 0.5), k/255 where the decimal would be a long fraction
    (8/255 = 0.0314...). Every place that shows a radius uses this one notation."""
    in_255 = eps * 255
    short = abs(eps - round(eps, 3)) < 1e-9
    if not short and eps < 1 and abs(in_255 - round(in_255)) < 1e-6 and round(in_255) >= 1:
        return f"{round(in_255)}/255"
    return f"{eps:.4g}"


class DatasetSpec(BaseModel):
    """Which data, where it lives, and how it is split. Extra keys are the dataset's own
    parameters (e.g. `d`, `p` of synthetic-robust) and are checked by the dataset."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    name: str
    root: str | None = Field(
        None, max_length=4096
    )  # default $HARNESS_DATA or ~/.cache/harness/data
    download: bool = False  # allow torchvision to fetch missing files
    subset: int | None = Field(None, ge=1)  # training examples per class (quick runs)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    split_seed: Seed = 0  # fixed across trials so every method sees the same validation set

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ThreatSpec(Strict):
    """The attack every model is scored against (and that adversarial methods train for)."""

    norm: Literal["linf", "l2"] = "linf"
    eps: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # None: the dataset's default
    # Evaluation PGD, the secondary robust column: 20 steps of 2.5 eps / steps (Madry et al.),
    # best of 2 random restarts; `loss: margin` attacks the CW margin instead of cross-entropy.
    steps: int = Field(20, ge=1, le=10_000)
    alpha: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # None: 2.5 * eps / steps
    restarts: int = Field(2, ge=1, le=100)
    loss: Literal["ce", "margin"] = "ce"
    # The ranked robust metric, on the test split (see harness.protocol.autoattack): `standard` is the
    # reference ensemble (RobustBench's); `fast` (APGD-CE + APGD-T) is for searches and demos
    # and is labelled as such everywhere; `off` leaves the column empty. true/false read as
    # standard/off.
    autoattack: Literal["standard", "fast", "off"] = "standard"

    @field_validator("autoattack", mode="before")
    @classmethod
    def autoattack_flag(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return "standard" if value else "off"
        return value

    @field_validator("eps", "alpha", mode="before")
    @classmethod
    def fraction(cls, value: Any) -> Any:
        """Radii are usually quoted as fractions of the pixel range: accept "8/255"."""
        if isinstance(value, str) and value.count("/") == 1:
            num, den = value.split("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError):
                return value
        return value


class TrainSpec(Strict):
    """Training recipe of model-producing methods (erm, pgd_at, trades, fast_at)."""

    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(128, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    schedule: Literal["cosine", "step", "halfway", "cyclic", "constant"] = "cosine"
    # Per-batch augmentation of image data: none, crop (4-pixel zero padding, less below
    # 32x32) or crop_flip (plus a random horizontal flip: the CIFAR adversarial-training recipe).
    augment: str = "none"
    # Keep the weights of the epoch with the best PGD accuracy on a validation slice (Rice et
    # al. 2020, arXiv 2002.11569). Applies to the models of model-producing methods.
    early_stop: bool = False

    @field_validator("augment")
    @classmethod
    def known_augment(cls, value: str) -> str:
        from harness.protocol.train import AUGMENTS

        AUGMENTS.get(value, field="train.augment")
        return value

    def config(self, **overrides: Any) -> TrainConfig:
        """The loop's settings; `early_stop` is the evaluation protocol's (it owns validation)."""
        from harness.protocol.train import TrainConfig

        return TrainConfig(**{**self.model_dump(exclude={"early_stop"}), **overrides})


class EvalSpec(Strict):
    """The harness's evaluation protocol, identical for every method."""

    archs: list[str] | None = None  # None: the dataset's default architectures
    models_per_arch: int = Field(2, ge=1, le=100)  # fresh seeds per architecture
    # Natural training of fresh models on a learned dataset (DC protocol: SGD lr 0.01,
    # momentum 0.9, lr x0.1 at half). None: as many optimiser steps as `train.epochs` epochs
    # on the full training set, between train.epochs and the reference code's budget: 300
    # epochs over the learned set, 1000 for a set evaluated with its DSA augmentation
    # (harness.protocol.evaluate.eval_epochs). A value given here applies to every set.
    epochs: int | None = Field(None, ge=1, le=100_000)
    lr: float = Field(0.01, gt=0.0, le=10.0)
    batch_size: int = Field(256, ge=1)
    max_test: int | None = Field(None, ge=1)  # attack at most this many test examples
    max_val: int | None = Field(1000, ge=1)  # validation examples for the objective
    # AutoAttack on the validation split too (`val_autoattack_acc`): what an objective of
    # AutoAttack accuracy selects on. A sweep turns it on (fast) when its objective needs it.
    val_autoattack: Literal["standard", "fast", "off"] = "off"
    # Keyword settings of architectures, for every network built in a trial (evaluation
    # models, a method's own networks): {convnet: {depth: 4}, mlp: {hidden: 512}}; the keys
    # are the keyword parameters of the arch's builder (harness/protocol/models.py).
    arch_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("arch_settings")
    @classmethod
    def known_arch_settings(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        from harness.protocol.models import check_arch_settings

        for arch, settings in value.items():
            check_arch_settings(arch, settings, field=f"eval.arch_settings.{arch}")
        return value


class MethodSpec(BaseModel):
    """A method name plus its own settings (checked against the method's typed config)."""

    model_config = ConfigDict(extra="allow")

    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RunSpec(Strict):
    dataset: DatasetSpec
    method: MethodSpec
    threat: ThreatSpec = ThreatSpec()
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    seed: Seed = 0
    device: Device = "auto"  # auto: cuda when present, else cpu


# ----------------------------------------------------------------------- errors and overrides


def error_path(loc: tuple, tree: Any = None) -> str:
    """A pydantic error location as the spec path a user writes: `threat.eps` for a section
    given as one mapping, `threat[1].eps` for the second of a list, `methods.erm.space`."""
    parts, node = [], tree
    for i, part in enumerate(loc):
        if isinstance(part, int):
            if not (i == 1 and isinstance(node, dict)):  # a single section read as a list of one
                parts[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        parts.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(parts)


def describe_validation_error(
    exc: ValidationError, prefix: str = "", tree: Any = None
) -> HarnessInputError:
    """The first pydantic error as one paragraph naming the field path, value and rule."""
    import reprlib

    err = exc.errors()[0]
    path = error_path(err["loc"], tree)
    path = f"{prefix}.{path}" if prefix and path else prefix or path
    value = err.get("input")
    shown = "" if isinstance(value, dict) else f" (got {reprlib.repr(value)})"
    if err["type"] == "extra_forbidden":
        msg = "is not a known key; remove it or check its spelling against the README"
    elif err["type"] == "value_error" and "error" in err.get("ctx", {}):
        msg = str(err["ctx"]["error"])  # a validator's own words, without "Value error, "
    else:
        msg = err["msg"]
    return HarnessInputError(f"{msg}{shown}.", field=path or "spec")


MAX_DEPTH = 32  # sections nest a few levels deep; anything deeper is a mistake or an attack


class SpecYAMLError(yaml.YAMLError):
    """A spec problem found while reading the YAML, with where it is."""

    def __init__(self, problem: str, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class SpecLoader(yaml.SafeLoader):
    """`yaml.safe_load` with three refusals, each before anything is expanded or built:
    aliases (`*name`: a few lines of them can expand to gigabytes), nesting deeper than
    MAX_DEPTH (Python would overflow its stack), and a key given twice in one mapping (YAML
    would silently keep the last)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise SpecYAMLError(
                "anchors and aliases (&name / *name) are not allowed in a spec; write the value "
                "out in full",
                self.peek_event().start_mark,
            )
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise SpecYAMLError(
                    f"the spec nests deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else id(key_node)
            if key in seen:
                raise SpecYAMLError(
                    f"the key {key!r} appears twice in one section; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str) -> Any:
    """Parse spec text with `SpecLoader` (ValueError: an integer too long to convert)."""
    return yaml.load(text, Loader=SpecLoader)  # noqa: S506 (SpecLoader is a SafeLoader)


def parse_value(text: str) -> Any:
    """`--set` values are YAML scalars: 0.5, true, null, [a, b] and 'text' all work."""
    try:
        return read_yaml(text)
    except SpecYAMLError as exc:
        raise HarnessInputError(f"{exc.problem}.", field="--set") from None
    except (yaml.YAMLError, ValueError):
        return text


def apply_overrides(tree: dict[str, Any], assignments: list[str] | tuple[str, ...]) -> dict:
    """Apply `key.sub=value` assignments to a nested dict (a copy is returned)."""
    out = copy.deepcopy(tree)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HarnessInputError(
                f"--set expects key=value with a dotted key such as threat.eps=0.5, got {item!r}.",
                field="--set",
            )
        set_path(out, key.strip(), parse_value(value), field="--set")
    return out


def set_path(tree: dict[str, Any], path: str, value: Any, *, field: str) -> None:
    """tree[a][b][c] = value for path 'a.b.c', creating sections as needed (in place)."""
    node = tree
    parts = path.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise HarnessInputError(
                f"cannot set {path!r}: {part!r} holds a value, not a section.", field=field
            )
        node = child
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        data = read_yaml(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HarnessInputError(f"spec file {str(p)!r} does not exist.", field="SPEC") from None
    except IsADirectoryError:
        raise HarnessInputError(
            f"{str(p)!r} is a directory; give the spec's YAML file.", field="SPEC"
        ) from None
    except UnicodeDecodeError as exc:
        raise HarnessInputError(
            f"{p} is not UTF-8 text (byte {exc.start} cannot be decoded): a spec is a YAML "
            "text file; re-save it as UTF-8 (or check that it is not compressed or binary).",
            field="SPEC",
        ) from None
    except SpecYAMLError as exc:
        where = exc.problem_mark
        raise HarnessInputError(
            f"{p}, line {where.line + 1}, column {where.column + 1}: {exc.problem}.", field="SPEC"
        ) from None
    except ValueError as exc:  # e.g. an integer literal past Python's 4300-digit limit
        raise HarnessInputError(
            f"{p} holds a value that cannot be read ({exc}).", field="SPEC"
        ) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise HarnessInputError(
            f"{p} is not valid YAML{at}: {getattr(exc, 'problem', exc)}. Fix the syntax "
            "(indentation, a missing colon or quote) and try again.",
            field="SPEC",
        ) from None
    if not isinstance(data, dict):
        raise HarnessInputError(
            f"{p} must hold a mapping of sections (name, dataset, methods, ...), "
            f"got {type(data).__name__}.",
            field="SPEC",
        )
    return data


def build_run_spec(tree: dict[str, Any]) -> RunSpec:
    try:
        return RunSpec.model_validate(tree)
    except ValidationError as exc:
        raise describe_validation_error(exc, tree=tree) from None


# ------------------------------------------------------------------------------ sweep spec

DISTRIBUTIONS = ("grid", "uniform", "loguniform", "int", "choice")


class Dimension(BaseModel):
    """One searched setting: `{uniform: [lo, hi]}`, `{loguniform: [lo, hi]}`,
    `{int: [lo, hi]}` or `{choice: [a, b, ...]}` (Optuna picks), or `{grid: [a, b]}` (every value
    becomes its own leaderboard row, e.g. ipc 1 / 10 / 50)."""

    kind: Literal["grid", "uniform", "loguniform", "int", "choice"]
    values: list[Any]

    def example(self) -> Any:
        """A representative value, used to check the setting is accepted by the method."""
        return self.values[0]

    def extremes(self) -> list[Any]:
        """Every value a trial may draw that could break a limit: both ends of a range, every
        choice or grid point."""
        return list(self.values)


def parse_dimension(path: str, value: Any) -> Dimension | None:
    """None for a fixed value; a Dimension for `{kind: [...]}`; exit 2 for anything malformed."""
    if not (isinstance(value, dict) and len(value) == 1 and next(iter(value)) in DISTRIBUTIONS):
        if isinstance(value, dict) and len(value) == 1:
            raise HarnessInputError(
                f"unknown search distribution {next(iter(value))!r}; use one of "
                f"{', '.join(DISTRIBUTIONS)} (e.g. {{loguniform: [0.001, 0.1]}}), or a plain value "
                "to fix the setting.",
                field=path,
            )
        return None
    kind, vals = next(iter(value.items()))
    if not isinstance(vals, list) or not vals:
        raise HarnessInputError(f"{kind} needs a non-empty list, got {vals!r}.", field=path)
    if kind in ("uniform", "loguniform", "int"):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
        if len(vals) != 2 or not numeric or not vals[0] < vals[1]:
            raise HarnessInputError(
                f"{kind} needs [low, high] with low < high, got {vals!r}.", field=path
            )
        if kind == "loguniform" and vals[0] <= 0:
            raise HarnessInputError(f"loguniform needs low > 0, got {vals!r}.", field=path)
        if kind == "int" and not all(isinstance(v, int) for v in vals):
            raise HarnessInputError(f"int needs two integers, got {vals!r}.", field=path)
    return Dimension(kind=kind, values=vals)


class MethodSweep(Strict):
    """How one method is searched: its space and (optionally) its own trial budget."""

    trials: int | None = Field(None, ge=1, le=100_000)  # None: the sweep's `trials`
    # Keys without a dot are the method's own settings (method.<key>); dotted keys reach
    # any other spec field, e.g. `train.lr`.
    space: dict[str, Any] = Field(default_factory=dict)


class ObjectiveSpec(Strict):
    # Validation-split metrics only: PGD accuracy, AutoAttack (fast) accuracy, clean accuracy.
    metric: Literal["val_robust_acc", "val_autoattack_acc", "val_clean_acc"] = "val_robust_acc"
    mode: Literal["max", "min"] = "max"


class SearchSpec(Strict):
    # seeds Optuna's TPE sampler (one study per method variant): 0..2**32-1
    seed: int = Field(0, ge=0, le=SEARCH_SEED_MAX)
    asha: bool = True  # stop weak trials early on their per-epoch validation metric
    grace_period: int = Field(2, ge=1)  # reports before ASHA may stop a trial
    max_concurrent: int = Field(2, ge=1, le=10_000)  # trials of one variant at a time
    parallel_variants: int | None = Field(None, ge=1, le=256)  # None: enough to fill the cluster


class ResourcesSpec(Strict):
    cpu: float = Field(1.0, gt=0.0)  # per trial; fractions allowed
    gpu: float = Field(0.0, ge=0.0)


class SweepSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=100)
    # One section, or a list of them (each its own leaderboard group); read as a list.
    dataset: list[DatasetSpec] = Field(min_length=1, max_length=64)
    methods: dict[str, MethodSweep] = Field(min_length=1)
    threat: list[ThreatSpec] = Field(
        default_factory=lambda: [ThreatSpec()], min_length=1, max_length=64
    )
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()
    objective: ObjectiveSpec = ObjectiveSpec()
    trials: int = Field(4, ge=1, le=100_000)  # per method variant: equal budgets, a fair comparison
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    repeats: int = Field(0, ge=0, le=100)  # extra seeds of each variant's best configuration
    max_failures: int = Field(2, ge=0, le=100)  # retries of a failing trial
    # A trial saves its progress (harness.protocol.checkpoint) at most this often, in seconds, so a
    # retry or `--resume` goes on from there; 0: at every epoch / learning checkpoint;
    # null: never. Each save writes the model in training (and a learned set) to storage.
    checkpoint_every_s: float | None = Field(600.0, ge=0.0)
    seed: Seed = 0
    device: Device = "auto"

    @field_validator("dataset", "threat", mode="before")
    @classmethod
    def one_or_more(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    def datasets(self) -> list[DatasetSpec]:
        return self.dataset

    def threats(self) -> list[ThreatSpec]:
        return self.threat


def build_sweep_spec(tree: dict[str, Any]) -> SweepSpec:
    try:
        return SweepSpec.model_validate(tree)
    except ValidationError as exc:
        raise describe_validation_error(exc, tree=tree) from None
