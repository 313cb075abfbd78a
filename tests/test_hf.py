"""Hugging Face datasets saved with save_to_disk: columns guessed by feature type, decoded to uint8, trained on."""

import numpy as np
import pytest
import torch
from PIL import Image

from attnzoo.config.recipe import from_dict
from attnzoo.data.hf import load_hf
from attnzoo.errors import AttnzooError
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict

datasets = pytest.importorskip("datasets")


def save_dataset(path, per_split=(24, 8), size=16, image_column="img", extra_image=False):
    rng = np.random.default_rng(0)
    features = {image_column: datasets.Image(), "label": datasets.ClassLabel(names=["red", "green"]),
                "note": datasets.Value("string")}
    if extra_image:
        features["mask"] = datasets.Image()
    splits = {}
    for name, n in zip(("train", "test"), per_split):
        rows = {key: [] for key in features}
        for i in range(n):
            label = i % 2
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            pixels[..., label] = 255
            rows[image_column].append(Image.fromarray(pixels))
            rows["label"].append(label)
            rows["note"].append(f"row {i}")
            if extra_image:
                rows["mask"].append(Image.fromarray(pixels[..., 0]))
        splits[name] = datasets.Dataset.from_dict(rows, features=datasets.Features(features))
    datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def test_columns_are_guessed_and_images_decode_to_the_pixels_saved(tmp_path):
    root = save_dataset(tmp_path / "ds")
    train_set, test_set = load_hf(str(root), 16)
    assert train_set.images.dtype == torch.uint8 and train_set.images.shape == (24, 3, 16, 16)
    assert test_set.labels.tolist() == [0, 1] * 4 and train_set.classes == ["red", "green"]
    saved = datasets.load_from_disk(str(root))["train"][3]["img"]
    assert torch.equal(train_set.images[3], torch.from_numpy(np.asarray(saved).transpose(2, 0, 1).copy()))


def test_images_are_resized_to_the_model_size(tmp_path):
    train_set, _ = load_hf(str(save_dataset(tmp_path / "ds")), 8)
    assert train_set.images.shape == (24, 3, 8, 8)


def test_a_wrong_image_key_lists_the_columns(tmp_path):
    root = save_dataset(tmp_path / "ds")
    with pytest.raises(AttnzooError, match=r"no column 'image'.*img \(Image\), label \(ClassLabel\), note \(Value\)"):
        load_hf(str(root), 16, image_key="image")


def test_two_image_columns_cannot_be_guessed_and_naming_one_works(tmp_path):
    root = save_dataset(tmp_path / "ds", extra_image=True)
    with pytest.raises(AttnzooError, match=r"several Image column.*img \(Image\).*mask \(Image\).*data.image_key"):
        load_hf(str(root), 16)
    train_set, _ = load_hf(str(root), 16, image_key="img")
    assert len(train_set) == 24


def test_a_text_column_as_image_key_is_refused(tmp_path):
    with pytest.raises(AttnzooError, match=r"'note' is a Value, not an Image"):
        load_hf(str(save_dataset(tmp_path / "ds")), 16, image_key="note")


def test_image_key_without_hf_is_a_recipe_error(tmp_path):
    with pytest.raises(AttnzooError, match=r"data.image_key: .*set data.dataset=hf"):
        from_dict(tiny_recipe_dict(tmp_path, data={"image_key": "img"}), check_plugins=False)


def test_an_hf_dataset_trains_end_to_end(tmp_path):
    root = save_dataset(tmp_path / "ds", per_split=(40, 10), image_column="image")
    recipe = from_dict(tiny_recipe_dict(tmp_path, data={"dataset": "hf", "root": str(root)},
                                        train={"epochs": 1, "batch_size": 8, "log_with": []}))
    report = train(recipe)
    assert report["samples"] == 10 and report["test_split"] == "test"
