"""Image folders in ImageNet's layout (train/ + val/): read like train/ + test/, the split's name recorded."""

import json

import numpy as np
import pytest
from PIL import Image

from attnzoo.config.recipe import from_dict
from attnzoo.data.datasets import held_out_folder, list_imagefolder
from attnzoo.errors import AttnzooError
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict


def write_split(root, split, classes=("cat", "dog"), per_class=6, size=16, seed=0):
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., c] = 255  # a class is a colour: learnable in a few steps
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_a_val_folder_is_the_held_out_split(tmp_path):
    write_split(tmp_path, "train")
    write_split(tmp_path, "val", per_class=3, seed=1)
    train_set, held_out = list_imagefolder(tmp_path, 16)
    assert held_out_folder(tmp_path) == "val"
    assert (len(train_set), len(held_out)) == (12, 6)
    assert {path.parent.parent.name for path, _ in held_out.files} == {"val"}


def test_test_is_preferred_to_val_and_an_unlabelled_test_folder_is_skipped(tmp_path):
    write_split(tmp_path, "train")
    write_split(tmp_path, "val", per_class=2)
    (tmp_path / "test").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "test" / "unlabelled.png")  # ImageNet's test/: no classes
    assert held_out_folder(tmp_path) == "val"
    write_split(tmp_path, "test", per_class=1)
    assert held_out_folder(tmp_path) == "test"


def test_a_folder_without_a_held_out_split_says_which_folders_it_needs(tmp_path):
    write_split(tmp_path, "train")
    with pytest.raises(AttnzooError, match=r"test/<class>/ .*val/<class>/"):
        list_imagefolder(tmp_path, 16)


def test_a_train_val_folder_trains_end_to_end_and_the_run_names_its_test_split(tmp_path):
    write_split(tmp_path / "imgs", "train", per_class=16)
    write_split(tmp_path / "imgs", "val", per_class=4, seed=1)
    recipe = from_dict(tiny_recipe_dict(tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "imgs")},
                                        train={"epochs": 1, "batch_size": 8, "log_with": []}))
    report = train(recipe)
    assert report["samples"] == 8 and report["test_split"] == "val"
    assert json.loads((recipe.run_dir / "test_metrics.json").read_text())["test_split"] == "val"
