"""The training data pipeline: datasets held in (device) memory as uint8, batches drawn
in a seeded order, augmented batched on the device.

Batch order and augmentation depend only on (seed, epoch, step), so a run resumed in the
middle of an epoch sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import augment
from .datasets import ImageSet, decode_filesets, list_imagefolder, load_cifar, synthetic
from .errors import AttnzooError
from .recipe import DataConfig, Recipe

SPLIT_SEED = 1234  # the validation split is the same for every run seed, so runs compare


@dataclass
class Splits:
    train: ImageSet  # FileSet for the streaming pipeline (streaming.load_file_splits)
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: torch.Tensor  # (3,) per-channel mean of the training images in [0, 1]
    std: torch.Tensor


def load_splits(recipe: Recipe) -> Splits:
    d = recipe.data
    size = recipe.model.image_size
    if d.dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(d.dataset, d.root, d.download)
    elif d.dataset == "imagefolder":
        # Split the file lists, then decode only the files the recipe uses: the same samples as
        # splitting decoded images, without decoding a whole folder for a small run.
        train, val, test = decode_filesets(d.root, list(split(*list_imagefolder(d.root, size), d)))
    else:
        train, test = synthetic(10, 2000, 500, size)
    if d.dataset != "imagefolder":
        if train.images.shape[-1] != size:
            train, test = _resize(train, size), _resize(test, size)
        train, val, test = split(train, test, d)
    pixels = train.images[:10000].float() / 255
    mean, std = pixels.mean(dim=(0, 2, 3)), pixels.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return Splits(train, val, test, train.classes, mean, std)


def split(train, test, d: DataConfig):
    """(train, val, test) subsets: the validation split and the sample limits of the recipe.

    Works on ImageSet and FileSet alike, so both pipelines see the very same samples."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_val = int(round(len(train) * d.val_fraction))
    val, train = train.subset(order[:n_val]), train.subset(order[n_val:])
    if d.max_train_samples:
        train = train.subset(torch.arange(min(d.max_train_samples, len(train))))
    if d.max_eval_samples:  # a fixed random subset: the files are often sorted by class
        val = val.subset(torch.arange(min(d.max_eval_samples, len(val))))
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(SPLIT_SEED))
        test = test.subset(pick[:d.max_eval_samples].sort().values)
    if len(train) == 0:
        raise AttnzooError(f"the training split of {d.dataset!r} is empty; check data.root and data.max_train_samples")
    return train, val, test


def _resize(s: ImageSet, size: int) -> ImageSet:
    images = torch.nn.functional.interpolate(s.images.float(), size=(size, size), mode="bilinear",
                                             antialias=True, align_corners=False)
    return ImageSet(images.round().clamp(0, 255).to(torch.uint8), s.labels, s.classes)


def step_seed(seed: int, epoch: int, step: int, rank: int = 0) -> int:
    """A distinct, reproducible seed for one (epoch, step, rank)."""
    return (seed * 1_000_003 + epoch * 100_003 + step * 101 + rank * 7_919) % (2**62)


def local_batch_size(batch_size: int, world: int) -> int:
    """This process's share of the global batch."""
    if batch_size % world:
        raise AttnzooError(f"train.batch_size {batch_size} is not divisible by the {world} processes; "
                           "the global batch is split evenly across them")
    return batch_size // world


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which an epoch visits the n training samples."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, epoch, 0)))


def global_batch(order: torch.Tensor, step: int, batch_size: int) -> torch.Tensor:
    """The sample indices of one global batch (repeated when the dataset is smaller than a batch)."""
    index = order[step * batch_size:(step + 1) * batch_size]
    if len(index) < batch_size:
        index = index.repeat(batch_size // len(index) + 1)[:batch_size]
    return index


def eval_shard(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's equal-length share of n evaluation samples; -1 pads past the end."""
    per_rank = -(-n // world)
    index = torch.arange(rank * per_rank, (rank + 1) * per_rank)
    return torch.where(index < n, index, torch.full_like(index, -1))


class DeviceLoader:
    """Batches of a uint8 dataset that lives on `device`.

    Training: a permutation per epoch from (seed, epoch); each global batch is split
    evenly across `world` processes (the last partial global batch is dropped so every
    rank takes the same number of steps). Evaluation: every sample exactly once, sharded.
    """

    def __init__(self, data: ImageSet, cfg: DataConfig, mean, std, *, device, batch_size: int,
                 seed: int, rank: int = 0, world: int = 1, channels_last: bool = False):
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.cfg, self.device = cfg, torch.device(device)
        self.mean = mean.to(device).view(1, 3, 1, 1)
        self.std = std.to(device).view(1, 3, 1, 1)
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.channels_last = channels_last
        self.local_batch = local_batch_size(batch_size, world)

    def __len__(self) -> int:
        """Training steps per epoch."""
        return max(len(self.labels) // self.batch_size, 1)

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def augment(self, x: torch.Tensor, rng: augment.BatchRandom) -> torch.Tensor:
        a = self.cfg.augment
        if a.crop and a.crop_padding > 0:
            x = augment.random_crop(x, a.crop_padding, rng)
        if a.flip:
            x = augment.random_flip(x, rng)
        if a.rotation > 0:
            x = augment.random_rotation(x, a.rotation, rng)
        if a.color_jitter > 0:
            x = augment.color_jitter(x, a.color_jitter, rng)
        return x

    def train_batches(self, epoch: int, start_step: int = 0):
        """Yield (step, images, labels) for this rank, from `start_step` to the epoch's end."""
        order = epoch_order(len(self.labels), self.seed, epoch).to(self.device)
        g = torch.Generator(device=self.device)
        steps = len(self)
        for step in range(start_step, steps):
            global_index = global_batch(order, step, self.batch_size)
            index = global_index[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
            g.manual_seed(step_seed(self.seed, epoch, step))
            rng = augment.BatchRandom(g, total=self.batch_size, offset=self.rank * self.local_batch)
            x = self.images[index].float().div_(255)
            yield step, self._finish(self.augment(x, rng)), self.labels[index]

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def images_at(self, indices: list[int]) -> torch.Tensor:
        """Images at `indices`, unaugmented and normalised (a fixed analysis batch)."""
        return self._finish(self.images[torch.as_tensor(indices, dtype=torch.long, device=self.device)].float().div(255))

    def eval_batches(self, batch_size: int | None = None):
        """Yield (images, labels, sample_index) covering each sample once across ranks.

        Ranks get equal-length shards padded with index -1, so a gather stays in step;
        padded rows are dropped after gathering."""
        index = eval_shard(len(self.labels), self.rank, self.world).to(self.device)
        bs = batch_size or self.local_batch
        # The last batch is padded to full size too: one shape, so a compiled model (CUDA graphs
        # included) compiles evaluation once.
        index = torch.cat([index, index.new_full((-len(index) % bs,), -1)])
        for start in range(0, len(index), bs):
            idx = index[start:start + bs]
            safe = idx.clamp_min(0)  # padding rows repeat sample 0
            x = self._finish(self.images[safe].float().div_(255))
            yield x, self.labels[safe], idx
