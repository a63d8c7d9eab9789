"""Gradient-masking checks run in every evaluation, after the attacks themselves.

A robust accuracy is only as good as the attack behind it. These checks follow the sanity
tests of Athalye et al. 2018 (arXiv 1802.00420), Carlini et al. 2019 ("On evaluating
adversarial robustness", arXiv 1902.06705) and Croce & Hein 2020 (arXiv 2003.01690); each
failed check is a short code that becomes an MLflow tag (`masking_flags`) and a leaderboard
footnote:

- `noise_beats_pgd`: random noise of size eps breaks more examples than PGD does;
- `fgsm_beats_pgd`: one FGSM step breaks more examples than many PGD steps;
- `aa_far_below_pgd`: AutoAttack accuracy is far below PGD's: PGD overstates robustness;
- `zero_input_grad`: the loss has exactly zero input gradient on many examples, so
  gradient attacks cannot move them (saturated softmax, shattered gradients);
- `no_zero_at_large_eps`: at a radius large enough to erase the image, PGD still leaves
  examples correctly classified: the attack, not the model, is failing;
- `randomized_output`: two forward passes on the same inputs, in eval mode, give different
  outputs (noise injected at inference, dropout forced on): the deterministic attacks score
  a moving target, and its robust accuracy needs an attack built for randomness (e.g.
  AutoAttack's `rand` version, with expectation over transformation). AutoAttack runs the
  same check before it attacks.

A flag is a warning, not a verdict: it says which number to distrust and why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from harness.protocol.attacks import (
    Bounds,
    Threat,
    _draw,
    _project,
    accuracy,
    fgsm,
    pgd,
    robust_accuracy,
)

CODES = (
    "noise_beats_pgd",
    "fgsm_beats_pgd",
    "aa_far_below_pgd",
    "zero_input_grad",
    "no_zero_at_large_eps",
    "randomized_output",
)

CHECK_EXAMPLES = 500  # test examples the checks look at: enough for 1-2 point resolution
TOLERANCE = 0.02  # accuracy differences smaller than this are noise on CHECK_EXAMPLES
AA_GAP = 0.10  # PGD above AutoAttack by more than this: PGD is not to be trusted
ZERO_GRAD_FRACTION = 0.05  # share of examples with an exactly zero input gradient
LARGE_EPS_FACTOR = 8  # the "erase it" radius, as a multiple of eps (capped for images)
LARGE_EPS_MAX_ACC = 0.10  # what may survive the large radius (chance is 1/classes)
# Two passes differing by more than this (relative to the logits' size) are not the same
# function: far above float round-off and nondeterministic GPU kernels (~1e-6 relative).
RANDOM_OUTPUT_RTOL = 1e-4


@dataclass(frozen=True)
class MaskingReport:
    """What the checks measured (accuracies on the same examples) and the flags raised."""

    noise_acc: float
    fgsm_acc: float
    pgd_acc: float
    large_eps_acc: float
    zero_grad_fraction: float
    output_change: float  # largest logit change between two passes, relative to the logits
    flags: tuple[str, ...] = ()


def noise_accuracy(model, x, y, threat: Threat, bounds: Bounds, generator) -> float:
    """Accuracy under one draw of uniform noise on the sphere of the threat (|d|_inf = eps
    with random signs, or an L2 step of length eps in a random direction)."""
    if threat.norm == "linf":
        delta = threat.eps * torch.sign(_draw("uniform", x, generator) - 0.5)
    else:
        delta = _draw("normal", x, generator)
        delta = delta * (threat.eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).view(
            -1, *([1] * (x.dim() - 1))
        )
    x_noisy = _project(x + delta, x, threat.norm, threat.eps, bounds)
    return accuracy(model, x_noisy, y)


def zero_gradient_fraction(model, x, y) -> float:
    """Share of examples whose cross-entropy has an exactly zero gradient w.r.t. the input."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return float((grad.flatten(1).abs().amax(dim=1) == 0).float().mean())


def output_change(model, x) -> float:
    """Largest absolute change of a logit between two forward passes on the same `x`, relative
    to the largest logit magnitude: 0 for a deterministic model."""
    with torch.no_grad():
        first, second = model(x), model(x)
    scale = float(first.abs().max().clamp_min(1e-12))
    return float((first - second).abs().max()) / scale


def large_radius(threat: Threat, bounds: Bounds) -> float:
    """A radius at which nothing should survive: 8 eps, and for [0,1] images at least 0.5
    Linf (every pixel can reach mid-grey) or the image diagonal's half in L2."""
    eps = LARGE_EPS_FACTOR * threat.eps
    if bounds is not None and threat.norm == "linf":
        return min(max(eps, 0.5), bounds[1] - bounds[0])
    return eps


def check(
    model,
    x,
    y,
    threat: Threat,
    *,
    pgd_acc: float,
    autoattack_acc: float | None,
    bounds: Bounds,
    generator: torch.Generator | None = None,
    pgd_on_x: bool = False,
) -> MaskingReport:
    """Run every check on (at most CHECK_EXAMPLES of) `x`, given the reported accuracies.

    FGSM and noise are compared with PGD on the same examples: with `pgd_on_x` (the caller
    measured `pgd_acc` on exactly `x`, with the threat's attack) and `x` within
    CHECK_EXAMPLES, that is `pgd_acc` itself; otherwise PGD runs again on the subset."""
    model.eval()
    reuse = pgd_on_x and len(x) <= CHECK_EXAMPLES
    x, y = x[:CHECK_EXAMPLES], y[:CHECK_EXAMPLES]
    change = output_change(model, x)
    if reuse:
        pgd_sub = pgd_acc
    else:
        pgd_sub = robust_accuracy(model, x, y, threat.attack(bounds=bounds, generator=generator))

    fgsm_acc = robust_accuracy(model, x, y, one_step_attack(threat, bounds))
    noise_acc = noise_accuracy(model, x, y, threat, bounds, generator)
    big = Threat(threat.norm, large_radius(threat, bounds), steps=max(threat.steps, 20))
    large_acc = robust_accuracy(model, x, y, big.attack(bounds=bounds, generator=generator))
    zero_frac = zero_gradient_fraction(model, x, y)

    report = MaskingReport(
        noise_acc=noise_acc,
        fgsm_acc=fgsm_acc,
        pgd_acc=pgd_sub,
        large_eps_acc=large_acc,
        zero_grad_fraction=zero_frac,
        output_change=change,
    )
    return replace(
        report, flags=raised_flags(report, pgd_acc=pgd_acc, autoattack_acc=autoattack_acc)
    )


def one_step_attack(threat: Threat, bounds: Bounds):
    """FGSM at the threat's radius; for L2, its one-step counterpart (one PGD step of size
    eps from the clean input)."""

    def attack(m, xb, yb):
        if threat.norm == "linf":
            return fgsm(m, xb, yb, threat.eps, bounds=bounds)
        return pgd(
            m,
            xb,
            yb,
            norm="l2",
            eps=threat.eps,
            alpha=threat.eps,
            steps=1,
            random_start=False,
            bounds=bounds,
        )

    return attack


def raised_flags(
    r: MaskingReport, *, pgd_acc: float, autoattack_acc: float | None
) -> tuple[str, ...]:
    """The flags a report's figures raise (see the module docstring for each)."""
    flags = []
    if r.pgd_acc > r.noise_acc + TOLERANCE:
        flags.append("noise_beats_pgd")
    if r.pgd_acc > r.fgsm_acc + TOLERANCE:
        flags.append("fgsm_beats_pgd")
    if autoattack_acc is not None and autoattack_acc < pgd_acc - AA_GAP:
        flags.append("aa_far_below_pgd")
    if r.zero_grad_fraction > ZERO_GRAD_FRACTION:
        flags.append("zero_input_grad")
    if r.large_eps_acc > LARGE_EPS_MAX_ACC:
        flags.append("no_zero_at_large_eps")
    if r.output_change > RANDOM_OUTPUT_RTOL:
        flags.append("randomized_output")
    return tuple(flags)
