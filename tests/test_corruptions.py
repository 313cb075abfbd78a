"""The corruptions: identity at severity 0, strictly growing change over severities 1..5,
deterministic for a seed, same dtype and shape as the input."""

import pytest
import torch
import torch.nn.functional as F
from attnzoo.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt


def natural_images(n=16, size=32, seed=0) -> torch.Tensor:
    """Smooth shapes with some fine texture, like photographs (i.i.d. noise images would make
    a shift or a blur change nothing on average)."""
    g = torch.Generator().manual_seed(seed)
    coarse = F.interpolate(torch.rand(n, 3, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    texture = 0.05 * torch.randn(n, 3, size, size, generator=g)
    return ((coarse + texture).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_severity_zero_is_the_identity(name, dtype):
    images = natural_images()
    images = images if dtype == torch.uint8 else images.float() / 255
    assert torch.equal(corrupt(images, name, 0, seed=3), images)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_change_grows_strictly_with_severity(name):
    images = natural_images()
    diffs = [(corrupt(images, name, s, seed=1).float() - images.float()).abs().mean().item() for s in SEVERITIES]
    assert diffs[0] > 0
    assert all(a < b for a, b in zip(diffs, diffs[1:])), diffs


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_shape_dtype_and_range_are_kept(name):
    images = natural_images(n=4)
    out = corrupt(images, name, 3)
    assert out.shape == images.shape and out.dtype == torch.uint8
    floats = corrupt(images.float() / 255, name, 3)
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    # The float path is the uint8 path up to rounding.
    assert (floats * 255 - out.float()).abs().max() <= 1.0


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_for_a_seed(name):
    images = natural_images()
    assert torch.equal(corrupt(images, name, 4, seed=7, batch=2), corrupt(images, name, 4, seed=7, batch=2))


@pytest.mark.parametrize("name", ["gaussian_noise", "shift"])
def test_random_corruptions_differ_between_seeds(name):
    images = natural_images()
    assert not torch.equal(corrupt(images, name, 4, seed=0), corrupt(images, name, 4, seed=1))
    assert not torch.equal(corrupt(images, name, 4, seed=0, batch=0), corrupt(images, name, 4, seed=0, batch=1))


def test_larger_images_get_proportionally_larger_shifts():
    images = natural_images(n=1, size=64)
    shifted = corrupt(images, "shift", 1, seed=0)
    # 2 px at 64 px: the interior equals the input moved by 2 px in some direction.
    moved = [torch.equal(shifted[..., 4:-4, 4:-4], torch.roll(images, (dy, dx), (2, 3))[..., 4:-4, 4:-4])
             for dy in (-2, 0, 2) for dx in (-2, 0, 2) if dy or dx]
    assert any(moved)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        corrupt(natural_images(n=1), "fog", 1)
    with pytest.raises(ValueError, match="severity must be 0..5"):
        corrupt(natural_images(n=1), "contrast", 6)
