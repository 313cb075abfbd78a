"""One run's recipe checked: values coerced to their field's type, then every range and consistency check.

Every problem is appended to a list with its key path and a fix, so validation reports them all at
once; values are coerced by the field's type (PyYAML reads ``1e-3`` as a string). A value whose type
was already wrong is skipped by the range checks (reported once).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal

from attnzoo.config.schema import (AttentionConfig, AugmentConfig, BenchConfig, ModelConfig, PowerConfig, Recipe,
                                   SlurmConfig)
from attnzoo.errors import did_you_mean
from attnzoo.values import CONVERTERS, convert

# ---------------------------------------------------------------- parsing


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
