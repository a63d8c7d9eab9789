"""A class-balanced random subset of the training set: the floor of dataset distillation."""

from __future__ import annotations

from typing import ClassVar

from harness.methods._synthetic_set import init_synthetic_set
from harness.methods.base import (
    DatasetMethod,
    LearnedDataset,
    MethodConfig,
    MethodContext,
    PerClass,
    register_method,
)


@register_method("random")
class RandomSubset(DatasetMethod):
    """Random real subset, `ipc` examples per class (the "Random" row of Zhao et al. 2021, arXiv 2006.05929).

    Threat model: none; nothing is learned. Every distillation method at the same `ipc` must
    beat it, and `dc` / `dm` with the same seed start from exactly these examples (they draw
    them through the same `init_synthetic_set` call on `ctx.generator`), so a gain over
    `random` is the gain of the optimisation alone.

    Defaults: ipc 10 (papers report 1, 10, 50). A class with fewer than `ipc` training
    examples is topped up with repeats.
    """

    class Config(MethodConfig):
        ipc: PerClass = 10  # examples per class (papers: 1, 10, 50)

    smoke: ClassVar[dict] = {"ipc": 2}

    def learn(self, ctx: MethodContext) -> LearnedDataset:
        x, y = init_synthetic_set(ctx.data, self.cfg.ipc, "real", ctx.generator)
        return LearnedDataset(x, y, {"ipc": self.cfg.ipc})
