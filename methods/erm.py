"""Natural training (empirical risk minimisation): the undefended reference."""

from __future__ import annotations

from harness.methods.base import MethodContext, ModelMethod, register_method
from harness.protocol.train import LossStep, natural_loss


@register_method("erm")
class ERM(ModelMethod):
    """Plain cross-entropy training on the original data (Vapnik 1992).

    Threat model: none; this is the baseline whose lack of robustness every other method
    is measured against. Uses the spec's `train` recipe unchanged.
    """

    def loss_step(self, ctx: MethodContext) -> LossStep:
        return natural_loss
