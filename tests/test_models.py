"""Architecture registry: every arch on every input shape it accepts."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad

from harness.errors import HarnessInputError
from harness.protocol.models import (
    IMAGE_ARCHS,
    MODELS,
    AvgPool2x2,
    Classifier,
    arch_params,
    build_model,
)

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32), (101,)]
# Narrow widths keep the suite fast; the default sizes are checked once below.
SMALL = {
    "convnet": {"width": 16},
    "mlp": {"hidden": 32},
    "resnet18": {"width": 8},
    "vgg11": {"width": 8},
}
CASES = [(a, s) for a in MODELS for s in SHAPES if a not in IMAGE_ARCHS or len(s) == 3]


def make(arch, shape, num_classes=10, seed=0, **kwargs):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, shape, num_classes, **{**SMALL.get(arch, {}), **kwargs})


def stats(shape):
    n = shape[0]  # channels of an image, features of a flat input
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, generator=gen), torch.rand(n, generator=gen) + 0.5


def batch(shape, n=3, seed=2):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,shape", CASES)
def test_output_shape_and_gradients(arch, shape):
    model = make(arch, shape, num_classes=7)
    x = batch(shape).requires_grad_(True)
    out = model(x)
    assert out.shape == (3, 7)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    assert model.embed(x).shape == (3, model.feature_dim)


@pytest.mark.parametrize("arch,shape", CASES)
def test_normalisation_is_inside_forward(arch, shape):
    mean, std = stats(shape)
    normed = make(arch, shape, mean=mean, std=std).eval()
    plain = make(arch, shape).eval()  # same seed: Normalize consumes no randomness
    x = batch(shape)
    view = (1, -1, 1, 1) if len(shape) == 3 else (1, -1)
    expected = plain((x - mean.reshape(view)) / std.reshape(view))
    torch.testing.assert_close(normed(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch,shape", CASES)
def test_functional_call_matches_and_differentiates(arch, shape):
    model = make(arch, shape).eval()
    x, y = batch(shape), torch.tensor([0, 1, 2])
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    torch.testing.assert_close(functional_call(model, {**params, **buffers}, (x,)), model(x))

    def loss(p):
        return torch.nn.functional.cross_entropy(functional_call(model, {**p, **buffers}, (x,)), y)

    grads = grad(loss)(params)
    assert set(grads) == set(params)
    assert all(torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("arch", sorted(IMAGE_ARCHS))
def test_train_mode_unroll_with_autograd(arch):
    """One differentiable SGD step through functional_call in train mode (BN batch stats)."""
    model = make(arch, (3, 32, 32)).train()
    x, y = batch((3, 32, 32), n=4), torch.tensor([0, 1, 2, 3])
    synthetic = x.clone().requires_grad_(True)
    params = dict(model.named_parameters())
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    ce = torch.nn.functional.cross_entropy
    inner = ce(functional_call(model, {**params, **buffers}, (synthetic,)), y)
    grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
    stepped = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads)}
    outer = ce(functional_call(model, {**stepped, **buffers}, (x,)), y)
    (g_syn,) = torch.autograd.grad(outer, synthetic)
    assert torch.isfinite(g_syn).all() and g_syn.abs().sum() > 0


@pytest.mark.parametrize("arch", sorted(IMAGE_ARCHS))
def test_channels_last(arch):
    model = make(arch, (3, 32, 32)).eval()
    x = batch((3, 32, 32))
    out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, model(x.contiguous()), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("size", [(8, 8), (7, 9), (32, 32)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_avg_pool_2x2_is_avg_pool2d(size, channels_last):
    """ConvNet's CPU pooling (a depthwise convolution) gives nn.AvgPool2d(2)'s values and
    input gradients, odd sizes floored alike."""
    x = torch.randn(4, 5, *size, generator=torch.Generator().manual_seed(0))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(4, 5, size[0] // 2, size[1] // 2, generator=torch.Generator().manual_seed(1))
    outs = []
    for pool in (AvgPool2x2(), torch.nn.AvgPool2d(2)):
        xi = x.clone().requires_grad_(True)
        y = pool(xi)
        (gx,) = torch.autograd.grad(y, xi, g)
        outs.append((y, gx))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-6, atol=1e-6)


def test_default_sizes_match_the_literature():
    """Parameter counts of the standard CIFAR-10 networks (3x32x32, 10 classes)."""
    counts = {
        arch: sum(p.numel() for p in build_model(arch, (3, 32, 32), 10).parameters())
        for arch in ("convnet", "lenet")
    }
    assert counts["convnet"] == 320_010  # ConvNet-3, width 128 (Zhao et al. 2021)
    assert counts["lenet"] == 62_006
    assert arch_params("resnet18") == {"width": 64}
    assert arch_params("vgg11") == {"width": 64}


def test_convnet_large_input_and_deep_small_input():
    assert make("convnet", (3, 64, 64))(batch((3, 64, 64))).shape == (3, 10)
    deep = make("convnet", (1, 8, 8), depth=5)  # pooling stops at 1x1
    assert deep.feature_dim == 16
    assert deep(batch((1, 8, 8))).shape == (3, 10)


def test_returns_classifier_with_normalize_buffers():
    mean, std = stats((3, 32, 32))
    model = make("convnet", (3, 32, 32), mean=mean, std=std)
    assert isinstance(model, Classifier)
    assert model.normalize.mean.shape == (1, 3, 1, 1)
    assert "normalize.mean" in dict(model.named_buffers())
    assert not hasattr(model, "mean")  # torchattacks would otherwise normalise a second time


def test_builders_do_not_reseed_global_rng():
    """The caller's seed decides the init: different seeds, different weights."""
    a, b, c = make("mlp", (101,), seed=1), make("mlp", (101,), seed=2), make("mlp", (101,), seed=1)
    wa, wb, wc = (m.head.weight for m in (a, b, c))
    assert not torch.equal(wa, wb)
    assert torch.equal(wa, wc)


def test_unknown_arch_lists_known_ones():
    with pytest.raises(HarnessInputError, match="Known archs: convnet"):
        build_model("resnet19", (3, 32, 32), 10)


@pytest.mark.parametrize("arch", sorted(IMAGE_ARCHS))
def test_image_arch_refuses_flat_input(arch):
    with pytest.raises(HarnessInputError, match=rf"{arch}.*\(C, H, W\).*'linear' or 'mlp'"):
        build_model(arch, (101,), 2)


def test_bad_kwargs_are_input_errors():
    with pytest.raises(HarnessInputError, match="no parameter 'widht'.*width"):
        build_model("convnet", (3, 32, 32), 10, widht=64)
    with pytest.raises(HarnessInputError, match="positive integer"):
        build_model("mlp", (101,), 2, hidden=0)
    with pytest.raises(HarnessInputError, match="norm"):
        build_model("convnet", (3, 32, 32), 10, norm="layer")


# -------------------------------------------------------------- settings from the spec


def conv_blocks(model):
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("depth", [2, 4])
def test_arch_settings_reach_every_network_a_method_builds(depth):
    from harness.datasets import load_dataset
    from harness.methods.base import MethodContext
    from harness.protocol.attacks import Threat
    from harness.protocol.train import TrainConfig, WorkMeter

    data = load_dataset("digits", subset=2)
    ctx = MethodContext(
        data=data,
        threat=Threat("linf", 0.1),
        train=TrainConfig(),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        seed=0,
        archs=["convnet"],
        meter=WorkMeter(),
        arch_settings={"convnet": {"depth": depth, "width": 8}},
    )
    net = ctx.build("convnet", seed=0)
    assert conv_blocks(net) == depth
    assert net.features[0].out_channels == 8
    assert conv_blocks(ctx.build("lenet", seed=0)) == 2  # other archs keep their defaults


@pytest.mark.parametrize(
    "settings,path,needle",
    [
        ({"convnt": {"depth": 4}}, "eval.arch_settings.convnt", "Known archs"),
        ({"convnet": {"dept": 4}}, "eval.arch_settings.convnet.dept", "no parameter 'dept'"),
        ({"convnet": {"depth": 0}}, "eval.arch_settings.convnet.depth", "positive integer"),
        ({"convnet": {"norm": "instancenorm"}}, "eval.arch_settings.convnet.norm", "'instance'"),
        ({"mlp": {"width": 512}}, "eval.arch_settings.mlp.width", "hidden"),
        ({"linear": {"hidden": 8}}, "eval.arch_settings.linear.hidden", "none"),
    ],
)
def test_bad_arch_settings_name_their_spec_path(settings, path, needle):
    from harness.spec.schema import EvalSpec

    with pytest.raises(HarnessInputError) as err:
        EvalSpec(arch_settings=settings)
    assert err.value.field == path and needle in str(err.value)


def test_channel_stats_are_computed_once_and_handed_out_as_copies():
    """Every network a method builds normalises with the split's statistics; they are
    computed on the first call only, and a caller changing its copy changes nothing else."""
    import torch

    from harness.datasets.splits import load_dataset

    data = load_dataset("digits", subset=5)
    mean, std = data.channel_stats()
    assert torch.allclose(mean, data.x_train.mean(dim=(0, 2, 3)))
    assert torch.allclose(std, data.x_train.std(dim=(0, 2, 3)))
    first = mean.clone()
    mean += 1.0
    data.x_train = torch.zeros_like(data.x_train)  # not done by the harness: shows the cache
    again, _ = data.channel_stats()
    assert torch.equal(again, first)
