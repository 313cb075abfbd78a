"""Continuing a run to more epochs, and the rule for when that gives the same result as a
run trained that long from the start.

A run can be extended when the only change is a larger ``train.epochs`` and the learning rate
of every step already taken stays the same: true for the constant and step schedules (their
milestones are in epochs), false for the cosine schedule, which spreads its decay over
``train.epochs``. Anything else is a different run: it is trained again or goes elsewhere.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from attnzoo.config.recipe import Recipe, dump_run
from attnzoo.errors import AttnzooError
from attnzoo.run import rundir
from attnzoo.run.checkpoint import list_checkpoints

# Keys whose change leaves a run's result as it is (where it lives, how it is logged or labelled).
IGNORED_CHANGES = frozenset({"name", "description", "output_dir", "requires_plugins", "train.log_every",
                             "train.keep_checkpoints", "data.num_workers", "data.download"})


def run_recipe(run_dir: Path) -> dict | None:
    """The run's own recipe.yaml, or None if the folder holds no run."""
    return rundir.RunDir(run_dir).read_recipe()


def changes_from_run(run_dir: Path, recipe: Recipe) -> dict[str, tuple]:
    """{key: (value in the run, value now)} for every change that could change the run's result."""
    old = run_recipe(run_dir)
    return {} if old is None else rundir.recipe_changes(old, recipe.to_dict(), IGNORED_CHANGES)


def describe_changes(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, (old, new) in changes.items())


def extension_refusal(run_dir: Path, changes: dict[str, tuple]) -> str | None:
    """Why the run cannot be continued to the recipe's epochs; None when it can."""
    other = [key for key in changes if key != "train.epochs"]
    if other:
        return f"it was made with other values of {', '.join(other)}"
    if "train.epochs" not in changes:
        return None
    old, new = changes["train.epochs"]
    if new < old:
        return f"it already ran {old} epochs; fewer ({new}) would be a different run"
    schedule = (run_recipe(run_dir).get("optim") or {}).get("schedule", "step")
    if schedule == "cosine":
        return (f"its cosine schedule spreads the learning-rate decay over train.epochs, so with {new} epochs "
                "every step it took would have had a different learning rate")
    if not list_checkpoints(run_dir):
        return "it has no checkpoint left to continue from"
    return None


def extend_run(run_dir: Path, recipe: Recipe) -> None:
    """Make a run (finished or not) continue to the recipe's epochs on its next resume.

    The old result is kept in extensions.jsonl; recipe.yaml then states the new epochs, so
    the run's own files always say what it was trained with."""
    run = rundir.RunDir(run_dir)
    old_epochs = (run.read_recipe().get("train") or {}).get("epochs")
    record = {"time": datetime.now().astimezone().isoformat(timespec="seconds"), "from_epochs": old_epochs,
              "to_epochs": recipe.train.epochs,
              "test_metrics": run.read_test_metrics() if run.is_finished() else None}
    with open(run.extensions, "a") as f:
        f.write(json.dumps(record) + "\n")
    run.test_metrics.unlink(missing_ok=True)  # first: an interruption from here on leaves a resumable run
    rundir.write_text(run.recipe, dump_run(recipe))


def prepare_resume(recipe: Recipe) -> bool:
    """Before `train --resume`: False when the run is finished and nothing asks for more (said so);
    continues it to more epochs when that is exact; refuses with the reason otherwise.
    Other changes are left to the trainer's own check, which names them."""
    run_dir = recipe.run_dir
    if run_recipe(run_dir) is None:
        return True
    changes = changes_from_run(run_dir, recipe)
    run = rundir.RunDir(run_dir)
    finished = run.is_finished()
    if "train.epochs" not in changes:
        if finished and not changes:
            top1 = run.read_test_metrics().get("top1")
            shown = f", test top-1 {100 * top1:.2f} %" if isinstance(top1, (int, float)) else ""
            print(f"{run_dir}: the run is finished ({recipe.train.epochs} epochs{shown}); nothing to do. "
                  "Raise train.epochs to train it longer, or set output_dir=... for a new run.")
            return False
        if finished:
            raise AttnzooError(f"the run in {str(run_dir)!r} is finished and was made with a different recipe "
                               f"({describe_changes(changes)}); resuming cannot change that. Nothing was changed. "
                               "Set output_dir=... to a new folder for a run with these values.")
        return True
    old, new = changes["train.epochs"]
    refusal = extension_refusal(run_dir, changes)
    if refusal:
        raise AttnzooError(f"cannot continue the run in {str(run_dir)!r} from {old} to {new} epochs: {refusal}. "
                           f"Nothing was changed. Set output_dir=... to a new folder to train a {new}-epoch run.")
    print(f"{run_dir}: continuing the run from {old} to {new} epochs "
          "(the learning rate of the steps it took is unchanged)", flush=True)
    extend_run(run_dir, recipe)
    return True
