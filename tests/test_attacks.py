"""FGSM / PGD on small models trained on scikit-learn's digits."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch.func import functional_call

from harness.errors import HarnessInputError
from harness.protocol.attacks import (
    AttackModeError,
    Threat,
    accuracy,
    fgsm,
    pgd,
    random_start,
    robust_accuracy,
)
from harness.protocol.autoattack import autoattack
from harness.protocol.models import build_model

EPS = 0.2  # digits' default Linf radius: natural training falls well below clean accuracy


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:1600]
    return x[train], y[train], x[test], y[test]


def train(arch, digits, steps=80, **kwargs):
    """Full-batch Adam: well under a second for these sizes."""
    x, y = digits[0], digits[1]
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(arch, (1, 8, 8), 10, mean=mean, std=std, **kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def mlp(digits):
    return train("mlp", digits, hidden=64)


@pytest.fixture(scope="module")
def bn_convnet(digits):
    return train("convnet", digits, steps=40, width=8, norm="batch")


@pytest.fixture
def test_set(digits):
    return digits[2], digits[3]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_trained_models_are_accurate(mlp, bn_convnet, test_set):
    assert accuracy(mlp, *test_set) > 0.9
    assert accuracy(bn_convnet, *test_set) > 0.7


@pytest.mark.parametrize("which", ["mlp", "bn_convnet"])
def test_pgd_equals_torchattacks_pgd(which, request, test_set):
    torchattacks = pytest.importorskip("torchattacks")
    model = request.getfixturevalue(which)
    x, y = test_set
    eps, alpha, steps = 0.1, 0.01, 10
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, random_start=False)
    theirs = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)(x, y)
    assert torch.equal(ours, theirs)
    attack = partial(pgd, eps=eps, alpha=alpha, steps=steps, random_start=False)
    ref = accuracy(model, theirs, y)
    assert robust_accuracy(model, x, y, attack) == ref
    assert ref < accuracy(model, x, y)


@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", 1.0)])
def test_perturbation_stays_in_ball_and_bounds(mlp, test_set, norm, eps):
    x, y = test_set
    adv = pgd(mlp, x, y, norm=norm, eps=eps, steps=10, restarts=2, generator=gen())
    delta = (adv - x).flatten(1)
    size = delta.abs().max(dim=1).values if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert size.mean() > 0.5 * eps  # the attack actually moves
    assert adv.min() >= 0 and adv.max() <= 1
    start = random_start(x, norm, eps, (0.0, 1.0), gen())
    delta = (start - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5 and start.min() >= 0 and start.max() <= 1


def test_accuracy_ordering(mlp, test_set):
    x, y = test_set
    clean = accuracy(mlp, x, y)
    fgsm_acc = robust_accuracy(mlp, x, y, partial(fgsm, eps=EPS))
    pgd_acc = robust_accuracy(mlp, x, y, Threat("linf", EPS, steps=20).attack(generator=gen()))
    assert pgd_acc <= fgsm_acc <= clean
    assert pgd_acc < clean


def test_fast_at_fgsm_stays_in_ball(mlp, test_set):
    x, y = test_set
    adv = fgsm(mlp, x, y, EPS, random_start=True, generator=gen())
    assert (adv - x).abs().max() <= EPS + 1e-6
    assert accuracy(mlp, adv, y) < accuracy(mlp, x, y)


def test_train_mode_is_refused(bn_convnet, test_set):
    x, y = test_set
    model = copy.deepcopy(bn_convnet).train()
    calls = [
        lambda: pgd(model, x, y, eps=EPS),
        lambda: fgsm(model, x, y, EPS),
        lambda: accuracy(model, x, y),
        lambda: robust_accuracy(model, x, y, partial(pgd, eps=EPS)),
        lambda: autoattack(model, x, y, norm="linf", eps=EPS, num_classes=10),
    ]
    for call in calls:
        with pytest.raises(AttackModeError, match="model.eval()"):
            call()
    model.eval()
    model.features[1].train()  # one BatchNorm left in train mode is enough to refuse
    with pytest.raises(AttackModeError):
        pgd(model, x, y, eps=EPS)


def test_attack_writes_no_parameter_grad_and_returns_detached(bn_convnet, test_set):
    x, y = test_set
    with torch.no_grad():  # attacks enable grad themselves
        adv = pgd(bn_convnet, x, y, eps=EPS, steps=3, generator=gen())
        adv2 = fgsm(bn_convnet, x, y, EPS)
    assert all(p.grad is None for p in bn_convnet.parameters())
    assert not adv.requires_grad and adv.grad_fn is None and adv2.grad_fn is None


def test_generator_makes_attack_reproducible(mlp, test_set):
    x, y = test_set
    a = pgd(mlp, x, y, eps=EPS, steps=3, generator=gen(5))
    b = pgd(mlp, x, y, eps=EPS, steps=3, generator=gen(5))
    c = pgd(mlp, x, y, eps=EPS, steps=3, generator=gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_restarts_never_raise_robust_accuracy(mlp, test_set, norm, eps):
    x, y = test_set
    attacks = [
        partial(pgd, norm=norm, eps=eps, steps=5, restarts=r, generator=gen(3)) for r in (1, 4)
    ]
    accs = [robust_accuracy(mlp, x, y, attack) for attack in attacks]
    assert accs[1] <= accs[0]


def test_functional_call_wrapper_is_attackable(mlp, test_set):
    x, y = test_set
    state = {**dict(mlp.named_parameters()), **dict(mlp.named_buffers())}
    fn = lambda inp: functional_call(mlp, state, (inp,))  # noqa: E731
    via_fn = pgd(fn, x, y, eps=EPS, steps=3, generator=gen())
    assert torch.equal(via_fn, pgd(mlp, x, y, eps=EPS, steps=3, generator=gen()))


def test_custom_loss_is_used(mlp, test_set):
    x, y = test_set
    calls = []

    def loss_fn(logits, target):
        calls.append(logits.shape)
        return torch.nn.functional.kl_div(logits.log_softmax(1), target, reduction="batchmean")

    clean_probs = mlp(x).softmax(1).detach()
    adv = pgd(mlp, x, clean_probs, eps=EPS, steps=2, generator=gen(), loss_fn=loss_fn)
    assert len(calls) == 2 and adv.shape == x.shape


def test_given_start_is_projected_and_deterministic(mlp, test_set):
    """TRADES starts at x + 0.001 * N(0, 1); a start outside the ball is projected first."""
    x, y = test_set
    far = x + 5 * torch.randn(x.shape, generator=gen(1))
    a = pgd(mlp, x, y, eps=EPS, steps=2, init=far)
    b = pgd(mlp, x, y, eps=EPS, steps=2, init=far)
    assert torch.equal(a, b)
    assert (a - x).abs().max() <= EPS + 1e-6 and a.min() >= 0 and a.max() <= 1


def test_unbounded_features_are_not_clamped():
    g = gen(0)
    model = build_model("linear", (101,), 2).eval()
    x = torch.randn(64, 101, generator=g)
    y = torch.randint(0, 2, (64,), generator=g)
    adv = pgd(model, x, y, eps=0.8, steps=5, bounds=None, random_start=False)
    # A linear model's input gradient is constant: every coordinate ends on the box's face.
    torch.testing.assert_close((adv - x).abs().amax(1), torch.full((64,), 0.8))
    zeros = torch.zeros(8, 1, 8, 8)
    img = build_model("mlp", (1, 8, 8), 10, hidden=16).eval()
    assert pgd(img, zeros, torch.zeros(8, dtype=torch.long), eps=0.1, bounds=None).min() < 0
    assert pgd(img, zeros, torch.zeros(8, dtype=torch.long), eps=0.1).min() >= 0


def test_threat_defaults_and_validation():
    assert Threat("linf", 0.1, steps=10).step_size == pytest.approx(0.025)  # 2.5 * eps / steps
    assert Threat("l2", 0.5, alpha=0.1).step_size == 0.1
    with pytest.raises(HarnessInputError, match="norm"):
        Threat("l1", 0.1)
    with pytest.raises(HarnessInputError, match="threat.steps"):
        Threat("linf", 0.1, steps=0)


def test_margin_loss_is_largest_wrong_minus_true_logit():
    from harness.protocol.attacks import margin_loss

    logits = torch.tensor([[2.0, 5.0, 1.0], [0.5, -1.0, 3.0]])
    y = torch.tensor([0, 2])
    # row 0: best wrong 5 - true 2 = 3; row 1: best wrong 0.5 - true 3 = -2.5
    assert margin_loss(logits, y).item() == pytest.approx((3.0 - 2.5) / 2)
    # the true class is excluded from the max even when it is the largest logit
    assert margin_loss(torch.tensor([[9.0, 1.0, 4.0]]), torch.tensor([0])).item() == pytest.approx(
        -5.0
    )
