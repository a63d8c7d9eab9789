"""AutoAttack at the reference settings: agreement with Croce & Hein's implementation, and the
exact change of coordinates that lets it attack unbounded features."""

from __future__ import annotations

import sys

import pytest
import torch
from reference_autoattack import reference_autoattack, reference_robust_mask

from harness.datasets import load_dataset
from harness.errors import HarnessInputError
from harness.methods import MethodContext, make_method
from harness.protocol.attacks import AttackModeError, Threat, robust_accuracy
from harness.protocol.autoattack import (
    ITERATIONS,
    SQUARE_QUERIES,
    autoattack,
    build_attacks,
    robust_mask,
)
from harness.protocol.models import build_model
from harness.protocol.train import TrainConfig, WorkMeter, train_model

N_CHECK = 300  # the issue asks for >= 200 examples; 300 keeps one example at 0.33 points


@pytest.fixture(scope="module")
def robust_mlp():
    """A PGD-adversarially-trained digits MLP (10 epochs, ~2 s): robust enough that every
    attack of the ensemble has work to do (PGD-20 0.38, AutoAttack 0.24 at Linf 0.2)."""
    data = load_dataset("digits", split_seed=0)
    threat = Threat("linf", 0.2, steps=20)
    ctx = MethodContext(
        data=data,
        threat=threat,
        train=TrainConfig(epochs=10),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seed=0,
        archs=["mlp"],
        meter=WorkMeter(),
        log=lambda *a: None,
        smoke=False,
    )
    method = make_method("pgd_at", {})
    model = ctx.build("mlp", seed=0)
    train_model(
        model,
        data.x_train,
        data.y_train,
        method.train_config(ctx.train),
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        loss_step=method.loss_step(ctx),
        meter=WorkMeter(),
    )
    return model.eval(), data.x_test[:N_CHECK], data.y_test[:N_CHECK]


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_standard_version_agrees_with_the_reference(robust_mlp, norm, eps):
    if reference_autoattack() is None:
        pytest.skip(
            "pyautoattack (the reference AutoAttack) is not installed: pip install -e .[test]"
        )
    model, x, y = robust_mlp
    ours = robust_mask(model, x, y, norm=norm, eps=eps, num_classes=10, version="standard")
    reference = reference_robust_mask(model, x, y, norm=norm, eps=eps)
    differ = int((ours != reference).sum())
    print(
        f"{norm} {eps}: ours {ours.float().mean():.3f}, reference "
        f"{reference.float().mean():.3f}, {differ} of {len(x)} judged differently"
    )  # pytest -s
    assert differ <= 0.01 * len(x), (
        f"{norm}: ours {ours.float().mean():.3f}, reference {reference.float().mean():.3f}, "
        f"{differ} examples judged differently"
    )
    # Not a vacuous agreement: the model is partly robust and PGD overstates it.
    pgd_acc = robust_accuracy(
        model, x, y, Threat(norm, eps, steps=20).attack(generator=torch.Generator().manual_seed(0))
    )
    print(f"{norm} {eps}: PGD-20 {pgd_acc:.3f}")
    assert 0.05 < float(ours.float().mean()) < pgd_acc


def test_reference_skips_only_when_not_installed(monkeypatch):
    """Absent: None (the cross-check skips). Installed but broken: the ImportError surfaces."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "autoattack" else real_find_spec(name, *a),
    )
    assert reference_autoattack() is None
    monkeypatch.setattr(importlib.util, "find_spec", real_find_spec)
    if real_find_spec("autoattack") is None:
        pytest.skip("pyautoattack is not installed: the broken-install case needs its spec")
    for name in [m for m in sys.modules if m == "autoattack" or m.startswith("autoattack.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "autoattack.other_utils", None)  # its import fails
    with pytest.raises(ImportError):
        reference_autoattack()


def test_fast_version_is_the_standard_ensemble_cut_short(robust_mlp):
    model, x, y = robust_mlp
    fast = robust_mask(model, x, y, norm="linf", eps=0.2, num_classes=10, version="fast")
    standard = robust_mask(model, x, y, norm="linf", eps=0.2, num_classes=10, version="standard")
    assert bool((standard <= fast).all())  # same first attacks and seeds; standard adds two


def test_reference_settings():
    model = build_model("mlp", (1, 8, 8), 10, hidden=8).eval()
    apgd_ce, apgd_t, fab_t, square = build_attacks(
        model, norm="linf", eps=0.1, num_classes=10, version="standard", seed=0
    )
    assert apgd_ce.steps == apgd_t.steps == fab_t.steps == ITERATIONS == 100
    assert apgd_ce.loss == "ce" and apgd_ce.n_restarts == apgd_t.n_restarts == 1
    assert apgd_t.n_target_classes == fab_t.n_target_classes == 9 and fab_t.multi_targeted
    assert square.n_queries == SQUARE_QUERIES == 5000 and square.p_init == 0.8
    assert square.rescale_schedule is False
    few = build_attacks(model, norm="l2", eps=0.1, num_classes=5, version="standard", seed=0)
    assert [a.n_target_classes for a in few[1:3]] == [4, 4]  # fewer classes: every other one
    binary = build_attacks(model, norm="l2", eps=0.1, num_classes=2, version="fast", seed=0)
    assert [type(a).__name__ for a in binary] == ["APGD"]  # no DLR-targeted attack below 4


def test_unbounded_features_are_attacked_exactly():
    """A linear classifier's Linf robustness is known in closed form: example i survives iff
    its logit margin exceeds eps * |w1 - w0|_1. AutoAttack, run through the change of
    coordinates onto [0, 1], must find exactly the breakable ones."""
    g = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(400, 20, generator=g)
    model = torch.nn.Linear(20, 2).eval()
    with torch.no_grad():
        logits = model(x)
    y = logits.argmax(1)  # every example starts correctly classified
    margin = (logits[:, 1] - logits[:, 0]).abs()
    dual = (model.weight[1] - model.weight[0]).abs().sum().item()
    for q in (0.3, 0.7):  # radii that break 30% and 70% of the examples
        eps = float(torch.quantile(margin / dual, q))
        exact = margin > eps * dual
        got = robust_mask(
            model, x, y, norm="linf", eps=eps, num_classes=2, version="fast", bounds=None
        )
        assert int((got != exact).sum()) <= 2  # only ties at the boundary may differ


def test_rng_state_kept_and_bad_inputs_refused(robust_mlp):
    model, x, y = robust_mlp
    state = torch.random.get_rng_state()
    autoattack(model, x[:20], y[:20], norm="linf", eps=0.2, num_classes=10, version="fast")
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks' reseeding contained
    with pytest.raises(HarnessInputError, match="outside the dataset's bounds"):
        autoattack(model, x[:4] * 3, y[:4], norm="linf", eps=0.2, num_classes=10)
    with pytest.raises(HarnessInputError, match="version"):
        autoattack(model, x[:4], y[:4], norm="linf", eps=0.2, num_classes=10, version="plus")
    with pytest.raises(AttackModeError):
        autoattack(model.train(), x[:4], y[:4], norm="linf", eps=0.2, num_classes=10)
    model.eval()
