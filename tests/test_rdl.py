"""Robust dataset learning (`rdl`, `rdl_gm`): mechanics, the scientific claim, smoke runs."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from harness.cli import main
from harness.datasets import load_dataset
from harness.methods import make_method
from harness.methods._condense import RealSampler, gradient_distance
from harness.methods._synthetic_set import RowOptimizer, init_synthetic_set
from harness.methods.base import MethodContext
from harness.methods.rdl import NetState, unroll_sgd
from harness.protocol.attacks import Threat, accuracy, robust_accuracy
from harness.protocol.train import TrainConfig, WorkMeter, train_model

CPU = torch.device("cpu")


def make_ctx(data, archs, seed=0, log=None):
    return MethodContext(
        data=data,
        threat=Threat("linf", data.default_eps, steps=10),
        train=TrainConfig(),
        device=CPU,
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
        archs=list(archs),
        meter=WorkMeter(),
        log=log or (lambda metrics, step: None),
    )


# --------------------------------------------------------------------------- mechanics


def test_unroll_equals_torch_sgd_with_momentum_and_weight_decay():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(20, 5), torch.randint(0, 3, (20,))
    state = NetState.fresh(net, "mlp")
    params, _ = unroll_sgd(state, x, y, 4, lr=0.1, momentum=0.9, weight_decay=1e-2)

    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for _ in range(4):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for k, p in net.named_parameters():
        torch.testing.assert_close(params[k], p, rtol=1e-5, atol=1e-6)


def test_unroll_is_differentiable_in_the_synthetic_inputs():
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    x = torch.randn(6, 4, requires_grad=True)
    params, _ = unroll_sgd(
        NetState.fresh(net, "linear"),
        x,
        torch.tensor([0, 1] * 3),
        3,
        lr=0.5,
        momentum=0.0,
        weight_decay=0.0,
    )
    (grad,) = torch.autograd.grad(params["weight"].sum(), x)
    assert grad.abs().sum() > 0


def _learner(data, archs, **params):
    from harness.methods.rdl import _Learner

    defaults = {"ipc": 2, "unroll_min": 3, "unroll_max": 3, "attack_steps": 2, "real_batch": 8}
    method = make_method("rdl", {**defaults, "probe_every": 0, "archs": archs, **params})
    ctx = make_ctx(data, archs)
    ctx.arch_settings.update({"convnet": {"width": 4}, "mlp": {"hidden": 16}})
    return _Learner(method.config_for(data.name), ctx)


@pytest.mark.parametrize("arch", ["mlp", "convnet"])
def test_networks_in_one_vmapped_call_give_the_loops_hypergradient(arch):
    """Batched networks (torch.func.vmap over stacked parameters) and a loop over the same
    networks, from the same random stream: the same outer losses, hypergradients, ends of
    the unrolls and metered work."""
    data = load_dataset("digits", subset=4)
    learner = _learner(data, [arch], networks=3, soft_labels=True)
    states = [learner._fresh_network() for _ in range(3)]
    xs = learner.x.clone().requires_grad_(True)
    logits = learner.label_logits.clone().requires_grad_(True)
    xr, yr = learner._real_batch()
    gen = learner.gen.get_state()
    results, work = [], []
    for groups in ([[0], [1], [2]], [[0, 1, 2]]):
        learner.gen.set_state(gen)
        before = learner.ctx.meter.examples
        loss, grads, ends = 0.0, [0.0, 0.0], []
        for group in groups:
            members = [states[i] for i in group]
            out = learner._hypergradient(members, [xs, logits], None, 3, xr, yr)
            loss, grads, ends = loss + out[0], [a + b for a, b in zip(grads, out[1])], ends + out[2]
        results.append((loss, grads, [p for p, _ in ends], [v for _, v in ends]))
        work.append(learner.ctx.meter.examples - before)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-6)
    assert results[0][1][0].abs().sum() > 0  # the set does get a hypergradient
    assert work[0] == work[1]
    # The networks differ (their own seeds), so a mix-up of networks would show.
    assert not torch.equal(results[0][2][0]["head.weight"], results[0][2][1]["head.weight"])


def test_several_networks_per_step_cycle_the_pool_and_learn():
    data = load_dataset("digits", subset=4)
    learner = _learner(data, ["linear", "mlp"], networks=3, outer_steps=3, reinit_every=2)
    before = learner.x.clone()
    learner.outer_step(0)
    assert [s.arch for s in learner.states] == ["linear", "mlp", "linear"]
    learner.outer_step(1)
    assert [s.steps for s in learner.states] == [6, 6, 6]  # continued, not re-initialised
    learner.outer_step(2)  # a new generation: the pool goes on where it stopped
    assert [s.arch for s in learner.states] == ["mlp", "linear", "mlp"]
    assert [s.steps for s in learner.states] == [3, 3, 3]
    assert not torch.equal(learner.x, before) and torch.isfinite(learner.x).all()


def test_row_optimizer_moves_only_the_given_rows():
    target = torch.zeros(6, 3)
    opt = RowOptimizer(target.shape, kind="adam", lr=0.1)
    rows = torch.tensor([1, 4])
    for _ in range(3):
        opt.step(target, rows, torch.ones(2, 3))
    assert torch.all(target[rows] < 0)
    assert torch.all(target[[0, 2, 3, 5]] == 0)
    # Adam's first step moves by lr whatever the gradient's scale.
    fresh = torch.zeros(2, 2)
    RowOptimizer(fresh.shape, kind="adam", lr=0.1).step(
        fresh, torch.tensor([0, 1]), torch.full((2, 2), 1e-3)
    )
    torch.testing.assert_close(fresh, torch.full((2, 2), -0.1), rtol=1e-4, atol=1e-6)


def test_init_synthetic_set_is_class_major_real_or_noise():
    data = load_dataset("digits", subset=5)
    g = torch.Generator().manual_seed(0)
    x, y = init_synthetic_set(data, 3, "real", g)
    assert y.tolist() == [c for c in range(10) for _ in range(3)]
    assert any(torch.equal(x[0], row) for row in data.x_train)
    xn, yn = init_synthetic_set(data, 2, "noise", g)
    assert xn.shape == (20, 1, 8, 8) and xn.min() >= 0 and xn.max() <= 1
    xf, _ = init_synthetic_set(data, None, "real", g)
    assert torch.equal(xf, data.x_train)


def test_full_size_mode_updates_minibatches_and_stays_in_bounds_on_digits():
    data = load_dataset("digits", subset=8)
    method = make_method(
        "rdl",
        {
            "ipc": None,
            "outer_steps": 1,
            "syn_batch": 16,
            "unroll_max": 2,
            "attack_steps": 2,
            "real_batch": 16,
            "outer_lr": 0.5,
            "probe_every": 0,
            "soft_labels": False,
        },
    )
    ctx = make_ctx(data, ["mlp"])
    out = method.learn(ctx)
    assert out.x.shape == data.x_train.shape and torch.equal(out.y, data.y_train)
    assert out.x.min() >= 0.0 and out.x.max() <= 1.0
    changed = (out.x != data.x_train).flatten(1).any(dim=1)
    assert 0 < int(changed.sum()) <= 16  # only the unrolled minibatch moved
    assert ctx.meter.examples > 0  # the learning networks were metered


def test_soft_labels_are_learned_probabilities():
    data = load_dataset("synthetic-robust", params={"n_train": 200, "n_test": 50})
    method = make_method(
        "rdl",
        {
            "ipc": 5,
            "outer_steps": 3,
            "unroll_max": 3,
            "attack_steps": 2,
            "real_batch": 32,
            "soft_labels": True,
            "label_lr": 0.5,
            "probe_every": 0,
        },
    )
    out = method.learn(make_ctx(data, ["linear"]))
    assert out.y.shape == (10, 2)
    torch.testing.assert_close(out.y.sum(dim=1), torch.ones(10))
    assert out.y.min() >= 0 and not torch.allclose(out.y.max(dim=1).values, torch.full((10,), 0.9))
    assert torch.equal(out.y.argmax(dim=1), torch.arange(2).repeat_interleave(5))


def test_arch_pool_with_batchnorm_runs_and_updates_running_statistics():
    data = load_dataset("digits", subset=4)
    logs = []
    method = make_method(
        "rdl",
        {
            "ipc": 1,
            "outer_steps": 2,
            "reinit_every": 1,
            "archs": ["mlp", "vgg11"],
            "unroll_min": 2,
            "unroll_max": 2,
            "attack_steps": 1,
            "real_batch": 8,
            "probe_every": 2,
            "probe_steps": 2,
            "probe_val": 20,
        },
    )
    ctx = make_ctx(data, ["convnet"], log=lambda m, s: logs.append(m))
    out = method.learn(ctx)
    assert out.info["archs"] == ["mlp", "vgg11"]
    assert torch.isfinite(out.x).all() and out.x.min() >= 0 and out.x.max() <= 1
    assert any("probe_robust_acc" in m for m in logs) and all(
        torch.isfinite(torch.tensor(m["outer_loss"])) for m in logs if "outer_loss" in m
    )

    # The unroll of a BatchNorm network trains in batch-statistics mode and updates its
    # running statistics through functional_call's buffers.
    from harness.protocol.models import build_model

    net = build_model("vgg11", (1, 8, 8), 10)
    state = NetState.fresh(net, "vgg11")
    before = {k: b.clone() for k, b in state.buffers.items()}
    unroll_sgd(
        state, torch.rand(6, 1, 8, 8), torch.arange(6), 1, lr=0.01, momentum=0.9, weight_decay=0.0
    )
    assert any(not torch.equal(before[k], state.buffers[k]) for k in before if "running_mean" in k)


def test_gradient_distance_ignores_scale_and_biases():
    w = torch.randn(3, 4)
    assert gradient_distance([w, torch.ones(3)], [2.5 * w, -torch.ones(3)]).item() == pytest.approx(
        0.0, abs=1e-5
    )
    assert gradient_distance([w], [-w]).item() == pytest.approx(
        6.0, abs=1e-4
    )  # 3 rows x (1 - (-1))
    conv = torch.randn(2, 3, 3, 3)
    flipped = conv.clone()
    flipped[1] = -flipped[1]
    assert gradient_distance([conv], [flipped]).item() == pytest.approx(2.0, abs=1e-4)


def test_rdl_gm_learns_a_bounded_finite_set_on_digits():
    data = load_dataset("digits", subset=10)
    logs = []
    method = make_method(
        "rdl_gm",
        {
            "ipc": 2,
            "iterations": 2,
            "outer_loop": 2,
            "inner_loop": 2,
            "real_batch": 8,
            "attack_steps": 2,
            "probe_every": 2,
            "probe_steps": 3,
            "probe_val": 50,
        },
    )
    ctx = make_ctx(data, ["mlp"], log=lambda m, s: logs.append(m))
    out = method.learn(ctx)
    start, _ = init_synthetic_set(data, 2, "real", torch.Generator().manual_seed(0))
    assert out.x.shape == (20, 1, 8, 8) and torch.equal(
        out.y, torch.arange(10).repeat_interleave(2)
    )
    assert torch.isfinite(out.x).all() and out.x.min() >= 0 and out.x.max() <= 1
    assert not torch.equal(out.x, start)  # the matching moved the images
    losses = [m["outer_loss"] for m in logs if "outer_loss" in m]
    assert len(losses) == 2 and all(0 < v < float("inf") for v in losses)
    assert 0.0 <= out.info["probe_robust_acc"] <= out.info["probe_clean_acc"] <= 1.0
    assert ctx.meter.examples > 0


def test_rdl_gm_image_update_lowers_the_matching_loss_on_a_fixed_network():
    """Sign check: a descent step on S, with the network and the (adversarial) real batches
    held fixed, lowers rdl_gm's matching loss (digits, 3 steps of lr 1: 16.8 -> 1.4; an
    ascent step instead fails this test)."""
    import harness.methods.rdl_gm as R

    data = load_dataset("digits", subset=20)
    method = make_method("rdl_gm", {"ipc": 3, "real_batch": 16, "attack_steps": 3})
    ctx = make_ctx(data, ["linear"])
    net = ctx.build("linear", seed=1)
    params = list(net.parameters())
    x, y = init_synthetic_set(data, 3, "real", torch.Generator().manual_seed(0))
    syn_rows = R.indices_by_class(y, data.num_classes)

    def loss_at(xv: torch.Tensor) -> tuple[float, torch.Tensor]:
        ctx.generator.manual_seed(7)  # the same real batches and PGD starts every call
        real = RealSampler(data, ctx.generator, torch.device("cpu"))
        xs = xv.clone().requires_grad_(True)
        loss = method._match_loss(ctx, net, params, xs, y, syn_rows, real)
        return float(loss.detach()), torch.autograd.grad(loss, xs)[0]

    losses = []
    for _ in range(3):
        value, grad = loss_at(x)
        losses.append(value)
        x = (x - 1.0 * grad).clamp(0, 1)
    losses.append(loss_at(x)[0])
    assert losses[-1] < 0.5 * losses[0], losses


# --------------------------------------------------------------------------- the science
#
# Synthetic-robust (Tsipras et al.): x1 = y w.p. p, x2..x101 ~ N(eta*y, 1), eta = 0.4, Linf
# eps = 2*eta = 0.8. Natural training on the real data relies on x2.. and is never robust;
# the best robust classifier (sign of x1) has robust accuracy p = 0.9. A freshly initialised
# `linear` model starts with weights of about +-0.1 on each of the 100 non-robust features,
# worth about 5 logits to the attacker, so a robust learned set has to make natural training
# *remove* them, not just leave them alone (see the rdl docstring).

N_TRAIN = 1000  # reduced for speed; d = 100 (the knife edge, not the default d = 400), p = 0.9


# The recipe tuned for d = 100 (long-lived networks, short random unrolls; the default at
# d = 400 is another, see rdl's DATASET_DEFAULTS): every field the d = 400 defaults change.
D100_RECIPE = {
    "ipc": 250,
    "syn_batch": 512,
    "outer_lr": 0.1,
    "archs": ["linear"],
    "reinit_every": 300,
    "unroll_min": 1,
    "unroll_max": 30,
    "attack_steps": 3,
    "attack_loss": "ce",
    "soft_labels": False,
    "outer_steps": 2000,
}


def robust_data():
    return load_dataset(
        "synthetic-robust", params={"d": 100, "p": 0.9, "n_train": N_TRAIN, "n_test": 500}
    )


def natural_scores(data, x, y, steps, seed, cfg):
    """Clean and PGD-20 accuracy of a fresh `linear` model after `steps` full-batch natural
    SGD steps on (x, y) with the unroll's optimiser settings."""
    ctx = make_ctx(data, ["linear"])
    model = ctx.build("linear", seed=seed)
    train = TrainConfig(
        epochs=steps,
        batch_size=len(x),
        lr=cfg.inner_lr,
        momentum=cfg.inner_momentum,
        weight_decay=cfg.inner_weight_decay,
        schedule="constant",
    )
    train_model(model, x, y, train, generator=torch.Generator().manual_seed(seed), device=CPU)
    return test_scores(model, data)


def test_scores(model, data):
    attack = Threat("linf", data.default_eps, steps=20).attack(
        bounds=data.bounds, generator=torch.Generator().manual_seed(0)
    )
    return accuracy(model, data.x_test, data.y_test), robust_accuracy(
        model, data.x_test, data.y_test, attack
    )


test_scores.__test__ = False  # a helper, not a test


@pytest.fixture(scope="module")
def learned_robust_set():
    data = robust_data()
    method = make_method("rdl", {"probe_every": 0, **D100_RECIPE})
    cfg = method.config_for(data.name)
    out = method.learn(make_ctx(data, ["linear"], seed=0))
    return data, cfg, out


@pytest.mark.slow
def test_natural_training_on_the_learned_set_is_robust_however_long_it_trains(learned_robust_set):
    data, cfg, out = learned_robust_set
    assert data.default_eps == pytest.approx(0.8)
    for steps in (10 * cfg.unroll_max, 100 * cfg.unroll_max):
        for seed in (1, 2):
            clean, robust = natural_scores(data, out.x, out.y, steps, seed, cfg)
            assert robust >= 0.7, f"{steps} steps, seed {seed}: robust {robust:.3f}"
            assert clean >= 0.8

    # The same architecture naturally trained on the original data (erm) is not robust.
    model = make_ctx(data, ["linear"]).build("linear", seed=1)
    train_model(
        model,
        data.x_train,
        data.y_train,
        TrainConfig(),
        generator=torch.Generator().manual_seed(1),
        device=CPU,
    )
    clean, robust = test_scores(model, data)
    assert clean >= 0.95 and robust <= 0.1


@pytest.mark.slow
def test_rdl_beats_a_random_real_subset_of_the_same_size(learned_robust_set):
    data, cfg, out = learned_robust_set
    x_rand, y_rand = init_synthetic_set(data, cfg.ipc, "real", torch.Generator().manual_seed(0))
    steps = 10 * cfg.unroll_max
    _, robust_rdl = natural_scores(data, out.x, out.y, steps, 1, cfg)
    _, robust_rand = natural_scores(data, x_rand, y_rand, steps, 1, cfg)
    assert robust_rdl >= robust_rand + 0.5


# --------------------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("dataset", ["synthetic-robust", "digits"])
@pytest.mark.parametrize("method", ["rdl", "rdl_gm"])
def test_smoke_run_gives_finite_scores(method, dataset):
    args = ["run", "--dataset", dataset, "--method", method, "--smoke", "--json"]
    if dataset == "digits":
        args += [
            "--arch",
            "mlp",
        ]  # the smoke convnet's evaluation alone takes most of a minute on CPU
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["method"] == method and out["dataset"] == dataset
    for key in ("clean_acc", "robust_acc", "val_robust_acc", "learn_seconds", "learn_work_epochs"):
        assert 0 <= out[key] < float("inf"), key
    assert out["robust_acc"] <= out["clean_acc"] + 0.05


def test_dataset_defaults_fill_only_unset_fields_and_keep_ranges_whole():
    tuned = make_method("rdl", {}).config_for("digits")
    assert (tuned.unroll_min, tuned.unroll_max, tuned.soft_labels) == (100, 100, True)
    # an explicit setting wins over the tuned one
    assert make_method("rdl", {"ipc": 3}).config_for("digits").ipc == 3
    # setting one end of the unroll range drops the tuned other end instead of mixing them
    # into an empty range (digits tunes unroll_min 100; unroll_max 3 alone stays valid)
    short = make_method("rdl", {"unroll_max": 3}).config_for("digits")
    assert (short.unroll_min, short.unroll_max) == (1, 3)
    # a dataset without tuned values keeps the class defaults
    assert make_method("rdl", {}).config_for("mnist") == make_method("rdl", {}).cfg


def test_set_size_follows_the_features_unless_an_ipc_is_given():
    """rows_per_feature sizes the set from the input's shape (synthetic-robust's default);
    an explicit ipc takes the size back whole; a set of real examples stays within a class."""
    from harness.methods.rdl import set_size

    data = load_dataset("synthetic-robust", params={"d": 60, "n_train": 300, "n_test": 50})
    tuned = make_method("rdl", {}).config_for("synthetic-robust")
    assert tuned.init == "noise" and tuned.rows_per_feature == 5.0
    assert set_size(tuned, data) == -(-5 * (61 + 1) // 2)  # 61 inputs: x1 and 60 others
    assert set_size(make_method("rdl", {"ipc": 7}).config_for("synthetic-robust"), data) == 7
    real = make_method("rdl", {"rows_per_feature": 5.0, "init": "real"}).config_for("digits")
    smallest = int(torch.bincount(data.y_train).min())
    assert set_size(real, data) == smallest


# --------------------------------------------------------------------------- divergence


def test_clip_norm_caps_the_norm_and_keeps_the_direction():
    from harness.methods.rdl import clip_norm

    g = torch.tensor([3e8, -4e8])
    clipped = clip_norm(g, 1e6)
    assert clipped.norm().item() == pytest.approx(1e6)
    assert torch.allclose(clipped / clipped.norm(), g / g.norm())
    small = torch.tensor([0.3, -0.4])
    assert torch.equal(clip_norm(small, 1e6), small)


def test_a_non_finite_hypergradient_leaves_the_set_untouched():
    from harness.methods.rdl import _Learner

    data = load_dataset("digits", subset=4)
    method = make_method(
        "rdl",
        {
            "ipc": 1,
            "unroll_min": 3,
            "unroll_max": 3,
            "attack_steps": 1,
            "real_batch": 8,
            "probe_every": 0,
            "inner_lr": 1e30,
            "archs": ["linear"],
        },
    )
    learner = _Learner(method.config_for(data.name), make_ctx(data, ["linear"]))
    before = learner.x.clone()
    learner.outer_step(0)  # the unroll overflows: its hypergradient is NaN
    assert learner.bad_steps == 1
    assert torch.equal(learner.x, before) and torch.isfinite(learner.x).all()
    assert learner.states == [None]  # the exploded network is dropped, the next step starts afresh


def test_a_diverging_run_is_a_clear_exit_1_not_a_traceback():
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--dataset",
            "digits",
            "--method",
            "rdl",
            "--smoke",
            "--set",
            "method.inner_lr=1e30",
            "--json",
        ],
    )
    assert res.exit_code == 1, res.output
    assert "diverged" in res.output and "method.inner_lr" in res.output
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- the theory case

# Settings of the abstraction model that no choice of rdl's defaults looked at (those were
# chosen on validation at (d, p) = (90, .99), (100, .95), (150, .95), (400, .9), (1000, .75);
# docs/notes/rdl.md). Both keep a positive attacked margin, 2p - 1 > eps = 8 / sqrt(d).
UNSEEN_ABSTRACTIONS = [
    # Not reached (measured: AutoAttack 0.26 against the goal's 0.77): at eps 0.76 the
    # margin left to the robust feature is small and the set must erase a fresh network's
    # initial weights almost wholly; the validation points nearest (eps 0.80, 0.84) reached p
    # with another learning seed. Kept strict so a fix shows here (issue 21, docs/notes/rdl.md).
    pytest.param(110, 0.96, marks=pytest.mark.xfail(strict=True, reason="issue 21: high eps")),
    (300, 0.87),
]


@pytest.mark.slow
@pytest.mark.parametrize(("d", "p"), UNSEEN_ABSTRACTIONS)
def test_default_rdl_makes_natural_linear_training_robust_near_p(d, p):
    """Issue 21 item 1: with rdl's *default* settings, a `linear` model naturally trained on
    the learned set (the harness's protocol, 300 epochs) keeps >= 0.8 p AutoAttack accuracy
    on the test split, where the best robust linear classifier has about p; the same model
    trained on the real data has none."""
    from harness import api

    assert 2 * p - 1 > 8 / d**0.5  # a positive attacked margin
    tree = {
        "dataset": {"name": "synthetic-robust", "d": d, "p": p, "n_train": 1000, "n_test": 500},
        "threat": {"norm": "linf", "autoattack": "fast", "steps": 20},
        # 300 epochs: the DC protocol the demo scores learned sets by, and rdl was chosen for
        "eval": {
            "archs": ["linear"],
            "models_per_arch": 1,
            "epochs": 300,
            "max_test": 500,
            "max_val": 200,
        },
        "seed": 3,
    }
    learned = api.run_spec({**tree, "method": {"name": "rdl", "probe_every": 0}})
    assert learned.autoattack_acc >= 0.8 * p, learned.per_arch
    natural = api.run_spec({**tree, "method": {"name": "erm"}})
    assert natural.autoattack_acc <= 0.1
