"""The work meter: every network a method builds through its context is counted, once per
example, whichever way it is called; and `rdl`'s second-order pass is in its work."""

from __future__ import annotations

import pytest
import torch

from harness.datasets import load_dataset
from harness.methods import MethodContext, make_method
from harness.protocol.attacks import Threat
from harness.protocol.train import TrainConfig, WorkMeter


def context(dataset: str = "digits", archs=("mlp",)) -> MethodContext:
    data = load_dataset(dataset, subset=5)
    return MethodContext(
        data=data,
        threat=Threat("linf", data.default_eps),
        train=TrainConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seed=0,
        archs=list(archs),
        meter=WorkMeter(),
    )


@pytest.mark.parametrize("arch", ["mlp", "linear", "convnet"])
def test_built_networks_are_metered_without_attaching(arch):
    ctx = context(archs=(arch,))
    net = ctx.build(arch, seed=0)
    x = ctx.data.x_train[:7]
    net(x)
    assert ctx.meter.examples == 7  # a whole-network pass
    with ctx.meter.attach(net):  # attaching a watched network again adds nothing
        net(x)
    assert ctx.meter.examples == 14
    if any(True for _ in net.features.parameters()):
        net.features(x)  # feature passes alone (DM, robust_features) count too
        assert ctx.meter.examples == 21
    with ctx.meter.paused():
        net(x)
    assert ctx.meter.examples in (14, 21)


def test_downstream_models_are_not_charged_to_learning():
    ctx = context()
    net = ctx.build("mlp", seed=0, metered=False)
    net(ctx.data.x_train[:5])
    assert ctx.meter.examples == 0


def test_rdl_counts_the_backward_through_its_unroll():
    """One outer step of `rdl` with a k-step unroll over r rows: the hooks see k*r unroll
    examples (plus the attack and loss on the real batch); the second-order backward adds
    k*r more."""
    ctx = context()
    method = make_method(
        "rdl",
        {
            "ipc": 2,
            "unroll_min": 3,
            "unroll_max": 3,
            "attack_steps": 2,
            "real_batch": 8,
            "archs": ["mlp"],
            "soft_labels": False,
        },
    )
    from harness.methods.rdl import _Learner

    learner = _Learner(method.config_for("digits"), ctx)
    learner.outer_step(0)
    rows = 2 * ctx.data.num_classes  # ipc 2, all rows in one batch
    unroll, real = 3 * rows, 8 * (2 + 1)  # unroll passes; PGD-2 and the loss on 8 real images
    assert ctx.meter.examples == unroll + real + unroll


def test_passes_with_autograd_off_are_counted_as_forward_only():
    meter = WorkMeter()
    net = meter.watch(torch.nn.Linear(4, 2), "linear")
    net(torch.zeros(5, 4))
    with torch.no_grad():
        net(torch.zeros(3, 4))
    assert meter.by_arch["linear"] == 8 and meter.forward_only["linear"] == 3
