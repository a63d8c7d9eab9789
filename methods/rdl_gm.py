"""Robust dataset learning by gradient matching: the cheap, unroll-free variant of `rdl`."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from harness.methods._condense import RealSampler, gradient_distance, natural_steps
from harness.methods._synthetic_set import (
    RowOptimizer,
    clamp_to_bounds_,
    draw_seed,
    indices_by_class,
    init_synthetic_set,
    robust_probe,
)
from harness.methods.base import (
    DatasetMethod,
    LearnedDataset,
    MethodConfig,
    MethodContext,
    PerClass,
    register_method,
)
from harness.protocol.attacks import pgd


@register_method("rdl_gm")
class RobustGradientMatching(DatasetMethod):
    """Robust dataset learning by gradient matching (Wu et al. 2022, arXiv 2211.10752; DC's matching, arXiv 2006.05929).

    Instead of unrolling natural training on S (`rdl`), make one natural-training step on S
    look like one *adversarial*-training step on real data: for every class c, the gradient
    of the cross-entropy of S's class-c examples is matched, with DC's layer-wise cosine
    distance, to the gradient of the cross-entropy of PGD examples of a real class-c batch,
    crafted against the current network (in eval mode). Natural training on S then follows
    the trajectory of adversarial training on the real data.

    Loop (DC's): every outer iteration a fresh network (cycling through `archs`); then
    `outer_loop` times: one matching update of S, followed by `inner_loop` natural SGD steps
    of the network *on S*, so the matching happens along the trajectory natural training on
    S actually takes (training it adversarially on real data instead would match gradients
    at points downstream training never visits, and cost a PGD attack per inner step).

    Threat model: the spec's (norm, eps); the matching attack takes `attack_steps` PGD steps.

    On synthetic-robust (eps = 2 * eta = 0.8, p = 0.9) this matching cannot help and in our
    runs erased the robust feature: PGD moves x1 = +-1 by 0.8 against the label, so the mean
    of y * x1 over a real adversarial batch is 2p - 1 - eps = 0 and the adversarial gradient
    of a young network carries no x1 direction to match. The unrolled `rdl` is the method for
    that dataset; `rdl_gm` is meant for image data, where the matching follows DC.

    On digits the network pool matters more than the budget: adversarial targets on an MLP
    dominate a mixed pool (its matching gradients are ~10x a linear model's) and the set falls
    below a random subset; `archs: [linear]` beats both (measurements: docs/notes/rdl_gm.md).

    Defaults are DC's for ipc 10 (1000 iterations, 10 outer / 50 inner loops, SGD lr 0.1
    momentum 0.5 on the images, network lr 0.01, 256 real examples per class); the network's
    SGD has momentum 0.9 and weight decay 5e-4, the harness's downstream recipe. Departures:
    no differentiable augmentation (DSA); the images are stepped in raw pixel units (dc steps
    in normalised ones, so here lr 0.1 is 1/std^2 times DC's step, ~7x on digits); networks with BatchNorm are matched in train mode
    (batch statistics) and attacked in eval mode (running statistics).
    """

    class Config(MethodConfig):
        ipc: PerClass = 10  # examples per class (DC: 1, 10, 50)
        init: Literal["real", "noise"] = "real"
        iterations: int = Field(1000, ge=1)  # fresh networks (DC: 1000)
        outer_loop: int = Field(10, ge=1)  # matching updates per network (DC ipc 10: 10)
        inner_loop: int = Field(50, ge=0)  # natural SGD steps on S between updates (DC ipc 10: 50)
        outer_optimizer: Literal["adam", "sgd"] = "sgd"
        outer_lr: float = Field(0.1, gt=0)  # DC: 0.1 (SGD, momentum 0.5)
        outer_momentum: float = Field(0.5, ge=0, lt=1)
        net_lr: float = Field(0.01, gt=0)  # DC: 0.01
        net_batch: int = Field(256, ge=1)  # synthetic examples per inner step (DC: 256)
        real_batch: int = Field(256, ge=1)  # real examples per class per match (DC: 256)
        attack_steps: int = Field(10, ge=1)
        archs: list[str] | None = None  # network pool; null: the evaluation archs
        probe_every: int = Field(100, ge=0)  # iterations between robust probes (0: off)
        probe_steps: int = Field(100, ge=1)
        probe_val: int = Field(500, ge=1)

    smoke: ClassVar[dict] = {
        "ipc": 2,
        "iterations": 1,
        "outer_loop": 2,
        "inner_loop": 2,
        "real_batch": 16,
        "attack_steps": 2,
        "probe_every": 1,
        "probe_steps": 5,
        "probe_val": 50,
    }

    def learn(self, ctx: MethodContext) -> LearnedDataset:
        cfg = self.cfg
        gen, dev, data = ctx.generator, ctx.device, ctx.data
        archs = cfg.archs or list(ctx.archs)
        probe_gen = torch.Generator().manual_seed(draw_seed(gen))
        x, y = init_synthetic_set(data, cfg.ipc, cfg.init, gen)
        x, y = x.to(dev), y.to(dev)
        opt = RowOptimizer(
            x.shape,
            kind=cfg.outer_optimizer,
            lr=cfg.outer_lr,
            momentum=cfg.outer_momentum,
            device=dev,
        )
        real = RealSampler(data, gen, dev)
        syn_rows = indices_by_class(y.cpu(), data.num_classes)
        probe: dict[str, float] = {}
        for it in range(cfg.iterations):
            net = ctx.build(archs[it % len(archs)], seed=draw_seed(gen))
            loss = self._train_one_network(ctx, net, x, y, syn_rows, real, opt)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"rdl_gm matching loss is {loss} at iteration {it}; lower outer_lr"
                )
            ctx.log_step(it, loss)
            if cfg.probe_every and (it + 1) % cfg.probe_every == 0:
                pnet = ctx.build(archs[0], seed=draw_seed(probe_gen))
                clean, robust = robust_probe(
                    pnet,
                    x,
                    y,
                    data,
                    eps=ctx.threat.eps,
                    norm=ctx.threat.norm,
                    steps=cfg.probe_steps,
                    lr=cfg.net_lr,
                    n_val=cfg.probe_val,
                    attack_steps=cfg.attack_steps,
                    generator=probe_gen,
                    device=dev,
                )
                probe = {"probe_clean_acc": clean, "probe_robust_acc": robust}
                ctx.log(dict(probe), it + 1)
        info = {"ipc": cfg.ipc, "iterations": cfg.iterations, "archs": archs, **probe}
        return LearnedDataset(x.detach().cpu(), y.cpu(), info)

    def _train_one_network(self, ctx, net, x, y, syn_rows, real, opt) -> float:
        """DC's outer/inner loop on one fresh network; returns the mean matching loss."""
        cfg = self.cfg
        params = [p for p in net.parameters() if p.requires_grad]
        net_opt = torch.optim.SGD(params, lr=cfg.net_lr, momentum=0.9, weight_decay=5e-4)
        losses = []
        for ol in range(cfg.outer_loop):
            xs = x.clone().requires_grad_(True)
            loss = self._match_loss(ctx, net, params, xs, y, syn_rows, real)
            (grad,) = torch.autograd.grad(loss, xs)
            opt.step(x, torch.arange(x.shape[0], device=x.device), grad)
            clamp_to_bounds_(x, ctx.data.bounds)
            losses.append(float(loss.detach()))
            if ol < cfg.outer_loop - 1:
                natural_steps(
                    net,
                    net_opt,
                    x.detach(),
                    y,
                    steps=cfg.inner_loop,
                    batch=cfg.net_batch,
                    generator=ctx.generator,
                )
        return sum(losses) / len(losses)

    def _match_loss(self, ctx, net, params, xs, y, syn_rows, real) -> torch.Tensor:
        """Sum over classes of the layer-wise distance between the natural gradient of S's
        class-c rows and the gradient of PGD examples of a real class-c batch; differentiable in xs."""
        loss = xs.new_zeros(())
        for c in ctx.meter.alike(range(len(syn_rows))):
            rows = syn_rows[c]
            x_adv, y_adv = self._adversarial_batch(ctx, net, real, c)
            net.train()  # gradients with batch statistics, as natural training computes them
            g_real = torch.autograd.grad(F.cross_entropy(net(x_adv), y_adv), params)
            g_syn = torch.autograd.grad(
                F.cross_entropy(net(xs[rows]), y[rows]), params, create_graph=True
            )
            loss = loss + gradient_distance([g.detach() for g in g_real], list(g_syn))
        return loss

    def _adversarial_batch(self, ctx, net: nn.Module, real: RealSampler, c: int):
        xr = real.batch(c, self.cfg.real_batch)
        yr = torch.full((xr.shape[0],), c, dtype=torch.long, device=xr.device)
        net.eval()
        t = ctx.threat
        x_adv = pgd(
            net,
            xr,
            yr,
            norm=t.norm,
            eps=t.eps,
            steps=self.cfg.attack_steps,
            bounds=ctx.data.bounds,
            generator=ctx.generator,
        )
        return x_adv, yr
