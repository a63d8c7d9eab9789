"""Leaderboard: a sweep's trial runs -> one typed record per row -> md, csv, json or html.

RobustBench style: the leaderboard is data. `build_records` is a pure function from plain run
data (`harness.tracking.RunData`, or anything with the same attributes) to `Record`s;
`harness.report.render` is a pure function from records to text.

Selection, per (dataset, threat) group and per variant (`variant` tag, e.g. `rdl[ipc=10]`):
1. the best configuration is the `search` run with the highest `val_robust_acc` (validation
   split, never the test split); ties go to the lower `work_epochs`, then the earlier start,
   then the run id, so the choice never depends on the order the store returns runs in;
2. that configuration's runs are the best search run plus the `repeat` runs whose params equal
   its params apart from seeds; their test scores are averaged (std over runs, n runs);
3. rows are ranked by AutoAttack accuracy, PGD accuracy where AutoAttack was off.
FAILED or KILLED runs, and finished runs missing a score, are never used; they are counted
in `failed`. Runs still RUNNING are neither used nor counted. A run without a `phase` tag
counts as a search run. A variant none of whose search runs finished has no row.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any, Iterable, Protocol

from harness.errors import HarnessInputError

SELECTION_METRIC = "val_robust_acc"
REQUIRED_METRICS = ("clean_acc", "robust_acc", SELECTION_METRIC)
FAILED_STATUSES = {"FAILED", "KILLED"}
ARCH_PREFIX = "arch."


class RunLike(Protocol):
    run_id: str
    status: str
    start_time: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


@dataclass(frozen=True)
class ArchScore:
    """One evaluation architecture of a row: means over the configuration's runs."""

    arch: str
    n: int  # models scored, summed over runs
    clean_acc: float | None
    robust_acc: float | None
    robust_acc_std: float | None  # over runs
    autoattack_acc: float | None


@dataclass(frozen=True)
class Record:
    """One leaderboard row: a variant's best configuration in a (dataset, threat) group."""

    sweep: str
    dataset: str
    threat_norm: str
    threat_eps: float | None
    rank: int  # 1 = best within its (dataset, threat) group
    method: str
    variant: str
    size: str  # "ipc=10", or the number of training examples
    n: int  # runs aggregated (the best search run and its repeats)
    failed: int  # failed runs of this variant in this group (all configurations)
    clean_acc: float
    clean_acc_std: float
    robust_acc: float  # PGD
    robust_acc_std: float
    autoattack_acc: float | None  # None when AutoAttack was off
    autoattack_acc_std: float | None
    autoattack_n: int
    score: float  # what the rank is by: autoattack_acc, else robust_acc
    score_by: str  # "autoattack" or "pgd"
    val_robust_acc: float  # the selection objective of the best search run
    dataset_size: float | None
    learn_seconds: float | None  # one-time dataset learning
    learn_work_epochs: float | None
    train_seconds: float | None  # per downstream model
    train_work_epochs: float | None
    score_per_train_epoch: float | None  # score / train_work_epochs
    best_run_id: str
    run_ids: tuple[str, ...]
    config: dict[str, str]  # the params that vary between this variant's search runs
    per_arch: tuple[ArchScore, ...]


# ---------------------------------------------------------------------------- selection


def build_records(runs: Iterable[RunLike]) -> list[Record]:
    """All rows, sorted by dataset, threat and rank."""
    cells: dict[tuple, list[RunLike]] = defaultdict(list)
    for run in runs:
        if run.tags.get("harness.role") != "sweep":
            cells[(*group_key(run), variant_of(run))].append(run)
    rows = [row for key in cells if (row := variant_row(key, cells[key])) is not None]
    return rank_rows(rows)


def group_key(run: RunLike) -> tuple[str, str, float | None]:
    dataset = run.tags.get("dataset") or run.params.get("dataset.name") or "?"
    return dataset, run.params.get("threat.norm", "?"), to_float(run.params.get("threat.eps"))


def variant_of(run: RunLike) -> str:
    return run.tags.get("variant") or run.tags.get("method") or run.params.get("method", "?")


def to_float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def usable(run: RunLike) -> bool:
    return run.status == "FINISHED" and all(metric(run, k) is not None for k in REQUIRED_METRICS)


def is_failed(run: RunLike) -> bool:
    return run.status in FAILED_STATUSES or (run.status == "FINISHED" and not usable(run))


def metric(run: RunLike, key: str) -> float | None:
    return to_float(run.metrics.get(key))


def selection_key(run: RunLike) -> tuple:
    """Sorts the best search run first: highest validation robust accuracy, then least work,
    then earliest start, then run id."""
    work = metric(run, "work_epochs")
    return (-metric(run, SELECTION_METRIC), math.inf if work is None else work,
            run.start_time, run.run_id)


def configuration(run: RunLike) -> dict[str, str]:
    """A run's params without its seeds: equal configurations differ only in randomness."""
    return {k: v for k, v in run.params.items() if k != "seed" and not k.endswith(".seed")}


def variant_row(key: tuple, runs: list[RunLike]) -> Record | None:
    dataset, norm, eps, variant = key
    good = [r for r in runs if usable(r)]
    search = sorted((r for r in good if r.tags.get("phase", "search") == "search"),
                    key=selection_key)
    if not search:
        return None
    best = search[0]
    repeats = [r for r in good if r.tags.get("phase") == "repeat"
               and configuration(r) == configuration(best)]
    members = [best, *sorted(repeats, key=lambda r: (r.start_time, r.run_id))]
    return make_record(dataset, norm, eps, variant, best, members, search,
                       failed=sum(is_failed(r) for r in runs))


def make_record(dataset, norm, eps, variant, best, members, search, failed) -> Record:
    clean, clean_std, n = summary(members, "clean_acc")
    robust, robust_std, _ = summary(members, "robust_acc")
    aa, aa_std, aa_n = summary(members, "autoattack_acc")
    score, score_by = (aa, "autoattack") if aa is not None else (robust, "pgd")
    train_work = mean_of(members, "train_work_epochs")
    return Record(
        sweep=best.tags.get("sweep", ""), dataset=dataset, threat_norm=norm, threat_eps=eps, rank=0,
        method=best.tags.get("method") or best.params.get("method", variant), variant=variant,
        size=size_label(best), n=n, failed=failed,
        clean_acc=clean, clean_acc_std=clean_std, robust_acc=robust, robust_acc_std=robust_std,
        autoattack_acc=aa, autoattack_acc_std=aa_std, autoattack_n=aa_n,
        score=score, score_by=score_by, val_robust_acc=metric(best, SELECTION_METRIC),
        dataset_size=mean_of(members, "dataset_size"),
        learn_seconds=mean_of(members, "learn_seconds"),
        learn_work_epochs=mean_of(members, "learn_work_epochs"),
        train_seconds=mean_of(members, "train_seconds"), train_work_epochs=train_work,
        score_per_train_epoch=score / train_work if train_work else None,
        best_run_id=best.run_id, run_ids=tuple(r.run_id for r in members),
        config=tuned_params(best, search), per_arch=arch_scores(members),
    )


def summary(runs: list[RunLike], key: str) -> tuple[float | None, float | None, int]:
    """Mean, sample std (0 for a single run) and count over the runs that have `key`."""
    values = [v for r in runs if (v := metric(r, key)) is not None]
    if not values:
        return None, None, 0
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def mean_of(runs: list[RunLike], key: str) -> float | None:
    return summary(runs, key)[0]


def size_label(run: RunLike) -> str:
    ipc = to_float(run.params.get("method.ipc"))
    if ipc is not None:
        return f"ipc={ipc:g}"
    size = metric(run, "dataset_size")
    return "?" if size is None else f"{size:g}"


def tuned_params(best: RunLike, search: list[RunLike]) -> dict[str, str]:
    """The best run's values of the params that differ between the variant's search runs."""
    keys = sorted({k for r in search for k in configuration(r)})
    varying = [k for k in keys if len({r.params.get(k) for r in search}) > 1]
    return {k: best.params.get(k, "") for k in varying}


def arch_scores(runs: list[RunLike]) -> tuple[ArchScore, ...]:
    """Per-architecture scores (metrics `arch.<name>.<metric>`), architectures by name."""
    archs = sorted({k[len(ARCH_PREFIX):].rsplit(".", 1)[0]
                    for r in runs for k in r.metrics if k.startswith(ARCH_PREFIX)})
    return tuple(arch_score(runs, arch) for arch in archs)


def arch_score(runs: list[RunLike], arch: str) -> ArchScore:
    prefix = f"{ARCH_PREFIX}{arch}."
    robust, robust_std, _ = summary(runs, prefix + "robust_acc")
    n = sum(int(v) for r in runs if (v := metric(r, prefix + "n")) is not None)
    return ArchScore(arch, n, mean_of(runs, prefix + "clean_acc"), robust, robust_std,
                     mean_of(runs, prefix + "autoattack_acc"))


def rank_rows(rows: list[Record]) -> list[Record]:
    """Sort by group, then score (ties: clean accuracy, then name); number ranks per group."""
    def order(r: Record) -> tuple:
        return (r.dataset, r.threat_norm, r.threat_eps or 0.0, -r.score, -r.clean_acc, r.variant)

    out: list[Record] = []
    for row in sorted(rows, key=order):
        same = bool(out) and group_of(out[-1]) == group_of(row)
        out.append(replace(row, rank=out[-1].rank + 1 if same else 1))
    return out


def group_of(row: Record) -> tuple[str, str, float | None]:
    return row.dataset, row.threat_norm, row.threat_eps


def groups(records: list[Record]) -> dict[tuple, list[Record]]:
    """Records by (dataset, threat norm, threat eps), in the order given."""
    out: dict[tuple, list[Record]] = {}
    for r in records:
        out.setdefault(group_of(r), []).append(r)
    return out


# ---------------------------------------------------------------------------- entry point


def load_records(tracking_uri: str | None = None, experiment: str | None = None,
                 sweep_run_id: str | None = None) -> list[Record]:
    """Records of one sweep in the store (see `harness.tracking.load_trial_runs`)."""
    from harness.tracking import load_trial_runs

    runs = load_trial_runs(tracking_uri, experiment=experiment, sweep_run_id=sweep_run_id)
    records = build_records(runs)
    if not records:
        raise HarnessInputError(
            f"the sweep has {len(runs)} trial run(s) but none finished with scores; wait for "
            "the sweep to finish, or check its failed trials in `harness ui`.",
            field="--sweep" if sweep_run_id else "--experiment",
        )
    return records


def render(records: list[Record], fmt: str, title: str = "Leaderboard") -> str:
    """md, csv, json or html text of the records (see `harness.report`)."""
    from harness.report import render as render_report

    return render_report(records, fmt, title)
