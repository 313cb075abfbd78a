"""Re-evaluate a finished run on its test split, from its recipe.yaml and model.safetensors.

The evaluation goes through the trainer's own data pipeline and prediction code
(:mod:`attnzoo.assembly`), so it reproduces the run's test metrics. Nothing in the run
folder changes except eval.json.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from attnzoo.config import recipe as recipes
from attnzoo.data.loader import Loader, Splits
from attnzoo.data.pipeline import load_data
from attnzoo.errors import AttnzooError
from attnzoo.run import assembly, checkpoint, rundir


def load_run_recipe(run_dir: Path, registry=None) -> recipes.Recipe:
    if not run_dir.is_dir():
        raise AttnzooError(f"run folder {str(run_dir)!r} not found. Pass the output_dir of a finished run "
                           "(for a study, one of its '<variant>-seed<N>' folders).")
    run = rundir.RunDir(run_dir)
    if (run_dir / "study.yaml").is_file() and not run.recipe.is_file():
        runs = sorted(p.name for p in run_dir.iterdir() if rundir.RunDir(p).recipe.is_file())
        listed = "\n".join(f"  attnzoo eval {shlex.quote(str(run_dir / name))}" for name in runs) or "  (none yet)"
        raise AttnzooError(f"{str(run_dir)!r} is a study; evaluate one of its runs:\n{listed}")
    if not run.recipe.is_file():
        raise AttnzooError(f"{str(run_dir)!r} is not an attnzoo run: it has no recipe.yaml. Pass the folder "
                           "that `attnzoo train` or `attnzoo study` wrote.")
    recipe = recipes.load(run.recipe, registry=registry)
    # The folder may have moved since training; it is where the run is now.
    recipe.output_dir = str(run_dir)
    return recipe


@dataclass
class FinishedRun:
    """A finished run put back together for evaluation: its recipe, test split and weights on
    this process's device. No optimizer is built, and only the test split goes to the device
    (the training split is read for its normalisation statistic)."""

    path: Path
    recipe: recipes.Recipe
    accelerator: Accelerator
    splits: Splits
    test_loader: Loader
    model: torch.nn.Module  # prepared by the accelerator (mixed precision as in training)
    forward: assembly.Forward

    def evaluate(self) -> dict:
        return self.forward.evaluate(self.test_loader, self.splits.classes)


def load_best_run(run_dir: Path, *, accelerator=None, splits: Splits | None = None, registry=None,
                  then: str = "evaluate it") -> FinishedRun:
    """The run in `run_dir` holding the weights of its best validation epoch: what robustness
    evaluations (corruptions, CIFAR-C, attacks) measure. `then` ends the message of a run that has
    none yet: what the user wanted to do with it."""
    recipe = load_run_recipe(run_dir, registry)
    weights_file = rundir.RunDir(run_dir).best_weights
    if not weights_file.is_file():
        raise AttnzooError(f"{str(run_dir)!r} has no {rundir.BEST_WEIGHTS} (the weights of the best validation "
                           "epoch, written at the end of the first epoch). Train the run for at least one epoch "
                           f"(`attnzoo train RECIPE --resume`), then {then}.")
    return load_finished_run(recipe, weights_file, accelerator=accelerator, splits=splits, registry=registry)


def load_finished_run(recipe: recipes.Recipe, weights_file: Path, *, accelerator=None,
                      splits: Splits | None = None, registry=None) -> FinishedRun:
    """The run of `recipe` (from :func:`load_run_recipe`) with the weights of `weights_file`, one
    of its safetensors files; `splits`: the run's data when the caller has it loaded already;
    `registry`: where its variant comes from (None: the installed plugins)."""
    run_dir = recipe.run_dir
    weights = checkpoint.load_weights(weights_file)  # a truncated or corrupted file is a clear error
    accelerator = accelerator or assembly.make_accelerator(recipe)
    assembly.apply_train_settings(recipe)
    splits = splits or load_data(recipe)
    model = assembly.build_model(recipe, len(splits.classes), recipes.resolve(recipe, registry).kernel,
                                 starting_weights=False)  # its trained weights are loaded next
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise AttnzooError(f"{weights_file.name} in {str(run_dir)!r} does not fit the model its recipe.yaml "
                           f"describes ({str(exc).splitlines()[0]}). Were the files of two runs mixed?") from None
    model = accelerator.prepare(model)
    return FinishedRun(run_dir, recipe, accelerator, splits, assembly.loader(recipe, splits, "test", accelerator),
                       model, assembly.Forward(model, recipe, accelerator))


def evaluate_run(run_dir: Path, *, registry=None, accelerator=None) -> dict:
    """Test metrics of the run's final weights; written to <run_dir>/eval.json and printed."""
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir, registry)
    weights_file = final_weights(run_dir)
    finished = load_finished_run(recipe, weights_file, accelerator=accelerator, registry=registry)
    report = finished.evaluate()
    report.update(variant=recipe.attention.name, attention_options=recipe.attention.options,
                  seed=recipe.train.seed, weights=str(weights_file))
    if finished.accelerator.is_main_process:
        rundir.write_text(rundir.RunDir(run_dir).eval, json.dumps(report, indent=1))
        print(_summary(report, run_dir))
    return report


def final_weights(run_dir: Path) -> Path:
    """The run's model.safetensors, written when it finished; a clear error when it has not."""
    weights_file = rundir.RunDir(run_dir).final_weights
    if not weights_file.is_file():
        raise AttnzooError(f"{str(run_dir)!r} has no model.safetensors: the run has not finished. Finish it "
                           "with `attnzoo train RECIPE --resume` (or run its study again), then evaluate.")
    return weights_file


def _summary(report: dict, run_dir: Path) -> str:
    text = (f"{run_dir}: {report['variant']} on {report['samples']} test images: "
            f"top1 {report['top1']:.4f}  top5 {report['top5']:.4f}  loss {report['loss']:.4f}  "
            f"precision {report['precision_macro']:.4f}  recall {report['recall_macro']:.4f}  "
            f"F1 {report['f1_macro']:.4f}  ECE {report['ece']:.4f}")
    run = rundir.RunDir(run_dir)
    if run.is_finished():
        try:
            top1 = run.read_test_metrics()["top1"]
            text += f"\n(recorded at the end of training: top1 {top1:.4f})"
        except (ValueError, KeyError):
            pass
    return text
