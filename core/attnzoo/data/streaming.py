"""The streaming data pipeline (``data.pipeline: dataloader``) for image folders too large
to hold in memory: a torch DataLoader decodes and augments each image in worker processes.

It is a :class:`attnzoo.data.Loader` like the device pipeline, with the same samples, batch
order, process split, augmentation switches and normalisation (the same STAT_IMAGES
training images, so both pipelines normalise identically; those images are decoded once,
at the start, into memory). Every image's augmentation is seeded by (seed, epoch, step, position
in the global batch), so results depend neither on the number of workers nor of processes,
and a run resumed mid-epoch sees exactly the batches of the uninterrupted run.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from attnzoo.config.recipe import AugmentConfig, DataConfig, Recipe
from attnzoo.data.augment import plan
from attnzoo.data.datasets import FileSet, decode_images, decode_one, list_imagefolder
from attnzoo.data.loader import (
    STAT_IMAGES,
    Batching,
    Loader,
    Splits,
    channel_stats,
    epoch_order,
    global_batch,
    split,
    step_seed,
)


def load_file_splits(recipe: Recipe) -> Splits:
    """The image folder's train / val / test files, split exactly as :func:`attnzoo.data.load_splits` does."""
    d = recipe.data
    train, test = list_imagefolder(d.root, recipe.model.image_size)
    train, val, test = split(train, test, d)
    mean, std = channel_stats(decode_images(train.files[:STAT_IMAGES], train.image_size))
    return Splits(train, val, test, train.classes, mean, std)


TRANSFORMS = {  # the steps of augment.plan, per uint8 image
    "crop": lambda padding, size: v2.RandomCrop(size, padding=int(padding)),  # zero padding
    "flip": lambda p, size: v2.RandomHorizontalFlip(p),
    "rotation": lambda degrees, size: v2.RandomRotation(degrees, interpolation=v2.InterpolationMode.BILINEAR),
    "color_jitter": lambda s, size: v2.ColorJitter(brightness=s, contrast=s, saturation=s),
}


def augmentations(a: AugmentConfig, image_size: int) -> v2.Compose:
    """The recipe's augmentations (augment.plan) for one uint8 image."""
    steps = [TRANSFORMS[name](strength, image_size) for name, strength in plan(a)]
    return v2.Compose(steps or [v2.Identity()])  # Compose refuses an empty list


class FolderDataset(Dataset):
    """uint8 images of a FileSet, keyed by (index, seed): seed None gives the plain image
    (evaluation), an integer the image augmented with that seed."""

    def __init__(self, files: FileSet, augment: AugmentConfig):
        self.files = files
        self.augment = augmentations(augment, files.image_size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.files.files[index]
        x = torch.from_numpy(decode_one(path, self.files.image_size).copy())
        if seed is not None:
            # torchvision draws from the global generator: seed it for this image only, and leave
            # the caller's random state (the main process with num_workers=0) untouched. Only the
            # CPU generator: forked workers must not touch the GPU.
            with torch.random.fork_rng(devices=[], device_type="cpu"):
                torch.manual_seed(seed)
                x = self.augment(x)
        return x, label


class TrainBatchSampler:
    """This process's share of each global batch of one epoch, from `start_step` on, as (index, seed) keys."""

    def __init__(self, n: int, batching: Batching, steps: int, *, seed: int, epoch: int, start_step: int):
        self.n, self.batching, self.steps = n, batching, steps
        self.seed, self.epoch, self.start_step = seed, epoch, start_step

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        size = self.batching.global_size
        for step in range(self.start_step, self.steps):
            index = global_batch(order, step, size)
            # One seed per position of the global batch, drawn for the whole batch, so an image's
            # augmentation does not depend on which process or worker handles it.
            g = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, step))
            seeds = torch.randint(2**62, (size,), generator=g)
            mine = self.batching.mine
            yield list(zip(index[mine].tolist(), seeds[mine].tolist()))


class StreamingLoader(Loader):
    """An image folder decoded and augmented per image by a DataLoader's workers; uint8 batches
    go to the device, where they are normalised as in the device pipeline."""

    def __init__(self, data: FileSet, cfg: DataConfig, mean, std, *, batching: Batching, device,
                 seed: int, channels_last: bool = False):
        super().__init__(len(data), cfg, mean, std, batching=batching, device=device, seed=seed,
                         channels_last=channels_last)
        self.dataset = FolderDataset(data, cfg.augment)

    def _loader(self, batches) -> DataLoader:
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == "cuda")

    def pixels_at(self, indices: list[int]) -> torch.Tensor:
        return decode_images([self.dataset.files.files[i] for i in indices], self.dataset.files.image_size).to(self.device)

    def _train_batches(self, epoch: int, start_step: int):
        sampler = TrainBatchSampler(self.num_samples, self.batching, len(self), seed=self.seed, epoch=epoch,
                                    start_step=start_step)
        for step, (pixels, labels) in zip(range(start_step, len(self)), self._loader(sampler)):
            yield step, self.to_unit(pixels), labels

    def _eval_pixels(self, batch_size: int):
        batches = self._eval_index(batch_size, "cpu")
        keys = [[(i, None) for i in index.clamp_min(0).tolist()] for index in batches]
        for index, (pixels, labels) in zip(batches, self._loader(keys)):
            yield index, pixels, labels
