"""Literature recipes wired through the protocol: evaluation augmentation of learned sets
(DSA for DM and DSA-DC), early stopping of model-producing methods on validation data only,
and architecture settings from the spec."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import harness.protocol.evaluate as evaluate
from harness.datasets import load_dataset
from harness.methods._augment import DEFAULT_STRATEGY, DSATrainAugment
from harness.protocol.evaluate import run_trial
from harness.spec.schema import build_run_spec


def spec(name, **sections):
    tree = {
        "dataset": {"name": "digits", "subset": 5},
        "method": {"name": name},
        "threat": {"steps": 2, "autoattack": "off"},  # recipes are checked, not scores
        "train": {"epochs": 2},
        "eval": {
            "archs": ["mlp"],
            "models_per_arch": 1,
            "epochs": 3,
            "max_test": 50,
            "max_val": 50,
            "arch_settings": {"mlp": {"hidden": 16}},
        },
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value}
    return build_run_spec(tree)


@pytest.fixture
def loop_calls(monkeypatch):
    """Every call of the training loop from the protocol: its keyword arguments, with the
    augmentation wrapped so its uses are counted."""
    calls = []
    real = evaluate.train_model

    def spy(*args, augment=None, **kwargs):
        record = {"cfg": args[3], "augment": augment, "used": 0, "changed": 0, **kwargs}
        calls.append(record)

        def counted(xb, gen):
            out = augment(xb, gen)
            record["used"] += 1
            record["changed"] += int(not torch.equal(out, xb))
            return out

        return real(*args, augment=counted if augment else None, **kwargs)

    monkeypatch.setattr(evaluate, "train_model", spy)
    return calls


def test_dm_sets_are_evaluated_with_dsa(loop_calls):
    result = run_trial(spec("dm", method={"ipc": 1, "iterations": 3, "batch_real": 8}))
    (call,) = loop_calls
    assert isinstance(call["augment"], DSATrainAugment)
    assert call["augment"].names == ["color", "crop", "cutout", "flip", "scale", "rotate"]
    assert call["used"] == 3  # 10 images in one batch, 3 epochs: every batch augmented
    assert call["changed"] >= 1
    assert result.learned.info["dsa"] is True


def test_dc_learned_with_dsa_is_evaluated_with_dsa(loop_calls):
    result = run_trial(spec("dc", method={"ipc": 1, "iterations": 2, "batch_real": 8, "dsa": True}))
    (call,) = loop_calls
    assert isinstance(call["augment"], DSATrainAugment)
    assert call["augment"].strategy == DEFAULT_STRATEGY  # the strategy it was learned with
    assert call["used"] == 3 and call["changed"] >= 1
    assert result.learned.info["dsa"] is True


@pytest.mark.parametrize(
    "method,params",
    [
        ("dm", {"ipc": 1, "iterations": 1, "batch_real": 8, "dsa": False}),
        ("dc", {"ipc": 1, "iterations": 1, "batch_real": 8}),  # DC's default: no DSA
        ("random", {"ipc": 1}),
    ],
)
def test_sets_learned_without_dsa_are_evaluated_without_augmentation(loop_calls, method, params):
    run_trial(spec(method, method=params, train={"augment": "crop_flip"}))
    (call,) = loop_calls
    assert call["augment"] is None and call["used"] == 0
    assert call["cfg"].augment == "none"  # train.augment is the model-training recipe
    assert call["select"] is None  # early stopping is a recipe of model-producing methods


def test_dsa_evaluation_draws_per_image_and_reproducibly():
    x = torch.rand(1, 3, 8, 8).expand(64, 3, 8, 8).clone()  # one image, 64 times
    aug = DSATrainAugment("flip")
    out = aug(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, x[0].flip(-1)) for o in out]
    assert any(flipped) and not all(flipped)
    torch.testing.assert_close(out, aug(x, torch.Generator().manual_seed(0)))
    crops = DSATrainAugment("crop_scale_rotate_color_cutout")(x, torch.Generator().manual_seed(1))
    assert crops.shape == x.shape and not torch.equal(crops[0], crops[1])


def test_model_methods_get_early_stopping_and_crop_flip(loop_calls):
    result = run_trial(
        spec(
            "pgd_at",
            method={"steps": 1},
            train={"epochs": 3, "augment": "crop_flip", "early_stop": True},
        )
    )
    (call,) = loop_calls
    assert call["select"] is not None and call["augment"] is None
    assert call["cfg"].augment == "crop_flip"
    assert 1 <= result.models[0].kept_epoch <= 3
    assert "kept_epoch" in result.to_json()["models"][0]


def test_early_stopping_scores_only_the_tail_of_the_validation_split(monkeypatch):
    data = load_dataset("digits", subset=5)
    seen = []
    monkeypatch.setattr(
        evaluate, "robust_accuracy", lambda model, x, y, attack: seen.append(x) or 0.5
    )
    threat = evaluate.Threat("linf", 0.1, steps=20)
    select = evaluate.early_stop_selector(data, threat, torch.device("cpu"))
    assert select(1, torch.nn.Identity()) == 0.5
    (x,) = seen
    assert torch.equal(x, data.x_val[-evaluate.PROBE_EXAMPLES :])


def test_arch_settings_reach_the_trained_models():
    result = run_trial(
        spec(
            "erm",
            train={"epochs": 1},
            eval={"archs": ["convnet"], "arch_settings": {"convnet": {"depth": 4, "width": 4}}},
        )
    )
    conv_weights = [
        k for k, v in result.weights["convnet"].items() if k.startswith("features") and v.dim() == 4
    ]
    assert len(conv_weights) == 4


def test_augmented_sets_get_the_reference_evaluation_budget():
    """eval.epochs unset: 300 epochs at most on a plain set, 1000 on a set trained with its
    DSA augmentation (the reference code's budgets); a spec's eval.epochs always wins."""
    unset = spec("dm", eval={"epochs": None}, train={"epochs": 30})
    # 30 epochs of 60,000 images are 18,000 epochs of 100: both caps bind.
    assert evaluate.eval_epochs(unset, 100, 60_000) == 300
    assert evaluate.eval_epochs(unset, 100, 60_000, augmented=True) == 1000
    assert evaluate.downstream_config(unset, 100, 60_000, augmented=True).epochs == 1000
    # Below the caps the compute-matched budget holds, augmented or not.
    assert evaluate.eval_epochs(unset, 1000, 10_000, augmented=True) == 300
    explicit = spec("dm", eval={"epochs": 300})
    assert evaluate.downstream_config(explicit, 100, 60_000, augmented=True).epochs == 300


@pytest.mark.parametrize(
    "method,params,epochs",
    [
        ("dm", {"ipc": 1, "iterations": 1, "batch_real": 8}, 1000),  # evaluated with DSA
        ("random", {"ipc": 1}, 300),
    ],
)
def test_trials_pass_the_sets_augmentation_to_the_budget(loop_calls, method, params, epochs):
    # 200 epochs' worth of steps on the full split is >= 1000 epochs of a 10-image set.
    run_trial(spec(method, method=params, eval={"epochs": None}, train={"epochs": 200}))
    (call,) = loop_calls
    assert call["cfg"].epochs == epochs


def load_reproduce(monkeypatch):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"
    module_spec = importlib.util.spec_from_file_location("bench_reproduce", path)
    module = importlib.util.module_from_spec(module_spec)
    monkeypatch.setitem(sys.modules, module_spec.name, module)  # its dataclasses look it up
    module_spec.loader.exec_module(module)
    return module


def test_reproduction_recipe_is_the_downstream_protocol(monkeypatch):
    """benchmarks/reproduce.py trains with PAPER_RECIPE; the harness scores learned sets with
    `downstream_config`. At eval.epochs 300 they must be one recipe, field for field."""
    recipe = load_reproduce(monkeypatch).PAPER_RECIPE
    run = build_run_spec(
        {
            "dataset": {"name": "fashion-mnist"},
            "method": {"name": "random"},
            "eval": {"epochs": 300},
        }
    )
    protocol = evaluate.downstream_config(run, 60_000, 60_000)
    assert dataclasses.asdict(recipe) == dataclasses.asdict(protocol)
    # A set smaller than a batch: the protocol trains on it whole, as the loop clips the
    # recipe's 256 to the set (harness.protocol.train: batch = min(batch_size, len(x))).
    assert evaluate.downstream_config(run, 100, 60_000).batch_size == 100
