"""Differentiable siamese augmentation (DSA; Zhao & Bilen, ICML 2021, arXiv 2102.08259).

Dataset condensation matches gradients (DC) or embeddings (DM) of a real and a synthetic
batch. DSA augments both batches with the *same* random transform, built from differentiable
torch ops, so the gradient reaches the synthetic pixels through the augmentation and the two
batches stay comparable.

    aug = SiameseAugment("color_crop_cutout_flip_scale_rotate", generator)
    x_real_aug, x_syn_aug = aug(x_real, x_syn)

As in the authors' code (aug_mode "S"), each call picks one family at random from the
strategy and applies it; families and their ranges are the paper's: scale x[1/1.2, 1.2] per
axis, rotate +-15 degrees, flip with probability 0.5, crop = translation by up to 1/8 of the
side with zero padding, color = brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5],
cutout = one square of half the side set to 0.

Evaluation: models trained on a set learned with DSA are trained with the same strategy
(`DSATrainAugment`, the `harness.protocol.train.Augment` interface): one family per batch, parameters
drawn per image, as the authors' evaluation does.

Departures: one parameter draw per call is shared by every image of every batch (the
authors draw per example and align real and synthetic examples by index through a shared
seed; sharing one draw is the simplest exact siamese pairing); transforms act on raw [0, 1]
inputs (the harness normalises inside the model) rather than on normalised tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from harness.errors import HarnessInputError

Transform = Callable[[torch.Tensor, dict], torch.Tensor]
Sampler = Callable[[torch.Generator, torch.Size, int], dict]  # (gen, batch shape, draws)

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # the DSA/DM papers' ImageNet-free default
SCALE, ROTATE_DEG, CROP, CUTOUT = 1.2, 15.0, 0.125, 0.5  # the paper's ratios
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5


def _u(gen: torch.Generator, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _per_example(value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n,) parameters as (n, 1, 1, 1) on x's device; n = 1 broadcasts over the batch."""
    return value.to(device=x.device, dtype=x.dtype).reshape(-1, 1, 1, 1)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample `x` through 2x3 affine maps (n, 2, 3), n = 1 or one per image; zero padding."""
    t = theta.to(device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(t, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _matrix(a, b, c, d, tx, ty) -> torch.Tensor:
    """Stack per-example entries into (n, 2, 3) maps [[a, b, tx], [c, d, ty]]."""
    return torch.stack([torch.stack([a, b, tx], -1), torch.stack([c, d, ty], -1)], -2)


def _scale_params(gen, shape, n) -> dict:
    return {"sx": _u(gen, n, 1 / SCALE, SCALE), "sy": _u(gen, n, 1 / SCALE, SCALE)}


def _scale(x, p):
    zero = torch.zeros_like(p["sx"])
    return _affine(x, _matrix(p["sx"], zero, zero, p["sy"], zero, zero))


def _rotate_params(gen, shape, n) -> dict:
    return {"angle": torch.deg2rad(_u(gen, n, -ROTATE_DEG, ROTATE_DEG))}


def _rotate(x, p):
    c, s, zero = p["angle"].cos(), p["angle"].sin(), torch.zeros_like(p["angle"])
    return _affine(x, _matrix(c, s, -s, c, zero, zero))


def _flip_params(gen, shape, n) -> dict:
    return {"flip": _u(gen, n) < 0.5}


def _flip(x, p):
    return torch.where(_per_example(p["flip"], x).bool(), x.flip(-1), x)


def _crop_params(gen, shape, n) -> dict:
    # Whole-pixel shifts, so bilinear resampling is exact (no blur).
    h, w = shape[-2], shape[-1]
    rh, rw = int(h * CROP + 0.5), int(w * CROP + 0.5)
    dy = torch.randint(-rh, rh + 1, (n,), generator=gen)
    dx = torch.randint(-rw, rw + 1, (n,), generator=gen)
    return {"tx": 2.0 * dx / w, "ty": 2.0 * dy / h}


def _crop(x, p):
    one, zero = torch.ones_like(p["tx"]), torch.zeros_like(p["tx"])
    return _affine(x, _matrix(one, zero, zero, one, p["tx"], p["ty"]))


def _color_params(gen, shape, n) -> dict:
    return {"b": _u(gen, n) - 0.5, "s": _u(gen, n) * SATURATION, "c": _u(gen, n) + CONTRAST}


def _color(x, p):
    x = x + _per_example(p["b"], x) * BRIGHTNESS
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * _per_example(p["s"], x) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_example(p["c"], x) + mean


def _cutout_params(gen, shape, n) -> dict:
    h, w = shape[-2], shape[-1]
    ch, cw = max(1, int(h * CUTOUT + 0.5)), max(1, int(w * CUTOUT + 0.5))
    cy = torch.randint(0, h + 1 - ch, (n,), generator=gen)
    cx = torch.randint(0, w + 1 - cw, (n,), generator=gen)
    return {"cy": cy, "cx": cx, "size": (ch, cw)}


def _cutout(x, p):
    (ch, cw), h, w = p["size"], x.shape[-2], x.shape[-1]
    cy, cx = (p[k].to(x.device).reshape(-1, 1, 1) for k in ("cy", "cx"))
    rows = torch.arange(h, device=x.device).reshape(1, h, 1)
    cols = torch.arange(w, device=x.device).reshape(1, 1, w)
    inside = (rows >= cy) & (rows < cy + ch) & (cols >= cx) & (cols < cx + cw)
    return x * (~inside).unsqueeze(1).to(x.dtype)


FAMILIES: dict[str, tuple[Sampler, Transform]] = {
    "scale": (_scale_params, _scale),
    "rotate": (_rotate_params, _rotate),
    "flip": (_flip_params, _flip),
    "crop": (_crop_params, _crop),
    "color": (_color_params, _color),
    "cutout": (_cutout_params, _cutout),
}


def parse_strategy(strategy: str) -> list[str]:
    names = [s for s in strategy.split("_") if s]
    unknown = [s for s in names if s not in FAMILIES]
    if unknown or not names:
        raise HarnessInputError(
            f"unknown DSA augmentation {unknown[0] if unknown else strategy!r}; the strategy joins "
            f"names from {', '.join(FAMILIES)} with '_', e.g. {DEFAULT_STRATEGY!r}.",
            field="method.dsa_strategy",
        )
    return names


def _random_family(names: list[str], gen: torch.Generator) -> tuple[Sampler, Transform]:
    """One family per call, as the authors' aug_mode "S"."""
    return FAMILIES[names[int(torch.randint(0, len(names), (), generator=gen))]]


class SiameseAugment:
    """Apply one random DSA transform, identically, to every batch passed in one call."""

    def __init__(self, strategy: str, generator: torch.Generator):
        self.names = parse_strategy(strategy)
        self.generator = generator

    def __call__(self, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        sample, transform = _random_family(self.names, self.generator)
        params = sample(self.generator, batches[0].shape, 1)  # one draw, shared by every image
        return tuple(transform(b, params) for b in batches)


class DSATrainAugment:
    """DSA as the DSA and DM papers train evaluation models on a learned set.

    `harness.protocol.train.Augment` interface: `aug(x, generator)`. Each batch gets one family of the
    strategy, with parameters drawn per image (the authors' evaluation calls DiffAugment
    without a shared seed, so nothing ties images together).
    """

    def __init__(self, strategy: str):
        self.names = parse_strategy(strategy)
        self.strategy = strategy

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sample, transform = _random_family(self.names, generator)
        return transform(x, sample(generator, x.shape, x.shape[0]))

    def __repr__(self) -> str:
        return f"DSATrainAugment({self.strategy!r})"


def evaluation_augment(learned_with: SiameseAugment | None) -> DSATrainAugment | None:
    """The evaluation augmentation of a set learned with `learned_with` (None: none): the
    same strategy, as Zhao & Bilen 2021 (DSA) and 2023 (DM) evaluate."""
    return None if learned_with is None else DSATrainAugment("_".join(learned_with.names))


def maybe_augment(
    enabled: bool, strategy: str, generator: torch.Generator, is_image: bool
) -> SiameseAugment | None:
    """A DSA augmenter when asked for and the data are images (feature vectors get none)."""
    parse_strategy(strategy)  # a misspelt strategy fails on any data, not only on images
    return SiameseAugment(strategy, generator) if enabled and is_image else None
