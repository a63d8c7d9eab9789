"""Pieces shared by the condensation methods `dc`, `dm` and `rdl_gm` (not a method itself):
the per-class real sampler, DC's layer-wise gradient distance, natural steps on the set.

A condensed set is stored class-major (as `_synthetic_set.init_synthetic_set` builds it):
rows `c * ipc ... (c + 1) * ipc - 1` belong to class `c`, so per-class slices are views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.datasets import DatasetSplits


def class_slice(c: int, ipc: int) -> slice:
    """Rows of class `c` in a class-major set."""
    return slice(c * ipc, (c + 1) * ipc)


def gradient_distance(g_real: list[torch.Tensor], g_syn: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers and output units of 1 - cos(real row, synthetic row) (DC, Zhao et al.
    2021, arXiv 2006.05929).

    A weight's gradient is viewed as one row per output unit (a conv kernel's row holds its
    in_channels x kh x kw entries). One-dimensional parameters (biases, norm affines) are
    skipped, as in the authors' code: their per-unit "row" is a single number whose cosine
    is only its sign.
    """
    total = g_syn[0].new_zeros(())
    for gr, gs in zip(g_real, g_syn):
        if gs.dim() < 2:
            continue
        gr, gs = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
        cos = (gr * gs).sum(dim=1) / (gr.norm(dim=1) * gs.norm(dim=1) + 1e-6)
        total = total + (1 - cos).sum()
    return total


def natural_steps(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    batch: int,
    generator: torch.Generator,
    augment=None,
) -> None:
    """`steps` natural SGD steps of `net` on random minibatches of the set (x, y), each
    batch optionally augmented: how the condensation loops train their network on S."""
    net.train()
    for _ in range(steps):
        idx = torch.randperm(x.shape[0], generator=generator)[:batch].to(x.device)
        xb = x[idx]
        if augment is not None:
            (xb,) = augment(xb)
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


class RealSampler:
    """Random batches of real training examples of one class, on the method's device."""

    def __init__(self, data: DatasetSplits, generator: torch.Generator, device: torch.device):
        self.x = data.x_train.to(device)
        self.per_class = [(data.y_train == c).nonzero().flatten() for c in range(data.num_classes)]
        self.generator = generator

    def batch(self, c: int, n: int) -> torch.Tensor:
        """Up to `n` distinct examples of class `c` (all of them if the class is smaller)."""
        idx = self.per_class[c]
        pick = idx[torch.randperm(idx.numel(), generator=self.generator)[:n]]
        return self.x[pick.to(self.x.device)]


class NormalizedSet:
    """A learnable synthetic set parametrised in normalised coordinates z = (x - mean) / std.

    The authors of DC and DM optimise normalised tensors, so their learning rates are in
    those units; the harness's inputs are raw (the model normalises), so the set is kept
    as z with the training split's per-channel (per-feature) statistics and `x()` maps it
    back. `project_()` keeps x inside the data bounds.
    """

    def __init__(self, x: torch.Tensor, data: DatasetSplits, device: torch.device):
        mean, std = data.channel_stats()
        view = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
        self.mean, self.std = mean.reshape(view).to(device), std.reshape(view).to(device)
        self.bounds = data.bounds
        self.z = ((x.to(device) - self.mean) / self.std).requires_grad_(True)

    def x(self) -> torch.Tensor:
        return self.z * self.std + self.mean

    def project_(self) -> None:
        if self.bounds is None:
            return
        with torch.no_grad():
            lo, hi = ((b - self.mean) / self.std for b in self.bounds)
            self.z.copy_(torch.maximum(torch.minimum(self.z, hi), lo))


def set_state(syn: NormalizedSet, opt: torch.optim.Optimizer, ctx, next_step: int) -> dict:
    """What a condensation loop needs to go on at `next_step` after a restart (a trial
    checkpoint's `learning` section): the set, its optimiser, the method's random stream and
    its work so far. Taken between steps, where no network is alive."""
    return {
        "next_step": next_step,
        "z": syn.z.detach().cpu().clone(),
        "opt": opt.state_dict(),
        "gen": ctx.generator.get_state(),
        "meter": ctx.meter.state(),
    }


def load_set_state(saved: dict | None, syn: NormalizedSet, opt: torch.optim.Optimizer, ctx) -> int:
    """Go back to `set_state`'s state (None: nothing saved); returns the step to go on from."""
    if saved is None:
        return 0
    with torch.no_grad():
        syn.z.copy_(saved["z"].to(syn.z.device))
    opt.load_state_dict(saved["opt"])
    ctx.generator.set_state(saved["gen"])
    ctx.meter.load_state(saved["meter"])
    return int(saved["next_step"])
