"""Reproducibility: one RunSpec and seed give the same numbers twice, and `harness run
--from-run` refuses what it cannot re-run with exit 2 naming the run."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from harness.cli import main
from harness.protocol.evaluate import run_trial
from harness.spec.schema import build_run_spec

SCORES = ("clean_acc", "robust_acc", "autoattack_acc", "val_robust_acc", "val_clean_acc")


def tiny_spec(method: dict) -> dict:
    return {
        "dataset": {"name": "digits", "subset": 15},
        "method": method,
        "threat": {"steps": 3, "autoattack": "fast"},
        "train": {"epochs": 2},
        "eval": {"models_per_arch": 2, "archs": ["mlp"], "max_test": 100, "max_val": 100},
        "seed": 3,
        "device": "cpu",
    }


@pytest.mark.parametrize(
    "method", [{"name": "erm"}, {"name": "random", "ipc": 3}], ids=["erm", "random"]
)
def test_same_spec_and_seed_give_identical_metrics(method):
    spec = build_run_spec(tiny_spec(method))
    first, second = run_trial(spec), run_trial(spec)
    assert first.autoattack_acc is not None
    for key in SCORES:
        assert getattr(first, key) == getattr(second, key), key
    assert [a.robust_acc for a in first.per_arch] == [a.robust_acc for a in second.per_arch]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store with a sweep parent, a trial that recorded its spec and one that did not."""
    from harness.tracking.store import connect
    from harness.tracking.writer import Tracker

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{path}"
    tracker = Tracker(connect(uri), "repro")
    tags = {"method": "erm", "dataset": "digits"}
    with_spec = tracker.trial_run("t1", {}, tags)
    tracker.client.log_text(with_spec, yaml.safe_dump(tiny_spec({"name": "erm"})), "spec.yaml")
    without = tracker.trial_run("t2", {}, tags)
    return {"uri": uri, "parent": tracker.parent_run_id, "with_spec": with_spec, "without": without}


def from_run(store, run_id: str, *extra: str):
    return CliRunner().invoke(
        main, ["run", "--from-run", run_id, "--tracking-uri", store["uri"], *extra]
    )


def test_from_run_applies_set_and_flags_on_top_of_the_record(store):
    res = from_run(
        store,
        store["with_spec"],
        "--json",
        "--seed",
        "5",
        "--set",
        "threat.autoattack=off",
        "--set",
        "eval.models_per_arch=1",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["method"], out["dataset"], out["seed"]) == ("erm", "digits", 5)
    assert out["autoattack_acc"] is None and out["threat"]["steps"] == 3  # recorded, kept
    assert [a["n"] for a in out["per_arch"]] == [1]
    assert store["with_spec"] in res.stderr


@pytest.mark.parametrize(
    "which,needle",
    [
        ("unknown", "no run"),
        ("without", "no spec.yaml"),
        ("parent", "parent run"),
    ],
)
def test_from_run_without_a_recorded_spec_exits_2_naming_the_run(store, which, needle):
    run_id = "0123456789abcdef0123456789abcdef" if which == "unknown" else store[which]
    res = from_run(store, run_id)
    assert res.exit_code == 2, res.output
    assert needle in res.output and run_id in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("flags", [["--dataset", "digits"], ["--method", "erm"], ["--smoke"]])
def test_from_run_refuses_flags_that_would_replace_the_record(store, flags):
    res = from_run(store, store["with_spec"], *flags)
    assert res.exit_code == 2, res.output
    assert flags[0] in res.output and "--from-run" in res.output


def test_run_needs_dataset_and_method_or_from_run():
    res = CliRunner().invoke(main, ["run", "--dataset", "digits"])
    assert res.exit_code == 2, res.output
    assert "--method" in res.output and "--from-run" in res.output


def test_from_run_reads_a_missing_store_as_bad_input(tmp_path):
    res = CliRunner().invoke(
        main, ["run", "--from-run", "abc", "--tracking-uri", f"sqlite:///{tmp_path / 'absent.db'}"]
    )
    assert res.exit_code == 2, res.output
    assert "does not exist" in res.output
