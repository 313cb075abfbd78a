"""Continuing a run to more epochs (or a longer early-stopping patience), and the rule for when
that gives the same result as a run trained that way from the start.

Which changes count is decided once for resume, extend and study alike by
attnzoo.config.changes; this module says when the ones of when a run stops are exact:

- a larger ``train.epochs`` keeps the learning rate of every step already taken: true for the
  constant and step schedules (their milestones are in epochs), false for the cosine schedule,
  which spreads its decay over ``train.epochs``;
- a ``train.early_stopping_patience`` that is larger (or none), or at least the epochs the run
  trained, could not have stopped it earlier than the old one did, so the epochs it trained are
  the ones the new patience trains too; a smaller one might have.

Anything else is a different run: it is trained again or goes elsewhere.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from attnzoo.config.changes import recipe_changes
from attnzoo.config.keys import Kind, keys_of
from attnzoo.config.recipe import Recipe, dump_run
from attnzoo.errors import AttnzooError
from attnzoo.run import rundir
from attnzoo.run.checkpoint import list_checkpoints

def run_recipe(run_dir: Path) -> dict | None:
    """The run's own recipe.yaml, or None if the folder holds no run attnzoo made (a user's own
    recipe.yaml is never compared, continued or rewritten)."""
    run = rundir.RunDir(run_dir)
    return run.read_recipe() if run.is_run() else None


def changes_from_run(run_dir: Path, recipe: Recipe) -> dict[str, tuple]:
    """{key: (value in the run, value now)} for every change that could change the run's result:
    a different run, or one continued (train.epochs, train.early_stopping_patience)."""
    old = run_recipe(run_dir)
    return {} if old is None else recipe_changes(old, recipe.to_dict()).that_matter


def describe_changes(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {old!r} in the run, {new!r} now" for key, (old, new) in changes.items())


def extension_refusal(run_dir: Path, changes: dict[str, tuple]) -> str | None:
    """Why the run cannot be continued to the recipe's epochs and patience; None when it can."""
    other = [key for key in changes if key not in CONTINUABLE_KEYS]
    if other:
        return f"it was made with other values of {', '.join(other)}"
    if not changes:
        return None
    refusal = _epochs_refusal(run_dir, changes.get("train.epochs")) or _patience_refusal(
        run_dir, changes.get("train.early_stopping_patience"))
    if refusal:
        return refusal
    if not list_checkpoints(run_dir):
        return "it has no checkpoint left to continue from"
    return None


CONTINUABLE_KEYS = keys_of(Kind.CONTINUABLE)


def _epochs_refusal(run_dir: Path, change: tuple | None) -> str | None:
    if change is None:
        return None
    old, new = change
    if new < old:
        return f"it already ran {old} epochs; fewer ({new}) would be a different run"
    schedule = (run_recipe(run_dir).get("optim") or {}).get("schedule", "step")
    if schedule == "cosine":
        return (f"its cosine schedule spreads the learning-rate decay over train.epochs, so with {new} epochs "
                "every step it took would have had a different learning rate")
    return None


def _patience_refusal(run_dir: Path, change: tuple | None) -> str | None:
    """A run stops before the first epoch that follows `patience` epochs without a validation gain.
    Every epoch the run trained got past the old patience, so past any larger one; and before its
    n-th epoch no run has gone n epochs without a gain, so a patience of at least the epochs it
    trained could not have stopped it either. Then the new patience trains the same epochs first
    and decides on from there; a smaller one might have stopped it sooner."""
    if change is None:
        return None
    old, new = change
    trained = _epochs_trained(run_dir)
    if new is None or (old is not None and new >= old) or new >= trained:
        return None
    was = "no early stopping" if old is None else f"a patience of {old}"
    return (f"it trained {trained} epochs with {was}; a patience of {new} could have stopped it sooner, "
            "which would be a different run")


def _epochs_trained(run_dir: Path) -> int:
    """The epochs metrics.jsonl records (at least those its last checkpoint holds)."""
    try:
        return len(rundir.RunDir(run_dir).read_metrics())
    except OSError:
        return 0


def continuation_text(changes: dict[str, tuple]) -> str:
    """'from 1 to 2 epochs', 'with train.early_stopping_patience 5 (was 3)': what continuing changes."""
    parts = []
    if "train.epochs" in changes:
        parts.append("from {} to {} epochs".format(*changes["train.epochs"]))
    parts += [f"with {key} {new} (was {old})" for key, (old, new) in changes.items() if key != "train.epochs"]
    return " ".join(parts)


def extend_run(run_dir: Path, recipe: Recipe) -> None:
    """Make a run (finished or not) continue to the recipe's epochs on its next resume.

    The old result is kept in extensions.jsonl; recipe.yaml then states the new epochs, so
    the run's own files always say what it was trained with."""
    run = rundir.RunDir(run_dir)
    old_epochs = (run.read_recipe().get("train") or {}).get("epochs")
    changed = {key: list(values) for key, values in changes_from_run(run_dir, recipe).items()}
    record = {"time": datetime.now().astimezone().isoformat(timespec="seconds"), "from_epochs": old_epochs,
              "to_epochs": recipe.train.epochs, "changes": changed,
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
    if not any(key in changes for key in CONTINUABLE_KEYS):
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
    continuing = continuation_text({key: changes[key] for key in CONTINUABLE_KEYS if key in changes})
    refusal = extension_refusal(run_dir, changes)
    if refusal:
        raise AttnzooError(f"cannot continue the run in {str(run_dir)!r} {continuing}: {refusal}. "
                           "Nothing was changed. Set output_dir=... to a new folder to train a run with these "
                           "values.")
    why = ("the learning rate of the steps it took is unchanged" if "train.epochs" in changes
           else "the epochs it trained are the ones the new patience trains too")
    print(f"{run_dir}: continuing the run {continuing} ({why})", flush=True)
    extend_run(run_dir, recipe)
    return True
