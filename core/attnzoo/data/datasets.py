"""Reading datasets into memory as uint8 tensors: CIFAR-10/100 (official on-disk layout),
image folders (``train/<class>/*`` and ``test/<class>/*`` or, ImageNet's layout, ``val/<class>/*``),
and a synthetic set for benchmarks. Hugging Face datasets: attnzoo.data.hf."""

from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from attnzoo.data import cache as decode_cache
from attnzoo.errors import AttnzooError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"}


@dataclass
class ImageSet:
    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], self.classes)


@dataclass
class FileSet:
    """An image-folder split as (path, label) pairs, decoded per batch at `image_size` (streaming pipeline)."""

    files: list[tuple[Path, int]]
    classes: list[str]
    image_size: int

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, index: torch.Tensor) -> "FileSet":
        return FileSet([self.files[i] for i in index.tolist()], self.classes, self.image_size)


# ---------------------------------------------------------------- CIFAR

CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], meta="batches.meta", label_key=b"labels", names_key=b"label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     label_key=b"fine_labels", names_key=b"fine_label_names"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """The CIFAR files are pickles; allow only plain data and numpy arrays, never code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise AttnzooError(f"cannot read CIFAR file {str(path)!r} ({exc}). Delete the folder "
                           f"{str(path.parent)!r} and run again with data.download=true to fetch a fresh copy.") from None


def load_cifar(name: str, root: str | Path, download: bool) -> tuple[ImageSet, ImageSet]:
    spec, root = CIFAR[name], Path(root)
    folder = root / spec["folder"]
    if not folder.is_dir():
        if not download:
            raise AttnzooError(f"{name} not found at {str(folder)!r}. Set data.download=true to download it "
                               f"there, or point data.root at the folder that contains {spec['folder']!r}. "
                               f"{OFFLINE_ROUTE}")
        _download_cifar(name, root)
    meta = _read_pickle(folder / spec["meta"])
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta[spec["names_key"]]]

    def split(files):
        parts = [_read_pickle(folder / f) for f in files]
        data = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([np.asarray(p[spec["label_key"]]) for p in parts])
        return ImageSet(torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)),
                        torch.from_numpy(labels.astype(np.int64)), classes)

    for f in spec["train"] + spec["test"]:
        if not (folder / f).is_file():
            raise AttnzooError(f"{name} at {str(folder)!r} is incomplete: {f!r} is missing. Delete the folder "
                               "and run again with data.download=true.")
    return split(spec["train"]), split(spec["test"])


OFFLINE_ROUTE = ("Without internet: train on the CIFAR-10 JPEG copy in image-folder layout (written by "
                 "`attnzoo export-cifar10 DIR` on a machine with internet) with `attnzoo study cifar10-study` "
                 "(cifar10-study-cpu on a CPU; both read data/cifar10-jpg), or any recipe with "
                 "data.dataset=imagefolder data.root=DIR.")


def _download_cifar(name: str, root: Path) -> None:
    import torchvision  # torchvision knows the official URLs and checksums

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    try:
        cls(str(root), train=True, download=True)
    except Exception as exc:  # network errors come in many types
        folder = root / CIFAR[name]["folder"]
        raise AttnzooError(f"downloading {name} into {str(root)!r} failed ({exc}). Check the network, or copy "
                           f"the official python version there so that {str(folder)!r} exists "
                           f"(data.root={root}). {OFFLINE_ROUTE}") from None


# ---------------------------------------------------------------- image folders


# The held-out split's folder, in order of preference: ImageNet-style trees name it val/ (their test/,
# when there is one, usually holds unlabelled images, with no class folders).
HELD_OUT_FOLDERS = ("test", "val")


def held_out_folder(root: str | Path) -> str:
    """The name of the image folder's held-out split: test/ when it has class folders, else val/."""
    root = Path(root)
    for name in HELD_OUT_FOLDERS:
        folder = root / name
        if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
            return name
    raise AttnzooError(f"{str(root)!r} has no held-out split: an image-folder dataset needs test/<class>/ "
                       "(or, ImageNet's layout, val/<class>/) folders of images beside train/<class>/.")


def list_imagefolder(root: str | Path, image_size: int) -> tuple[FileSet, FileSet]:
    """The train and held-out (test/ or val/) files of an image folder, with the class folders checked."""
    root = Path(root)
    if not root.is_dir():
        raise AttnzooError(f"dataset folder {str(root)!r} not found. data.root must contain train/<class>/ "
                           "and test/<class>/ (or val/<class>/) folders of images.")
    train_files, classes = _list_split(root / "train", None)
    test_files, _ = _list_split(root / held_out_folder(root), classes)
    return FileSet(train_files, classes, image_size), FileSet(test_files, classes, image_size)


def load_imagefolder(root: str | Path, image_size: int) -> tuple[ImageSet, ImageSet]:
    train, test = decode_filesets(root, list(list_imagefolder(root, image_size)))
    return train, test


def decode_filesets(root: str | Path, sets: list[FileSet]) -> list[ImageSet]:
    """Decode the files of each set, through a cache keyed by exactly these files, sets and size.

    A recipe that uses part of a folder (max_train_samples, max_eval_samples) decodes only that part."""
    size = sets[0].image_size
    cache = _cache_path(Path(root), [f for s in sets for f in s.files], size, [len(s) for s in sets])
    if cache.is_file():
        try:
            t = load_file(str(cache))
            decode_cache.touch(cache)
            return [ImageSet(t[f"images_{i}"], t[f"labels_{i}"], s.classes) for i, s in enumerate(sets)]
        except Exception:
            cache.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    decoded = [_decode_all(s.files, s.classes, size) for s in sets]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tensors = {}
        for i, d in enumerate(decoded):
            tensors.update({f"images_{i}": d.images.contiguous(), f"labels_{i}": d.labels})
        save_file(tensors, str(tmp))
        os.replace(tmp, cache)
        decode_cache.prune(keep=cache)
    except (OSError, ValueError):
        pass  # the cache only saves time
    return decoded


def _list_split(folder: Path, classes: list[str] | None) -> tuple[list[tuple[Path, int]], list[str]]:
    if not folder.is_dir():
        raise AttnzooError(f"{str(folder)!r} not found: an image-folder dataset needs {folder.name}/<class>/ "
                           "folders of images under data.root.")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not found:
        raise AttnzooError(f"{str(folder)!r} has no class folders; put images in {folder.name}/<class>/.")
    if classes is not None and found != classes:
        raise AttnzooError(f"class folders differ between train and {folder.name} under {str(folder.parent)!r}: "
                           f"only in one of them: {sorted(set(found) ^ set(classes))}")
    files = []
    for label, name in enumerate(found):
        images = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise AttnzooError(f"class folder {str(folder / name)!r} has no images "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))}); add some or remove the folder.")
        files += [(p, label) for p in images]
    return files, found


def decode_one(path: Path, size: int) -> np.ndarray:
    """An image file as uint8 RGB (3, size, size), decoded by its mode: 16-bit images are scaled
    to 8 bits (PIL's own conversion clips them, which turns almost every pixel white), an alpha
    channel is dropped (the colours as stored, as torchvision's loader does), palette, grayscale
    and CMYK images are converted by PIL."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return pil_to_array(img, size, path)
    except AttnzooError:
        raise
    except Exception as exc:
        raise AttnzooError(f"cannot read image {str(path)!r} ({exc}). Remove or replace the file.") from None


def pil_to_array(img, size: int, where) -> np.ndarray:
    """A PIL image as uint8 RGB (3, size, size); `where` names it in errors (a path, a dataset row)."""
    from PIL import Image

    img = _eight_bit(img, where).convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


# Grayscale of 16 bits per pixel: a PNG of bit depth 16 opens as I;16 (older Pillow: I).
SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _eight_bit(img, path: Path):
    """`img` in a mode PIL converts to RGB without clipping: 16-bit and 32-bit integer grayscale
    scaled from 0..65535 onto 0..255; floating-point images (no fixed range) refused."""
    from PIL import Image

    if img.mode in SIXTEEN_BIT_MODES or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise AttnzooError(f"image {str(path)!r} holds {img.mode} pixels from {values.min()} to "
                               f"{values.max()}, outside the 16-bit range 0..65535 that attnzoo scales to 8 bits. "
                               "Save it as an 8- or 16-bit image.")
        return Image.fromarray(np.round(values / 257).astype(np.uint8))  # 65535 -> 255, v*257 -> v
    if img.mode == "F":
        raise AttnzooError(f"image {str(path)!r} holds floating-point pixels (mode F), which have no fixed "
                           "range to scale to 8 bits. Save it as an 8- or 16-bit image.")
    return img


def decode_images(files: list, size: int) -> torch.Tensor:
    """uint8 images (N, 3, size, size) of (path, label) pairs, decoded in threads (both
    pipelines decode through here)."""
    if not files:  # e.g. no validation split
        return torch.zeros(0, 3, size, size, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 2)) as pool:
        arrays = list(pool.map(lambda f: decode_one(f[0], size), files, chunksize=256))
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays)))


def _decode_all(files, classes, size) -> ImageSet:
    return ImageSet(decode_images(files, size), torch.tensor([label for _, label in files], dtype=torch.int64),
                    classes)


def _cache_path(root: Path, files, size: int, set_sizes: list[int]) -> Path:
    digest = hashlib.sha256(f"{root.resolve()}|{size}|{set_sizes}".encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.name}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return decode_cache.cache_dir() / f"imagefolder-{digest.hexdigest()[:16]}.safetensors"


# ---------------------------------------------------------------- synthetic


def synthetic(num_classes: int, train_size: int, test_size: int, image_size: int, seed: int = 0):
    """Learnable random images: each class has its own smooth colour pattern, plus pixel noise.

    Patterns are low-frequency (4x4 upsampled) so they survive crop / flip / rotation."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, 3, 4, 4, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear")

    def make(n):
        labels = torch.randint(num_classes, (n,), generator=g)
        noise = torch.rand(n, 3, image_size, image_size, generator=g)
        images = (0.6 * patterns[labels] + 0.4 * noise) * 255
        return ImageSet(images.to(torch.uint8), labels, [f"class{i}" for i in range(num_classes)])

    return make(train_size), make(test_size)
