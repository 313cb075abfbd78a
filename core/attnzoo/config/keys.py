"""Every recipe key, and what a change of its value means for a run made before.

One table classifies each dotted key (``train.epochs``, ``data.augment.rotation``) into a
`Kind`. Resuming a run (``train --resume``), continuing it to more epochs and planning a study
all read it, through :func:`attnzoo.config.changes.recipe_changes`, so the three give the same
answer for every key. The table sits below the recipe module, which takes its study-level
keys from here.
"""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    LABEL = "label"  # names, describes or places the run: never changes what it computes
    HOUSEKEEPING = "housekeeping"  # how the work is carried out, not what it computes
    CONTINUABLE = "continuable"  # when the run stops: may change and continue it where that is exact
    STUDY = "study"  # a setting of a benchmark or a study, no part of a run
    RESULT = "result"  # changes what the run computes: a run made with another value is a different run


def flatten(d: dict, prefix: str = "") -> dict:
    """{train: {epochs: 3}} -> {'train.epochs': 3}. An empty mapping is a value of its own (``grid: {}``)."""
    out = {}
    for key, value in d.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


_LABEL = (
    # Where the run lives and what it is called: moving or renaming a run leaves its numbers as they are.
    "name", "description", "output_dir",
    # The plugins the recipe needs installed: the variant itself is `attention.name` and its options.
    "requires_plugins",
)

_HOUSEKEEPING = (
    # Steps between progress-bar updates, and between the stop checks several processes agree on: a
    # stop at another step resumes exactly from its checkpoint.
    "train.log_every",
    # How many checkpoints stay on disk; every epoch's checkpoint is written all the same.
    "train.keep_checkpoints",
    # DataLoader workers: each image's augmentation is seeded by its place in the global batch, not by
    # the worker that decodes it (test_streaming pins serial == parallel batches).
    "data.num_workers",
    # Whether a missing dataset may be fetched: the data is the same either way.
    "data.download",
    # Which experiment trackers receive the metrics: where they are reported, not what is computed.
    "train.log_with",
)

_CONTINUABLE = (
    # How long the run trains, not how each step is taken: a run continues to a larger value where the
    # steps it took stay the same (attnzoo.run.extend says when), and its recipe.yaml then says so.
    "train.epochs", "train.early_stopping_patience",
)

_STUDY = (
    # A benchmark's and a study's own settings: a run's recipe.yaml leaves them out, though runs of
    # earlier versions wrote them there.
    "bench", "robustness", "variants", "seeds", "grid", "baseline",
    # What the study's power statement is computed from: it changes what the plan and report say, no run.
    "power",
    # The values each arm tries on the validation split before its seeds run: the chosen value is written into
    # each run's own recipe (a result key there), so the section itself is no part of a run.
    "tune",
    # How a study's runs are submitted to a SLURM cluster: where and with what they run, not what they compute.
    "slurm",
)

_RESULT = (
    # The model it builds; `attention` covers the variant's name and every option it takes.
    "model.image_size", "model.patch_size", "model.dim", "model.depth", "model.heads", "model.mlp_ratio",
    "model.dropout", "model.init", "attention",
    # Which network (the built-in ViT or a timm architecture) and the weights it starts from.
    "model.arch", "model.pretrained", "model.init_from",
    # Stochastic depth: which residual branches a step drops.
    "model.drop_path",
    # The images it sees: which dataset and where from (an image folder's root is its content), the
    # splits, how they reach the device (the two pipelines augment with different code), the augmentation.
    "data.dataset", "data.root", "data.val_fraction", "data.max_train_samples", "data.max_eval_samples",
    "data.pipeline", "data.augment.crop", "data.augment.crop_padding", "data.augment.flip",
    "data.augment.rotation", "data.augment.color_jitter",
    # A Hugging Face dataset's image and label columns: which images, and which labels, it trains on.
    "data.image_key", "data.label_key",
    # The strong recipe's batch-level augmentations: the images and (mixed) targets each step trains on.
    "data.augment.auto_augment", "data.augment.auto_ops", "data.augment.auto_magnitude",
    "data.augment.random_erasing", "data.augment.mixup", "data.augment.cutmix", "data.augment.mix_prob",
    # Every step of the optimiser; fused AdamW rounds differently from the unfused one.
    "optim.lr", "optim.weight_decay", "optim.betas", "optim.schedule", "optim.warmup_epochs",
    "optim.milestones", "optim.gamma", "optim.min_lr", "optim.label_smoothing", "optim.grad_clip",
    "optim.fused", "optim.layer_decay",
    # The batches and the arithmetic: each of these changes the numbers a step computes (exact resume
    # promises the same numbers, not merely the same mathematics), or what a bad step does.
    "train.batch_size", "train.grad_accum_steps", "train.seed", "train.mixed_precision", "train.compile",
    "train.matmul_precision", "train.channels_last", "train.deterministic", "train.on_nonfinite",
    # The weight average that is validated, kept and tested instead of the trained weights.
    "train.ema_decay",
    # How long the run trains and how its schedule is fitted: not continuable, since the schedule
    # is stretched onto the budget, so a larger budget changes every step's learning rate.
    "train.budget",
)

KINDS: dict[str, Kind] = {
    **dict.fromkeys(_LABEL, Kind.LABEL), **dict.fromkeys(_HOUSEKEEPING, Kind.HOUSEKEEPING),
    **dict.fromkeys(_CONTINUABLE, Kind.CONTINUABLE), **dict.fromkeys(_STUDY, Kind.STUDY),
    **dict.fromkeys(_RESULT, Kind.RESULT),
}


def classified(dotted: str) -> Kind | None:
    """The kind the table gives a key, itself or through the section holding it; None when it has none."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        kind = KINDS.get(".".join(parts[:n]))
        if kind is not None:
            return kind
    return None


def kind_of(dotted: str) -> Kind:
    """A key's kind. A key the table does not know (one an older attnzoo wrote, since removed) counts as
    changing the result: the answer that never reuses a run wrongly."""
    return classified(dotted) or Kind.RESULT


def keys_of(*kinds: Kind) -> tuple[str, ...]:
    """The table's keys and sections of these kinds, in table order."""
    return tuple(key for key, kind in KINDS.items() if kind in kinds)


# Sections that describe a benchmark or a study, not one run.
STUDY_KEYS = keys_of(Kind.STUDY)

# What a study's report leaves out when it compares the recipes of its runs: labels differ run by
# run, study keys are no part of a run, and each run's train.seed is one of the study's `seeds:`.
NOT_COMPARED_BETWEEN_RUNS = (*keys_of(Kind.LABEL), *STUDY_KEYS, "train.seed")
