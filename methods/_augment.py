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

Departures: one parameter draw per call is shared by every image of every batch (the
authors draw per example and align real and synthetic examples by index through a shared
seed; sharing one draw is the simplest exact siamese pairing); transforms act on raw [0, 1]
inputs (the harness normalises inside the model) rather than on normalised tensors.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from harness.errors import HarnessInputError

Transform = Callable[[torch.Tensor, dict], torch.Tensor]
Sampler = Callable[[torch.Generator, torch.Size], dict]

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"  # the DSA/DM papers' ImageNet-free default
SCALE, ROTATE_DEG, CROP, CUTOUT = 1.2, 15.0, 0.125, 0.5  # the paper's ratios
BRIGHTNESS, SATURATION, CONTRAST = 1.0, 2.0, 0.5


def _u(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _affine(x: torch.Tensor, theta: list[list[float]]) -> torch.Tensor:
    """Resample `x` through one 2x3 affine map (shared by the batch), zero padding."""
    t = torch.tensor(theta, dtype=x.dtype, device=x.device).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(t, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


def _scale_params(gen, shape) -> dict:
    return {"sx": _u(gen, 1 / SCALE, SCALE), "sy": _u(gen, 1 / SCALE, SCALE)}


def _scale(x, p):
    return _affine(x, [[p["sx"], 0.0, 0.0], [0.0, p["sy"], 0.0]])


def _rotate_params(gen, shape) -> dict:
    return {"angle": math.radians(_u(gen, -ROTATE_DEG, ROTATE_DEG))}


def _rotate(x, p):
    c, s = math.cos(p["angle"]), math.sin(p["angle"])
    return _affine(x, [[c, s, 0.0], [-s, c, 0.0]])


def _flip_params(gen, shape) -> dict:
    return {"flip": _u(gen) < 0.5}


def _flip(x, p):
    return x.flip(-1) if p["flip"] else x


def _crop_params(gen, shape) -> dict:
    # Whole-pixel shifts, so bilinear resampling is exact (no blur).
    h, w = shape[-2], shape[-1]
    rh, rw = int(h * CROP + 0.5), int(w * CROP + 0.5)
    dy = int(torch.randint(-rh, rh + 1, (), generator=gen))
    dx = int(torch.randint(-rw, rw + 1, (), generator=gen))
    return {"tx": 2.0 * dx / w, "ty": 2.0 * dy / h}


def _crop(x, p):
    return _affine(x, [[1.0, 0.0, p["tx"]], [0.0, 1.0, p["ty"]]])


def _color_params(gen, shape) -> dict:
    return {"b": _u(gen) - 0.5, "s": _u(gen) * SATURATION, "c": _u(gen) + CONTRAST}


def _color(x, p):
    x = x + p["b"] * BRIGHTNESS
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * p["s"] + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * p["c"] + mean


def _cutout_params(gen, shape) -> dict:
    h, w = shape[-2], shape[-1]
    ch, cw = max(1, int(h * CUTOUT + 0.5)), max(1, int(w * CUTOUT + 0.5))
    cy = int(torch.randint(0, h + 1 - ch, (), generator=gen))
    cx = int(torch.randint(0, w + 1 - cw, (), generator=gen))
    return {"box": (cy, cx, ch, cw)}


def _cutout(x, p):
    cy, cx, ch, cw = p["box"]
    mask = torch.ones(x.shape[-2:], dtype=x.dtype, device=x.device)
    mask[cy : cy + ch, cx : cx + cw] = 0
    return x * mask


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


class SiameseAugment:
    """Apply one random DSA transform, identically, to every batch passed in one call."""

    def __init__(self, strategy: str, generator: torch.Generator):
        self.names = parse_strategy(strategy)
        self.generator = generator

    def __call__(self, *batches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        pick = int(torch.randint(0, len(self.names), (), generator=self.generator))
        sample, transform = FAMILIES[self.names[pick]]
        params = sample(self.generator, batches[0].shape)
        return tuple(transform(b, params) for b in batches)


def maybe_augment(enabled: bool, strategy: str, generator: torch.Generator, is_image: bool) -> SiameseAugment | None:
    """A DSA augmenter when asked for and the data are images (feature vectors get none)."""
    parse_strategy(strategy)  # a misspelt strategy fails on any data, not only on images
    return SiameseAugment(strategy, generator) if enabled and is_image else None
