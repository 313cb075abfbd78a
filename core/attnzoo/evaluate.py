"""Re-evaluate a finished run on its test split, from its recipe.yaml and model.safetensors.

The evaluation goes through the trainer's own data pipeline and prediction code, so it
reproduces the run's test metrics. Nothing in the run folder changes except eval.json.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from . import checkpoint, rundir
from . import recipe as recipes
from .errors import AttnzooError


def _load_run_recipe(run_dir: Path, registry=None) -> recipes.Recipe:
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


def evaluate_run(run_dir: Path, *, registry=None, accelerator=None) -> dict:
    """Test metrics of the run's final weights; written to <run_dir>/eval.json and printed."""
    from .trainer import Trainer

    run_dir = Path(run_dir)
    recipe = _load_run_recipe(run_dir, registry)
    run = rundir.RunDir(run_dir)
    weights_file = run.final_weights
    if not weights_file.is_file():
        raise AttnzooError(f"{str(run_dir)!r} has no model.safetensors: the run has not finished. Finish it "
                           "with `attnzoo train RECIPE --resume` (or run its study again), then evaluate.")
    weights = checkpoint.load_weights(weights_file)  # a truncated or corrupted file is a clear error
    # The Trainer brings the same data splits, normalisation and prediction code as training;
    # only its evaluation is used, and it writes nothing.
    trainer = Trainer(recipe, accelerator=accelerator)
    try:
        trainer.raw_model.load_state_dict(weights)
    except RuntimeError as exc:
        raise AttnzooError(f"model.safetensors in {str(run_dir)!r} does not fit the model its recipe.yaml "
                           f"describes ({str(exc).splitlines()[0]}). Were the files of two runs mixed?") from None
    report = trainer.evaluate(trainer.test_loader)
    report.update(variant=recipe.attention.name, attention_options=recipe.attention.options,
                  seed=recipe.train.seed, weights=str(weights_file))
    if trainer.acc.is_main_process:
        rundir.write_text(run.eval, json.dumps(report, indent=1))
        print(_summary(report, run_dir))
    return report


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
