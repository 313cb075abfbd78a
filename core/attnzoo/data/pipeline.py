"""Which pipeline a recipe gets: the one place ``data.pipeline`` is read.

``device`` (the default): decoded uint8 images held in (device) memory, augmented batched on
the device (:mod:`attnzoo.data.loader`). ``dataloader``: file lists decoded per batch by a
torch DataLoader (:mod:`attnzoo.data.streaming`), for image folders too big for memory.
"""

from __future__ import annotations

from attnzoo.config.recipe import Recipe
from attnzoo.data.loader import Batching, DeviceLoader, Loader, Splits, load_splits


def load_data(recipe: Recipe) -> Splits:
    """The splits for recipe.data.pipeline: decoded images in memory (device), or file lists
    read per batch (dataloader)."""
    if recipe.data.pipeline == "dataloader":
        from attnzoo.data.streaming import load_file_splits  # imports torchvision (~1.5 s): only when used

        return load_file_splits(recipe)
    return load_splits(recipe)


def make_loader(data, recipe: Recipe, splits: Splits, *, batching: Batching, device) -> Loader:
    """The loader of one split for recipe.data.pipeline."""
    cls = DeviceLoader
    if recipe.data.pipeline == "dataloader":
        from attnzoo.data.streaming import StreamingLoader as cls
    return cls(data, recipe.data, splits.mean, splits.std, batching=batching, device=device,
               seed=recipe.train.seed, channels_last=recipe.train.channels_last)
