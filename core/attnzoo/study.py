"""A study: one training run per (variant arm x seed), then a report across them.

The study directory (the recipe's ``output_dir``) holds ``study.yaml`` and one run
directory per arm and seed, ``<arm label>-seed<seed>/``. Running the same study again
skips finished runs, resumes interrupted ones from their last checkpoint, and starts
the missing ones, so a study can be stopped and continued at any time.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from . import recipe as recipes
from . import rundir
from .errors import AttnzooError
from .recipe import Recipe, arm_label

STUDY_FILE = "study.yaml"
ACTIONS = {"finished": "finished, skipped", "started": "resuming", "new": "training"}


@dataclass
class PlannedRun:
    label: str  # the arm's label, shared by its seeds
    seed: int
    recipe: Recipe  # a single-run recipe, validated

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir


def study_arms(recipe: Recipe) -> list:
    """The study's arms; without `variants`, the recipe's own attention is the only arm."""
    return list(recipe.variants) or [{"name": recipe.attention.name, "label": recipe.attention.name,
                                      **recipe.attention.options}]


def study_seeds(recipe: Recipe) -> list[int]:
    return list(recipe.seeds) or [recipe.train.seed]


def plan_runs(recipe: Recipe) -> list[PlannedRun]:
    """Every (arm, seed) run of the study, each as its own validated single-run recipe,
    resolved in the registry the study recipe was validated against."""
    registry = recipe.attention.kernel.registry
    study_dir = recipe.run_dir
    arms = study_arms(recipe)
    labels = [arm_label(arm) for arm in arms]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise AttnzooError(f"variants: two arms share the run name {repeated[0]!r}; give one of them a "
                           "distinct `label:` (e.g. {name: standardized, scale: inv_sqrt_d, label: std-sqrtd}).")
    runs = []
    for arm, label in zip(arms, labels):
        name, options = recipes._arm(arm)
        for seed in study_seeds(recipe):
            data = recipe.to_dict()
            data.update(variants=[], seeds=[], attention={"name": name, **options},
                        output_dir=str(study_dir / f"{label}-seed{seed}"))
            data["train"]["seed"] = seed
            # Re-validating resolves the arm's options to the variant's full, typed set.
            run_recipe = recipes.from_dict(data, registry=registry, source=f"study arm {label!r}")
            runs.append(PlannedRun(label, seed, run_recipe))
    return runs


def _check_study_dir(study_dir: Path) -> None:
    """A study may only go into an empty folder or one that already holds a study."""
    if not study_dir.exists() or not any(study_dir.iterdir()) or (study_dir / STUDY_FILE).is_file():
        return
    what = "a single run" if (study_dir / "recipe.yaml").is_file() else "something else"
    raise AttnzooError(f"output directory {str(study_dir)!r} holds {what}, not a study. "
                       "Set output_dir=... to a new folder for the study.")


def _run_state(run_dir: Path) -> str:
    if (run_dir / "test_metrics.json").is_file():
        return "finished"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        return "started"
    return "new"


def _point_accelerator_at(accelerator, run_dir: Path) -> None:
    """Tracker logs (e.g. TensorBoard) go into each run's own folder, not one shared folder."""
    config = accelerator.project_configuration
    config.project_dir = config.logging_dir = str(run_dir)


def run_study(recipe: Recipe, *, accelerator=None) -> list[dict]:
    """Train every arm x seed not yet finished, then write the report. Returns the report's rows."""
    from .trainer import make_accelerator

    runs = plan_runs(recipe)  # every arm is checked before any compute is spent
    _check_study_dir(recipe.run_dir)
    # Accelerate's state is a process singleton: one Accelerator serves every run.
    own = accelerator is None
    accelerator = accelerator or make_accelerator(recipe)
    try:
        return _run_all(recipe, runs, accelerator)
    finally:
        if own:
            accelerator.end_training()  # ends the process group once, after the last run


def _run_all(recipe: Recipe, runs: list[PlannedRun], accelerator) -> list[dict]:
    from .report import build_report, finished_runs
    from .trainer import NonFiniteLoss, Trainer, load_data

    study_dir = recipe.run_dir
    if accelerator.is_main_process:
        study_dir.mkdir(parents=True, exist_ok=True)
        rundir.write_text(study_dir / STUDY_FILE, recipes.dump(recipe))
    splits = None  # the data is the same for every run: load it once, when first needed
    failed = []
    for i, run in enumerate(runs, 1):
        state = _run_state(run.run_dir)
        accelerator.print(f"[{i}/{len(runs)}] {run.label} seed {run.seed}: {ACTIONS[state]}", flush=True)
        if state == "finished":
            continue
        accelerator.wait_for_everyone()  # every process has read the state before the main one writes
        splits = splits or load_data(recipe)
        _point_accelerator_at(accelerator, run.run_dir)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()  # peak memory is reported per run
        trainer = Trainer(run.recipe, accelerator=accelerator, splits=splits)
        try:
            trainer.fit(resume=state == "started")
        except NonFiniteLoss as exc:
            # One diverging arm is a result of the study, not a reason to drop the others.
            accelerator.print(f"  {run.label} seed {run.seed} stopped: {exc}")
            failed.append(f"{run.label}-seed{run.seed}")
        finally:
            del trainer
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    _point_accelerator_at(accelerator, study_dir)
    rows = []
    if accelerator.is_main_process and finished_runs(study_dir):
        rows = build_report(study_dir)
    accelerator.wait_for_everyone()
    if failed:
        raise AttnzooError(f"{len(failed)} run(s) stopped on a non-finite loss: {', '.join(failed)}. The report "
                           "covers the finished runs. Lower optim.lr or set optim.grad_clip, delete those run "
                           "folders, and run the study again to train only them.")
    return rows
