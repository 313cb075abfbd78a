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
from attnzoo.errors import AttnzooError


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

    def normal(self, shape: tuple[int, ...]) -> torch.Tensor:
        """N(0, 1) draws of `shape`, whose first dimension is this process's count."""
        draw = torch.randn((self.total or shape[0], *shape[1:]), generator=self.g, device=self.g.device)
        return self._slice(draw, shape[0])


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


# ---------------------------------------------------------------- strong augmentation
#
# The parts of a strong from-scratch recipe that act on a whole batch on the device, after the
# per-image steps of `plan` and in both pipelines (attnzoo.data.loader.Loader.train_batches):
# RandAugment or TrivialAugment in [0, 1], random erasing of the normalised batch, and (in the
# training step, where the labels become soft targets) Mixup / CutMix. Their random numbers come
# from a generator seeded by (seed, epoch, step) too, so a resumed run draws what it would have.

STRONG_SALT = 0x5EED_A11  # their stream is not the per-image steps' stream (XOR keeps seeds distinct)
MIX_SALT = 0x3A1C_0DE


def strong_plan(a: AugmentConfig) -> list[tuple[str, tuple]]:
    """The batch-level augmentations the recipe turns on, as (name, arguments), in the order they
    apply to images in [0, 1]; random erasing (on the normalised batch) is ``a.random_erasing``."""
    if a.auto_augment == "randaugment":
        return [("randaugment", (a.auto_ops, a.auto_magnitude))]
    if a.auto_augment == "trivialaugment":
        return [("trivialaugment", ())]
    return []


MAGNITUDE_BINS = 31  # torchvision's num_magnitude_bins: magnitudes 0..30

# The operations of torchvision's RandAugment and TrivialAugmentWide with their strongest values
# (RandAugment, TrivialAugment-wide): shear as a fraction, translation as a fraction of the side
# (torchvision's 150/331 and 32/32 px), degrees, enhancement factors' distance from 1, and the
# posterize bits removed at the top bin. Signed operations flip their sign with p = 0.5.
_RANGES = {
    "randaugment": {"shear": 0.3, "translate": 150 / 331, "rotate": 30.0, "enhance": 0.9, "posterize": 4},
    "trivialaugment": {"shear": 0.99, "translate": 1.0, "rotate": 135.0, "enhance": 0.99, "posterize": 6},
}
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
       "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_GEOMETRIC = OPS[:6]


def _affine(x: torch.Tensor, op: torch.Tensor, signed: torch.Tensor, ranges: dict) -> torch.Tensor:
    """The geometric operations of every image at once: one affine matrix per image (identity for an
    image whose operation is not geometric), one grid_sample, zero fill."""
    B = x.shape[0]
    eye = torch.eye(2, 3, device=x.device, dtype=x.dtype).repeat(B, 1, 1)
    theta = eye.clone()
    is_op = lambda name: (op == OPS.index(name)).to(x.dtype)  # noqa: E731
    shear = signed * ranges["shear"]
    theta[:, 0, 1] += is_op("shear_x") * shear
    theta[:, 1, 0] += is_op("shear_y") * shear
    shift = signed * ranges["translate"] * 2  # affine_grid's coordinates span [-1, 1]: a side is 2
    theta[:, 0, 2] += is_op("translate_x") * shift
    theta[:, 1, 2] += is_op("translate_y") * shift
    angle = is_op("rotate") * signed * ranges["rotate"] * (math.pi / 180)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()], -1), torch.stack([angle.sin(), angle.cos()], -1)], 1)
    theta[:, :, :2] = rotation @ theta[:, :, :2]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    geometric = (op < len(_GEOMETRIC))[:, None, None, None]
    return torch.where(geometric, moved, x)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: b + factor * (a - b), clipped (factor 1 gives `a`)."""
    return (b + factor[:, None, None, None] * (a - b)).clamp(0, 1)


def _sharp_blur(x: torch.Tensor) -> torch.Tensor:
    """PIL's SMOOTH kernel (torchvision adjust_sharpness), the border pixels kept."""
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], device=x.device, dtype=x.dtype) / 13
    blurred = F.conv2d(x.reshape(-1, 1, *x.shape[-2:]), kernel[None, None], padding=1).reshape(x.shape)
    out = x.clone()
    out[..., 1:-1, 1:-1] = blurred[..., 1:-1, 1:-1]
    return out


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    low = x.amin(dim=(2, 3), keepdim=True)
    high = x.amax(dim=(2, 3), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-12), torch.ones_like(high))
    return torch.where(high > low, (x - low) * scale, x).clamp(0, 1)


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation per image and channel of the 8-bit levels (torchvision's equalize)."""
    B, C, H, W = x.shape
    levels = (x * 255).round().long().reshape(B * C, H * W)
    hist = torch.zeros(B * C, 256, device=x.device).scatter_add_(1, levels, torch.ones_like(levels, dtype=torch.float))
    # torchvision: step = (pixels - count of the last non-zero level) // 255; a step of 0 keeps the channel
    last = hist.gather(1, (hist > 0).float().cumsum(1).argmax(1, keepdim=True))
    step = ((H * W - last) // 255).clamp_min(0)
    cdf = hist.cumsum(1) - hist  # pixels below each level
    lut = ((cdf + step // 2) // step.clamp_min(1)).clamp(0, 255)
    out = lut.gather(1, levels) / 255
    return torch.where(step > 0, out, levels.float() / 255).reshape(B, C, H, W)


def _photometric(x: torch.Tensor, op: torch.Tensor, signed: torch.Tensor, level: torch.Tensor,
                 ranges: dict) -> torch.Tensor:
    """The colour operations, each computed for the batch and kept where an image drew it."""
    factor = 1 + signed * ranges["enhance"]
    gray = _gray(x)
    bits = (8 - (level * ranges["posterize"]).round()).clamp(1, 8)  # torchvision: 8 - round(bin / (30 / k))
    step = (2 ** (8 - bits))[:, None, None, None]  # keeping the top `bits` bits of a level: floor to a multiple
    levels = (x * 255).round()
    threshold = (1 - level)[:, None, None, None]  # solarize from 1.0 (nothing) down to 0.0 (everything)
    candidates = {
        "brightness": lambda: _blend(x, torch.zeros_like(x), factor),
        "color": lambda: _blend(x, gray.expand_as(x), factor),
        "contrast": lambda: _blend(x, gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(x), factor),
        "sharpness": lambda: _blend(x, _sharp_blur(x), factor),
        "posterize": lambda: (levels / step).floor() * step / 255,
        "solarize": lambda: torch.where(x >= threshold, 1 - x, x),
        "autocontrast": lambda: _autocontrast(x),
        "equalize": lambda: _equalize(x),
    }
    for name, compute in candidates.items():
        x = torch.where((op == OPS.index(name))[:, None, None, None], compute(), x)
    return x


def auto_augment(x: torch.Tensor, rng: BatchRandom, *, ops: int, magnitude: int | None) -> torch.Tensor:
    """RandAugment (`ops` operations per image at `magnitude` 0..30) or, with magnitude None,
    TrivialAugment-wide (one operation per image at a magnitude drawn per image), batched: each
    image draws its own operations; a whole batch is augmented in a fixed number of kernels, with
    no synchronisation with the host."""
    B = x.shape[0]
    ranges = _RANGES["randaugment" if magnitude is not None else "trivialaugment"]
    for _ in range(ops):
        op = rng.integers(B, len(OPS))
        sign = torch.where(rng.uniform(B, 0, 1) < 0.5, -1.0, 1.0).to(x.device)
        if magnitude is None:
            level = rng.integers(B, MAGNITUDE_BINS).to(x.dtype) / (MAGNITUDE_BINS - 1)
        else:
            level = torch.full((B,), magnitude / (MAGNITUDE_BINS - 1), device=x.device, dtype=x.dtype)
        x = _affine(x, op, sign * level, ranges)
        x = _photometric(x, op, sign * level, level, ranges)
    return x


STRONG = {
    "randaugment": lambda x, rng, ops, magnitude: auto_augment(x, rng, ops=ops, magnitude=magnitude),
    "trivialaugment": lambda x, rng: auto_augment(x, rng, ops=1, magnitude=None),
}


def apply_strong(x: torch.Tensor, steps: list[tuple[str, tuple]], rng: BatchRandom) -> torch.Tensor:
    """A float batch in [0, 1] augmented by `steps` (from :func:`strong_plan`)."""
    for name, args in steps:
        x = STRONG[name](x, rng, *args)
    return x


def random_erasing(x: torch.Tensor, probability: float, rng: BatchRandom) -> torch.Tensor:
    """timm's RandomErasing (mode 'pixel', one rectangle) for a normalised batch at once: with
    `probability` an image gets a rectangle of 2 %..1/3 of its area, aspect ratio 0.3..3.3 (log-
    uniform), filled with N(0, 1) noise per pixel. timm's own draws from Python's global random
    module image by image; this one draws from the batch's generator, so a resume is exact."""
    B, C, H, W = x.shape
    erase = rng.uniform(B, 0, 1) < probability
    area = rng.uniform(B, 0.02, 1 / 3) * (H * W)
    aspect = rng.uniform(B, math.log(0.3), math.log(1 / 0.3)).exp()
    h = (area * aspect).sqrt().round().clamp(1, H).long()
    w = (area / aspect).sqrt().round().clamp(1, W).long()
    top = (rng.uniform(B, 0, 1) * (H - h + 1)).floor().long()
    left = (rng.uniform(B, 0, 1) * (W - w + 1)).floor().long()
    rows = torch.arange(H, device=x.device)[None, :]
    cols = torch.arange(W, device=x.device)[None, :]
    inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])  # (B, H)
    inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])  # (B, W)
    mask = erase[:, None, None] & inside_rows[:, :, None] & inside_cols[:, None, :]  # (B, H, W)
    noise = rng.normal((B, C, H, W)).to(x.dtype)
    return torch.where(mask[:, None], noise, x)


class Mixer:
    """timm's Mixup / CutMix (batch mode: one mixing factor per batch, each image paired with the
    batch read backwards) with label smoothing, its random numbers drawn from a NumPy state
    seeded per step: timm draws from NumPy's global generator, which is saved and restored around
    each call, so nothing else's randomness moves and a resumed run mixes as the uninterrupted one."""

    def __init__(self, a: AugmentConfig, num_classes: int, label_smoothing: float):
        from timm.data import Mixup

        self.mixup = Mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mix_prob, switch_prob=0.5,
                           mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mixed images, soft targets whose rows sum to 1) of one step's batch."""
        import numpy as np

        if images.shape[0] % 2:
            raise AttnzooError(f"Mixup/CutMix pairs the images of a batch: this process's batch of {images.shape[0]} "
                               "is odd; choose a train.batch_size that gives every process an even batch")
        saved = np.random.get_state()
        try:
            np.random.seed(seed % 2**32)
            return self.mixup(images, labels)
        finally:
            np.random.set_state(saved)


def mixing(a: AugmentConfig) -> bool:
    """Whether the recipe mixes images (and so trains on soft targets)."""
    return a.mixup > 0 or a.cutmix > 0
