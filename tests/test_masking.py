"""Gradient-masking checks: quiet on an honestly trained model, loud on a masked one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness import masking
from harness.attacks import Threat, robust_accuracy
from harness.datasets import load_dataset
from harness.models import build_model

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


def pgd_acc(model, x, y):
    return robust_accuracy(model, x, y, Threat("linf", EPS).attack(
        generator=torch.Generator().manual_seed(0)))


def test_an_honest_model_raises_no_flag(digits_mlp):
    model, x, y = digits_mlp
    report = masking.check(model, x, y, Threat("linf", EPS), pgd_acc=pgd_acc(model, x, y),
                           autoattack_acc=None, bounds=(0.0, 1.0),
                           generator=torch.Generator().manual_seed(1))
    assert report.flags == ()
    assert report.pgd_acc <= report.fgsm_acc <= report.noise_acc
    assert report.large_eps_acc <= 0.05 and report.zero_grad_fraction == 0.0


def test_obfuscated_gradients_are_flagged(digits_mlp):
    model, x, y = digits_mlp
    masked = Quantised(model).eval()
    report = masking.check(masked, x, y, Threat("linf", EPS), pgd_acc=pgd_acc(masked, x, y),
                           autoattack_acc=None, bounds=(0.0, 1.0),
                           generator=torch.Generator().manual_seed(1))
    assert {"zero_input_grad", "noise_beats_pgd", "no_zero_at_large_eps"} <= set(report.flags)
    assert report.zero_grad_fraction == 1.0


def test_autoattack_gap_is_flagged(digits_mlp):
    model, x, y = digits_mlp
    honest = pgd_acc(model, x, y)
    args = dict(autoattack_acc=honest, bounds=(0.0, 1.0))
    assert "aa_far_below_pgd" not in masking.check(model, x, y, Threat("linf", EPS),
                                                   pgd_acc=honest, **args).flags
    assert "aa_far_below_pgd" in masking.check(model, x, y, Threat("linf", EPS),
                                               pgd_acc=honest + 0.2, **args).flags
    assert set(masking.CODES) >= {"noise_beats_pgd", "fgsm_beats_pgd", "aa_far_below_pgd",
                                  "zero_input_grad", "no_zero_at_large_eps"}
