"""What a trial measures, as the worker returns it: each trained model's scores
(`ModelScore`), each evaluation architecture's (`ArchScore`, also the per-architecture part of
a trial's record and of a leaderboard row) and the trial's outcome (`TrialResult`, the
`harness run --json` contract). `harness.results.record.TrialRecord` is the same trial as it is
stored; `harness.board.leaderboard.BoardRow` a leaderboard's row."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from methods.base import LearnedDataset

METRIC = {"metric": True}  # field metadata of the TrialResult fields that are metrics


@dataclass
class ModelScore:
    """Scores of one trained model."""

    arch: str
    seed: int
    clean_acc: float
    robust_acc: float
    autoattack_acc: float | None
    val_clean_acc: float
    val_robust_acc: float
    val_autoattack_acc: float | None
    train_seconds: float
    train_work_epochs: float
    kept_epoch: int  # epoch whose weights were scored (< the last when early-stopped)
    masking_flags: list[str] = field(default_factory=list)  # see harness.protocol.masking


@dataclass(frozen=True)
class ArchScore:
    """One evaluation architecture's test scores: means over its models in a trial, or over
    the pooled runs on a leaderboard row; each `*_std` is the sample standard deviation over
    the same (0 for one model; None where one run, or where it was not kept)."""

    arch: str
    n: int | None  # models scored (on a leaderboard row: summed over its runs)
    clean_acc: float | None
    robust_acc: float | None
    autoattack_acc: float | None  # None when AutoAttack was off
    clean_acc_std: float | None = None
    robust_acc_std: float | None = None
    autoattack_acc_std: float | None = None


@dataclass
class TrialResult:
    """One trial's outcome; `to_json()` is the `harness run --json` contract. Fields with
    `metadata=METRIC` are the trial's metrics in MLflow and the leaderboard
    (`harness.results.record`)."""

    method: str
    kind: str
    dataset: str
    seed: int
    threat: dict[str, Any]
    clean_acc: float = field(metadata=METRIC)
    robust_acc: float = field(metadata=METRIC)
    autoattack_acc: float | None = field(metadata=METRIC)
    val_clean_acc: float = field(metadata=METRIC)
    val_robust_acc: float = field(metadata=METRIC)
    val_autoattack_acc: float | None = field(metadata=METRIC)
    # every gradient-masking flag raised on any model (harness.protocol.masking)
    masking_flags: list[str]
    # one-time dataset learning (0 for model-producing methods)
    learn_seconds: float = field(metadata=METRIC)
    train_seconds: float = field(metadata=METRIC)  # mean per trained model
    learn_work_epochs: float = field(metadata=METRIC)
    train_work_epochs: float = field(metadata=METRIC)  # mean per trained model
    # learn + one model: the cost of the first robust model
    work_epochs: float = field(metadata=METRIC)
    dataset_size: int = field(metadata=METRIC)  # examples the models were trained on
    per_arch: list[ArchScore]
    models: list[ModelScore]
    learned: LearnedDataset | None = field(default=None, repr=False)
    weights: dict[str, dict] = field(default_factory=dict, repr=False)  # arch -> first model's
    # --smoke's shrunken budgets: a check that the pipeline runs, not a result
    smoke: bool = False

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("learned", "weights")}
