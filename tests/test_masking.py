"""Gradient-masking checks: quiet on an honestly trained model, loud on a masked one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from harness.datasets import load_dataset
from harness.protocol import masking
from harness.protocol.attacks import Threat, robust_accuracy
from harness.protocol.models import build_model

EPS = 0.2


@pytest.fixture(scope="module")
def digits_mlp():
    data = load_dataset("digits", split_seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(model(data.x_train), data.y_train).backward()
        opt.step()
    return model.eval(), data.x_test, data.y_test


class Quantised(nn.Module):
    """Rounds each pixel to 5 levels before the model: a classic obfuscated-gradient defence
    (Athalye et al. 2018). Its input gradient is exactly zero, so gradient attacks stall."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 4) / 4)


class Rippled(nn.Module):
    """Adds a small, fast ripple to every pixel before the model: x + a sin(2 pi 64 x), zero at
    the digits' 17 pixel levels (k / 16), so the clean images are unchanged and their input
    gradient is the model's own, scaled by 1 + 2 pi 64 a > 0 (FGSM from the clean image takes
    the honest step). Off those levels the ripple's slope (up to 2 pi 64 a = 10) swamps the
    model's, so the gradient sign a multi-step attack follows after its random start is the
    ripple's, not the loss's: shattered gradients (Athalye et al. 2018), PGD wanders."""

    def __init__(self, net: nn.Module, amplitude: float = 0.025, cycles_per_level: int = 4):
        super().__init__()
        self.net, self.amplitude = net, amplitude
        self.omega = 2 * math.pi * 16 * cycles_per_level

    def forward(self, x):
        return self.net(x + self.amplitude * torch.sin(self.omega * x))


class NoisyInput(nn.Module):
    """A randomized defence: Gaussian noise on the input at every call, train or eval mode."""

    def __init__(self, net: nn.Module, sigma: float = 0.05):
        super().__init__()
        self.net, self.sigma = net, sigma

    def forward(self, x):
        return self.net(x + self.sigma * torch.randn_like(x))


class ForcedDropout(nn.Module):
    """Dropout that stays on after `.eval()` (`training=True` hard-coded), as in MC dropout."""

    def __init__(self, net: nn.Module, p: float = 0.1):
        super().__init__()
        self.net, self.p = net, p

    def forward(self, x):
        return self.net(nn.functional.dropout(x, self.p, training=True))


def pgd_acc(model, x, y):
    return robust_accuracy(
        model, x, y, Threat("linf", EPS).attack(generator=torch.Generator().manual_seed(0))
    )


def test_an_honest_model_raises_no_flag(digits_mlp):
    model, x, y = digits_mlp
    report = masking.check(
        model,
        x,
        y,
        Threat("linf", EPS),
        pgd_acc=pgd_acc(model, x, y),
        autoattack_acc=None,
        bounds=(0.0, 1.0),
        generator=torch.Generator().manual_seed(1),
    )
    assert report.flags == ()
    assert report.pgd_acc <= report.fgsm_acc <= report.noise_acc
    assert report.large_eps_acc <= 0.05 and report.zero_grad_fraction == 0.0


def test_obfuscated_gradients_are_flagged(digits_mlp):
    model, x, y = digits_mlp
    masked = Quantised(model).eval()
    report = masking.check(
        masked,
        x,
        y,
        Threat("linf", EPS),
        pgd_acc=pgd_acc(masked, x, y),
        autoattack_acc=None,
        bounds=(0.0, 1.0),
        generator=torch.Generator().manual_seed(1),
    )
    assert {"zero_input_grad", "noise_beats_pgd", "no_zero_at_large_eps"} <= set(report.flags)
    assert report.zero_grad_fraction == 1.0


def test_autoattack_gap_is_flagged(digits_mlp):
    model, x, y = digits_mlp
    honest = pgd_acc(model, x, y)
    args = dict(autoattack_acc=honest, bounds=(0.0, 1.0))
    assert (
        "aa_far_below_pgd"
        not in masking.check(model, x, y, Threat("linf", EPS), pgd_acc=honest, **args).flags
    )
    assert (
        "aa_far_below_pgd"
        in masking.check(model, x, y, Threat("linf", EPS), pgd_acc=honest + 0.2, **args).flags
    )
    assert set(masking.CODES) >= {
        "noise_beats_pgd",
        "fgsm_beats_pgd",
        "aa_far_below_pgd",
        "zero_input_grad",
        "no_zero_at_large_eps",
        "randomized_output",
    }


def report_of(model, x, y):
    return masking.check(
        model,
        x,
        y,
        Threat("linf", EPS),
        pgd_acc=pgd_acc(model, x, y),
        autoattack_acc=None,
        bounds=(0.0, 1.0),
        generator=torch.Generator().manual_seed(1),
    )


def test_fgsm_beating_pgd_is_flagged(digits_mlp):
    model, x, y = digits_mlp
    assert torch.equal(x * 16, torch.round(x * 16))  # the ripple's zeros are the pixel levels
    rippled = Rippled(model).eval()
    with torch.no_grad():
        assert torch.allclose(rippled(x), model(x), atol=1e-4)  # same clean predictions
    report = report_of(rippled, x, y)
    assert "fgsm_beats_pgd" in report.flags
    assert report.fgsm_acc < report.pgd_acc - 0.3  # not a borderline call
    # The same network without the ripple: PGD is the stronger attack, no flag.
    honest = report_of(model, x, y)
    assert "fgsm_beats_pgd" not in honest.flags
    assert honest.pgd_acc < honest.fgsm_acc


@pytest.mark.parametrize("wrap", [NoisyInput, ForcedDropout])
def test_randomized_output_is_flagged(digits_mlp, wrap):
    model, x, y = digits_mlp
    report = report_of(wrap(model).eval(), x, y)
    assert "randomized_output" in report.flags
    assert report.output_change > masking.RANDOM_OUTPUT_RTOL


def test_deterministic_model_is_not_flagged_randomized(digits_mlp):
    model, x, y = digits_mlp
    # Ordinary dropout is off in eval mode. (A model left in train mode never gets this far:
    # the attacks refuse it, harness.protocol.attacks.AttackModeError.)
    with_dropout = nn.Sequential(nn.Dropout(0.5), model).eval()
    report = report_of(with_dropout, x, y)
    assert "randomized_output" not in report.flags
    assert report.output_change == 0.0


def test_every_flag_has_a_footnote_text():
    from harness.board.report import FLAG_TEXT

    assert set(masking.CODES) == set(FLAG_TEXT)
    assert "randomized_output" in masking.CODES


def test_pgd_measured_on_the_same_examples_is_not_run_again(digits_mlp):
    model, x, y = digits_mlp
    threat, args = Threat("linf", EPS), dict(autoattack_acc=None, bounds=(0.0, 1.0))
    given = pgd_acc(model, x, y) + 0.01  # marked, to see which number the checks compare
    reused = masking.check(model, x, y, threat, pgd_acc=given, pgd_on_x=True, **args)
    assert reused.pgd_acc == given
    rerun = masking.check(model, x, y, threat, pgd_acc=given, **args)
    assert rerun.pgd_acc != given and abs(rerun.pgd_acc - given) < 0.06
    # more examples than the checks look at: PGD runs again on their subset
    many = masking.CHECK_EXAMPLES + 1
    reps = many // len(x) + 1
    xs, ys = torch.cat([x] * reps)[:many], torch.cat([y] * reps)[:many]
    assert (
        masking.check(model, xs, ys, threat, pgd_acc=given, pgd_on_x=True, **args).pgd_acc != given
    )
