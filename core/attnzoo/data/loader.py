"""The training data pipeline: datasets held in (device) memory as uint8, batches drawn
in a seeded order, augmented batched on the device.

Batch order and augmentation depend only on (seed, epoch, step), so a run resumed in the
middle of an epoch sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from attnzoo.config.recipe import DataConfig, Recipe
from attnzoo.data import augment
from attnzoo.data.datasets import (ImageSet, decode_filesets, held_out_folder, list_imagefolder, load_cifar,
                                   synthetic)
from attnzoo.errors import AttnzooError

SPLIT_SEED = 1234  # the validation split is the same for every run seed, so runs compare
STAT_IMAGES = 10_000  # training images the normalisation mean and std are taken from


@dataclass
class Splits:
    train: ImageSet  # FileSet for the streaming pipeline (streaming.load_file_splits)
    val: ImageSet
    test: ImageSet
    classes: list[str]
    mean: torch.Tensor  # (3,) per-channel mean of the training images in [0, 1]
    std: torch.Tensor


def load_splits(recipe: Recipe) -> Splits:
    """The recipe's train / val / test images, decoded into memory as uint8."""
    d = recipe.data
    size = recipe.model.image_size
    if d.dataset in ("cifar10", "cifar100"):
        train, test = load_cifar(d.dataset, d.root, d.download)
    elif d.dataset == "hf":
        from attnzoo.data.hf import load_hf  # `datasets` is optional: imported only for hf recipes

        train, test = load_hf(d.root, size, d.image_key, d.label_key)
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
    mean, std = channel_stats(train.images[:STAT_IMAGES])
    return Splits(train, val, test, train.classes, mean, std)


def held_out_split(d: DataConfig) -> str:
    """The name of the split the run is tested on, as its source calls it (an image folder's val/, say)."""
    if d.dataset == "imagefolder":
        return held_out_folder(d.root)
    if d.dataset == "hf":
        from attnzoo.data import hf

        return hf.held_out_split(hf.open_dataset(d.root))
    return "test"


def channel_stats(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalisation of both pipelines: per-channel mean and (unbiased) std in [0, 1] of
    uint8 images (N, 3, H, W), the first STAT_IMAGES of the training split (a random sample:
    the split is a permutation)."""
    x = pixels.float() / 255
    return x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)).clamp_min(1e-3)


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


@dataclass(frozen=True)
class Batching:
    """The recipe's global batch split evenly across processes: decided once per run, here."""

    global_size: int
    processes: int = 1
    rank: int = 0

    def __post_init__(self):
        if self.global_size % self.processes:
            raise AttnzooError(f"train.batch_size {self.global_size} is not divisible by the {self.processes} "
                               "processes; the global batch is split evenly across them")

    @property
    def per_process(self) -> int:
        return self.global_size // self.processes

    @property
    def mine(self) -> slice:
        """This process's positions in a global batch."""
        return slice(self.rank * self.per_process, (self.rank + 1) * self.per_process)


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


class Loader(ABC):
    """One split's batches, whichever pipeline holds the images: what training, evaluation
    and the analysis use of data.

    Training (``train_batches``): a permutation per epoch from (seed, epoch), each global batch
    split across processes by `batching` (the last partial global batch is dropped so every
    process takes the same number of steps); augmentation depends only on (seed, epoch, step,
    position in the global batch). Evaluation (``eval_batches``): every sample exactly once
    across processes, in equal-length shards padded with index -1 so a gather stays in step.
    A pipeline supplies the pixels (:meth:`_train_batches`, :meth:`_eval_pixels`, :meth:`pixels_at`);
    normalisation happens here, on the device, the same for both and for every split.
    """

    def __init__(self, num_samples: int, cfg: DataConfig, mean, std, *, batching: Batching, device,
                 seed: int, channels_last: bool = False):
        self.num_samples, self.cfg, self.device = num_samples, cfg, torch.device(device)
        self.mean = mean.to(self.device).view(1, 3, 1, 1)
        self.std = std.to(self.device).view(1, 3, 1, 1)
        self.batching, self.seed, self.channels_last = batching, seed, channels_last
        self.augmentations = augment.plan(cfg.augment)
        self.strong_augmentations = augment.strong_plan(cfg.augment)  # batch-level, here for both pipelines
        self.erasing = cfg.augment.random_erasing

    def __len__(self) -> int:
        """Training steps per epoch."""
        return max(self.num_samples // self.batching.global_size, 1)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] to the model's input: normalised, in the model's memory format."""
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def to_unit(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) to float images in [0, 1] on the device."""
        return pixels.to(self.device, non_blocking=True).float().div_(255)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, 3, H, W) to the model's input."""
        return self.scale(self.to_unit(pixels))

    def images_at(self, indices: list[int]) -> torch.Tensor:
        """Images at `indices`, unaugmented and normalised (a fixed analysis batch)."""
        return self.normalize(self.pixels_at(indices))

    def train_batches(self, epoch: int, start_step: int = 0):
        """Yield (step, images, labels) for this process, from `start_step` to the epoch's end."""
        for step, x, labels in self._train_batches(epoch, start_step):
            yield step, self._strong(x, epoch, step), labels.to(self.device, non_blocking=True)

    def _strong(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """The normalised batch, through the strong recipe's batch-level augmentations when it has any
        (RandAugment/TrivialAugment in [0, 1], random erasing after normalisation)."""
        if not self.strong_augmentations and not self.erasing:
            return self.scale(x)  # no generator, no draws: the batches of a recipe without them are unchanged
        x = x.to(self.device, non_blocking=True)
        g = torch.Generator(device=self.device)
        g.manual_seed(step_seed(self.seed, epoch, step) ^ augment.STRONG_SALT)
        rng = augment.BatchRandom(g, total=self.batching.global_size, offset=self.batching.mine.start)
        x = self.scale(augment.apply_strong(x, self.strong_augmentations, rng))
        if not self.erasing:
            return x
        x = augment.random_erasing(x, self.erasing, rng)  # its noise is N(0, 1) in the normalised space, as timm's
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def eval_batches(self, batch_size: int | None = None, normalized: bool = True):
        """Yield (images, labels, sample_index) covering each sample once across processes;
        uint8 pixels with normalized=False (e.g. to corrupt them first)."""
        for index, pixels, labels in self._eval_pixels(batch_size or self.batching.per_process):
            x = self.normalize(pixels) if normalized else pixels.to(self.device, non_blocking=True)
            yield x, labels.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)

    def _eval_index(self, batch_size: int, device) -> list[torch.Tensor]:
        """This process's shard of sample indices in batches, -1 for padding. The last batch is
        padded to full size too: one shape, so a compiled model (CUDA graphs included)
        compiles evaluation once."""
        index = eval_shard(self.num_samples, self.batching.rank, self.batching.processes).to(device)
        index = torch.cat([index, index.new_full((-len(index) % batch_size,), -1)])
        return [index[start:start + batch_size] for start in range(0, len(index), batch_size)]

    # ---------------------------------------------------------- what a pipeline supplies

    @abstractmethod
    def pixels_at(self, indices: list[int]) -> torch.Tensor:
        """uint8 images (len(indices), 3, H, W) at `indices`, unaugmented, on the device."""

    @abstractmethod
    def _train_batches(self, epoch: int, start_step: int):
        """(step, augmented float images in [0, 1] on the device, labels) of this process's share
        of each global batch; :meth:`train_batches` normalises them."""

    @abstractmethod
    def _eval_pixels(self, batch_size: int):
        """(sample indices, uint8 images, labels) per batch, from :meth:`_eval_index`; padding
        rows (index -1) repeat sample 0."""


class DeviceLoader(Loader):
    """A uint8 dataset that lives on `device`, augmented batched on the device."""

    def __init__(self, data: ImageSet, cfg: DataConfig, mean, std, *, batching: Batching, device,
                 seed: int, channels_last: bool = False):
        super().__init__(len(data), cfg, mean, std, batching=batching, device=device, seed=seed,
                         channels_last=channels_last)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)

    def pixels_at(self, indices: list[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(indices, dtype=torch.long, device=self.device)]

    def _train_batches(self, epoch: int, start_step: int):
        b = self.batching
        order = epoch_order(self.num_samples, self.seed, epoch).to(self.device)
        g = torch.Generator(device=self.device)
        for step in range(start_step, len(self)):
            index = global_batch(order, step, b.global_size)[b.mine]
            g.manual_seed(step_seed(self.seed, epoch, step))
            rng = augment.BatchRandom(g, total=b.global_size, offset=b.mine.start)
            x = self.images[index].float().div_(255)
            yield step, augment.apply(x, self.augmentations, rng), self.labels[index]

    def _eval_pixels(self, batch_size: int):
        for index in self._eval_index(batch_size, self.device):
            safe = index.clamp_min(0)
            yield index, self.images[safe], self.labels[safe]
