"""The CLI's contracts: `harness run --json`, listings, and exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from harness.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_run_json_contract_on_synthetic():
    res = invoke("run", "--dataset", "synthetic-robust", "--method", "erm", "--smoke", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in (
        "method",
        "dataset",
        "seed",
        "clean_acc",
        "robust_acc",
        "autoattack_acc",
        "val_robust_acc",
        "learn_seconds",
        "train_seconds",
        "work_epochs",
        "threat",
        "per_arch",
    ):
        assert key in out, key
    assert out["method"] == "erm" and out["dataset"] == "synthetic-robust"
    assert out["smoke"] is True  # shrunken budgets: a check, not a result
    # --smoke runs the fast AutoAttack and says so; off leaves the key present but null.
    assert out["threat"]["autoattack"] == "fast" and 0.0 <= out["autoattack_acc"] <= 1.0
    assert out["autoattack_acc"] <= out["robust_acc"] + 0.05
    assert isinstance(out["masking_flags"], list)
    assert set(out["threat"]) >= {"norm", "eps"}
    off = invoke(
        "run",
        "--dataset",
        "synthetic-robust",
        "--method",
        "erm",
        "--smoke",
        "--json",
        "--set",
        "threat.autoattack=off",
    )
    assert json.loads(off.stdout)["autoattack_acc"] is None
    assert all({"arch", "clean_acc", "robust_acc"} <= set(a) for a in out["per_arch"])
    assert 0.0 <= out["robust_acc"] <= 1.0 and 0.0 <= out["clean_acc"] <= 1.0


def test_a_smoke_runs_table_says_it_is_not_a_result():
    res = invoke("run", "--dataset", "synthetic-robust", "--method", "erm", "--smoke")
    assert res.exit_code == 0, res.output
    assert "SMOKE RUN, not a result" in res.output


def test_the_largest_seed_runs_and_ordinary_seeds_keep_their_derived_seeds():
    """Seeds derived from the spec's (a model's seed * 1000 + k, a repeat's seed + 1 + i) stay
    in torch's 64-bit range at the top of 0..2**63-1, and are unchanged for ordinary seeds
    (recorded results and the README's figures depend on them)."""
    from harness.spec.schema import SEED_MAX, derived_seed

    assert [derived_seed(3 * 1000 + k) for k in range(3)] == [3000, 3001, 3002]
    assert derived_seed(SEED_MAX + 1) == 0
    res = invoke(
        "run",
        "--dataset",
        "synthetic-robust",
        "--method",
        "erm",
        "--smoke",
        "--json",
        "--seed",
        str(SEED_MAX),
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["seed"] == SEED_MAX
    assert [m["seed"] for m in out["models"]] == [derived_seed(SEED_MAX * 1000)]
    small = json.loads(
        invoke(
            "run",
            "--dataset",
            "synthetic-robust",
            "--method",
            "erm",
            "--smoke",
            "--json",
            "--seed",
            "3",
        ).stdout
    )
    assert [m["seed"] for m in small["models"]] == [3000]


def test_set_overrides_reach_the_dataset_and_threat():
    res = invoke(
        "run",
        "--dataset",
        "synthetic-robust",
        "--method",
        "erm",
        "--smoke",
        "--json",
        "--set",
        "dataset.d=50",
        "--set",
        "threat.eps=0.25",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["threat"]["eps"] == pytest.approx(0.25)


def test_erm_is_vulnerable_on_synthetic_robust():
    """The vulnerability the project exists to fix: natural training is accurate but not robust."""
    res = invoke(
        "run",
        "--dataset",
        "synthetic-robust",
        "--method",
        "erm",
        "--json",
        "--set",
        "eval.models_per_arch=1",
        "--set",
        "dataset.n_train=3000",
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["clean_acc"] >= 0.95
    assert out["robust_acc"] <= 0.1


@pytest.mark.parametrize("command", ["datasets", "archs", "methods"])
def test_listings(command):
    res = invoke(command)
    assert res.exit_code == 0, res.output
    expected = {
        "datasets": ["synthetic-robust", "digits", "cifar10", "tinyimagenet"],
        "archs": ["convnet", "resnet18", "vgg11", "lenet", "mlp"],
        "methods": ["erm"],
    }[command]
    for name in expected:
        assert name in res.output


BAD_RUNS = [
    (["--dataset", "cifar11", "--method", "erm"], "cifar10"),
    (["--dataset", "digits", "--method", "magic"], "method"),
    (["--dataset", "digits", "--method", "erm", "--arch", "resnet99"], "resnet18"),
    (["--dataset", "digits", "--method", "erm", "--set", "train.lr=-1"], "train.lr"),
    (["--dataset", "digits", "--method", "erm", "--set", "threat.norm=l3"], "threat.norm"),
    (["--dataset", "digits", "--method", "erm", "--set", "train.bogus=1"], "train.bogus"),
    (["--dataset", "synthetic-robust", "--method", "erm", "--set", "dataset.p=2"], "dataset.p"),
    (["--dataset", "digits", "--method", "erm", "--set", "nonsense"], "--set"),
    (["--dataset", "mnist", "--method", "erm"], "download"),
    (
        ["--dataset", "synthetic-robust", "--method", "erm", "--arch", "convnet"],
        "image architecture",
    ),
    (["--dataset", "digits", "--method", "erm", "--device", "cuda:7"], "--device"),
]


@pytest.mark.parametrize("args,needle", BAD_RUNS, ids=[" ".join(a[-2:]) for a, _ in BAD_RUNS])
def test_bad_run_input_exits_2_with_a_clear_message(args, needle):
    import torch

    if "cuda:7" in args and torch.cuda.is_available():
        pytest.skip("a CUDA machine may have that device")
    res = invoke("run", *args, "--smoke")
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def write(tmp_path, text: str):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return str(p)


GOOD_SPEC = """
name: ok
dataset: {name: digits, subset: 5}
methods:
  erm: {space: {train.lr: {loguniform: [0.01, 0.1]}}}
  random: {space: {ipc: {grid: [1, 10]}}}
"""

BAD_SPECS = [
    ("name: x\ndataset: {name: digits\n", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("name: x\ndataset: {name: digits}\nmethods: {magic: {}}\n", "magic"),
    ("name: x\ndataset: {name: nope}\nmethods: {erm: {}}\n", "nope"),
    ("name: x\ndataset: {name: digits}\nmethods: {erm: {}}\ntrials: 0\n", "trials"),
    ("name: x\ndataset: {name: digits}\nmethods: {erm: {}}\ncolour: red\n", "colour"),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {space: {train.lr: {uniform: [1, 0.1]}}}}\n",
        "methods.erm.space.train.lr",
    ),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {space: {train.lr: {gaussian: [0, 1]}}}}\n",
        "gaussian",
    ),
    ("name: x\ndataset: {name: digits}\nmethods: {random: {space: {ipcs: 3}}}\n", "ipcs"),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {}}\nresources: {gpu: -1}\n",
        "resources.gpu",
    ),
    ("name: bad name\ndataset: {name: digits}\nmethods: {erm: {}}\n", "name"),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {}}\neval: {arch_settings: {convnet: {depht: 4}}}\n",
        "eval.arch_settings.convnet.depht",
    ),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {}}\neval: {arch_settings: {convnet: {norm: instancenorm}}}\n",
        "eval.arch_settings.convnet.norm",
    ),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {}}\neval: {arch_settings: {resnet: {width: 8}}}\n",
        "eval.arch_settings.resnet",
    ),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {}}\ntrain: {augment: flip}\n",
        "train.augment",
    ),
    (
        "name: x\ndataset: {name: digits}\nmethods: {erm: {space: {eval.arch_settings.mlp.hidden: 0}}}\n",
        "eval.arch_settings.mlp.hidden",
    ),
]


def test_validate_prints_the_plan(tmp_path):
    res = invoke("validate", write(tmp_path, GOOD_SPEC))
    assert res.exit_code == 0, res.output
    assert "random[ipc=1]" in res.output and "random[ipc=10]" in res.output
    assert "valid" in res.output


def test_validate_warns_of_missing_data_files_with_the_fetch_command(tmp_path):
    spec = "name: ok\ndataset: {name: mnist, root: %s}\nmethods: {erm: {}}\n" % (tmp_path / "d")
    res = invoke("validate", write(tmp_path, spec))
    assert res.exit_code == 0, res.output  # the spec is valid; its data are not here yet
    assert "valid" in res.output
    assert "warning: the files of dataset 'mnist' are not under" in res.output
    assert "dataset.download=true" in res.output  # how to get them
    here = invoke("validate", write(tmp_path, GOOD_SPEC))  # embedded data: nothing to warn of
    assert "warning" not in here.output


@pytest.mark.parametrize("text,needle", BAD_SPECS, ids=[n for _, n in BAD_SPECS])
def test_bad_specs_exit_2_naming_the_field(tmp_path, text, needle):
    res = invoke("validate", write(tmp_path, text))
    assert res.exit_code == 2, res.output
    assert needle in res.output
    assert "Traceback" not in res.output


def test_run_refuses_bad_arch_settings_and_augment_on_flat_data():
    res = invoke(
        "run",
        "--dataset",
        "digits",
        "--method",
        "erm",
        "--smoke",
        "--set",
        "eval.arch_settings.convnet.depth=0",
    )
    assert res.exit_code == 2 and "eval.arch_settings.convnet.depth" in res.output, res.output
    res = invoke(
        "run",
        "--dataset",
        "synthetic-robust",
        "--method",
        "erm",
        "--smoke",
        "--set",
        "train.augment=crop_flip",
    )
    assert res.exit_code == 2 and "train.augment" in res.output, res.output
    assert "Traceback" not in res.output


def test_missing_spec_file_exits_2(tmp_path):
    res = invoke("validate", str(tmp_path / "absent.yaml"))
    assert res.exit_code == 2 and "does not exist" in res.output


def test_unreachable_tracking_server_exits_2_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("sweep", write(tmp_path, GOOD_SPEC), "--tracking-uri", "http://127.0.0.1:9")
    assert res.exit_code == 2, res.output
    assert "--tracking-uri" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "ray_results").exists()


def test_dry_run_prints_plan_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("sweep", write(tmp_path, GOOD_SPEC), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "random[ipc=10]" in res.output
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_sweep_on_missing_data_exits_2_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path, "name: m\ndataset: {name: mnist}\nmethods: {erm: {}}\n")
    res = invoke("sweep", spec)
    assert res.exit_code == 2, res.output
    assert "mnist" in res.output and "download" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()


def test_help_lists_every_command_uncut_with_examples():
    out = invoke("--help").output
    listed = out.split("Commands:")[1].strip().splitlines()
    assert listed and not any(line.rstrip().endswith("...") for line in listed), out
    for command in (
        "run",
        "sweep",
        "validate",
        "leaderboard",
        "ui",
        "datasets",
        "archs",
        "methods",
    ):
        assert command in out
        assert "Example:" in invoke(command, "--help").output, command


def test_smoke_drops_gpu_requests():
    from pathlib import Path

    spec = str(Path(__file__).resolve().parents[1] / "sweeps" / "cifar10.yaml")
    assert "gpu 0.0" in invoke("validate", spec, "--smoke").output
    assert "gpu 1" in invoke("validate", spec).output


def test_run_output_keeps_what_the_trial_made_and_never_overwrites(tmp_path):
    import torch
    import yaml

    out = tmp_path / "kept"
    args = [
        "run",
        "--dataset",
        "digits",
        "--method",
        "rdl",
        "--smoke",
        "--arch",
        "mlp",
        "--set",
        "threat.autoattack=off",
        "--output",
        str(out),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    spec = yaml.safe_load((out / "spec.yaml").read_text())
    assert spec["threat"]["eps"] == 0.2  # resolved, not null
    assert spec["method"]["outer_steps"] == 4 and "unroll_min" in spec["method"]  # effective
    result = json.loads((out / "result.json").read_text())
    learned = torch.load(out / "dataset" / "learned.pt", weights_only=True)
    assert (
        learned["meta"]["method"]["name"] == "rdl" and len(learned["x"]) == result["dataset_size"]
    )
    assert (out / "model" / "mlp.pt").exists()
    again = CliRunner().invoke(main, args)  # the directory holds a run now: refused, kept
    assert again.exit_code == 2 and "--output" in again.output
    assert json.loads((out / "result.json").read_text()) == result


def test_a_trial_reports_its_learning_steps_and_models():
    from harness.protocol.evaluate import run_trial
    from harness.spec.schema import build_run_spec

    seen: list[tuple[str, int, int]] = []
    spec = build_run_spec(
        {
            "dataset": {"name": "digits", "subset": 10},
            "method": {"name": "dm", "ipc": 1, "iterations": 3},
            "threat": {"autoattack": "off", "steps": 2},
            "eval": {"archs": ["mlp"], "models_per_arch": 2, "epochs": 2},
        }
    )
    run_trial(spec, progress=lambda *event: seen.append(event))
    assert seen == [
        ("learning", 1, 3),
        ("learning", 2, 3),
        ("learning", 3, 3),
        ("models", 1, 2),
        ("models", 2, 2),
    ]


def test_validate_shows_each_methods_effective_settings(tmp_path):
    """rdl's per-dataset tuned defaults are what its trials run with, and validate says so."""
    spec = tmp_path / "rdl.yaml"
    spec.write_text(
        "name: eff\ndataset: {name: digits}\nmethods:\n  rdl: {}\n"
        "  random: {space: {ipc: {grid: [3]}}}\n"
    )
    res = invoke("validate", str(spec))
    assert res.exit_code == 0, res.output
    rdl_line = res.output.split("rdl", 1)[1]
    assert "outer_steps=600" in rdl_line and "soft_labels=True" in rdl_line  # digits' tuned
    assert "ipc=3" in res.output.split("random[ipc=3]", 1)[1]
