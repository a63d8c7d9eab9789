"""Architecture registry: every model is `Normalize -> features -> linear head`.

    model = build_model("convnet", (3, 32, 32), 10, mean=mean, std=std, width=128)

Inputs stay raw ([0, 1] for images) and the per-channel (images) or per-feature (flat input)
normalisation happens inside `forward`, so an attack never sees, and never has to undo,
normalisation (the RobustBench convention). `model.embed(x)` gives the penultimate
representation (distribution matching and robust-feature methods match it).

Initialisation: builders use PyTorch's default initialisation and never reseed any global
RNG (no hidden `torch.manual_seed` in a factory). A caller that wants a reproducible init
forks the RNG itself:

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(...)

Models avoid in-place activations and parameter tricks, so they work under
`torch.func.functional_call` (unrolled training) and with `channels_last` inputs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessInputError
from harness.registry import Registry

# A builder maps (input_shape, **kwargs) to (feature extractor, feature dimension).
Builder = Callable[..., tuple[nn.Module, int]]
MODELS: Registry[Builder] = Registry("arch")
IMAGE_ARCHS: set[str] = set()  # archs that need (C, H, W) input


class Normalize(nn.Module):
    """(x - mean) / std with per-channel (NCHW) or per-feature (N, d) buffers; identity if None."""

    def __init__(
        self, mean: torch.Tensor | None, std: torch.Tensor | None, input_shape: tuple[int, ...]
    ):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        if mean is None:
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
            return
        # Images: one value per channel; flat input: one value per feature.
        shape = (1, input_shape[0], 1, 1) if len(input_shape) == 3 else (1, *input_shape)
        mean, std = torch.as_tensor(mean).float(), torch.as_tensor(std).float()
        expected = torch.Size(shape).numel()
        if mean.numel() != expected or std.numel() != expected:
            raise ValueError(f"mean/std need {expected} values for input shape {input_shape}")
        self.register_buffer("mean", mean.reshape(shape).clone())
        self.register_buffer("std", std.reshape(shape).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return x
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalize -> features (ending in a flat vector) -> linear head."""

    def __init__(
        self, normalize: Normalize, features: nn.Module, feature_dim: int, num_classes: int
    ):
        super().__init__()
        self.normalize = normalize
        self.features = features
        self.head = nn.Linear(feature_dim, num_classes)
        self.feature_dim = feature_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate representation of raw input `x`."""
        return self.features(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def register_arch(name: str, *, image: bool) -> Callable[[Builder], Builder]:
    """Decorator: `@register_arch("convnet", image=True)`."""

    def add(builder: Builder) -> Builder:
        MODELS.register(name)(builder)
        if image:
            IMAGE_ARCHS.add(name)
        return builder

    return add


def arch_params(name: str) -> dict[str, Any]:
    """The keyword parameters of an arch and their defaults (for `harness archs`)."""
    sig = inspect.signature(MODELS.get(name))
    return {k: p.default for k, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY}


def _check_keys(name: str, settings: dict[str, Any], field: str) -> None:
    allowed = arch_params(name)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise HarnessInputError(
            f"arch {name!r} has no parameter {unknown[0]!r}; its parameters are "
            f"{', '.join(f'{k} (default {v!r})' for k, v in allowed.items()) or 'none'}.",
            field=f"{field}.{unknown[0]}",
        )


PROBE_SHAPES = {True: (3, 32, 32), False: (4,)}  # image arch?: an input shape it accepts


def check_arch_settings(name: str, settings: dict[str, Any], *, field: str) -> None:
    """Refuse an unknown arch, an unknown parameter or a bad value before anything runs.

    Values are checked by building the arch on the meta device (no memory, no randomness);
    errors name `field` (the spec path of these settings) and the parameter.
    """
    MODELS.get(name, field=field)
    _check_keys(name, settings, field)
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            MODELS.get(name)(PROBE_SHAPES[name in IMAGE_ARCHS], **settings)
    except HarnessInputError as exc:
        key = (exc.field or "").rpartition(".")[2]
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise HarnessInputError(message, field=f"{field}.{key}" if key else field) from None


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    mean: torch.Tensor | None = None,
    std: torch.Tensor | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build a registered arch for raw inputs of `input_shape` (no batch dim)."""
    builder = MODELS.get(name, field="arch")
    input_shape = tuple(int(s) for s in input_shape)
    if name in IMAGE_ARCHS and len(input_shape) != 3:
        raise HarnessInputError(
            f"arch {name!r} needs image input of shape (C, H, W), but the dataset gives "
            f"inputs of shape {input_shape}; use 'linear' or 'mlp' for feature vectors.",
            field="arch",
        )
    _check_keys(name, kwargs, "arch")
    features, dim = builder(input_shape, **kwargs)
    return Classifier(Normalize(mean, std, input_shape), features, dim, num_classes)


def _positive(arch: str, **values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise HarnessInputError(
                f"arch {arch!r} parameter {key} must be a positive integer, got {value!r}.",
                field=f"arch.{key}",
            )


def _flat_dim(input_shape: tuple[int, ...]) -> int:
    return int(torch.Size(input_shape).numel())


class AvgPool2x2(nn.Module):
    """2x2 average pooling with stride 2, the values of `nn.AvgPool2d(2)` (to rounding).

    On CPU it runs as a depthwise convolution with weights 1/4: there PyTorch's avg_pool2d
    kernel is the slow part of a small ConvNet (forward and backward on a 128x32x32x32 map:
    13.8 ms against 5.8 ms this way, 2 cores, torch 2.14; benchmarks/rdl_step.py measures
    the whole rdl step). On other devices it is `F.avg_pool2d`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return F.avg_pool2d(x, 2)
        channels = x.shape[1]
        weight = x.new_full((channels, 1, 2, 2), 0.25)
        return F.conv2d(x, weight, stride=2, groups=channels)


def _pool_or_skip(
    size: tuple[int, int], pool: Callable[[], nn.Module]
) -> tuple[list[nn.Module], tuple[int, int]]:
    """A 2x2 pooling layer unless the map is already 1 pixel wide (8x8 inputs reach 1x1)."""
    if min(size) < 2:
        return [], size
    return [pool()], (size[0] // 2, size[1] // 2)


# --------------------------------------------------------------------------- flat archs


@register_arch("linear", image=False)
def linear(input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """Logistic regression: the head sits directly on the flattened (normalised) input."""
    return nn.Flatten(), _flat_dim(input_shape)


@register_arch("mlp", image=False)
def mlp(
    input_shape: tuple[int, ...], *, hidden: int = 256, depth: int = 2
) -> tuple[nn.Module, int]:
    """Flatten, `depth` hidden layers of width `hidden` with ReLU."""
    _positive("mlp", hidden=hidden, depth=depth)
    layers: list[nn.Module] = [nn.Flatten()]
    width = _flat_dim(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers), hidden


# --------------------------------------------------------------------------- image archs


def _norm_layer(kind: str, channels: int) -> nn.Module:
    """Normalisation of ConvNet blocks; 'instance' is GroupNorm with one group per channel."""
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise HarnessInputError(
        f"arch 'convnet' parameter norm must be 'instance', 'batch' or 'none', got {kind!r}.",
        field="arch.norm",
    )


@register_arch("convnet", image=True)
def convnet(
    input_shape: tuple[int, ...], *, width: int = 128, depth: int = 3, norm: str = "instance"
) -> tuple[nn.Module, int]:
    """ConvNet of dataset distillation (Zhao et al. 2021, arXiv 2006.05929).

    `depth` blocks of conv3x3(width) -> instance norm -> ReLU -> 2x2 average pooling, then a
    linear classifier on the flattened map. Defaults are the paper's ConvNet-3, width 128.
    As in the authors' code, 28x28 inputs get padding 3 in the first conv (28 -> 32), so
    MNIST-like data ends on the same 4x4 map as CIFAR. Pooling is skipped once the map is
    1x1, so 8x8 digits work at any depth.
    """
    _positive("convnet", width=width, depth=depth)
    channels, h, w = input_shape
    layers: list[nn.Module] = []
    for d in range(depth):
        pad = 3 if d == 0 and (h, w) == (28, 28) else 1
        h, w = h + 2 * pad - 2, w + 2 * pad - 2
        layers += [nn.Conv2d(channels, width, 3, padding=pad), _norm_layer(norm, width), nn.ReLU()]
        pool, (h, w) = _pool_or_skip((h, w), AvgPool2x2)
        layers += pool
        channels = width
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), width * h * w


@register_arch("lenet", image=True)
def lenet(input_shape: tuple[int, ...]) -> tuple[nn.Module, int]:
    """LeNet-5 style (LeCun et al. 1998) with ReLU and max pooling.

    Both 5x5 convs are padded by 2 and an adaptive average pool brings the map to 5x5 before
    the 400 -> 120 -> 84 fully connected layers, so any image size works (8x8 upsamples).
    """
    channels, h, w = input_shape
    layers: list[nn.Module] = [nn.Conv2d(channels, 6, 5, padding=2), nn.ReLU()]
    pool, (h, w) = _pool_or_skip((h, w), lambda: nn.MaxPool2d(2))
    layers += pool + [nn.Conv2d(6, 16, 5, padding=2), nn.ReLU()]
    pool, (h, w) = _pool_or_skip((h, w), lambda: nn.MaxPool2d(2))
    layers += pool + [
        nn.AdaptiveAvgPool2d((5, 5)),
        nn.Flatten(),
        nn.Linear(16 * 25, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
    ]
    return nn.Sequential(*layers), 84


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


@register_arch("resnet18", image=True)
def resnet18(input_shape: tuple[int, ...], *, width: int = 64) -> tuple[nn.Module, int]:
    """ResNet-18 (He et al. 2016, arXiv 1512.03385), CIFAR variant.

    3x3 stride-1 stem and no max-pool (the variant adversarial-training papers use on 32x32
    data); stages of width w, 2w, 4w, 8w with two BasicBlocks each; global average pooling,
    so any input size works (a stride-2 conv on a 1x1 map stays 1x1).
    """
    _positive("resnet18", width=width)
    layers: list[nn.Module] = [
        nn.Conv2d(input_shape[0], width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(),
    ]
    cin = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        cout = width * mult
        layers += [BasicBlock(cin, cout, 1 if stage == 0 else 2), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


VGG11_CONFIG = (1, "M", 2, "M", 4, 4, "M", 8, 8, "M", 8, 8, "M")  # multiples of `width`


@register_arch("vgg11", image=True)
def vgg11(input_shape: tuple[int, ...], *, width: int = 64) -> tuple[nn.Module, int]:
    """VGG-11 with BatchNorm (Simonyan & Zisserman 2015, arXiv 1409.1556), CIFAR style.

    Eight 3x3 conv-BN-ReLU layers (widths w..8w) and five 2x2 max-pools; a pool is skipped
    once the map is 1x1 (8x8 inputs), and a global average pool feeds a single linear
    classifier, so any input size works.
    """
    _positive("vgg11", width=width)
    layers: list[nn.Module] = []
    cin, size = input_shape[0], (input_shape[1], input_shape[2])
    for item in VGG11_CONFIG:
        if item == "M":
            pool, size = _pool_or_skip(size, lambda: nn.MaxPool2d(2))
            layers += pool
            continue
        cout = width * int(item)
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin
