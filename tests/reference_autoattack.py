"""Croce & Hein's reference AutoAttack (PyPI `pyautoattack`, import `autoattack`), for tests.

It was written for torch < 1.9: its FAB imports `torch.autograd.gradcheck.zero_gradients`,
which torch has since removed. The replacement below does what that function did (zero an
input's gradient) and is installed before the import. Returns None when it is not installed;
when it is installed but fails to import (a broken install, a torch it does not support), the
ImportError propagates, so the cross-check fails rather than skipping silently.
"""

from __future__ import annotations

import importlib.util
import sys

import torch


def _zero_gradients(x):
    if isinstance(x, torch.Tensor):
        if x.grad is not None:
            x.grad.detach_()
            x.grad.zero_()
    else:
        for item in x:
            _zero_gradients(item)


def reference_autoattack():
    if importlib.util.find_spec("autoattack") is None:
        return None
    import torch.autograd.gradcheck as gradcheck

    if not hasattr(gradcheck, "zero_gradients"):
        gradcheck.zero_gradients = _zero_gradients
        sys.modules["torch.autograd.gradcheck"] = gradcheck
    from autoattack import AutoAttack

    return AutoAttack


def reference_robust_mask(model, x, y, *, norm: str, eps: float) -> torch.Tensor:
    """Per-example robustness under the reference's standard version, on CPU."""
    AutoAttack = reference_autoattack()
    attack = AutoAttack(
        model,
        norm={"linf": "Linf", "l2": "L2"}[norm],
        eps=eps,
        version="standard",
        device=str(x.device),
        verbose=False,
    )
    x_adv = attack.run_standard_evaluation(x, y, bs=len(x))
    with torch.no_grad():
        return model(x_adv).argmax(dim=1) == y
