"""Common image corruptions at five severities, as pure functions on image batches.

Each corruption takes a batch (B, 3, H, W), uint8 in [0, 255] or float in [0, 1], on any
device, a severity 0..5 (0 is the identity) and a torch.Generator for its randomness, and
returns a batch of the same dtype and device. The parameters follow CIFAR-10-C (Hendrycks &
Dietterich, ICLR 2019), whose severities were chosen for 32 px images; the shift, not in
CIFAR-10-C, moves the image by `severity` pixels per 32 px of image side.

The random draws do not depend on the severity, so the five severities of one corruption
corrupt an image in the same direction with growing strength.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)

NOISE_STD = (0.0, 0.04, 0.06, 0.08, 0.09, 0.10)  # of the [0, 1] pixel range
BLUR_SIGMA = (0.0, 0.4, 0.6, 0.7, 0.8, 1.0)  # pixels, at 32 px
CONTRAST = (1.0, 0.75, 0.5, 0.4, 0.3, 0.15)  # factor on the distance to the image's mean
JPEG_QUALITY = (None, 80, 65, 58, 50, 40)
SHIFT_PIXELS = (0, 1, 2, 3, 4, 5)  # per 32 px of image side


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255 if images.dtype == torch.uint8 else images.float()


def _like(result: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Back to the input's dtype: uint8 rounded, float clamped to [0, 1]."""
    result = result.clamp(0, 1)
    if images.dtype == torch.uint8:
        return (result * 255).round().to(torch.uint8)
    return result.to(images.dtype)


def _check(images: torch.Tensor, severity: int) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(images.shape)}")
    if severity not in range(6):
        raise ValueError(f"severity must be 0..5, got {severity}")


def _scale(images: torch.Tensor) -> float:
    """Image side in units of 32 px (at least 1): CIFAR-10-C's parameters are for 32 px images."""
    return max(images.shape[-1] / 32, 1.0)


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    _check(images, severity)
    x = _to_float(images)
    noise = torch.randn(x.shape, generator=generator, device=x.device)
    return _like(x + NOISE_STD[severity] * noise, images)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """A normalised 1-D Gaussian of radius ceil(3 sigma)."""
    radius = max(math.ceil(3 * sigma), 1)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    _check(images, severity)
    sigma = BLUR_SIGMA[severity] * _scale(images)
    if sigma == 0:
        return images.clone()
    x = _to_float(images)
    kernel = gaussian_kernel(sigma).to(x.device)
    r = len(kernel) // 2
    # Separable: rows, then columns; one depthwise convolution each, edges reflected.
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return _like(x, images)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    _check(images, severity)
    x = _to_float(images)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return _like(x + (CONTRAST[severity] - 1) * (x - mean), images)  # written so that factor 1 is exact


def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """JPEG encode and decode at CIFAR-10-C's quality for the severity, with Pillow (libjpeg) on the CPU,
    as CIFAR-10-C was made."""
    _check(images, severity)
    quality = JPEG_QUALITY[severity]
    if quality is None:
        return images.clone()
    u8 = images if images.dtype == torch.uint8 else (images.clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = u8.permute(0, 2, 3, 1).cpu().numpy()
    decoded = torch.from_numpy(np.stack([_jpeg_round_trip(image, quality) for image in pixels]))
    decoded = decoded.permute(0, 3, 1, 2).to(images.device)
    return decoded if images.dtype == torch.uint8 else decoded.to(images.dtype) / 255


def _jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def shift(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Move each image by `severity` pixels (per 32 px) in one of 8 directions, drawn per image;
    the uncovered border repeats the edge pixels."""
    _check(images, severity)
    n, _, h, w = images.shape
    directions = torch.tensor([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    pick = torch.randint(len(directions), (n,), generator=generator, device=generator.device)
    pixels = SHIFT_PIXELS[severity] * round(_scale(images))
    if pixels == 0:
        return images.clone()
    x = _to_float(images)
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    out = torch.empty_like(x)
    for j, (dy, dx) in enumerate(directions.tolist()):  # one copy per direction, not per image
        rows = pick == j
        top, left = pixels - dy * pixels, pixels - dx * pixels
        out[rows] = padded[rows, :, top:top + h, left:left + w]
    return _like(out, images)


CORRUPTIONS = {
    "gaussian_noise": gaussian_noise,
    "gaussian_blur": gaussian_blur,
    "contrast": contrast,
    "jpeg_compression": jpeg_compression,
    "shift": shift,
}

PARAMETERS = {  # what each severity 1..5 means, for the record
    "gaussian_noise": ("noise std", NOISE_STD[1:]),
    "gaussian_blur": ("blur sigma (px at 32 px)", BLUR_SIGMA[1:]),
    "contrast": ("contrast factor", CONTRAST[1:]),
    "jpeg_compression": ("JPEG quality", JPEG_QUALITY[1:]),
    "shift": ("shift (px at 32 px)", SHIFT_PIXELS[1:]),
}


def corruption_seed(seed: int, name: str, batch: int) -> int:
    """The generator seed of one batch of one corruption; independent of the severity."""
    return (seed * 1_000_003 + list(CORRUPTIONS).index(name) * 100_003 + batch * 101) % (2**62)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0, batch: int = 0) -> torch.Tensor:
    """`images` under corruption `name` at `severity`, deterministic for (seed, batch) on a device."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    generator = torch.Generator(device=images.device).manual_seed(corruption_seed(seed, name, batch))
    return CORRUPTIONS[name](images, severity, generator)
