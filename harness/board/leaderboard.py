"""Leaderboard: a sweep's trial runs -> one typed record per row -> md, csv, json or html.

RobustBench style: the leaderboard is data. `build_records` is a pure function from plain run
data (`harness.tracking.reader.RunData`, or anything with the same attributes) to `BoardRow`s;
`harness.board.report.render` (which imports this module, never the other way) is a pure
function from records to text.

Groups. Runs are grouped by (dataset, threat norm, threat eps, AutoAttack version), where the
version is the `threat.autoattack` param: "standard", "fast" or "off" (older runs logged "True"
for standard and "False" for off; a run without the param counts as "off", or "unknown" when it
has an AutoAttack score). Versions never share a group, so one group ranks by one metric.

Selection, per group and per variant (`variant` tag, e.g. `rdl[ipc=10]`):
1. the selected configuration is that of the `search` run with the best value of its sweep's
   objective (tags `objective`, `objective_mode`; default max `val_robust_acc`; always a
   validation-split metric, never the test split); ties go to the lower `work_epochs`, then the
   earlier start, then the run id, so the choice never depends on the order of the store;
2. the row's test scores are pooled over the `repeat` runs (fresh seeds) whose params equal the
   selected run's params apart from seeds. The selected search run is never pooled with them:
   its own test scores are kept apart (`search_*` fields), since it won the search and is
   biased upwards. Only when no such repeat finished does the row report the selected search
   run itself (n=1, `scores_from="search"`);
3. each pooled accuracy has its mean, n, sample std and the half-width of a 95% Student t
   interval over runs (std and interval are None for n=1);
4. rows are ranked by AutoAttack accuracy, PGD accuracy in groups where AutoAttack was off;
   ties go to clean accuracy, then the variant's name.
FAILED or KILLED runs, and finished runs missing a score (AutoAttack included when it was on),
are never used; they are counted in `failed`. Runs still RUNNING are neither used nor counted.
A run without a `phase` tag counts as a search run. A variant none of whose search runs
finished has no row. `flags` gathers the `masking_flags` tag codes of the selected search run
and of the pooled runs.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from harness.errors import HarnessInputError
from harness.results.record import RunLike, TrialRecord, is_sweep_parent
from harness.results.scores import ArchScore

SELECTION_METRIC = "val_robust_acc"
REQUIRED_METRICS = ("clean_acc", "robust_acc", SELECTION_METRIC)
SCORES = ("clean_acc", "robust_acc", "autoattack_acc")
FAILED_STATUSES = {"FAILED", "KILLED"}
# Older runs logged threat.autoattack as a bool, and the only version then was standard.
LEGACY_AA = {"true": "standard", "false": "off"}
AA_ORDER = {"standard": 0, "fast": 1, "off": 2}  # other values after these, by name


@dataclass(frozen=True)
class BoardRow:
    """One leaderboard row: a variant's selected configuration in a group (see the module
    docstring). Accuracies are means over the pooled runs; `*_ci95` is the half-width of the
    95% t interval over runs, None for n=1."""

    sweep: str
    dataset: str
    threat_norm: str
    threat_eps: float | None
    autoattack_version: str  # "standard", "fast", "off" (or as logged); part of the group
    rank: int  # 1 = best within its group
    method: str
    variant: str
    size: str  # "ipc=10", or the number of training examples
    n: int  # runs pooled in the test scores
    scores_from: str  # "repeats" (fresh seeds), or "search": the selected run, no repeats
    failed: int  # failed runs of this variant in this group (all configurations)
    clean_acc: float
    clean_acc_std: float | None
    clean_acc_ci95: float | None
    robust_acc: float  # PGD
    robust_acc_std: float | None
    robust_acc_ci95: float | None
    autoattack_acc: float | None  # None when AutoAttack was off
    autoattack_acc_std: float | None
    autoattack_acc_ci95: float | None
    autoattack_n: int
    score: float  # what the rank is by: autoattack_acc, else robust_acc
    score_by: str  # "autoattack" or "pgd"
    search_clean_acc: float  # test scores of the selected search run, kept apart
    search_robust_acc: float
    search_autoattack_acc: float | None
    val_robust_acc: float  # the selection objective of the selected search run
    models: int | None  # models behind each pooled accuracy (sum of `arch.<a>.n` over runs)
    models_per_run: int | None  # when every pooled run scored the same number of models
    flags: tuple[str, ...]  # gradient-masking codes (`masking_flags` tag), sorted
    smoke: bool  # some pooled run had --smoke's shrunken budgets
    dataset_size: float | None
    learn_seconds: float | None  # one-time dataset learning
    learn_work_epochs: float | None
    train_seconds: float | None  # per downstream model
    train_work_epochs: float | None
    score_per_train_epoch: float | None  # score / train_work_epochs
    best_run_id: str  # the selected search run
    run_ids: tuple[str, ...]  # the pooled runs
    config: dict[str, str]  # the params that vary between this variant's search runs
    per_arch: tuple[ArchScore, ...]


@dataclass(frozen=True)
class Summary:
    """One metric over runs: mean, count, sample std and 95% t half-width (None for n < 2)."""

    mean: float | None
    n: int
    std: float | None
    ci95: float | None


# ---------------------------------------------------------------------------- selection


def build_records(runs: Iterable[RunLike | TrialRecord]) -> list[BoardRow]:
    """All rows, sorted by group and rank, from stored runs (read as `TrialRecord`s) or
    records."""
    cells: dict[tuple, list[TrialRecord]] = defaultdict(list)
    for run in runs:
        if isinstance(run, TrialRecord):
            trial = run
        elif is_sweep_parent(run.tags):
            continue
        else:
            trial = TrialRecord.from_mlflow(run)
        cells[(*group_key(trial), variant_of(trial))].append(trial)
    rows = [row for key in cells if (row := variant_row(key, cells[key])) is not None]
    return rank_rows(rows)


def group_key(run: TrialRecord) -> tuple[str, str, float | None, str]:
    return (
        run.dataset,
        run.params.get("threat.norm", "?"),
        to_float(run.params.get("threat.eps")),
        autoattack_version(run),
    )


def autoattack_version(run: TrialRecord) -> str:
    raw = run.params.get("threat.autoattack")
    if raw is None or not raw.strip():
        return "off" if metric(run, "autoattack_acc") is None else "unknown"
    text = raw.strip()
    return LEGACY_AA.get(text.lower(), text)


def variant_of(run: TrialRecord) -> str:
    return run.variant or run.method


def to_float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def objective(run: TrialRecord) -> tuple[str, str]:
    """The metric and mode the run's sweep selected on (tags `objective`, `objective_mode`);
    runs recorded before those tags selected on max val_robust_acc."""
    return run.objective or SELECTION_METRIC, run.objective_mode or "max"


def usable(run: TrialRecord) -> bool:
    needed = (*REQUIRED_METRICS, objective(run)[0])
    if autoattack_version(run) != "off":
        needed = (*needed, "autoattack_acc")
    return run.status == "FINISHED" and all(metric(run, k) is not None for k in needed)


def is_failed(run: TrialRecord) -> bool:
    return run.status in FAILED_STATUSES or (run.status == "FINISHED" and not usable(run))


def metric(run: TrialRecord, key: str) -> float | None:
    return run.metric(key)


def selection_key(run: TrialRecord) -> tuple:
    """Sorts the best search run first: best value of its sweep's objective (a validation
    metric, by default PGD accuracy), then least work, then earliest start, then run id."""
    work = metric(run, "work_epochs")
    name, mode = objective(run)
    value = metric(run, name)
    return (
        -value if mode == "max" else value,
        math.inf if work is None else work,
        run.start_time,
        run.run_id,
    )


def configuration(run: TrialRecord) -> dict[str, str]:
    """A run's params without its seeds: equal configurations differ only in randomness."""
    return {k: v for k, v in run.params.items() if k != "seed" and not k.endswith(".seed")}


def variant_row(key: tuple, runs: list[TrialRecord]) -> BoardRow | None:
    good = [r for r in runs if usable(r)]
    search = sorted((r for r in good if (r.phase or "search") == "search"), key=selection_key)
    if not search:
        return None
    best = search[0]
    repeats = sorted(
        (r for r in good if r.phase == "repeat" and configuration(r) == configuration(best)),
        key=lambda r: (r.start_time, r.run_id),
    )
    return make_record(key, best, repeats, search, failed=sum(is_failed(r) for r in runs))


def make_record(
    key: tuple,
    best: TrialRecord,
    repeats: list[TrialRecord],
    search: list[TrialRecord],
    failed: int,
) -> BoardRow:
    dataset, norm, eps, aa_version, variant = key
    pooled = repeats or [best]
    stats = {k: summary(pooled, k) for k in SCORES}
    aa, robust = stats["autoattack_acc"].mean, stats["robust_acc"].mean
    by_aa = aa is not None and aa_version != "off"
    score, score_by = (aa, "autoattack") if by_aa else (robust, "pgd")
    train_work = mean_of(pooled, "train_work_epochs")
    models = models_pooled(pooled)
    return BoardRow(
        sweep=best.sweep,
        dataset=dataset,
        threat_norm=norm,
        threat_eps=eps,
        autoattack_version=aa_version,
        rank=0,
        method=best.method,
        variant=variant,
        size=size_label(best),
        n=len(pooled),
        scores_from="repeats" if repeats else "search",
        failed=failed,
        **score_fields(stats),
        autoattack_n=stats["autoattack_acc"].n,
        score=score,
        score_by=score_by,
        search_clean_acc=metric(best, "clean_acc"),
        search_robust_acc=metric(best, "robust_acc"),
        search_autoattack_acc=metric(best, "autoattack_acc"),
        val_robust_acc=metric(best, SELECTION_METRIC),
        models=sum(models) if models else None,
        models_per_run=models[0] if models and len(set(models)) == 1 else None,
        flags=flags_of([best, *pooled]),
        smoke=any(r.smoke for r in [best, *pooled]),
        dataset_size=mean_of(pooled, "dataset_size"),
        learn_seconds=mean_of(pooled, "learn_seconds"),
        learn_work_epochs=mean_of(pooled, "learn_work_epochs"),
        train_seconds=mean_of(pooled, "train_seconds"),
        train_work_epochs=train_work,
        score_per_train_epoch=score / train_work if train_work else None,
        best_run_id=best.run_id,
        run_ids=tuple(r.run_id for r in pooled),
        config=tuned_params(best, search),
        per_arch=arch_scores(pooled),
    )


def score_fields(stats: dict[str, Summary]) -> dict[str, float | None]:
    """`<metric>`, `<metric>_std` and `<metric>_ci95` for each accuracy."""
    out: dict[str, float | None] = {}
    for key, s in stats.items():
        out.update({key: s.mean, f"{key}_std": s.std, f"{key}_ci95": s.ci95})
    return out


def summary(runs: list[TrialRecord], key: str) -> Summary:
    """Mean, count, sample std and t-interval half-width over the runs that have `key`."""
    return summary_of([v for r in runs if (v := metric(r, key)) is not None])


def summary_of(values: list[float]) -> Summary:
    """Mean, count, sample std and 95% t half-width of `values`."""
    if not values:
        return Summary(None, 0, None, None)
    n, mean = len(values), statistics.fmean(values)
    if n < 2:  # one run says nothing about the spread between runs
        return Summary(mean, n, None, None)
    std = statistics.stdev(values)
    return Summary(mean, n, std, t_quantile(n - 1) * std / math.sqrt(n))


def t_quantile(dof: int, level: float = 0.95) -> float:
    """Two-sided Student t critical value, t_{(1+level)/2, dof}."""
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, dof))


def mean_of(runs: list[TrialRecord], key: str) -> float | None:
    return summary(runs, key).mean


def models_pooled(runs: list[TrialRecord]) -> list[int]:
    """Models scored per run (summed over its architectures); empty unless every run said."""
    counts = []
    for run in runs:
        ns = [a.n for a in run.per_arch if a.n is not None]
        if not ns:
            return []
        counts.append(sum(ns))
    return counts


def flags_of(runs: list[TrialRecord]) -> tuple[str, ...]:
    """The distinct gradient-masking codes of the runs, sorted."""
    return tuple(sorted({c for r in runs for c in r.masking_flags}))


def size_label(run: TrialRecord) -> str:
    ipc = to_float(run.params.get("method.ipc"))
    if ipc is not None:
        return f"ipc={ipc:g}"
    size = metric(run, "dataset_size")
    return "?" if size is None else f"{size:g}"


def tuned_params(best: TrialRecord, search: list[TrialRecord]) -> dict[str, str]:
    """The best run's values of the params that differ between the variant's search runs."""
    keys = sorted({k for r in search for k in configuration(r)})
    varying = [k for k in keys if len({r.params.get(k) for r in search}) > 1]
    return {k: best.params.get(k, "") for k in varying}


def arch_scores(runs: list[TrialRecord]) -> tuple[ArchScore, ...]:
    """Per-architecture scores over the runs, architectures by name."""
    archs = sorted({a.arch for r in runs for a in r.per_arch})
    return tuple(arch_score(runs, arch) for arch in archs)


def arch_score(runs: list[TrialRecord], arch: str) -> ArchScore:
    results = [a for r in runs for a in r.per_arch if a.arch == arch]

    def over_runs(key: str) -> Summary:
        return summary_of([v for a in results if (v := getattr(a, key)) is not None])

    clean, robust, aa = (over_runs(k) for k in ("clean_acc", "robust_acc", "autoattack_acc"))
    return ArchScore(
        arch,
        sum(a.n for a in results if a.n is not None),
        clean_acc=clean.mean,
        robust_acc=robust.mean,
        autoattack_acc=aa.mean,
        clean_acc_std=clean.std,
        robust_acc_std=robust.std,
        autoattack_acc_std=aa.std,
    )


def rank_rows(rows: list[BoardRow]) -> list[BoardRow]:
    """Sort by group, then score (ties: clean accuracy, then name); number ranks per group."""

    def order(r: BoardRow) -> tuple:
        return (
            r.dataset,
            r.threat_norm,
            r.threat_eps or 0.0,
            aa_order(r.autoattack_version),
            -r.score,
            -r.clean_acc,
            r.variant,
        )

    out: list[BoardRow] = []
    for row in sorted(rows, key=order):
        same = bool(out) and group_of(out[-1]) == group_of(row)
        out.append(replace(row, rank=out[-1].rank + 1 if same else 1))
    return out


def aa_order(version: str) -> tuple[int, str]:
    return AA_ORDER.get(version, len(AA_ORDER)), version


def group_of(row: BoardRow) -> tuple[str, str, float | None, str]:
    return row.dataset, row.threat_norm, row.threat_eps, row.autoattack_version


def groups(records: list[BoardRow]) -> dict[tuple, list[BoardRow]]:
    """Records by (dataset, threat norm, threat eps, AutoAttack version), in the order given."""
    out: dict[tuple, list[BoardRow]] = {}
    for r in records:
        out.setdefault(group_of(r), []).append(r)
    return out


# ---------------------------------------------------------------------------- entry point


def load_records(
    tracking_uri: str | None = None, experiment: str | None = None, sweep_run_id: str | None = None
) -> list[BoardRow]:
    """Records of one sweep in the store (see `harness.tracking.reader.load_trial_runs`)."""
    from harness.tracking.reader import load_trial_runs

    runs = load_trial_runs(tracking_uri, experiment=experiment, sweep_run_id=sweep_run_id)
    records = build_records(runs)
    if not records:
        raise HarnessInputError(
            f"the sweep has {len(runs)} trial run(s) but none finished with scores; wait for "
            "the sweep to finish, or check its failed trials in `harness ui`.",
            field="--sweep" if sweep_run_id else "--experiment",
        )
    return records
