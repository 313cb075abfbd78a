"""train.log_with: the trackers Accelerate logs to, each writing to disk in the run's folder."""

import pytest

from attnzoo.config.recipe import from_dict
from attnzoo.errors import AttnzooError
from attnzoo.run import assembly
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")


def test_tensorboard_and_offline_wandb_both_write_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    recipe = from_dict(tiny_recipe_dict(tmp_path, name="study1", train={"log_with": ["tensorboard", "wandb"]}))
    train(recipe)
    events = list((recipe.run_dir / "study1").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    runs = list((recipe.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))
    log = next(runs[0].glob("*.wandb")).read_bytes()
    assert b"optim.lr" in log and b"study1" in log  # the recipe is the tracked config, the study its group


def test_tags_name_the_study_arm_and_variant(tmp_path):
    recipe = from_dict(tiny_recipe_dict(tmp_path, name="s", output_dir=str(tmp_path / "s" / "cosine-seed0"),
                                        attention={"name": "cosine"}))
    options = assembly.tracker_options(recipe)
    assert options["wandb"]["tags"] == ["s", "cosine"] and options["wandb"]["group"] == "s"
    assert options["mlflow"]["tags"] == {"study": "s", "arm": "cosine", "variant": "cosine"}


def test_a_missing_tracker_package_is_an_error_naming_pip(tmp_path, monkeypatch):
    monkeypatch.setattr(assembly, "tracker_installed", lambda name: name != "mlflow")
    recipe = from_dict(tiny_recipe_dict(tmp_path, train={"log_with": ["tensorboard", "mlflow"]}))
    with pytest.raises(AttnzooError, match=r"mlflow, not installed here: pip install mlflow"):
        train(recipe)
    assert not (recipe.run_dir / "recipe.yaml").exists()  # refused before anything was written


def test_an_unknown_tracker_name_is_a_recipe_error_with_a_suggestion(tmp_path):
    with pytest.raises(AttnzooError, match=r"train.log_with\[0\]: 'wanb' is not a tracker.*wandb"):
        from_dict(tiny_recipe_dict(tmp_path, train={"log_with": ["wanb"]}))


def test_empty_log_with_logs_nowhere(tmp_path):
    recipe = from_dict(tiny_recipe_dict(tmp_path, train={"log_with": []}))
    assert assembly.tracker_names(recipe) == []
