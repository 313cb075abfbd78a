"""Recipes: YAML files validated into typed objects before any compute is spent.

Every problem is reported at once with its key path; misspelled keys get a suggestion;
values are coerced by the field's type (PyYAML reads ``1e-3`` as a string).
Recipes never execute code: ``yaml.safe_load`` only.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

import yaml

from attnzoo.config.keys import STUDY_KEYS, Kind, flatten, keys_of
from attnzoo.errors import AttnzooError, PluginError, RecipeError, did_you_mean
from attnzoo.values import CONVERTERS, convert

if TYPE_CHECKING:  # the registry imports torch; validating a recipe loads it only when plugins are checked
    from attnzoo.contract.registry import KernelFactory, PluginInfo, Registry


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


# ---------------------------------------------------------------- parsing

_MISSING = object()


def _coerce(value: Any, kind: Any, path: str, problems: list[str]) -> Any:
    """Convert `value` to the annotated `kind`, appending a message to `problems` on failure."""
    origin = typing.get_origin(kind)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~")):
            return None
        inner = [a for a in typing.get_args(kind) if a is not type(None)][0]
        return _coerce(value, inner, path, problems)
    if origin is Literal:
        choices = typing.get_args(kind)
        if isinstance(value, bool):  # YAML reads `no` / `off` as false: map it back to the word
            words = ("yes", "on", "true", "default") if value else ("no", "off", "false", "none")
            value = next((w for w in words if w in choices), value)
        if value in ("true", "false") and "none" in choices:  # train.compile=true from 0.1 recipes
            value = "default" if value == "true" else "none"
        if value not in choices:
            problems.append(f"{path}: {value!r} is not one of {', '.join(map(str, choices))}"
                            f"{did_you_mean(value, choices)}")
        return value
    if origin is list:
        (inner,) = typing.get_args(kind) or (Any,)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list like [a, b], got {value!r}")
            return value
        return [_coerce(v, inner, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if kind is list:
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list like [a, b], got {value!r}")
        return value
    if kind is Any:
        return value
    if kind in CONVERTERS:  # bool, int, float, str: the same conversion as variant options
        try:
            return convert(value, kind)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
            return value
    if kind is dict:
        return value
    raise TypeError(f"unsupported field type {kind!r} at {path}")


def _build(cls, data: Any, path: str, problems: list[str]):
    """Instantiate dataclass `cls` from mapping `data`, collecting problems."""
    if not isinstance(data, dict):
        problems.append(f"{path or 'recipe'}: expected a mapping of keys, got {data!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else str(key)
        if cls is AttentionConfig and key != "name":
            continue  # variant options: checked against the variant's own schema later
        if key not in names:
            problems.append(f"{key_path}: unknown key{did_you_mean(key, names)}")
            continue
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, key_path, problems)
        else:
            kwargs[key] = _coerce(value, kind, key_path, problems)
    obj = cls(**kwargs)
    if cls is AttentionConfig:
        obj.options = {k: v for k, v in data.items() if k != "name"}
    return obj


def _check_ranges(r: Recipe, problems: list[str]) -> None:
    """Value checks. A value whose type was already wrong is skipped (reported once)."""

    def need(check, message: str):
        try:
            ok = check()
        except (TypeError, ValueError):  # e.g. '%' % 2 on a string left by a type problem
            return
        if not ok:
            problems.append(message)

    m, t, o, d = r.model, r.train, r.optim, r.data
    for key in ("image_size", "patch_size", "dim", "depth", "heads"):
        value = getattr(m, key)
        need(lambda: value > 0, f"model.{key}: must be a positive integer, got {value}")
    if all(isinstance(getattr(m, k), int) and getattr(m, k) > 0 for k in ("image_size", "patch_size", "dim", "heads")):
        need(lambda: m.image_size % m.patch_size == 0,
             f"model.patch_size: {m.patch_size} does not divide model.image_size {m.image_size}; "
             f"choose a divisor such as {_divisor_hint(m.image_size)}")
        need(lambda: m.dim % m.heads == 0,
             f"model.heads: {m.heads} does not divide model.dim {m.dim}; the head dimension is dim / heads")
    _check_model_source(m, problems)
    need(lambda: m.mlp_ratio > 0, f"model.mlp_ratio: must be > 0, got {m.mlp_ratio}")
    need(lambda: 0 <= m.dropout < 1, f"model.dropout: must be in [0, 1), got {m.dropout}")
    need(lambda: 0 < o.lr < math.inf, f"optim.lr: must be > 0, got {o.lr}")
    need(lambda: o.weight_decay >= 0, f"optim.weight_decay: must be >= 0, got {o.weight_decay}")
    # inf and nan pass every comparison above or below, and then train to nan: refuse them by name
    for key, value in (("weight_decay", o.weight_decay), ("warmup_epochs", o.warmup_epochs), ("min_lr", o.min_lr),
                       ("gamma", o.gamma), ("grad_clip", o.grad_clip)):
        need(lambda: value is None or math.isfinite(value), f"optim.{key}: must be a finite number, got {value}")
    need(lambda: not math.isfinite(o.warmup_epochs) or o.warmup_epochs >= 0, f"optim.warmup_epochs: must be >= 0, got {o.warmup_epochs}")
    need(lambda: not math.isfinite(o.min_lr) or o.min_lr >= 0, f"optim.min_lr: must be >= 0, got {o.min_lr}")
    need(lambda: not math.isfinite(o.gamma) or o.gamma > 0, f"optim.gamma: must be > 0, got {o.gamma}")
    need(lambda: all(0 <= b < 1 for b in o.betas), f"optim.betas: each must be in [0, 1) (e.g. [0.9, 0.999]), got {o.betas}")
    need(lambda: math.isfinite(m.mlp_ratio), f"model.mlp_ratio: must be a finite number, got {m.mlp_ratio}")
    need(lambda: m.image_size <= MAX_IMAGE_SIZE, f"model.image_size: must be between 1 and {MAX_IMAGE_SIZE}, got {m.image_size}")
    need(lambda: 0 <= t.seed <= MAX_SEED, f"train.seed: must be between 0 and {MAX_SEED} (2**32 - 1), got {t.seed}")
    need(lambda: t.batch_size <= MAX_BATCH_SIZE,
         f"train.batch_size: must be between 1 and {MAX_BATCH_SIZE}, got {t.batch_size}")
    _check_augment(d.augment, problems)
    _check_strong(r, problems)
    _check_bench(r.bench, problems)
    if isinstance(r.seeds, list) and all(isinstance(s, int) for s in r.seeds):
        need(lambda: all(0 <= s <= MAX_SEED for s in r.seeds), f"seeds: each must be between 0 and {MAX_SEED}, got {r.seeds}")
        twice = sorted({s for s in r.seeds if r.seeds.count(s) > 1})
        need(lambda: not twice, f"seeds: {twice} listed twice in {r.seeds}; each seed is one run")
    _check_paths(r, problems)
    _check_data_source(r, problems)
    need(lambda: 0 <= o.label_smoothing < 1, f"optim.label_smoothing: must be in [0, 1), got {o.label_smoothing}")
    need(lambda: o.grad_clip is None or o.grad_clip > 0, f"optim.grad_clip: must be > 0 or null, got {o.grad_clip}")
    need(lambda: len(o.betas) == 2, f"optim.betas: must be two numbers, got {o.betas}")
    need(lambda: t.epochs > 0, f"train.epochs: must be at least 1, got {t.epochs}")
    need(lambda: t.batch_size > 0, f"train.batch_size: must be at least 1, got {t.batch_size}")
    need(lambda: t.grad_accum_steps > 0, f"train.grad_accum_steps: must be at least 1, got {t.grad_accum_steps}")
    need(lambda: t.grad_accum_steps <= 0 or t.batch_size % t.grad_accum_steps == 0,
         f"train.batch_size: {t.batch_size} is not divisible by train.grad_accum_steps {t.grad_accum_steps}")
    need(lambda: t.keep_checkpoints >= 1, f"train.keep_checkpoints: must be at least 1, got {t.keep_checkpoints}")
    need(lambda: t.log_every >= 1, f"train.log_every: must be at least 1, got {t.log_every}")
    need(lambda: t.early_stopping_patience is None or t.early_stopping_patience > 0,
         f"train.early_stopping_patience: must be at least 1 or null, got {t.early_stopping_patience}")
    need(lambda: 0 <= d.val_fraction < 1, f"data.val_fraction: must be in [0, 1), got {d.val_fraction}")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        need(lambda: value is None or value > 0, f"data.{key}: must be at least 1 or null, got {value}")
    need(lambda: d.pipeline == "device" or d.dataset == "imagefolder",
         f"data.pipeline: 'dataloader' streams image folders from disk; {d.dataset} fits in memory, "
         "use data.pipeline=device")
    need(lambda: d.num_workers >= 0, f"data.num_workers: must be >= 0, got {d.num_workers}")
    t.budget = _checked_budget(t.budget, problems)
    _check_power(r.power, problems)
    _check_slurm(r.slurm, problems)
    eps = r.robustness.attack_epsilons
    need(lambda: len(eps) > 0 and all(0 <= e <= 255 for e in eps),
         f"robustness.attack_epsilons: give budgets in pixel levels between 0 and 255 (e.g. [1, 2, 4, 8] for "
         f"1/255 ... 8/255), got {eps}")
    try:
        r.run_dir
    except (KeyError, IndexError, ValueError) as exc:
        problems.append(f"output_dir: {r.output_dir!r} has a bad placeholder ({exc}); use {{name}}, {{variant}}, {{seed}}")


MAX_IMAGE_SIZE = 4096  # pixels a side; beyond it one image alone fills a GPU
MAX_BATCH_SIZE = 2**20  # a larger batch asks for terabytes before the first step
MAX_SEED = 2**32 - 1  # the range numpy's seeding accepts
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def _check_paths(r: Recipe, problems: list[str]) -> None:
    """The folders a recipe names, where a file stands instead (existence is checked where they are used)."""
    root = r.data.root
    try:
        if r.run_dir.exists() and not r.run_dir.is_dir():
            problems.append(f"output_dir: {str(r.run_dir)!r} is an existing file, not a folder; set output_dir=... "
                            "to a folder")
        if isinstance(root, str) and root.endswith(ARCHIVE_SUFFIXES) and not Path(root).is_dir():
            target = Path(root).parent / "data"
            problems.append(f"data.root: {root!r} is an archive; extract it first (mkdir -p {target} && tar -xf "
                            f"{root} -C {target}) and set data.root to the extracted folder")
    except (OSError, KeyError, IndexError, ValueError):
        return  # a name the system refuses, or a bad placeholder: reported by the checks that use it


# The trackers Accelerate can log to (its LoggerType), each with the package it needs.
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


def _check_data_source(r: Recipe, problems: list[str]) -> None:
    """The Hugging Face column keys (hf only) and the tracker names (their packages are checked when a run starts)."""
    d = r.data
    for key in ("image_key", "label_key"):
        value = getattr(d, key)
        if value is not None and d.dataset != "hf":
            problems.append(f"data.{key}: names a column of a Hugging Face dataset; set data.dataset=hf or "
                            f"remove data.{key} (data.dataset is {d.dataset!r})")
    for i, name in enumerate(r.train.log_with or []):
        if name not in TRACKER_PACKAGES:
            problems.append(f"train.log_with[{i}]: {name!r} is not a tracker Accelerate supports; choose from "
                            f"{', '.join(TRACKER_PACKAGES)}{did_you_mean(name, list(TRACKER_PACKAGES))}")


def _check_augment(a: AugmentConfig, problems: list[str]) -> None:
    for key, value in (("rotation", a.rotation), ("color_jitter", a.color_jitter)):
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value >= 0):
            problems.append(f"data.augment.{key}: must be a finite number >= 0 (0 = off), got {value}")
    if isinstance(a.rotation, (int, float)) and math.isfinite(a.rotation) and a.rotation > 180:
        problems.append(f"data.augment.rotation: must be at most 180 degrees, got {a.rotation}")
    if isinstance(a.crop_padding, int) and a.crop_padding < 0:  # a negative one silently turned the crop off
        problems.append(f"data.augment.crop_padding: must be >= 0 pixels (set data.augment.crop=false to turn the "
                        f"crop off), got {a.crop_padding}")


def _check_strong(r: Recipe, problems: list[str]) -> None:
    """The strong recipe's keys: rates in [0, 1), probabilities in [0, 1], alphas >= 0."""
    a, m, o, t = r.data.augment, r.model, r.optim, r.train

    def number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    for key, value in (("model.drop_path", m.drop_path), ("train.ema_decay", t.ema_decay)):
        if number(value) and not 0 <= value < 1:
            problems.append(f"{key}: must be in [0, 1) (0 = off; e.g. 0.1, and 0.9999 for train.ema_decay), got {value}")
    for key, value in (("random_erasing", a.random_erasing), ("mix_prob", a.mix_prob)):
        if number(value) and not 0 <= value <= 1:
            problems.append(f"data.augment.{key}: must be a probability in [0, 1], got {value}")
    for key, value in (("mixup", a.mixup), ("cutmix", a.cutmix)):
        if number(value) and not (math.isfinite(value) and value >= 0):
            problems.append(f"data.augment.{key}: must be a Beta alpha >= 0 (0 = off; 0.8 for mixup, 1.0 for cutmix "
                            f"are timm's), got {value}")
    if isinstance(a.auto_ops, int) and not 1 <= a.auto_ops <= 14:
        problems.append(f"data.augment.auto_ops: must be between 1 and 14 operations per image, got {a.auto_ops}")
    if isinstance(a.auto_magnitude, int) and not 0 <= a.auto_magnitude <= 30:
        problems.append(f"data.augment.auto_magnitude: must be between 0 and 30, got {a.auto_magnitude}")
    if number(o.layer_decay) and not 0 < o.layer_decay <= 1:
        problems.append(f"optim.layer_decay: must be in (0, 1] (e.g. 0.65 for fine-tuning) or null, got {o.layer_decay}")
    mixing = number(a.mixup) and number(a.cutmix) and (a.mixup > 0 or a.cutmix > 0)
    if mixing and isinstance(t.batch_size, int) and t.batch_size % 2:
        problems.append(f"train.batch_size: Mixup/CutMix pairs the images of a batch; {t.batch_size} is odd, give an "
                        f"even one such as {t.batch_size + 1}")


BUDGET_KINDS = ("steps", "flops", "seconds")


def _checked_budget(budget: Any, problems: list[str]) -> Any:
    """train.budget: null, or a mapping of exactly one of BUDGET_KINDS to a positive finite number
    (a whole number of steps). Returned with its number typed: YAML reads 2e15 as a string."""
    example = "e.g. train.budget={steps: 2000}, {flops: 2.0e15} or {seconds: 600}"
    if budget is None:
        return None
    if not isinstance(budget, dict) or not budget:
        problems.append(f"train.budget: expected a mapping of one of {', '.join(BUDGET_KINDS)} to a number ({example}), "
                        f"or null to train for train.epochs; got {budget!r}")
        return budget
    for key in budget:
        if key not in BUDGET_KINDS:
            problems.append(f"train.budget.{key}: unknown kind of budget{did_you_mean(str(key), BUDGET_KINDS)}; "
                            f"use one of {', '.join(BUDGET_KINDS)}")
    known = [k for k in budget if k in BUDGET_KINDS]
    if len(known) > 1:
        problems.append(f"train.budget: give exactly one of {', '.join(BUDGET_KINDS)}, got {', '.join(known)}; "
                        "runs compared at equal cost are held to one measure of it")
    typed = dict(budget)
    for key in known:
        value = _budget_number(budget[key])
        if value is None or not math.isfinite(value) or value <= 0:
            problems.append(f"train.budget.{key}: must be a positive finite number ({example}), got {budget[key]!r}")
        elif key == "steps" and value != int(value):
            problems.append(f"train.budget.steps: must be a whole number of optimizer steps, got {budget[key]!r}")
        else:
            typed[key] = int(value) if key == "steps" else float(value)
    return typed


def _budget_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _check_power(power: PowerConfig, problems: list[str]) -> None:
    for key in ("sd", "target_delta"):
        value = getattr(power, key)
        if isinstance(value, (int, float)) and not (math.isfinite(value) and value > 0):
            problems.append(f"power.{key}: must be a positive number of percentage points of top-1 (e.g. 3.0), "
                            f"got {value}")
    if power.sd is not None and power.reference is not None:
        problems.append("power: give either power.sd or power.reference (a study folder whose spread is used), "
                        "not both")


def _check_slurm(s: SlurmConfig, problems: list[str]) -> None:
    """The job array's resources: counts of at least 1 (GPUs may be 0 for a CPU partition)."""
    for key, low in (("gpus_per_run", 0), ("cpus_per_task", 1), ("time_minutes", 1), ("array_parallelism", 1),
                     ("runs_per_task", 1)):
        value = getattr(s, key)
        if isinstance(value, int) and value < low:
            problems.append(f"slurm.{key}: must be at least {low}, got {value}")
    if isinstance(s.mem_gb, (int, float)) and not 0 < s.mem_gb < math.inf:
        problems.append(f"slurm.mem_gb: must be a positive number of GB (e.g. 64) or null, got {s.mem_gb}")
    if not isinstance(s.additional_parameters, dict):
        problems.append("slurm.additional_parameters: expected a mapping of sbatch options to values, e.g. "
                        f"{{constraint: a100, mail-type: FAIL}}, got {s.additional_parameters!r}")


def _check_bench(b: BenchConfig, problems: list[str]) -> None:
    for key in ("batch_size", "steps", "rounds"):
        value = getattr(b, key)
        if isinstance(value, int) and value < 1:
            problems.append(f"bench.{key}: must be at least 1, got {value}")
    if isinstance(b.warmup_steps, int) and b.warmup_steps < 0:
        problems.append(f"bench.warmup_steps: must be >= 0, got {b.warmup_steps}")
    if all(isinstance(v, int) and v >= 1 for v in (b.steps, b.rounds)) and b.steps < b.rounds:
        problems.append(f"bench.steps: {b.steps} timed steps cannot be split into bench.rounds={b.rounds} rounds; "
                        f"give at least {b.rounds}")
    if isinstance(b.image_sizes, list) and not all(isinstance(s, int) and 1 <= s <= MAX_IMAGE_SIZE for s in b.image_sizes):
        problems.append(f"bench.image_sizes: each must be between 1 and {MAX_IMAGE_SIZE}, got {b.image_sizes}")


TIMM_PREFIX = "timm/"
WEIGHT_FILES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def _check_model_source(m: ModelConfig, problems: list[str]) -> None:
    """model.arch, model.pretrained and model.init_from: which network, and which weights it starts from.
    Whether init_from exists is checked when the weights are loaded: a finished run is still read
    after its starting checkpoint has moved."""
    if not isinstance(m.arch, str) or not isinstance(m.pretrained, bool):
        return  # already reported as a type problem
    timm_name = m.arch[len(TIMM_PREFIX):] if m.arch.startswith(TIMM_PREFIX) else None
    if m.arch != "attnzoo" and timm_name is None:
        problems.append(f"model.arch: {m.arch!r} is neither attnzoo (the built-in ViT) nor timm/<name>, "
                        "e.g. timm/vit_small_patch16_224")
    elif timm_name is not None:
        problems.extend(_timm_name_problems(timm_name, m.pretrained))
    elif m.pretrained:
        problems.append("model.pretrained: the built-in ViT (model.arch=attnzoo) has no published weights; set "
                        "model.arch=timm/<name> (e.g. timm/vit_small_patch16_224.augreg_in21k), or start from a "
                        "local checkpoint with model.init_from=PATH")
    if m.init_from is not None:
        if m.pretrained:
            problems.append("model.init_from: give either model.pretrained=true (timm's weights) or "
                            "model.init_from=PATH (a local checkpoint), not both")
        if not isinstance(m.init_from, str) or not m.init_from.endswith(WEIGHT_FILES):
            problems.append(f"model.init_from: {m.init_from!r} is not a weights file; give a local "
                            f"{', '.join(WEIGHT_FILES)} file, or null")


def _timm_name_problems(name: str, pretrained: bool) -> list[str]:
    """What is wrong with a timm model name (with or without a .tag), each with a fix."""
    try:
        import timm
    except ImportError:
        return [f"model.arch: timm/{name} needs timm, which is not installed: pip install 'timm>=0.9'"]
    base, _, tag = name.partition(".")
    known = timm.list_models()
    if base not in known:
        close = timm.list_models(f"*{base.split('_')[0]}*") or known
        return [f"model.arch: timm has no model {base!r}{did_you_mean(base, close)} "
                "(timm.list_models() lists them)"]
    if tag and name not in timm.list_pretrained(f"{base}.*"):
        tags = [t.partition(".")[2] for t in timm.list_pretrained(f"{base}.*")]
        return [f"model.arch: timm has no weights tagged {tag!r} for {base}{did_you_mean(tag, tags)}; "
                f"its tags: {', '.join(tags) or 'none'}"]
    if tag and not pretrained:
        return [f"model.arch: {name!r} names timm weights; set model.pretrained=true to load them, or drop "
                f"the tag (timm/{base}) to train from scratch"]
    if pretrained and not timm.list_pretrained(f"{base}.*"):
        return [f"model.pretrained: timm publishes no weights for {base}; set model.pretrained=false"]
    return []


def _divisor_hint(n: int) -> str:
    return ", ".join(str(p) for p in (2, 4, 8, 16) if n % p == 0) or "1"


def _check_attention(r: Recipe, problems: list[str], registry) -> None:
    """Check that `attention` resolves, and write its options out in full (defaults filled in,
    values typed): what recipe.yaml records. A study's arms (`variants`) are parsed and checked
    where studies are planned, attnzoo.study.study_arms."""
    if not isinstance(r.attention.name, str):
        return  # already reported as a type problem
    try:
        r.attention.options = resolve(r, registry).kernel.options
    except RecipeError as exc:
        problems.extend(exc.problems)


@dataclass(frozen=True)
class Resolved:
    """What a recipe's run builds, kept apart from the recipe so that the recipe stays plain
    data (copied, compared and written out as it is): the kernel factory of its attention
    variant, and the registry it was resolved in, whose plugins a run records."""

    kernel: KernelFactory
    registry: Registry

    @property
    def plugins(self) -> list[PluginInfo]:
        return self.registry.plugins


def resolve(recipe: Recipe, registry: Registry | None = None) -> Resolved:
    """`recipe.attention` resolved in `registry` (None: the installed plugins): the one place a
    variant name and its options become code. An unknown variant or a bad option raises a
    RecipeError worded as validation reports it (validation calls this too)."""
    from attnzoo.contract.registry import installed_or

    registry = installed_or(registry)
    try:
        kernel = registry.kernel(recipe.attention.name, recipe.attention.options)
    except PluginError as exc:
        raise RecipeError([f"attention: {exc}"], f"recipe {recipe.name!r}") from None
    return Resolved(kernel, registry)


# ---------------------------------------------------------------- study keys

# Keys a grid may not sweep: the labels of the study and its own keys (attnzoo.config.keys), and the
# two settings that have a study key of their own. Each with the reason the error gives.
_WHY_NOT_IN_GRID = {"name": "it names the study", "description": "it describes the study",
                    "output_dir": "the study's runs live in one folder", "variants": "it is a study key",
                    "seeds": "it is a study key", "grid": "it is the grid itself", "baseline": "it is a study key",
                    "tune": "it is a study key"}
_NOT_IN_GRID = {**{key: _WHY_NOT_IN_GRID.get(key, "it is not a setting of a run")
                   for key in keys_of(Kind.LABEL, Kind.STUDY)},
                "attention": "list attention variants and their options under `variants:` instead",
                "train.seed": "list seeds under `seeds:` instead"}


def _check_study_keys(r: Recipe, data: dict, problems: list[str]) -> None:
    if not (r.variants == "all" or isinstance(r.variants, list)):
        problems.append(f"variants: expected a list of variant arms or the word all, got {r.variants!r}")
    if r.baseline is not None and not isinstance(r.baseline, str):
        problems.append(f"baseline: expected the label of a variant arm, got {r.baseline!r}")
    if not isinstance(r.grid, dict):
        problems.append(f"grid: expected a mapping of recipe keys to lists of values, e.g. "
                        f"{{model.depth: [6, 8]}}, got {r.grid!r}")
        r.grid = {}
        return
    r.grid = {key: _check_grid_key(key, values, r, problems) for key, values in flatten_grid(r.grid).items()}
    _check_tune(r, problems)


TUNE_METRICS = {"val_top1": max, "val_top5": max, "val_loss": min}  # each trial's best epoch by this metric
TUNE_SEED_BASE = 1000  # `tune.seeds: k` trains each trial with seeds 1000 ... 1000 + k - 1
# Keys whose trials would not be compared on one validation split, or that the study itself sets.
_NOT_TUNED = {"data.val_fraction": "it changes the validation split the trials are compared on",
              "data.max_eval_samples": "it changes the validation split the trials are compared on",
              "data.dataset": "it changes the validation split the trials are compared on",
              "data.root": "it changes the validation split the trials are compared on"}


def _check_tune(r: Recipe, problems: list[str]) -> None:
    """`tune: {optim.lr: [3e-4, 1e-3], seeds: 1, metric: val_top1}`, written back in one form: the swept keys
    (flat, typed like grid values), `seeds` as a list and `metric`."""
    if not r.tune:
        r.tune = {}
        return
    if not isinstance(r.tune, dict):
        problems.append(f"tune: expected a mapping of recipe keys to lists of values plus seeds and metric, e.g. "
                        f"{{optim.lr: [3e-4, 1e-3, 3e-3], seeds: 1, metric: val_top1}}, got {r.tune!r}")
        r.tune = {}
        return
    written = dict(r.tune)
    seeds, metric = written.pop("seeds", 1), written.pop("metric", "val_top1")
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = [TUNE_SEED_BASE + i for i in range(seeds)]
    elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
              and len(set(seeds)) == len(seeds)):
        problems.append(f"tune.seeds: give how many seeds each trial trains (e.g. 1), or a list of distinct integer "
                        f"seeds, got {seeds!r}")
        seeds = []
    if metric not in TUNE_METRICS:
        problems.append(f"tune.metric: expected one of {', '.join(TUNE_METRICS)} (each trial's best epoch on the "
                        f"validation split), got {metric!r}")
    values = {}
    for key, choices in flatten_grid(written).items():
        reason = _NOT_TUNED.get(key) or ("the grid sweeps it already" if key in r.grid else None)
        if reason:
            problems.append(f"tune.{key}: cannot be tuned ({reason})")
            continue
        values[key] = _check_grid_key(key, choices, r, problems, where=f"tune.{key}")
    if not values:
        problems.append("tune: name at least one recipe key to tune with its values, e.g. "
                        "tune: {optim.lr: [3e-4, 1e-3, 3e-3]}")
    if r.data.val_fraction <= 0 and r.data.dataset != "imagefolder":
        problems.append("tune: the trials are compared on the validation split, and data.val_fraction is 0; "
                        "set data.val_fraction (e.g. 0.1)")
    r.tune = {**values, "seeds": seeds, "metric": metric}


def flatten_grid(grid: dict) -> dict:
    """{model: {depth: [6, 8]}} and {model.depth: [6, 8]} are the same grid."""
    return flatten(grid)


def grid_key_kind(key: str) -> Any:
    """The field type a dotted key names (a dataclass for a section such as data.augment).
    Raises KeyError(message) for a key that names no field."""
    kind: Any = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(kind):
            raise KeyError(f"{'.'.join(parts[:i])} is a value, not a section")
        names = [f.name for f in dataclasses.fields(kind)]
        if part not in names:
            where = ".".join(parts[:i]) or "the recipe"
            raise KeyError(f"unknown key {part!r} in {where}{did_you_mean(part, names)}")
        kind = typing.get_type_hints(kind)[part]
    return kind


def set_key(data: dict, key: str, value: Any) -> None:
    """Set a dotted key in a recipe mapping; a mapping value for a section updates that section."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if isinstance(value, dict):
        node[leaf] = {**(node.get(leaf) or {}), **{k: v for k, v in value.items() if k != "label"}}
    else:
        node[leaf] = value


def get_key(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _check_grid_key(key: str, values: Any, recipe: Recipe, problems: list[str], where: str = "") -> list:
    """Check one grid (or tune) key and each of its values as if it were set in `recipe`; returns the values
    coerced by the field's type (mappings for a section are kept as written)."""
    where = where or f"grid.{key}"
    reason = _NOT_IN_GRID.get(key) or _NOT_IN_GRID.get(key.split(".")[0])
    if reason:
        problems.append(f"{where}: cannot be swept by a grid ({reason})")
        return values if isinstance(values, list) else []
    try:
        kind = grid_key_kind(key)
    except KeyError as exc:
        problems.append(f"{where}: {exc.args[0]}")
        return values if isinstance(values, list) else []
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: expected a non-empty list of values like [6, 8], got {values!r}")
        return []
    section = dataclasses.is_dataclass(kind)
    # The range problems the rest of the recipe has with this key at its default are its own, reported
    # once without the grid; a value is blamed for the ones it adds.
    own: list[str] = []
    _check_ranges(_with_value(recipe, key, _get_field(Recipe(), key)), own)
    coerced = []
    for i, value in enumerate(values):
        if section and not isinstance(value, dict):
            problems.append(f"{where}[{i}]: {key} is a section: give a mapping of its keys, "
                            f"e.g. {{label: crop-flip, rotation: 0}}, got {value!r}")
            coerced.append(value)
            continue
        found: list[str] = []
        typed = _coerce_grid_value(key, kind, value, recipe, found)
        in_range: list[str] = []
        _check_ranges(_with_value(recipe, key, typed), in_range)
        found += [p for p in in_range if p not in own]
        problems.extend(f"{where}[{i}]: {p}" for p in found)
        coerced.append(value if section else typed)
    if len({repr(v) for v in coerced}) < len(coerced):
        problems.append(f"{where}: a value is listed twice in {values!r}")
    return coerced


def _coerce_grid_value(key: str, kind: Any, value: Any, recipe: Recipe, problems: list[str]) -> Any:
    """A grid value typed as the recipe types that key; a section's mapping updates the recipe's section
    (its `label` only names the grid point)."""
    if not dataclasses.is_dataclass(kind):
        return _coerce(value, kind, key, problems)
    written = {k: v for k, v in value.items() if k != "label"}
    return _build(kind, {**dataclasses.asdict(_get_field(recipe, key)), **written}, key, problems)


def _get_field(recipe: Recipe, key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _with_value(recipe: Recipe, key: str, value: Any) -> Recipe:
    """A copy of `recipe` with the dotted field `key` set to `value`."""
    trial = copy.deepcopy(recipe)
    *parents, leaf = key.split(".")
    setattr(_get_field(trial, ".".join(parents)) if parents else trial, leaf, value)
    return trial


# ---------------------------------------------------------------- public API


# A recipe is a few hundred YAML nodes. These bounds refuse an alias bomb (a few lines whose
# aliases expand to billions of values) while it is composed, before anything expands it: a
# deep copy, a comparison or an error message would otherwise take hours and all memory.
MAX_YAML_ALIASES = 1_000
MAX_YAML_NODES = 100_000  # counted as expanded: an alias counts every node it stands for
MAX_SHOWN = 500  # characters of one problem shown; a long value is cut in its middle


class YamlTooLarge(ValueError):
    """A YAML document over the bounds above; the message says which and by how much."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts aliases while composing and the expanded node count of the
    composed document before constructing it."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YamlTooLarge(f"it uses more than {MAX_YAML_ALIASES:,} aliases (*name); a recipe needs a few")
        return super().compose_node(parent, index)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def _expanded_size(node, sizes: dict, open_nodes: set) -> int:
    """The nodes `node` stands for once every alias is expanded, counted over the shared graph
    (each node once, with its size remembered), so a bomb is measured without being expanded."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise YamlTooLarge("an alias refers to a node that contains it, which expands without end")
    open_nodes.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else [])
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(key)
    if size > MAX_YAML_NODES:
        raise YamlTooLarge(f"it expands to more than {MAX_YAML_NODES:,} values (through its aliases); "
                           "a recipe holds a few hundred")
    sizes[key] = size
    return size


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load within the bounds above: YamlTooLarge beyond them, yaml.YAMLError for bad YAML."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YamlTooLarge("it nests deeper than Python can read; a recipe nests a few levels") from None
    finally:
        loader.dispose()


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut in its middle to about `limit` characters: a problem keeps its key (at the
    start) and its fix (at the end), and a huge value never floods the terminal."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 3 // 5], text[-(limit * 2 // 5):]
    return f"{head} ...[{len(text) - len(head) - len(tail):,} characters left out]... {tail}"


def parse_override(text: str) -> tuple[list[str], Any]:
    shown = shorten(repr(text))
    if "=" not in text or text.startswith("="):
        raise RecipeError([f"override {shown}: expected key=value, e.g. optim.lr=3e-4 or seeds=[0,1]"], "command line")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.isidentifier() for p in parts):
        raise RecipeError([f"override {shown}: {shorten(repr(key))} is not a dotted key like train.epochs"],
                          "command line")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except YamlTooLarge as exc:
        raise RecipeError([f"override of {key.strip()}: the value is too large: {exc}"], "command line") from None
    except yaml.YAMLError:
        value = raw  # keep as text; the field's type decides
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] in ("grid", "tune") and len(parts) > 1:  # grid.model.depth=[6,8]: the rest is one key
            section = parts[0]
            if not isinstance(data.get(section) or {}, dict):
                raise RecipeError([f"override {text!r}: the recipe's {section} is not a mapping"], "command line")
            data[section] = flatten_grid(data.get(section) or {})
            data[section][".".join(parts[1:])] = value
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError([f"override {text!r}: {part!r} is not a section"], "command line")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = " Run `attnzoo ls` to see the bundled recipes, `attnzoo cp NAME FILE` to copy one."
        raise AttnzooError(f"recipe file {str(path)!r} not found.{hint}")
    try:
        data = load_yaml_text(path.read_text())
    except YamlTooLarge as exc:
        raise AttnzooError(f"recipe {str(path)!r} is too large to be a recipe: {exc}. Write the values out "
                           "instead of nesting aliases.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise AttnzooError(f"recipe {str(path)!r} is not valid YAML{where}: "
                           f"{getattr(exc, 'problem', exc)}. Check indentation and colons.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AttnzooError(f"recipe {str(path)!r} must be a mapping of keys (model:, train:, ...), "
                           f"not a {type(data).__name__}")
    return data


def from_dict(data: dict, *, registry=None, source: str = "recipe", check_plugins: bool = True) -> Recipe:
    problems: list[str] = []
    recipe = _build(Recipe, data, "", problems)
    _check_ranges(recipe, problems)
    _check_study_keys(recipe, data, problems)
    if check_plugins:
        _check_attention(recipe, problems, registry)
    if problems:
        raise RecipeError([shorten(problem) for problem in problems], source)
    return recipe


def load(path: str | Path, overrides: list[str] = (), *, registry=None, name: str | None = None) -> Recipe:
    """`name`: the recipe as the user gave it (e.g. a bundled recipe's name), used in messages."""
    data = apply_overrides(read_yaml(path), list(overrides))
    return from_dict(data, registry=registry, source=f"recipe {name or str(path)!r}")


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


# Sections that describe a benchmark or a study, not one run: a run's recipe.yaml leaves them out.
NOT_RUN_KEYS = STUDY_KEYS


def is_run_key(dotted: str) -> bool:
    return dotted.split(".")[0] not in NOT_RUN_KEYS


def run_dict(recipe: Recipe) -> dict:
    """The keys of one run: what its recipe.yaml holds."""
    return {k: v for k, v in recipe.to_dict().items() if is_run_key(k)}


def dump_run(recipe: Recipe) -> str:
    return yaml.safe_dump(run_dict(recipe), sort_keys=False)


def bundled_dir() -> Path:
    return Path(__file__).parents[1] / "recipes"


def bundled_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(bundled_dir().glob("*.yaml"))}


def resolve_path(name_or_path: str) -> Path:
    """A recipe path, or the name of a bundled recipe ('cifar100-seed')."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    bundled = bundled_recipes()
    if name_or_path in bundled:
        return bundled[name_or_path]
    return path
