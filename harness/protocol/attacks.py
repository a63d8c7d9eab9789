"""Attacks: FGSM and PGD (Linf, L2) and accuracy helpers. AutoAttack: `harness.protocol.autoattack`;
gradient-masking checks: `harness.protocol.masking`.

Conventions shared by every function here:

- the model sees raw inputs (normalisation lives inside the model, see `harness.protocol.models`);
- `bounds` is the valid input box, (0, 1) for images; `None` means unbounded features
  (the `synthetic-robust` dataset) and nothing is clamped;
- an `nn.Module` left in training mode is refused (`AttackModeError`): BatchNorm and dropout
  in train mode make the attack batch-dependent and silently update running statistics.
  The evaluation code calls `model.eval()` first; any other callable (for example a
  `torch.func.functional_call` wrapper) is trusted to be in the right mode;
- an attack builds no autograd graph beyond one step and never touches a parameter's
  `.grad` (it uses `torch.autograd.grad` on the perturbed input only); it returns a
  detached tensor;
- randomness comes from an optional `torch.Generator`, never from reseeding the global RNG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessInputError

Model = Callable[[torch.Tensor], torch.Tensor]
Bounds = tuple[float, float] | None
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Attack = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]
NORMS = ("linf", "l2")


class AttackModeError(RuntimeError):
    """An attack was asked to run against a model in training mode."""


@dataclass(frozen=True)
class Threat:
    """A threat model plus the PGD budget used to evaluate it.

    The default step size is 2.5 * eps / steps (Madry et al. 2018, arXiv 1706.06083), which
    lets the iterate cross the whole ball and still move after hitting its boundary.
    """

    norm: Literal["linf", "l2"]
    eps: float
    steps: int = 20
    alpha: float | None = None
    restarts: int = 1
    loss: Literal["ce", "margin"] = "ce"  # cross-entropy, or the CW margin (`margin_loss`)

    def __post_init__(self) -> None:
        _check_norm(self.norm)
        checks = [
            (self.eps >= 0, "eps", "a radius >= 0"),
            (self.steps >= 1, "steps", "an integer >= 1"),
            (self.restarts >= 1, "restarts", "an integer >= 1"),
            (self.alpha is None or self.alpha > 0, "alpha", "a step size > 0 (or left out)"),
            (self.loss in LOSSES, "loss", f"one of {', '.join(LOSSES)}"),
        ]
        for ok, key, what in checks:
            if not ok:
                got = getattr(self, key)
                raise HarnessInputError(
                    f"threat.{key} must be {what}, got {got!r}.", field=f"threat.{key}"
                )

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    def attack(
        self, *, bounds: Bounds = (0.0, 1.0), generator: torch.Generator | None = None
    ) -> Attack:
        """This threat's PGD as an `attack(model, x, y)` callable for `robust_accuracy`."""
        return partial(
            pgd,
            norm=self.norm,
            eps=self.eps,
            alpha=self.step_size,
            steps=self.steps,
            restarts=self.restarts,
            bounds=bounds,
            generator=generator,
            loss_fn=LOSSES[self.loss],
        )


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise HarnessInputError(
            f"threat norm must be 'linf' or 'l2', got {norm!r}.", field="threat.norm"
        )


def require_eval(model: Model) -> None:
    """Raise `AttackModeError` if `model` (an nn.Module) or any submodule is in training mode."""
    if isinstance(model, nn.Module) and any(m.training for m in model.modules()):
        raise AttackModeError(
            f"{type(model).__name__} is in training mode; call model.eval() before attacking "
            "or evaluating it: BatchNorm and dropout in training mode give batch-dependent, "
            "wrong robust accuracies and overwrite running statistics."
        )


# --------------------------------------------------------------------------- geometry


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector reshaped to broadcast against a batch shaped like `like`."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _l2_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1)


def _clamp(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    return x if bounds is None else x.clamp(bounds[0], bounds[1])


def _project(
    x_adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float, bounds: Bounds
) -> torch.Tensor:
    """Back into the eps-ball around `x`, then into the input box."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        factor = torch.clamp(eps / (_l2_norm(delta) + 1e-12), max=1.0)
        delta = delta * _view(factor, delta)
    return _clamp(x + delta, bounds)


def _draw(kind: str, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform [0,1) or standard normal noise shaped like `like`, drawn on the generator's device.

    Drawing on the generator's device and moving the result keeps a CPU generator usable
    (and the noise identical) whatever device the data lives on.
    """
    device = generator.device if generator is not None else like.device
    fn = torch.rand if kind == "uniform" else torch.randn
    return fn(like.shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def random_start(
    x: torch.Tensor,
    norm: str,
    eps: float,
    bounds: Bounds,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A point drawn uniformly from the eps-ball around `x`, clamped to `bounds`.

    Linf: each coordinate uniform in [-eps, eps] (Madry et al. 2018). L2: a uniform
    direction (normalised Gaussian) and radius eps * u^(1/n) for n input dimensions, which is
    exactly uniform in the ball; torchattacks draws the radius uniformly in [0, eps], which
    puts most starts near the centre in high dimension.
    """
    if norm == "linf":
        delta = (2 * _draw("uniform", x, generator) - 1) * eps
    else:
        direction = _draw("normal", x, generator)
        direction = direction / _view(_l2_norm(direction) + 1e-12, x)
        n = x[0].numel()
        u = _draw("uniform", x.new_empty(x.shape[0]), generator)
        delta = direction * _view(eps * u.pow(1.0 / n), x)
    return _clamp(x + delta, bounds)


# --------------------------------------------------------------------------- attacks


def _input_grad(
    model: Model, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn
) -> torch.Tensor:
    """d loss / d x_adv, without building a graph that outlives this call or touching .grad."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
    return grad.detach()


def _step(x_adv: torch.Tensor, grad: torch.Tensor, norm: str, alpha: float) -> torch.Tensor:
    """Steepest ascent: the gradient's sign (Linf) or its per-example unit direction (L2)."""
    if norm == "linf":
        return x_adv + alpha * grad.sign()
    return x_adv + alpha * grad / _view(_l2_norm(grad) + 1e-12, grad)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of (largest wrong logit - true logit): the Carlini-Wagner margin (arXiv 1608.04644).

    Unlike cross-entropy its gradient does not vanish once the true class is confidently
    predicted. rdl's inner attack can use it: on digits a set learned against it kept more
    robustness under AutoAttack than one learned against cross-entropy PGD (see rdl)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return (wrong - true).mean()


# PGD's objectives by name (`threat.loss`): cross-entropy (Madry et al.), or the CW margin,
# whose gradient does not vanish on confidently classified examples.
LOSSES: dict[str, LossFn] = {"ce": F.cross_entropy, "margin": margin_loss}


def _pgd_once(model, x, y, norm, eps, alpha, steps, start, bounds, generator, loss_fn):
    """One PGD run from `start`: a given point, a random point (True) or `x` itself (False)."""
    if isinstance(start, torch.Tensor):  # a caller's starting point (TRADES), kept feasible
        x_adv = _project(start.detach(), x, norm, eps, bounds)
    else:
        x_adv = random_start(x, norm, eps, bounds, generator) if start else x.clone()
    for _ in range(steps):
        grad = _input_grad(model, x_adv, y, loss_fn)
        x_adv = _project(_step(x_adv, grad, norm, alpha), x, norm, eps, bounds)
    return x_adv


@torch.no_grad()
def _fooled(model: Model, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(x_adv).argmax(dim=1) != y


def pgd(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    alpha: float | None = None,
    steps: int = 10,
    restarts: int = 1,
    random_start: bool = True,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018, arXiv 1706.06083), Linf or L2.

    Each restart starts uniformly in the eps-ball (when `random_start`), takes `steps`
    ascent steps of size `alpha` (default 2.5 * eps / steps) on `loss_fn(logits, y)`
    (default mean cross-entropy; TRADES passes a KL loss and clean probabilities as `y`),
    and projects onto the ball and `bounds` after each. With several restarts each
    example keeps the first restart that fools the model, else the last. With
    `random_start=False` and Linf this is step-for-step torchattacks' `PGD`. `init`, when
    given, replaces the start of every restart (projected onto the ball and `bounds`):
    TRADES starts at x + 0.001 * N(0, 1) because its KL loss has zero gradient at x.
    """
    require_eval(model)
    _check_norm(norm)
    loss_fn = loss_fn or F.cross_entropy
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    x = x.detach()
    best = None
    for _ in range(restarts):
        start = init if init is not None else random_start
        x_adv = _pgd_once(model, x, y, norm, eps, alpha, steps, start, bounds, generator, loss_fn)
        if restarts == 1:
            return x_adv
        fooled_now = _fooled(model, x_adv, y)
        if best is None:
            best, fooled = x_adv, fooled_now
            continue
        best = torch.where(_view(fooled, x), best, x_adv)
        fooled = fooled | fooled_now
    return best


def fgsm(
    model: Model,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    bounds: Bounds = (0.0, 1.0),
    random_start: bool = False,
    step: float | None = None,
    generator: torch.Generator | None = None,
    loss_fn: LossFn | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015, arXiv 1412.6572), Linf.

    Without a random start: one step of size `step` (default eps) from `x`. With
    `random_start=True` this is the attack of fast adversarial training (Wong et al. 2020,
    arXiv 2001.03994): a uniform start in the eps-ball, one step of size `step` (default
    1.25 * eps, the paper's choice), projection back onto the ball and `bounds`.
    """
    if step is None:
        step = 1.25 * eps if random_start else eps
    return pgd(
        model,
        x,
        y,
        norm="linf",
        eps=eps,
        alpha=step,
        steps=1,
        random_start=random_start,
        bounds=bounds,
        generator=generator,
        loss_fn=loss_fn,
    )


# --------------------------------------------------------------------------- accuracies


ATTACK_BATCH = 256  # examples attacked at once in evaluation (memory grows with it)


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int):
    if x.shape[0] == 0:
        raise ValueError("no examples to evaluate")
    for i in range(0, x.shape[0], batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def accuracy(model: Model, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of `x` the model classifies correctly."""
    require_eval(model)
    correct = 0
    with torch.no_grad():
        for xb, yb in _batches(x, y, batch_size):
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    return correct / x.shape[0]


def robust_accuracy(
    model: Model, x: torch.Tensor, y: torch.Tensor, attack: Attack, batch_size: int = ATTACK_BATCH
) -> float:
    """Fraction of `x` still classified correctly after `attack(model, xb, yb)` per batch."""
    require_eval(model)
    correct = 0
    for xb, yb in _batches(x, y, batch_size):
        x_adv = attack(model, xb, yb)
        with torch.no_grad():
            correct += int((model(x_adv).argmax(dim=1) == yb).sum())
    return correct / x.shape[0]
