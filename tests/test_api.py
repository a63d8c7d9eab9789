"""The Python API and `harness score`: sets and models made outside the harness are scored by
the same protocol as the harness's own."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from harness import api
from harness.cli import main
from harness.datasets import load_dataset
from harness.errors import HarnessInputError

SECTIONS = dict(
    threat={"steps": 5, "autoattack": "fast"},
    eval={"archs": ["mlp"], "models_per_arch": 1, "epochs": 60, "max_test": 150, "max_val": 100},
)


def test_a_set_scored_through_the_api_gets_exactly_the_methods_own_score():
    own = api.run("digits", "random", seed=3, settings={"ipc": 10}, **SECTIONS)
    outside = api.score_dataset(
        own.learned.x.clone(), own.learned.y.clone(), dataset="digits", seed=3, **SECTIONS
    )
    assert outside.method == "external" and outside.dataset_size == own.dataset_size == 100
    for key in ("clean_acc", "robust_acc", "autoattack_acc", "val_robust_acc"):
        assert getattr(outside, key) == getattr(own, key), key
    assert 0.6 < outside.clean_acc <= 1.0


def test_harness_score_reads_a_pt_file_with_soft_labels(tmp_path):
    data = load_dataset("digits")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.y_train), generator=g)[:80]
    soft = torch.nn.functional.one_hot(data.y_train[idx], 10).float() * 0.9 + 0.01
    path = tmp_path / "set.pt"
    torch.save({"x": data.x_train[idx], "y": data.y_train[idx], "soft": soft}, path)
    res = CliRunner().invoke(
        main, ["score", str(path), "--dataset", "digits", "--archs", "mlp", "--smoke", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["method"] == "external" and out["dataset_size"] == 80
    assert 0 <= out["autoattack_acc"] <= out["clean_acc"] <= 1


@pytest.mark.parametrize(
    "blob,word",
    [
        ({"x": torch.rand(5, 1, 8, 9), "y": torch.zeros(5, dtype=torch.long)}, "shape"),
        ({"x": torch.rand(5, 1, 8, 8) * 3, "y": torch.zeros(5, dtype=torch.long)}, "bounds"),
        ({"x": torch.rand(5, 1, 8, 8), "y": torch.full((5,), 12)}, "class ids"),
        ({"x": torch.rand(5, 1, 8, 8), "y": torch.zeros(4, dtype=torch.long)}, "labels"),
        ({"x": torch.rand(5, 1, 8, 8)}, "'x' and 'y'"),
    ],
)
def test_harness_score_refuses_a_set_that_does_not_fit(tmp_path, blob, word):
    path = tmp_path / "bad.pt"
    torch.save(blob, path)
    res = CliRunner().invoke(main, ["score", str(path), "--dataset", "digits", "--smoke"])
    assert res.exit_code == 2, res.output
    assert word in " ".join(res.output.split()) and "Traceback" not in res.output


def test_score_model_attacks_a_model_trained_elsewhere():
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    model.train()  # score_model puts it in eval mode itself
    scores = api.score_model(
        model,
        dataset="digits",
        threat={"autoattack": "fast"},
        eval={"max_test": 200, "max_val": 100},
    )
    assert scores["clean_acc"] > 0.85
    assert scores["autoattack_acc"] <= scores["robust_acc"] + 0.02 < scores["clean_acc"]
    assert isinstance(scores["masking_flags"], list)


def test_load_learned_reads_a_runs_artifact_with_its_metadata(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        "e", artifact_location=(tmp_path / "mlruns").as_uri()
    )  # not ./mlruns
    run = client.create_run(experiment)
    (tmp_path / "dataset").mkdir()
    torch.save(
        {"x": torch.rand(4, 1, 8, 8), "y": torch.arange(4), "meta": {"dataset": "digits"}},
        tmp_path / "dataset" / "learned.pt",
    )
    client.log_artifacts(run.info.run_id, str(tmp_path / "dataset"), artifact_path="dataset")
    learned = api.load_learned(run.info.run_id, uri)
    assert learned.x.shape == (4, 1, 8, 8) and learned.info["dataset"] == "digits"
    with pytest.raises(HarnessInputError, match="no learned set"):
        api.load_learned("0" * 32, uri)


def test_run_spec_takes_a_yaml_file_or_a_dict_and_refuses_unsafe_yaml(tmp_path):
    import yaml

    tree = {
        "dataset": {"name": "digits"},
        "method": {"name": "random", "ipc": 5},
        "seed": 2,
        "eval": {"archs": ["mlp"]},
    }
    path = tmp_path / "trial.yaml"
    path.write_text(yaml.safe_dump(tree))
    from_file = api.run_spec(path, smoke=True)
    from_dict = api.run_spec(tree, smoke=True)
    assert isinstance(from_file, api.TrialResult)
    # smoke's ipc=2 in place of 5, as `harness run --smoke`
    assert (from_file.method, from_file.dataset, from_file.dataset_size) == ("random", "digits", 20)
    assert [a.arch for a in from_file.per_arch] == ["mlp"] and len(from_file.models) == 1  # smoke
    for key in ("clean_acc", "robust_acc", "autoattack_acc", "val_robust_acc"):
        assert getattr(from_file, key) == getattr(from_dict, key), key
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("dataset: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(HarnessInputError):
        api.run_spec(str(unsafe))
    with pytest.raises(HarnessInputError, match="method"):
        api.run_spec({"dataset": {"name": "digits"}})


def test_load_weights_gives_a_trials_model_back(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.protocol.models import build_model
    from harness.sweep.trial import write_artifacts

    result = api.run("digits", "erm", smoke=True, eval={"archs": ["mlp"]})
    (tmp_path / "out").mkdir()
    write_artifacts(tmp_path / "out", {"dataset": {"name": "digits"}}, result)
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment(
        "e", artifact_location=(tmp_path / "mlruns").as_uri()
    )  # not ./mlruns
    run_id = client.create_run(experiment).info.run_id
    client.log_artifacts(run_id, str(tmp_path / "out"))

    state = api.load_weights(run_id, "mlp", uri)
    assert state.keys() == result.weights["mlp"].keys()
    assert all(torch.equal(state[k], result.weights["mlp"][k]) for k in state)
    data = load_dataset("digits")
    mean, std = data.channel_stats()
    model = build_model("mlp", data.input_shape, data.num_classes, mean=mean, std=std)
    model.load_state_dict(state)  # strict: every key fits the architecture
    with pytest.raises(HarnessInputError, match="no weights for 'convnet'"):
        api.load_weights(run_id, "convnet", uri)


@pytest.mark.parametrize(
    "meta", [{"dataset": {"name": "mnist", "subset": None}}, {"dataset": "mnist"}]
)
def test_harness_score_refuses_a_set_made_for_another_dataset(tmp_path, meta):
    path = tmp_path / "set.pt"
    torch.save({"x": torch.rand(20, 1, 8, 8), "y": torch.arange(20) % 10, "meta": meta}, path)
    res = CliRunner().invoke(main, ["score", str(path), "--dataset", "digits", "--smoke"])
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "'mnist'" in text and "--allow-other-dataset" in text and "Traceback" not in text
    res = CliRunner().invoke(
        main,
        [
            "score",
            str(path),
            "--dataset",
            "digits",
            "--smoke",
            "--archs",
            "mlp",
            "--allow-other-dataset",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["dataset_size"] == 20
