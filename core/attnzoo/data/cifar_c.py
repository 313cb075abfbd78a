"""The released CIFAR-10-C / CIFAR-100-C arrays (Hendrycks & Dietterich, 2019), read as ImageSets.

The release is one folder: `labels.npy` and one `<corruption>.npy` per corruption, each holding
the test set's images (N, 32, 32, 3) uint8 at severities 1 to 5 stacked (rows 0..N-1 are
severity 1, N..2N-1 severity 2, ...). Evaluating on these very images gives numbers that sit
beside published ones (RobustBench's protocol); attnzoo's own batched corruptions
(attnzoo.data.corruptions) stay the default. Arrays are memory-mapped, so one severity of one
corruption is read at a time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnzoo.data.datasets import ImageSet
from attnzoo.errors import AttnzooError

LABELS = "labels.npy"
SEVERITIES = (1, 2, 3, 4, 5)


def corruption_names(root: Path) -> list[str]:
    """The corruptions of a release folder: its .npy files other than labels.npy, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise AttnzooError(f"CIFAR-C folder {str(root)!r} not found. Pass the folder that holds labels.npy and "
                           "one <corruption>.npy per corruption (the released CIFAR-10-C or CIFAR-100-C, unpacked).")
    if not (root / LABELS).is_file():
        raise AttnzooError(f"{str(root)!r} has no {LABELS}: it is not an unpacked CIFAR-10-C / CIFAR-100-C release "
                           "(labels.npy beside one <corruption>.npy per corruption).")
    names = sorted(p.stem for p in root.glob("*.npy") if p.name != LABELS)
    if not names:
        raise AttnzooError(f"{str(root)!r} holds labels.npy but no <corruption>.npy; unpack the whole release there.")
    return names


def _array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AttnzooError(f"{str(path)!r} is not a readable .npy array ({exc}); download it again.") from None


def load_severity(root: Path, name: str, severity: int, classes: list[str]) -> ImageSet:
    """The test images of corruption `name` at `severity` (1-5), as uint8 (N, 3, 32, 32), with their labels."""
    root = Path(root)
    if severity not in SEVERITIES:
        raise AttnzooError(f"CIFAR-C severity {severity}: the release has severities 1 to 5")
    images, labels = _array(root / f"{name}.npy"), _array(root / LABELS)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8 or len(images) % len(SEVERITIES):
        raise AttnzooError(f"{name}.npy in {str(root)!r} has shape {images.shape} and dtype {images.dtype}; the "
                           "release stores (5 x N, 32, 32, 3) uint8, five severities stacked")
    if len(labels) != len(images):
        raise AttnzooError(f"{name}.npy in {str(root)!r} has {len(images)} images but labels.npy {len(labels)} "
                           "labels; both hold five severities stacked. Are they from the same release?")
    n = len(images) // len(SEVERITIES)
    rows = slice((severity - 1) * n, severity * n)
    y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64))
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
        raise AttnzooError(f"labels.npy in {str(root)!r} has labels up to {int(y.max())}, but the run has "
                           f"{len(classes)} classes: CIFAR-100-C for a CIFAR-10 run, or the other way round?")
    x = torch.from_numpy(np.array(images[rows])).permute(0, 3, 1, 2).contiguous()  # a copy: the map is read-only
    return ImageSet(x, y, classes)
