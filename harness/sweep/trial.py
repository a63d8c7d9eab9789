"""One sweep trial, as a Ray worker runs it. No Ray here: the driver (`harness.sweep.driver`)
hands in how to report, so this is plain Python that a test or script can call directly."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from harness import faults
from harness.protocol.checkpoint import TrialCheckpoint, save_file
from harness.results.record import (
    GRID_ARTIFACT,
    LEARNED_ARTIFACT,
    SPEC_ARTIFACT,
    TrialRecord,
    learned_meta,
    model_artifact,
)
from harness.spec.plan import Variant, trial_spec

# report(metrics, artifacts_dir or None): Tune's report (with a checkpoint of the folder)
Report = Callable[[dict[str, Any], "Path | None"], None]


def run_sweep_trial(
    config: dict[str, Any],
    *,
    variant: Variant,
    objective: str,
    smoke: bool,
    report: Report,
    threads: int = 1,
    node: str = "",
    restored: dict[str, Any] | None = None,
    checkpoint_every_s: float | None = None,
    shared_data: Callable[[Any], Any] | None = None,
    probe: bool = True,
) -> TrialRecord:
    """Run the spec the trial's config carries (resolved once, by the driver's searcher:
    `plan.with_resolved`), report progress while
    it runs and, at the end, its metrics with its record (`harness.results.record`) and artifacts.

    `restored`: the progress an earlier attempt saved (`harness.protocol.checkpoint`), gone on from.
    Progress is saved through `report` (a folder holding `progress.pt`) at most every
    `checkpoint_every_s` seconds (None: never). `shared_data(spec.dataset)`: the dataset
    from a copy shared by the node's trials, or None to load it here. `probe`: score the
    first model on validation after every epoch (what ASHA stops trials on; extra work)."""
    import torch

    from harness.protocol.evaluate import run_trial
    from harness.protocol.train import pick_device

    torch.set_num_threads(max(1, threads))
    spec = trial_spec(config)
    faults.context = (spec.method.name, variant.key)  # where fault injection may kill it

    store = TrialCheckpoint(
        restored,
        progress_saver(report) if checkpoint_every_s is not None else None,
        every_s=checkpoint_every_s or 0.0,
    )
    data = shared_data(spec.dataset) if shared_data is not None else None
    result = run_trial(
        spec,
        smoke=smoke,
        log=probe_reporter(report, objective),
        probe_epochs=probe,
        checkpoint=store,
        data=data,
    )
    tree = spec.model_dump(mode="json")
    record = TrialRecord.from_result(
        result,
        tree,
        device=str(pick_device(spec.device)),
        ray_node=node,
        variant=variant.label,
        smoke=smoke,
        resumed_from=",".join(sorted(restored or {})),
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_artifacts(Path(tmp), tree, result)
        report({**record.metrics, "record": record.to_json()}, Path(tmp))
    return record


def probe_reporter(report: Report, objective: str):
    """The trial's log: a validation probe (per epoch, or a learning probe) is reported to
    Tune under the objective's name, with the step ASHA counts rungs in."""

    def log(metrics: dict[str, float], step: int) -> None:
        probe = metrics.get("val_robust_acc", metrics.get("probe_robust_acc"))
        if probe is not None and objective == "val_robust_acc":  # what ASHA stops on
            numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
            report({**numeric, objective: float(probe), "progress_step": step}, None)

    return log


def progress_saver(report: Report):
    """How the trial's checkpoint persists: a folder holding `progress.pt`, reported to Tune."""

    def persist(sections: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            save_file(sections, Path(tmp))
            report({"progress_saved": float(len(sections))}, Path(tmp))

    return persist


def write_artifacts(root: Path, tree: dict[str, Any], result) -> None:
    """A trial's artifacts under `root`, named as `harness.results.record` names them: the RunSpec
    with every default filled in (so `harness run --from-run` repeats the trial even after a
    default changes), the learned dataset (tensor file with its metadata + image grid) and
    the final model weights."""
    import torch

    (root / SPEC_ARTIFACT).write_text(yaml.safe_dump(tree, sort_keys=False))
    if result.learned is not None:
        learned = result.learned
        (root / LEARNED_ARTIFACT).parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"x": learned.x.cpu(), "y": learned.y.cpu(), "meta": learned_meta(tree, result)},
            root / LEARNED_ARTIFACT,
        )
        if learned.x.dim() == 4:
            from harness.results.images import save_grid

            save_grid(learned.x, learned.y, root / GRID_ARTIFACT)
    for arch, state in result.weights.items():
        (root / model_artifact(arch)).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, root / model_artifact(arch))
