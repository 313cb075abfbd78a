"""Putting a run together: the batch split, the resume modes, one set of augmentation switches,
and the trainer and evaluation sharing one forward pass."""

from __future__ import annotations

import pytest
import torch
from attnzoo.config import recipe as recipes
from attnzoo.config.recipe import AugmentConfig
from attnzoo.data import augment
from attnzoo.data.loader import Batching
from attnzoo.errors import AttnzooError
from attnzoo.run import assembly
from attnzoo.run import rundir
from attnzoo.run.rundir import Resume
from conftest import tiny_recipe_dict


def test_the_global_batch_is_split_once_per_process():
    b = Batching(128, processes=4, rank=2)
    assert (b.per_process, b.mine) == (32, slice(64, 96))
    assert Batching(64).mine == slice(0, 64)
    with pytest.raises(AttnzooError, match="train.batch_size 100 is not divisible by the 3 processes"):
        Batching(100, processes=3)


def test_resume_modes_say_what_happens_to_a_run_folder(tmp_path):
    assert not Resume.NO.wanted(tmp_path) and Resume.LATEST.wanted(tmp_path)
    assert not Resume.AUTO.wanted(tmp_path)  # nothing here: start
    (tmp_path / "recipe.yaml").write_text("name: t\n")
    assert not Resume.AUTO.wanted(tmp_path)  # a recipe.yaml alone is a user's file, not a run
    rundir.RunDir(tmp_path).write_marker()
    assert Resume.AUTO.wanted(tmp_path)  # this folder holds a run attnzoo made: continue it
    at = Resume.at("run/checkpoints/epoch0003")
    assert at.wanted(tmp_path) and str(at.checkpoint) == "run/checkpoints/epoch0003"


def test_fit_refuses_the_old_booleans(tmp_path, builtin_registry):
    from attnzoo.run.trainer import Trainer

    trainer = Trainer(recipes.from_dict(tiny_recipe_dict(tmp_path), registry=builtin_registry))
    with pytest.raises(TypeError, match=r"resume must be a Resume \(Resume.NO"):
        trainer.fit(True)
    assert not (tmp_path / "run").exists()  # refused before the folder was touched


@pytest.mark.parametrize("switches,names", [
    ({}, ["crop", "flip", "rotation", "color_jitter"]),
    ({"crop": False, "rotation": 0}, ["flip", "color_jitter"]),
    ({"crop_padding": 0, "flip": False, "color_jitter": 0}, ["rotation"]),
    ({"crop": False, "flip": False, "rotation": 0, "color_jitter": 0}, []),
])
def test_one_set_of_augmentation_switches_for_both_pipelines(switches, names):
    from attnzoo.data.streaming import TRANSFORMS, augmentations

    steps = augment.plan(AugmentConfig(**switches))
    assert [name for name, _ in steps] == names
    assert set(augment.BATCHED) == set(TRANSFORMS)  # every step has its batched and its per-image form
    expected = {"crop": "RandomCrop", "flip": "RandomHorizontalFlip", "rotation": "RandomRotation",
                "color_jitter": "ColorJitter"}
    transforms = [type(t).__name__ for t in augmentations(AugmentConfig(**switches), 16).transforms]
    assert transforms == ([expected[n] for n in names] or ["Identity"])


def test_a_plan_without_steps_leaves_the_batch_unchanged():
    x = torch.rand(4, 3, 8, 8)
    rng = augment.BatchRandom(torch.Generator().manual_seed(0))
    assert torch.equal(augment.apply(x, [], rng), x)
    flipped = augment.apply(x, [("flip", 1.0)], rng)  # probability 1: every image flipped
    assert torch.equal(flipped, x.flip(-1))


def test_evaluation_uses_the_trainers_forward_and_report(tmp_path, builtin_registry):
    """The same Forward object predicts for the trainer and for a finished run: every sample once,
    in sample order, whatever the padding of the last batch."""
    from attnzoo.run.trainer import Trainer

    r = recipes.from_dict(tiny_recipe_dict(tmp_path, data={"max_eval_samples": 37}), registry=builtin_registry)
    trainer = Trainer(r)
    logits, labels = trainer.forward.predict(trainer.test_loader, len(trainer.splits.classes))
    assert logits.shape == (37, 10) and torch.equal(labels, trainer.splits.test.labels)
    with torch.no_grad():
        trainer.model.eval()
        direct = trainer.model(trainer.test_loader.images_at(list(range(37))))
    torch.testing.assert_close(logits, direct.float())
    assert trainer.evaluate(trainer.test_loader)["samples"] == 37
    assert isinstance(trainer.forward, assembly.Forward) and trainer.forward.mode == "none"  # CPU: eager
