"""CIFAR-10 as JPEG files in image-folder layout, for machines that cannot download it.

The layout and encoding are those of the copy the README's CIFAR-10 results use:
``train/<class>/NNNN.jpg`` (5,000 per class) and ``test/<class>/NNNN.jpg`` (1,000 per class),
numbered per class in the order of the official files, JPEG quality 75. Build it once on a
machine with internet, copy the folder (or a tarball of it) to the machines without.
"""

from __future__ import annotations

from pathlib import Path

from attnzoo.data.datasets import ImageSet, load_cifar
from attnzoo.errors import AttnzooError

JPEG_QUALITY = 75


def export_cifar10(dest: Path, cifar_root: Path, download: bool = True) -> dict[str, int]:
    """Write CIFAR-10 (read from, or downloaded to, `cifar_root`) under `dest`; image counts per split."""
    dest = Path(dest)
    for split in ("train", "test"):
        if (dest / split).is_dir() and any((dest / split).iterdir()):
            raise AttnzooError(f"{str(dest / split)!r} already holds files; pick an empty or new folder.")
    train, test = load_cifar("cifar10", cifar_root, download)
    return {"train": _write_split(train, dest / "train"), "test": _write_split(test, dest / "test")}


def _write_split(images: ImageSet, folder: Path) -> int:
    from PIL import Image

    counts = {name: 0 for name in images.classes}
    for name in images.classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
    pixels = images.images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3) uint8
    for array, label in zip(pixels, images.labels.tolist()):
        name = images.classes[label]
        Image.fromarray(array).save(folder / name / f"{counts[name]:04d}.jpg", quality=JPEG_QUALITY)
        counts[name] += 1
    return sum(counts.values())
