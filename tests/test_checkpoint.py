"""Checkpoints verify their state.json, not only their weights: the hashes are required, the
counters must agree with the history, a checkpoint of another run is refused, and the step time
of an interrupted epoch is kept across a resume."""

import json

import pytest
import torch
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError, Stopped
from attnzoo.run.checkpoint import check_same_run, list_checkpoints, load_checkpoint, save_checkpoint, verify_checkpoint
from attnzoo.run.rundir import Resume
from attnzoo.run.trainer import Trainer, train
from conftest import tiny_recipe_dict

STEPS_PER_EPOCH = 5


def history(epochs: int) -> list[dict]:
    return [{"epoch": e, "train_loss": 1.0 / e} for e in range(1, epochs + 1)]


def write_checkpoint(run_dir, epoch=2, step=3, **extra) -> tuple:
    """A small real checkpoint: 2 epochs and 3 steps of a 5-step epoch done."""
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    state = dict({"epoch": epoch, "step": step, "global_step": epoch * STEPS_PER_EPOCH + step,
                  "history": history(epoch)}, **extra)
    path = save_checkpoint(run_dir, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
                           trainer_state=state, keep=3, name=f"epoch-{epoch + 1:04d}-step-{step:06d}")
    return path, model


def edit_state(path, **changes) -> None:
    state = json.loads((path / "state.json").read_text())
    for key, value in changes.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    (path / "state.json").write_text(json.dumps(state))


def flip_a_weight_byte(path) -> None:
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0x01
    (path / "model.safetensors").write_bytes(bytes(data))


def test_an_intact_checkpoint_loads_what_was_saved(tmp_path):
    path, model = write_checkpoint(tmp_path / "run")
    weights, optimizer, state = load_checkpoint(path, STEPS_PER_EPOCH)
    assert torch.equal(weights["weight"], model.weight.detach())
    assert (state["epoch"], state["step"], state["global_step"]) == (2, 3, 13)
    assert optimizer["param_groups"][0]["lr"] == 1e-3


def test_deleting_the_hashes_does_not_switch_verification_off(tmp_path):
    path, _ = write_checkpoint(tmp_path / "run")
    flip_a_weight_byte(path)
    with pytest.raises(AttnzooError, match="sha256 mismatch"):
        verify_checkpoint(path)
    edit_state(path, sha256=None)
    with pytest.raises(AttnzooError, match=r"cannot be trusted: its state.json lacks sha256\. .*nothing was loaded"):
        verify_checkpoint(path)
    edit_state(path, sha256={"model.safetensors": "0" * 64})  # one hash left out
    with pytest.raises(AttnzooError, match=r"records no sha256 of each of model.safetensors, optimizer.safetensors"):
        verify_checkpoint(path)


def test_a_state_without_history_is_a_clear_error(tmp_path):
    path, _ = write_checkpoint(tmp_path / "run")
    edit_state(path, history=None)
    with pytest.raises(AttnzooError, match=r"its state.json lacks history\."):
        load_checkpoint(path)


@pytest.mark.parametrize("changes, message", [
    ({"epoch": 1}, r"says 1 epoch\(s\) finished, its history holds epochs \[1, 2\]"),
    ({"epoch": 3}, r"says 3 epoch\(s\) finished, its history holds epochs \[1, 2\]"),
    ({"history": [{"epoch": 1}, {"epoch": 1}]}, r"its history holds epochs \[1, 1\]"),
    ({"step": 4}, r"counts global step 13, which is not epoch 2 x 5 steps per epoch \+ step 4"),
    ({"step": 6, "global_step": 16}, r"counts global step 16, which is not epoch 2 x 5 steps per epoch \+ step 6"),
    ({"global_step": 12}, r"counts global step 12"),
    ({"step": -1}, r"holds step=-1, not a count"),
    ({"epoch": "2"}, r"holds epoch='2', not a count"),
    ({"history": {"1": {}}}, r"history that is not a list"),
])
def test_edited_counters_are_refused(tmp_path, changes, message):
    path, _ = write_checkpoint(tmp_path / "run")
    edit_state(path, **changes)
    with pytest.raises(AttnzooError, match=message):
        verify_checkpoint(path, STEPS_PER_EPOCH)


def test_a_stop_after_the_last_step_of_an_epoch_is_consistent(tmp_path):
    """Stopped after the last step, before the epoch's end: step == steps per epoch."""
    path, _ = write_checkpoint(tmp_path / "run", epoch=0, step=STEPS_PER_EPOCH)
    assert verify_checkpoint(path, STEPS_PER_EPOCH)["global_step"] == STEPS_PER_EPOCH


def test_a_checkpoint_of_another_recipe_is_refused_naming_both_runs(tmp_path):
    ours = recipes.from_dict(tiny_recipe_dict(tmp_path), check_plugins=False)
    theirs = recipes.from_dict(tiny_recipe_dict(tmp_path, optim={"lr": 0.1}, output_dir=str(tmp_path / "other")),
                               check_plugins=False)
    path, _ = write_checkpoint(tmp_path / "other", recipe=theirs.to_dict())
    state = verify_checkpoint(path)
    with pytest.raises(AttnzooError, match=(
            rf"checkpoint '{path}' belongs to another run, '{tmp_path / 'other'}', not to this run "
            rf"'{tmp_path / 'run'}' \(optim.lr: 0.1 in that run, 0.003 in this one\)")):
        check_same_run(path, state, ours.to_dict(), ours.run_dir)
    # the same recipe in another folder is the same run (a copied checkpoint): accepted
    check_same_run(path, state, theirs.to_dict(), tmp_path / "copy")


def test_a_checkpoint_of_an_earlier_version_is_judged_by_its_run_folders_recipe(tmp_path):
    """Checkpoints written before they recorded their recipe: the recipe.yaml beside them says."""
    ours = recipes.from_dict(tiny_recipe_dict(tmp_path), check_plugins=False)
    path, _ = write_checkpoint(tmp_path / "other")
    state = verify_checkpoint(path)
    check_same_run(path, state, ours.to_dict(), ours.run_dir)  # nothing records a recipe: accepted
    theirs = recipes.from_dict(tiny_recipe_dict(tmp_path, train={"seed": 7}), check_plugins=False)
    (tmp_path / "other" / "recipe.yaml").write_text(yaml.safe_dump(theirs.to_dict()))
    with pytest.raises(AttnzooError, match=r"belongs to another run.*train.seed: 7 in that run, 0 in this one"):
        check_same_run(path, state, ours.to_dict(), ours.run_dir)


def make(tmp_path, registry, **sections):
    return recipes.from_dict(tiny_recipe_dict(tmp_path, **sections), registry=registry)


def stop_at(step_to_stop: int):
    def _stop_requested(self, step):
        return self.state.epoch == 0 and step == step_to_stop
    return _stop_requested


@pytest.mark.slow
def test_resume_from_another_runs_checkpoint_is_refused(tmp_path, builtin_registry, monkeypatch):
    """Both runs stopped in their first epoch; ours resumed from the other's checkpoint."""
    ours = make(tmp_path, builtin_registry)
    other = make(tmp_path, builtin_registry, optim={"lr": 1e-2}, output_dir=str(tmp_path / "other"))
    monkeypatch.setattr(Trainer, "_stop_requested", stop_at(3))
    for recipe in (ours, other):
        with pytest.raises(Stopped):
            train(recipe)
    monkeypatch.undo()
    foreign = list_checkpoints(tmp_path / "other")[-1]
    before = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    with pytest.raises(AttnzooError, match=(
            rf"belongs to another run, '{tmp_path / 'other'}', not to this run '{tmp_path / 'run'}' "
            r"\(optim.lr: 0.01 in that run, 0.003 in this one\)")):
        train(ours, resume=Resume.at(foreign))
    assert (tmp_path / "run" / "metrics.jsonl").read_bytes() == before  # its history was not adopted
    train(ours, resume=Resume.LATEST)  # its own checkpoint still resumes


@pytest.mark.slow
def test_a_resumed_run_counts_the_step_time_before_its_interruption(tmp_path, builtin_registry, monkeypatch):
    r = make(tmp_path, builtin_registry, train={"epochs": 1})
    monkeypatch.setattr(Trainer, "_stop_requested", stop_at(9))
    with pytest.raises(Stopped, match="stopped by SIGTERM at epoch 1, step 10"):
        train(r)
    monkeypatch.undo()
    path = list_checkpoints(tmp_path / "run")[-1]
    saved = json.loads((path / "state.json").read_text())["epoch_seconds_before"]
    assert saved > 0  # the 10 steps were timed
    # Deterministic: pretend those 10 steps took 1000 s; the resumed epoch and the run count them.
    edit_state(path, epoch_seconds_before=1000.0)
    report = train(r, resume=Resume.LATEST)
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert 1000.0 < row["epoch_seconds"] < 1000.0 + 60
    assert report["train_seconds"] == row["epoch_seconds"]
    assert row["images_per_sec"] == pytest.approx(28 * 64 / row["epoch_seconds"])
    # the steady speed is that of the steps this process timed, not the 1000 s
    assert row["steady_images_per_sec"] > 100
