"""`harness.results.record`: a trial's schema both ways (MLflow params, metrics, tags, artifacts), and
the artifact names that writers and readers take from it."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import torch

from harness.results.record import (
    GRID_ARTIFACT,
    LEARNED_ARTIFACT,
    SPEC_ARTIFACT,
    TrialRecord,
    model_artifact,
)

REPO = Path(__file__).resolve().parents[1]


def resolved_tree(dataset: str = "digits", method: str = "random") -> dict:
    from harness.spec.resolve import resolve_spec
    from harness.spec.schema import build_run_spec

    spec = build_run_spec({"dataset": {"name": dataset}, "method": {"name": method}, "seed": 4})
    return resolve_spec(spec).model_dump(mode="json")


def fake_result(tree: dict) -> SimpleNamespace:
    """What `write_artifacts` reads of a TrialResult: a learned set, weights and the threat."""
    from harness.methods import LearnedDataset

    g = torch.Generator().manual_seed(0)
    learned = LearnedDataset(
        torch.rand(6, 1, 8, 8, generator=g), torch.arange(6) % 3, info={"ipc": 2, "source": "test"}
    )
    weights = {"mlp": {"0.weight": torch.randn(4, 64, generator=g), "0.bias": torch.zeros(4)}}
    return SimpleNamespace(
        learned=learned, weights=weights, threat={"norm": "linf", "eps": 0.2, "steps": 5}
    )


def store_run(tmp_path: Path, folder: Path) -> tuple[str, str]:
    """A sqlite MLflow store with one run holding `folder`'s files as its artifacts."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        "e", artifact_location=(tmp_path / "mlruns").as_uri()
    )  # not ./mlruns
    run = client.create_run(experiment)
    client.log_artifacts(run.info.run_id, str(folder))
    return uri, run.info.run_id


def test_artifacts_are_written_where_the_readers_look(tmp_path):
    from harness import api
    from harness.sweep.trial import write_artifacts
    from harness.tracking import reader as runs

    tree = resolved_tree()
    result = fake_result(tree)
    out = tmp_path / "artifacts"
    out.mkdir()
    write_artifacts(out, tree, result)
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {SPEC_ARTIFACT, LEARNED_ARTIFACT, GRID_ARTIFACT, model_artifact("mlp")}

    uri, run_id = store_run(tmp_path, out)
    assert runs.recorded_spec(uri, run_id) == tree
    learned = api.load_learned(run_id, uri)
    assert torch.equal(learned.x, result.learned.x) and torch.equal(learned.y, result.learned.y)
    meta = learned.info
    assert meta["dataset"]["name"] == "digits" and meta["method"]["name"] == "random"
    assert meta["size"] == 6 and meta["labels"] == "class ids" and meta["info"]["ipc"] == 2
    assert meta["bounds"] == [0.0, 1.0] and meta["input_shape"] == [1, 8, 8]
    state = api.load_weights(run_id, "mlp", uri)
    assert all(torch.equal(state[k], v) for k, v in result.weights["mlp"].items())


ARTIFACT_NAMES = {SPEC_ARTIFACT, LEARNED_ARTIFACT, GRID_ARTIFACT, model_artifact("")}
ARTIFACT_NAMES |= {Path(n).name for n in ARTIFACT_NAMES} | {
    Path(n).parent.as_posix() + "/" for n in ARTIFACT_NAMES
}
ARTIFACT_NAMES -= {"./", ".pt"}


def test_only_the_record_spells_an_artifact_name():
    """No other module writes an artifact's name (or a piece of it: `"model/"` in an
    f-string) as a literal: they take it from `harness.results.record`."""
    spelled = []
    for folder in ("harness", "methods"):
        for path in (REPO / folder).rglob("*.py"):
            if path == REPO / "harness" / "results" / "record.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in ARTIFACT_NAMES:
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    assert not spelled, spelled


def test_every_progress_metric_arrives_from_a_running_trial():
    """The driver keeps the PROGRESS_METRICS keys of a trial's progress reports; each must be
    in what some trial reports (a model method's epoch probe, a dataset method's probe)."""
    from harness.results.record import PROGRESS_METRICS
    from harness.spec.plan import make_plan, with_resolved
    from harness.spec.schema import build_sweep_spec
    from harness.sweep.trial import run_sweep_trial

    spec = build_sweep_spec(
        {"name": "progress", "dataset": {"name": "digits"}, "methods": {"erm": {}, "rdl": {}}}
    )
    reported: set[str] = set()

    def report(metrics, folder):
        if "record" not in metrics and "progress_saved" not in metrics:
            reported.update(metrics)

    for variant in make_plan(spec, smoke=True):
        run_sweep_trial(
            with_resolved(variant, {}),
            variant=variant,
            objective="val_robust_acc",
            smoke=True,
            report=report,
            probe=True,
        )
    assert set(PROGRESS_METRICS) <= reported, set(PROGRESS_METRICS) - reported


def finished_result(tree: dict):
    """A TrialResult as `run_trial` returns it for a dataset method (numbers made up)."""
    from harness.methods import LearnedDataset
    from harness.results.scores import ArchScore, TrialResult

    learned = LearnedDataset(
        torch.rand(4, 1, 28, 28),
        torch.arange(4),
        info={"ipc": 10, "probe_robust_acc": 0.41, "archs": ["convnet"]},
    )
    return TrialResult(
        method="rdl",
        kind="dataset",
        dataset="fashion-mnist",
        seed=4,
        threat=tree["threat"],
        clean_acc=0.8,
        robust_acc=0.5,
        autoattack_acc=None,
        val_clean_acc=0.79,
        val_robust_acc=0.52,
        val_autoattack_acc=None,
        masking_flags=["zero_input_grad", "fgsm_beats_pgd"],
        learn_seconds=12.5,
        train_seconds=3.25,
        learn_work_epochs=40.0,
        train_work_epochs=0.5,
        work_epochs=40.5,
        dataset_size=100,
        per_arch=[ArchScore("convnet", 2, 0.8, 0.5, None, clean_acc_std=0.01, robust_acc_std=0.02)],
        models=[],
        learned=learned,
    )


def test_a_record_survives_the_round_trip_through_mlflow(tmp_path):
    """TrialResult -> TrialRecord -> MLflow params, metrics and tags (a real sqlite store) ->
    TrialRecord: the method's effective settings, its info, the masking flags and the
    metrics come back as they went in."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from harness.tracking.reader import RunData

    tree = resolved_tree("fashion-mnist", "rdl")  # rdl's Fashion-MNIST defaults filled in
    sent = TrialRecord.from_result(
        finished_result(tree), tree, device="cpu", variant="rdl", smoke=True
    )
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    experiment = client.create_experiment(
        "e", artifact_location=(tmp_path / "mlruns").as_uri()
    )  # not ./mlruns
    run_id = client.create_run(experiment).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 1) for k, v in sent.mlflow_metrics().items()],
        params=[Param(k, v) for k, v in sent.mlflow_params().items()],
        tags=[RunTag(k, v) for k, v in sent.mlflow_tags().items()],
    )
    run = client.get_run(run_id)
    back = TrialRecord.from_mlflow(
        RunData(
            run_id=run_id,
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            start_time=run.info.start_time,
            tags=dict(run.data.tags),
            params=dict(run.data.params),
            metrics=dict(run.data.metrics),
        )
    )

    assert run.data.tags["info.ipc"] == "10"
    assert run.data.tags["masking_flags"] == "fgsm_beats_pgd,zero_input_grad"
    assert back.info == {"ipc": "10", "probe_robust_acc": "0.41", "archs": "['convnet']"}
    assert back.masking_flags == ("fgsm_beats_pgd", "zero_input_grad")
    assert back.params["method.outer_steps"] == "450" and back.params == sent.params
    assert back.metrics == sent.metrics and back.metric("val_robust_acc") == 0.52
    assert back.metric("work_epochs") == 40.5 and back.metric("autoattack_acc") is None
    assert back.per_arch == sent.per_arch and back.per_arch[0].robust_acc == 0.5
    assert (back.method, back.dataset, back.variant, back.device, back.smoke) == (
        "rdl",
        "fashion-mnist",
        "rdl",
        "cpu",
        True,
    )
