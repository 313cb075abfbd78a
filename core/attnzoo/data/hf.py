"""Hugging Face datasets (``data.dataset: hf``) decoded into the same uint8 ImageSets as the other sources.

``data.root`` is a folder written by ``DatasetDict.save_to_disk`` (read with ``load_from_disk``) or,
when no such folder exists, a hub name (``load_dataset``). Datasets name their columns differently
(``img`` or ``image``, ``label`` or ``fine_label``), so the image and label columns are found by their
feature types (an ``Image`` and a ``ClassLabel``) unless ``data.image_key`` / ``data.label_key`` name them.

`datasets` is an optional dependency: it is imported only here, when a recipe asks for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from attnzoo.data.datasets import ImageSet, pil_to_array
from attnzoo.errors import AttnzooError

INSTALL = 'pip install datasets (or pip install "attnzoo[hf]")'
TRAIN_SPLIT = "train"
# The held-out split, in order of preference: the names Hugging Face datasets use for it.
HELD_OUT_SPLITS = ("test", "validation", "val")
DECODE_BATCH = 256  # rows decoded at a time: bounds the PIL images held at once


def _datasets_module():
    try:
        import datasets
    except ImportError:
        raise AttnzooError(f"data.dataset=hf needs the `datasets` package, which is not installed: {INSTALL}") from None
    return datasets


def open_dataset(root: str):
    """The DatasetDict at `root`: a save_to_disk folder, or else a hub name."""
    datasets = _datasets_module()
    if Path(root).exists():
        try:
            found = datasets.load_from_disk(root)
        except (FileNotFoundError, ValueError) as exc:
            raise AttnzooError(f"data.root {root!r} is not a Hugging Face dataset saved with save_to_disk ({exc}). "
                               "Point data.root at the folder save_to_disk wrote, or at a hub name.") from None
    else:
        try:
            found = datasets.load_dataset(root)
        except Exception as exc:  # the hub raises many kinds (network, unknown name, auth)
            raise AttnzooError(f"cannot load the Hugging Face dataset {root!r} ({type(exc).__name__}: {exc}). "
                               "data.root must be a hub name (e.g. uoft-cs/cifar10) or a folder written by "
                               "save_to_disk; without network, save it to disk on a machine with one.") from None
    if not isinstance(found, datasets.DatasetDict):
        raise AttnzooError(f"{root!r} holds a single split; attnzoo needs a DatasetDict with {TRAIN_SPLIT!r} and "
                           f"a held-out split ({', '.join(HELD_OUT_SPLITS)}): save one with "
                           "DatasetDict(train=..., test=...).save_to_disk(path).")
    return found


def held_out_split(splits) -> str:
    """The name of the held-out split of a DatasetDict (test, else validation, else val)."""
    if TRAIN_SPLIT not in splits:
        raise AttnzooError(f"the Hugging Face dataset has no {TRAIN_SPLIT!r} split (it has {', '.join(splits)}).")
    for name in HELD_OUT_SPLITS:
        if name in splits:
            return name
    raise AttnzooError(f"the Hugging Face dataset has no held-out split named {' or '.join(HELD_OUT_SPLITS)} "
                       f"(it has {', '.join(splits)}); rename one of its splits.")


def _describe_columns(features) -> str:
    return ", ".join(f"{name} ({type(feature).__name__})" for name, feature in features.items())


def pick_column(features, given: str | None, feature_type, key: str) -> str:
    """The column `given` names, or the only column of `feature_type`; an error lists the columns otherwise."""
    if given is not None:
        if given not in features:
            raise AttnzooError(f"data.{key}: the dataset has no column {given!r}; its columns are "
                               f"{_describe_columns(features)}. Set data.{key} to one of them.")
        return given
    matches = [name for name, feature in features.items() if isinstance(feature, feature_type)]
    if len(matches) == 1:
        return matches[0]
    why = "several" if matches else "no"
    raise AttnzooError(f"data.{key}: the dataset has {why} {feature_type.__name__} column(s), so which one holds "
                       f"the {'images' if key == 'image_key' else 'labels'} cannot be guessed; its columns are "
                       f"{_describe_columns(features)}. Set data.{key} to one of them.")


def _class_names(feature, labels: np.ndarray) -> list[str]:
    """A ClassLabel's names; for a plain integer column, '0'..'max'."""
    names = getattr(feature, "names", None)
    if names:
        return list(names)
    return [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]


def _decode_split(split, image_key: str, label_key: str, size: int, name: str) -> tuple[torch.Tensor, np.ndarray]:
    images = np.empty((len(split), 3, size, size), dtype=np.uint8)
    start = 0
    for batch in split.select_columns([image_key]).iter(batch_size=DECODE_BATCH):
        for offset, img in enumerate(batch[image_key]):
            if img is None:
                raise AttnzooError(f"row {start + offset} of the {name!r} split has no image in column {image_key!r}; "
                                   "drop the row from the dataset.")
            images[start + offset] = pil_to_array(img, size, f"row {start + offset} of split {name!r}")
        start += len(batch[image_key])
    try:
        labels = np.asarray(split[label_key], dtype=np.int64)
    except (TypeError, ValueError):
        raise AttnzooError(f"data.label_key: column {label_key!r} does not hold integer class labels "
                           f"(e.g. {split[0][label_key]!r}); set data.label_key to the class column.") from None
    return torch.from_numpy(images), labels


def load_hf(root: str, image_size: int, image_key: str | None = None,
            label_key: str | None = None) -> tuple[ImageSet, ImageSet]:
    """The train and held-out splits of a Hugging Face dataset as uint8 ImageSets at `image_size`."""
    datasets = _datasets_module()
    splits = open_dataset(root)
    test_name = held_out_split(splits)
    features = splits[TRAIN_SPLIT].features
    image_key = pick_column(features, image_key, datasets.Image, "image_key")
    label_key = pick_column(features, label_key, datasets.ClassLabel, "label_key")
    if not isinstance(features[image_key], datasets.Image):
        raise AttnzooError(f"data.image_key: column {image_key!r} is a {type(features[image_key]).__name__}, not "
                           f"an Image; its columns are {_describe_columns(features)}.")
    sets = []
    for name in (TRAIN_SPLIT, test_name):
        images, labels = _decode_split(splits[name], image_key, label_key, image_size, name)
        sets.append((images, labels))
    classes = _class_names(features[label_key], np.concatenate([sets[0][1], sets[1][1]]))
    for name, (_, labels) in zip((TRAIN_SPLIT, test_name), sets):
        if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
            raise AttnzooError(f"the {name!r} split has labels outside 0..{len(classes) - 1} in column "
                               f"{label_key!r} (e.g. unlabelled rows marked -1); drop them from the dataset.")
    return tuple(ImageSet(images, torch.from_numpy(labels), classes) for images, labels in sets)
