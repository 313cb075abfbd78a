"""Batched image augmentations on the device (the study's crop / flip / rotation / colour jitter).

Each takes a float batch (B, 3, H, W) in [0, 1] and a :class:`BatchRandom`. Random numbers
are drawn for the whole *global* batch and each process keeps its slice, so one process
and N processes augment every image identically, and a batch's augmentation depends only
on the seed (exact resume).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attnzoo.config.recipe import AugmentConfig


def plan(a: AugmentConfig) -> list[tuple[str, float]]:
    """The recipe's augmentations in the order they apply, as (name, strength): the one place
    the switches are read. Both pipelines follow it (the device one here, batched; the
    streaming one with torchvision, per image)."""
    steps = []
    if a.crop and a.crop_padding > 0:
        steps.append(("crop", a.crop_padding))  # zero padding, then a random window
    if a.flip:
        steps.append(("flip", 0.5))  # horizontal, with this probability
    if a.rotation > 0:
        steps.append(("rotation", a.rotation))  # max degrees
    if a.color_jitter > 0:
        steps.append(("color_jitter", a.color_jitter))  # brightness, contrast, saturation strength
    return steps


class BatchRandom:
    """Random draws for a global batch of `total` images, sliced to this process's `count` at `offset`."""

    def __init__(self, generator: torch.Generator, total: int | None = None, offset: int = 0):
        self.g, self.total, self.offset = generator, total, offset

    def _slice(self, values: torch.Tensor, count: int) -> torch.Tensor:
        return values[self.offset:self.offset + count]

    def uniform(self, count: int, low: float, high: float) -> torch.Tensor:
        draw = torch.rand(self.total or count, generator=self.g, device=self.g.device)
        return self._slice(draw, count) * (high - low) + low

    def integers(self, count: int, high: int) -> torch.Tensor:
        draw = torch.randint(0, high, (self.total or count,), generator=self.g, device=self.g.device)
        return self._slice(draw, count)


def random_crop(x: torch.Tensor, padding: int, rng: BatchRandom) -> torch.Tensor:
    """Zero-pad by `padding` and take a random HxW window per image (torchvision RandomCrop)."""
    B, C, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy, ox = rng.integers(B, 2 * padding + 1), rng.integers(B, 2 * padding + 1)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    chan = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, rng: BatchRandom, p: float = 0.5) -> torch.Tensor:
    flip = rng.uniform(x.shape[0], 0, 1) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotation(x: torch.Tensor, degrees: float, rng: BatchRandom) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees], zero fill (bilinear)."""
    angle = rng.uniform(x.shape[0], -degrees, degrees) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color_jitter(x: torch.Tensor, strength: float, rng: BatchRandom) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s] per image."""
    B = x.shape[0]
    low, high = max(0.0, 1 - strength), 1 + strength
    brightness, contrast, saturation = (rng.uniform(B, low, high)[:, None, None, None] for _ in range(3))
    x = (x * brightness).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * saturation + gray).clamp(0, 1)


BATCHED = {
    "crop": lambda x, padding, rng: random_crop(x, int(padding), rng),
    "flip": lambda x, p, rng: random_flip(x, rng, p),
    "rotation": lambda x, degrees, rng: random_rotation(x, degrees, rng),
    "color_jitter": lambda x, strength, rng: color_jitter(x, strength, rng),
}


def apply(x: torch.Tensor, steps: list[tuple[str, float]], rng: BatchRandom) -> torch.Tensor:
    """A float batch in [0, 1] augmented by `steps` (from :func:`plan`)."""
    for name, strength in steps:
        x = BATCHED[name](x, strength, rng)
    return x
