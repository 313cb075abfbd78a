"""Batched image augmentations on the device (the study's crop / flip / rotation / colour jitter).

Each takes a float batch (B, 3, H, W) in [0, 1] and a torch.Generator on the same device,
so a batch's augmentation depends only on the generator's seed (exact resume).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (high - low) + low


def random_crop(x: torch.Tensor, padding: int, g: torch.Generator) -> torch.Tensor:
    """Zero-pad by `padding` and take a random HxW window per image (torchvision RandomCrop)."""
    B, C, H, W = x.shape
    padded = F.pad(x, (padding,) * 4)
    oy = torch.randint(0, 2 * padding + 1, (B,), generator=g, device=x.device)
    ox = torch.randint(0, 2 * padding + 1, (B,), generator=g, device=x.device)
    rows = (oy[:, None] + torch.arange(H, device=x.device))[:, None, :, None]  # (B,1,H,1)
    cols = (ox[:, None] + torch.arange(W, device=x.device))[:, None, None, :]  # (B,1,1,W)
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    chan = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=g, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_rotation(x: torch.Tensor, degrees: float, g: torch.Generator) -> torch.Tensor:
    """Rotate each image by a uniform angle in [-degrees, degrees], zero fill (bilinear)."""
    angle = _uniform(x.shape[0], -degrees, degrees, g, x.device) * (math.pi / 180)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], -1), torch.stack([sin, cos, zero], -1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color_jitter(x: torch.Tensor, strength: float, g: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors each uniform in [1 - s, 1 + s] per image."""
    B = x.shape[0]
    low, high = max(0.0, 1 - strength), 1 + strength
    brightness, contrast, saturation = (_uniform(B, low, high, g, x.device)[:, None, None, None] for _ in range(3))
    x = (x * brightness).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    gray = _gray(x)
    return ((x - gray) * saturation + gray).clamp(0, 1)
