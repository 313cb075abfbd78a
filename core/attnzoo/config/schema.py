"""The recipe's schema: the dataclasses a recipe is validated into (Recipe and its sections), nothing else.

Each field's annotation is its type (attnzoo.config.checks coerces what YAML read to it) and its
default is the value a recipe that leaves the key out gets.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional


@dataclass
class ModelConfig:
    image_size: int = 32
    patch_size: int = 4
    dim: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    # trunc_normal: timm's ViT (linear weights N(0, 0.02) truncated, zero biases);
    # torch_default: PyTorch's own layer initialisation (Kaiming-uniform), as many compact trainers use.
    init: Literal["trunc_normal", "torch_default"] = "trunc_normal"
    # attnzoo: the built-in ViT above. timm/<name>: timm's model (image_size, dropout and the number of
    # classes from the recipe, the rest from the architecture; patch_size must match it), its attention swapped.
    arch: str = "attnzoo"
    pretrained: bool = False  # timm/<name>[.<tag>] only: timm's weights, through the Hugging Face Hub
    init_from: Optional[str] = None  # a local .safetensors or timm/torch checkpoint to start from
    # Stochastic depth: the largest rate at which a block's residual branches are dropped per image,
    # rising linearly from 0 in the first block to this in the last (timm's drop_path_rate). 0 = off.
    drop_path: float = 0.0


@dataclass
class AttentionConfig:
    name: str = "softmax"
    options: dict = field(default_factory=dict)  # the variant's options, written beside `name`


@dataclass
class AugmentConfig:
    crop: bool = True  # random crop after zero padding
    crop_padding: int = 4
    flip: bool = True  # horizontal flip with p = 0.5
    rotation: float = 10.0  # max degrees, 0 = off
    color_jitter: float = 0.1  # brightness/contrast/saturation strength, 0 = off
    # The strong recipe's batch-level parts, on the device in both pipelines (attnzoo.data.augment); all off by default.
    auto_augment: Literal["none", "randaugment", "trivialaugment"] = "none"
    auto_ops: int = 2  # randaugment: operations per image
    auto_magnitude: int = 9  # randaugment: strength 0..30 (torchvision's bins)
    random_erasing: float = 0.0  # probability that an image gets a noise rectangle (timm's RandomErasing), 0 = off
    mixup: float = 0.0  # Mixup's Beta(alpha, alpha), 0 = off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha), 0 = off; with both on, each batch picks one (p = 0.5)
    mix_prob: float = 1.0  # the share of batches that are mixed when mixup or cutmix is on


@dataclass
class DataConfig:
    dataset: Literal["cifar100", "cifar10", "imagefolder", "synthetic", "hf"] = "cifar100"
    root: str = "data"  # hf: a folder written by save_to_disk, or a hub name
    # hf only: the image and label columns; None = the only Image / ClassLabel column (attnzoo.data.hf).
    image_key: Optional[str] = None
    label_key: Optional[str] = None
    download: bool = True
    val_fraction: float = 0.1  # carved from the training set with a fixed seed
    # Images are resized to model.image_size when they differ (e.g. CIFAR at 64 px).
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    pipeline: Literal["device", "dataloader"] = "device"  # device: uint8 tensors + batched augmentation
    num_workers: int = 2  # dataloader pipeline only
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["constant", "step", "cosine"] = "step"
    warmup_epochs: float = 0.0
    milestones: list[int] = field(default_factory=lambda: [20, 40])  # step schedule, in epochs
    gamma: float = 0.1  # step schedule factor
    min_lr: float = 0.0  # cosine schedule floor
    label_smoothing: float = 0.0
    grad_clip: Optional[float] = None  # max global grad norm
    fused: bool = True  # fused AdamW where the device supports it
    # Layer-wise LR decay for fine-tuning: block i of depth L trains at lr * layer_decay ** (L - i), the
    # embeddings at lr * layer_decay ** (L + 1), the final norm and head at lr. None = one lr for all.
    layer_decay: Optional[float] = None


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128  # global batch: split across processes
    grad_accum_steps: int = 1
    seed: int = 0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    compile: Literal["auto", "none", "default", "cudagraphs", "max-autotune"] = "auto"  # see attnzoo.compile
    matmul_precision: Literal["highest", "high", "medium"] = "high"
    channels_last: bool = False
    deterministic: bool = False
    early_stopping_patience: Optional[int] = None  # epochs without val top-1 gain; None = off
    keep_checkpoints: int = 2
    on_nonfinite: Literal["stop", "skip"] = "stop"
    log_every: int = 50  # steps between progress-bar updates of the loss
    # Experiment trackers, through Accelerate: e.g. [tensorboard, wandb, mlflow]; [] = none;
    # None = TensorBoard when it is installed (attnzoo.run.assembly.TRACKERS).
    log_with: Optional[list[str]] = None
    # An exponential moving average of the weights, updated after every step: ema = d * ema + (1 - d) * w.
    # When on, it is what is validated, kept as the best weights and tested. 0 = off.
    ema_decay: float = 0.0
    # Train for an equal cost instead of train.epochs: exactly one of {steps: N} (optimizer steps),
    # {flops: F} (training FLOPs) or {seconds: S} (wall time of the steps: machine-dependent, not
    # reproducible). The schedule written for train.epochs is fitted onto it (attnzoo.run.budget).
    # None: train for train.epochs.
    budget: Optional[dict] = None


@dataclass
class BenchConfig:
    variants: list[str] = field(default_factory=lambda: ["softmax", "cosine", "standardized"])
    image_sizes: list[int] = field(default_factory=lambda: [32, 64])
    batch_size: int = 256
    warmup_steps: int = 5
    steps: int = 30  # timed steps, split into `rounds` interleaved rounds (median kept)
    rounds: int = 3
    compare_timm: bool = True
    compare_naive: bool = True
    data_pipeline: bool = True  # also time attnzoo softmax fed by the recipe's data pipeline


@dataclass
class RobustnessConfig:
    corruptions: bool = False  # a study evaluates each run's best weights under common corruptions
    seed: Optional[int] = None  # of the corruption noise and the attacks' random starts; None = each run's train.seed
    attacks: bool = False  # a study attacks each run's best weights (FGSM, PGD, Square; attnzoo.run.attacks)
    attack_epsilons: list[float] = field(default_factory=lambda: [1, 2, 4, 8])  # L-inf budgets in pixel levels (/255)


@dataclass
class PowerConfig:
    """What a study's power statement is computed from, in percentage points of test top-1. The spread is
    the standard deviation over seeds of an arm's per-seed difference to its baseline (the paired test's
    spread): give it as `sd`, or name a previous study folder as `reference` to use the spread it observed.
    `target_delta` is the difference the study wants to detect; the plan and the report say how many seeds
    it needs."""

    sd: Optional[float] = None
    reference: Optional[str] = None
    target_delta: Optional[float] = None


@dataclass
class SlurmConfig:
    """How `attnzoo study R --launcher slurm` asks SLURM for its job array (attnzoo.study.slurm). Each array
    task trains `runs_per_task` runs one after another, each on `gpus_per_run` GPUs of one node."""

    partition: Optional[str] = None  # None: the cluster's default partition
    gpus_per_run: int = 1  # more than 1: the run is started by `accelerate launch` with that many processes
    cpus_per_task: int = 8
    mem_gb: Optional[float] = None  # None: the partition's default
    time_minutes: int = 240  # each task's time limit; a run still training then is checkpointed and requeued
    account: Optional[str] = None
    qos: Optional[str] = None
    array_parallelism: int = 64  # array tasks running at once
    runs_per_task: int = 1
    additional_parameters: dict = field(default_factory=dict)  # any other sbatch option, e.g. {constraint: a100}
    setup: list[str] = field(default_factory=list)  # shell lines run before each task, e.g. 'module load cuda'


@dataclass
class Recipe:
    name: str = "run"
    description: str = ""
    output_dir: str = "runs/{name}"
    requires_plugins: list[str] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    robustness: RobustnessConfig = field(default_factory=RobustnessConfig)
    # A study: one run per (variant arm x grid point x seed). Empty for a single run.
    variants: Any = field(default_factory=list)  # arms (names or mappings), or "all": every installed variant
    seeds: list[int] = field(default_factory=list)
    grid: dict = field(default_factory=dict)  # dotted recipe key -> list of values; the study runs the product
    baseline: Optional[str] = None  # arm label the paired comparison is against; None: softmax if present
    power: PowerConfig = field(default_factory=PowerConfig)  # what the study can detect (attnzoo.study.stats)
    # Per-arm tuning on the validation split before the study's seeds run: {dotted key: [values], seeds, metric}.
    tune: dict = field(default_factory=dict)  # attnzoo.study.tune
    slurm: SlurmConfig = field(default_factory=SlurmConfig)  # the study's job array (attnzoo.study.slurm)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name, variant=self.attention.name, seed=self.train.seed))

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        attention = data.pop("attention")
        data["attention"] = {"name": attention["name"], **attention["options"]}
        return data
