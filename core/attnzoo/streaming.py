"""The streaming data pipeline (``data.pipeline: dataloader``) for image folders too large
to hold in memory: a torch DataLoader decodes and augments each image in worker processes.

It has the interface of :class:`attnzoo.data.DeviceLoader` and the same samples, batch
order and rank split. Every image's augmentation is seeded by (seed, epoch, step, position
in the global batch), so results depend neither on the number of workers nor of processes,
and a run resumed mid-epoch sees exactly the batches of the uninterrupted run.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from .data import Splits, epoch_order, eval_shard, global_batch, local_batch_size, split, step_seed
from .datasets import FileSet, _decode_one, list_imagefolder
from .recipe import AugmentConfig, DataConfig, Recipe

STAT_IMAGES = 1000  # training images the normalisation mean and std are estimated from


def load_file_splits(recipe: Recipe) -> Splits:
    """The image folder's train / val / test files, split exactly as :func:`attnzoo.data.load_splits` does."""
    d = recipe.data
    train, test = list_imagefolder(d.root, recipe.model.image_size)
    train, val, test = split(train, test, d)
    mean, std = mean_std(train)
    return Splits(train, val, test, train.classes, mean, std)


def mean_std(files: FileSet, count: int = STAT_IMAGES) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std in [0, 1] of the first `count` training images (a random sample:
    the training split is a permutation). Accumulated as sums, so no image set is held at once."""
    sample = files.files[:count]
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    with ThreadPoolExecutor(max_workers=max(os.cpu_count() or 1, 2)) as pool:
        for array in pool.map(lambda f: _decode_one(f[0], files.image_size), sample):
            pixels = torch.from_numpy(array.copy()).reshape(3, -1).double() / 255
            total += pixels.sum(1)
            squares += pixels.square().sum(1)
    n = len(sample) * files.image_size ** 2
    mean = total / n
    var = (squares - n * mean.square()) / max(n - 1, 1)  # unbiased, like the device pipeline's torch.std
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-3)


def augmentations(a: AugmentConfig, image_size: int) -> v2.Compose:
    """The recipe's augmentations for one uint8 image, each switched like DeviceLoader.augment."""
    steps = []
    if a.crop and a.crop_padding > 0:
        steps.append(v2.RandomCrop(image_size, padding=a.crop_padding))  # zero padding
    if a.flip:
        steps.append(v2.RandomHorizontalFlip())
    if a.rotation > 0:
        steps.append(v2.RandomRotation(a.rotation, interpolation=v2.InterpolationMode.BILINEAR))
    if a.color_jitter > 0:
        s = a.color_jitter
        steps.append(v2.ColorJitter(brightness=s, contrast=s, saturation=s))
    return v2.Compose(steps or [v2.Identity()])  # Compose refuses an empty list


class FolderDataset(Dataset):
    """Images of a FileSet, keyed by (index, seed): seed None gives the plain image (evaluation),
    an integer the image augmented with that seed."""

    def __init__(self, files: FileSet, augment: AugmentConfig, mean: torch.Tensor, std: torch.Tensor):
        self.files = files
        self.augment = augmentations(augment, files.image_size)
        self.finish = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                  v2.Normalize(mean.tolist(), std.tolist())])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.files.files[index]
        x = torch.from_numpy(_decode_one(path, self.files.image_size).copy())
        if seed is not None:
            # torchvision draws from the global generator: seed it for this image only, and leave
            # the caller's random state (the main process with num_workers=0) untouched. Only the
            # CPU generator: forked workers must not touch the GPU.
            with torch.random.fork_rng(devices=[], device_type="cpu"):
                torch.manual_seed(seed)
                x = self.augment(x)
        return self.finish(x), label


class TrainBatchSampler:
    """This rank's share of each global batch of one epoch, from `start_step` on, as (index, seed) keys."""

    def __init__(self, n: int, batch_size: int, steps: int, *, seed: int, epoch: int, start_step: int,
                 rank: int, world: int):
        self.n, self.batch_size, self.steps = n, batch_size, steps
        self.seed, self.epoch, self.start_step = seed, epoch, start_step
        self.local_batch = local_batch_size(batch_size, world)
        self.offset = rank * self.local_batch

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch)
        for step in range(self.start_step, self.steps):
            index = global_batch(order, step, self.batch_size)
            # One seed per position of the global batch, drawn for the whole batch, so an image's
            # augmentation does not depend on which rank or worker processes it.
            g = torch.Generator().manual_seed(step_seed(self.seed, self.epoch, step))
            seeds = torch.randint(2**62, (self.batch_size,), generator=g)
            mine = slice(self.offset, self.offset + self.local_batch)
            yield list(zip(index[mine].tolist(), seeds[mine].tolist()))


class StreamingLoader:
    """Batches of an image folder decoded per batch by a DataLoader; the interface of DeviceLoader.

    Training: a permutation per epoch from (seed, epoch), each global batch split evenly across
    `world` processes. Evaluation: every sample exactly once, sharded, padded with index -1."""

    def __init__(self, data: FileSet, cfg: DataConfig, mean, std, *, device, batch_size: int,
                 seed: int, rank: int = 0, world: int = 1, channels_last: bool = False):
        self.dataset = FolderDataset(data, cfg.augment, mean, std)
        self.cfg, self.device = cfg, torch.device(device)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.channels_last = channels_last
        self.local_batch = local_batch_size(batch_size, world)

    def __len__(self) -> int:
        """Training steps per epoch."""
        return max(len(self.dataset) // self.batch_size, 1)

    def _loader(self, batches) -> DataLoader:
        return DataLoader(self.dataset, batch_sampler=batches, num_workers=self.cfg.num_workers,
                          pin_memory=self.device.type == "cuda")

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_batches(self, epoch: int, start_step: int = 0):
        """Yield (step, images, labels) for this rank, from `start_step` to the epoch's end."""
        sampler = TrainBatchSampler(len(self.dataset), self.batch_size, len(self), seed=self.seed, epoch=epoch,
                                    start_step=start_step, rank=self.rank, world=self.world)
        for step, (x, labels) in zip(range(start_step, len(self)), self._loader(sampler)):
            yield step, self._finish(x), labels.to(self.device, non_blocking=True)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def images_at(self, indices: list[int]) -> torch.Tensor:
        """Images at `indices`, unaugmented and normalised (a fixed analysis batch)."""
        if not indices:
            size = self.dataset.files.image_size
            return torch.zeros(0, 3, size, size, device=self.device)
        return self._finish(torch.stack([self.dataset[(i, None)][0] for i in indices]))

    def eval_batches(self, batch_size: int | None = None):
        """Yield (images, labels, sample_index) covering each sample once across ranks.

        Ranks get equal-length shards padded with index -1 (and sample 0's image), so a gather
        stays in step; padded rows are dropped after gathering."""
        shard = eval_shard(len(self.dataset), self.rank, self.world)
        bs = batch_size or self.local_batch
        batches = [shard[i:i + bs] for i in range(0, len(shard), bs)]
        keys = [[(i, None) for i in index.clamp_min(0).tolist()] for index in batches]
        for index, (x, labels) in zip(batches, self._loader(keys)):
            yield self._finish(x), labels.to(self.device, non_blocking=True), index.to(self.device)
