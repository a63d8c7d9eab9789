"""`harness sweep` for real: Ray Tune + Optuna trials, tracked in MLflow, resumed after SIGKILL."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient
from sweep_helpers import (
    TINY_RUN,
    kill_group,
    run_sweep,
    start_sweep,
    trial_runs,
    wait_for,
    write_spec,
)

from harness.cli import main
from harness.methods import make_method
from harness.spec.plan import make_plan
from harness.spec.schema import build_run_spec, build_sweep_spec, load_yaml
from harness.tracking.provenance import git_tags

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory):
    """One real sweep: a model-producing and a dataset-producing method on digits."""
    cwd = tmp_path_factory.mktemp("sweep")
    spec = write_spec(
        cwd,
        {
            "name": "small",
            "dataset": {"name": "digits", "subset": 15},
            **TINY_RUN,
            "trials": 2,
            "repeats": 1,
            # ASHA on (its per-epoch probes are logged), its first rung beyond the 2 epochs
            "search": {**TINY_RUN["search"], "asha": True, "grace_period": 5},
            "methods": {
                "erm": {"space": {"train.lr": {"loguniform": [0.01, 0.2]}}},
                "random": {"space": {"ipc": {"grid": [3]}}},
            },
        },
    )
    proc = run_sweep(spec, cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd, proc


def test_sweep_records_every_trial_in_mlflow(small_sweep):
    cwd, proc = small_sweep
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    trials, parents = trial_runs(client, "small")
    assert len(parents) == 1
    parent = parents[0].info.run_id
    source = git_tags()  # the checkout the sweep's driver imported the harness from
    # erm: 2 Optuna trials + 1 repeat; random[ipc=3]: nothing searched -> 1 trial + 1 repeat
    counts = Counter((r.data.tags["variant"], r.data.tags["phase"]) for r in trials)
    assert counts == {
        ("erm", "search"): 2,
        ("erm", "repeat"): 1,
        ("random[ipc=3]", "search"): 1,
        ("random[ipc=3]", "repeat"): 1,
    }
    for r in trials:
        tags, params, metrics = r.data.tags, r.data.params, r.data.metrics
        assert r.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent
        assert tags["sweep"] == "small" and tags["dataset"] == "digits"
        assert tags["method"] == params["method"] == params["method.name"]
        assert {
            "git_sha",
            "torch_version",
            "ray_version",
            "mlflow_version",
            "harness_version",
            "device",
        } <= set(tags)
        assert tags["git_sha"] == source["git_sha"]
        known = source["git_sha"] != "unknown"
        assert tags["git_dirty"] in ({"true", "false"} if known else {"unknown"})
        assert float(params["threat.eps"]) == pytest.approx(0.2)  # resolved default, not None
        for key in (
            "clean_acc",
            "robust_acc",
            "val_robust_acc",
            "learn_seconds",
            "train_seconds",
            "work_epochs",
            "arch.mlp.robust_acc",
        ):
            assert key in metrics, key
            assert metrics[key] >= 0
        assert 0 <= metrics["robust_acc"] <= metrics["clean_acc"] + 1e-9 <= 1 + 1e-9
        # The ranked metric is recorded with the version that produced it.
        assert params["threat.autoattack"] == "fast"
        assert 0 <= metrics["autoattack_acc"] <= metrics["robust_acc"] + 0.05
        assert "arch.mlp.autoattack_acc" in metrics
        files = {f.path for f in client.list_artifacts(r.info.run_id)}
        assert {"spec.yaml", "model"} <= files
        # what the worker actually ran is what the driver recorded for this trial
        ran = yaml.safe_load(
            Path(client.download_artifacts(r.info.run_id, "spec.yaml")).read_text()
        )
        assert ran["method"]["name"] == tags["method"]
        assert ran["dataset"]["name"] == tags["dataset"]
        assert str(ran["seed"]) == params["seed"]
        # every logged param is the value of the resolved spec the worker ran
        from harness.results.record import flatten

        ran_flat = {k: str(v) for k, v in flatten(ran).items()}
        for key, value in params.items():
            if key in ran_flat:
                assert ran_flat[key] == value, (key, ran_flat[key], value)
        # the resolved RunSpec, every default written out (the method's settings too)
        assert ran == build_run_spec(ran).model_dump(mode="json")
        assert set(params) >= {f"method.{k}" for k in make_method(tags["method"]).cfg.model_fields}
        assert ran["train"]["epochs"] == 2 and ran["threat"]["steps"] == 3
        if tags["method"] == "random":
            data_files = {f.path for f in client.list_artifacts(r.info.run_id, "dataset")}
            assert data_files == {"dataset/learned.pt", "dataset/grid.png"}, (tags, files)
            assert params["method.ipc"] == "3"
            assert metrics["dataset_size"] == 30  # ipc 3 x 10 classes
    # searched values differ between the two Optuna trials and the repeat reuses the best
    erm = [r for r in trials if r.data.tags["variant"] == "erm"]
    search = [r for r in erm if r.data.tags["phase"] == "search"]
    repeat = [r for r in erm if r.data.tags["phase"] == "repeat"][0]
    assert len({r.data.params["train.lr"] for r in search}) == 2
    top = max(r.data.metrics["val_robust_acc"] for r in search)
    best = [r for r in search if r.data.metrics["val_robust_acc"] == top]  # ties are possible
    assert repeat.data.params["train.lr"] in {r.data.params["train.lr"] for r in best}
    assert repeat.data.params["seed"] != best[0].data.params["seed"]
    # under ASHA the per-epoch probe of model-producing methods is logged as a history;
    # the repeats, which ASHA does not watch, skip it
    hist = client.get_metric_history(search[0].info.run_id, "val_robust_acc")
    assert len(hist) >= 2
    assert len(client.get_metric_history(repeat.info.run_id, "val_robust_acc")) == 1


def test_sweep_prints_leaderboard_and_refuses_to_overwrite(small_sweep):
    cwd, proc = small_sweep
    assert "erm" in proc.stdout and "random" in proc.stdout
    again = run_sweep(cwd / "small.yaml", cwd)
    assert again.returncode == 2
    assert "--resume" in again.stderr and "Traceback" not in again.stderr


def test_from_run_reproduces_a_recorded_trial(small_sweep):
    """`harness run --from-run` on a sweep's trial gives the scores the sweep recorded."""
    cwd, _ = small_sweep
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    trials, _ = trial_runs(MlflowClient(uri), "small")
    for method in ("erm", "random"):
        recorded = next(r for r in trials if r.data.tags["method"] == method)
        res = CliRunner().invoke(
            main, ["run", "--from-run", recorded.info.run_id, "--tracking-uri", uri, "--json"]
        )
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout)
        assert out["method"] == method and str(out["seed"]) == recorded.data.params["seed"]
        for key in ("clean_acc", "robust_acc", "autoattack_acc", "val_robust_acc"):
            assert out[key] == recorded.data.metrics[key], (method, key)


def test_killed_sweep_resumes_with_one_run_per_trial(tmp_path):
    spec = write_spec(
        tmp_path,
        {
            "name": "killed",
            "dataset": {"name": "synthetic-robust", "n_train": 600, "n_test": 200, "d": 20},
            **TINY_RUN,
            "eval": {**TINY_RUN["eval"], "archs": ["linear"]},
            "train": {"epochs": 3},
            "trials": 5,
            "search": {"max_concurrent": 1, "asha": False},
            # a searched variant and a fixed one (whose restore once failed: issue 20)
            "methods": {
                "erm": {"space": {"train.lr": {"loguniform": [0.01, 0.3]}}},
                "random": {"space": {"ipc": 5}},
            },
        },
    )
    db = tmp_path / "mlflow.db"

    def finished_trials() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db, timeout=1) as con:
                rows = con.execute(
                    "select count(*) from runs r join tags t on r.run_uuid = t.run_uuid "
                    "where t.key = 'trial_id' and r.status = 'FINISHED'"
                ).fetchone()
            return rows[0]
        except sqlite3.Error:
            return 0

    proc = start_sweep(spec, tmp_path)
    try:
        assert wait_for(lambda: finished_trials() >= 2, timeout=300), "no trial finished"
    finally:
        kill_group(proc)
    done_before = finished_trials()
    assert done_before < 6, "the sweep finished before it could be killed"

    resumed = run_sweep(spec, tmp_path, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    client = MlflowClient(f"sqlite:///{db}")
    trials, parents = trial_runs(client, "killed")
    assert len(parents) == 1  # the resumed sweep continued the same parent run
    per_trial = Counter(r.data.tags["trial_key"] for r in trials)
    assert len(per_trial) == 6 and set(per_trial.values()) == {1}
    assert all(r.info.status == "FINISHED" for r in trials)
    assert all("robust_acc" in r.data.metrics for r in trials)


@pytest.mark.parametrize("spec_file", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_shipped_spec_validates(spec_file):
    result = CliRunner().invoke(main, ["validate", str(spec_file)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def autoattack_off(spec) -> list[str]:
    """Where a sweep would run a trial without test AutoAttack: each planned variant's RunSpec
    tree (the threat section with any `threat.*` value its space fixes or searches)."""
    off = []
    for v in make_plan(spec):
        if build_run_spec(v.base).threat.autoattack == "off" or "threat.autoattack" in v.dims:
            off.append(f"{v.dataset} {v.threat} {v.label}".replace("  ", " "))
    return off


@pytest.mark.parametrize("spec_file", SWEEPS, ids=[p.name for p in SWEEPS])
def test_shipped_specs_rank_by_autoattack(spec_file):
    """Every shipped spec reports AutoAttack for every threat and variant (issue 9), except a
    tuning spec that selects on validation AutoAttack and leaves the test split unread."""
    spec = build_sweep_spec(load_yaml(spec_file))
    if spec.objective.metric == "val_autoattack_acc":
        assert spec.name.endswith("-tuning"), "only tuning specs may turn test AutoAttack off"
        return
    assert autoattack_off(spec) == [], f"{spec_file.name}: test AutoAttack off"
    # The check itself catches a threat turned off, and a space that turns it off.
    threats = [t.model_dump() for t in spec.threat]
    bad = spec.model_copy(
        update={"threat": [type(spec.threat[0])(**{**threats[0], "autoattack": "off"})]}
    )
    assert autoattack_off(bad)
    method = next(iter(spec.methods))
    spaced = build_sweep_spec(
        {**load_yaml(spec_file), "methods": {method: {"space": {"threat.autoattack": "off"}}}}
    )
    assert autoattack_off(spaced)


def test_shipped_specs_exist():
    names = {p.name for p in SWEEPS}
    assert {
        "quick.yaml",
        "fashion-mnist.yaml",
        "mnist.yaml",
        "cifar10.yaml",
        "tinyimagenet.yaml",
    } <= names


PLUGIN = '''
"""Test-only methods: one fails its first attempt, one always fails."""
from pathlib import Path

from harness.methods.base import (
    DatasetMethod, LearnedDataset, ModelMethod, MethodConfig, register_method,
)
from harness.methods import natural_loss

MARKER = Path(__file__).with_name("attempted")


@register_method("flaky")
class Flaky(ModelMethod):
    """Fails the first time any trial of it starts, then trains naturally."""

    def loss_step(self, ctx):
        if not MARKER.exists():
            MARKER.write_text("1")
            raise RuntimeError("simulated worker failure")
        return natural_loss


@register_method("broken")
class Broken(ModelMethod):
    """Always fails."""

    def loss_step(self, ctx):
        raise RuntimeError("simulated bug")


@register_method("nan_loss")
class NanLoss(ModelMethod):
    """Its loss is NaN from the first batch: training diverges."""

    def loss_step(self, ctx):
        return lambda model, xb, yb: natural_loss(model, xb, yb) * float("nan")


@register_method("nan_set")
class NanSet(DatasetMethod):
    """Its learned set is NaN (a learning run that diverged without raising)."""

    def learn(self, ctx):
        import torch
        x = torch.full((10, *ctx.data.input_shape), float("nan"))
        return LearnedDataset(x, torch.arange(10) % ctx.data.num_classes)


@register_method("resumed")
class Resumed(ModelMethod):
    """Trains as erm does; the worker of its first attempt dies by SIGKILL in epoch 3
    (digits subset 10: one batch per epoch), after epochs 1 and 2 were saved."""

    def loss_step(self, ctx):
        import os, signal
        calls = Path(__file__).with_name("resumed_calls")
        Path(__file__).with_name("resumed_data").write_text(ctx.data.source)

        def step(model, xb, yb):
            n = int(calls.read_text()) + 1 if calls.exists() else 1
            calls.write_text(str(n))
            if n == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return natural_loss(model, xb, yb)

        return step


@register_method("killed")
class Killed(ModelMethod):
    """Its worker process dies by SIGKILL (as under the kernel's OOM killer)."""

    def loss_step(self, ctx):
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
'''


def test_failing_trials_are_retried_and_never_stop_the_sweep(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "harness_test_plugin.py").write_text(PLUGIN)
    spec = write_spec(
        tmp_path,
        {
            "name": "failing",
            "dataset": {"name": "digits", "subset": 10},
            **TINY_RUN,
            "train": {"epochs": 4},
            "trials": 1,
            "max_failures": 1,
            "checkpoint_every_s": 0,
            "methods": {
                "broken": {},
                "flaky": {},
                "erm": {},
                "nan_loss": {},
                "killed": {},
                "resumed": {},
                "nan_set": {},
            },
        },
    )
    env = {"HARNESS_PLUGINS": "harness_test_plugin", "PYTHONPATH": str(tmp_path / "plugins")}
    res = run_sweep(spec, tmp_path, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    trials, _ = trial_runs(client, "failing")
    status = {r.data.tags["method"]: r.info.status for r in trials}
    assert status == {
        "broken": "FAILED",
        "flaky": "FINISHED",
        "erm": "FINISHED",
        "nan_loss": "FAILED",
        "killed": "FAILED",
        "resumed": "FINISHED",
        "nan_set": "FAILED",
    }, res.stderr[-3000:]
    assert len(trials) == 7  # a retried trial keeps its one run
    assert (tmp_path / "plugins" / "attempted").exists()
    # The killed attempt's successor went on from epoch 3 (epochs 1 and 2 are not trained
    # twice: 4 epochs + the killed one, where a restart from scratch makes 3 + 4) and ended
    # where an uninterrupted erm trial of the same seed ends.
    by_method = {r.data.tags["method"]: r for r in trials}
    resumed, erm = by_method["resumed"], by_method["erm"]
    assert resumed.data.tags["retried"] == "1"
    assert int((tmp_path / "plugins" / "resumed_calls").read_text()) == 5
    assert (tmp_path / "plugins" / "resumed_data").read_text() == "node"  # the node's copy
    for key in ("clean_acc", "robust_acc", "val_robust_acc", "train_work_epochs"):
        assert resumed.data.metrics[key] == erm.data.metrics[key], key
    errors = {r.data.tags["method"]: r.data.tags.get("error", "") for r in trials}
    # The error tag carries what went wrong, not just where Ray put the trace.
    assert "simulated bug" in errors["broken"], errors
    assert "diverged" in errors["nan_loss"], errors
    assert "NaN or infinite" in errors["nan_set"], errors
    assert errors["killed"] and "error.txt" not in errors["killed"], errors
    for name in ("broken", "nan_loss", "nan_set"):
        run = next(r for r in trials if r.data.tags["method"] == name)
        files = {f.path for f in client.list_artifacts(run.info.run_id)}
        assert "error.txt" in files, files
