"""The streaming pipeline (data.pipeline: dataloader): same samples, order and rank split as the
device pipeline, deterministic per-image augmentation, and a full run on an image folder."""

import json

import numpy as np
import pytest
import torch
from attnzoo.config.recipe import from_dict
from attnzoo.data.loader import Batching, DeviceLoader, load_splits
from attnzoo.data.streaming import StreamingLoader, load_file_splits
from attnzoo.errors import RecipeError
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict
from PIL import Image

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """36 train and 18 test images of 20 px (resized to 16): a colour per class plus noise."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 12), ("test", 6)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                base = np.zeros((20, 20, 3)) + 80 * label
                pixels = (base + rng.integers(0, 96, (20, 20, 3))).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{j}.png")
    return root


def recipe(tmp_path, folder, **data):
    d = {"dataset": "imagefolder", "root": str(folder), "pipeline": "dataloader", "num_workers": 0,
         "val_fraction": 0.25, **data}
    return from_dict(tiny_recipe_dict(tmp_path, data=d, train={"batch_size": 8}), check_plugins=False)


def loader(r, split="train", rank=0, world=1, splits=None):
    splits = splits or load_file_splits(r)
    return StreamingLoader(getattr(splits, split), r.data, splits.mean, splits.std, device="cpu",
                           batching=Batching(r.train.batch_size, world, rank), seed=r.train.seed)


def batches(stream, epoch=0, start_step=0):
    return [(step, x, y) for step, x, y in stream.train_batches(epoch, start_step)]


def test_same_split_and_order_as_the_device_pipeline(tmp_path, folder):
    r = recipe(tmp_path, folder, max_eval_samples=5)
    files, images = load_file_splits(r), load_splits(r)
    for name in ("train", "val", "test"):
        assert [label for _, label in getattr(files, name).files] == getattr(images, name).labels.tolist()
    assert (len(files.train), len(files.val), len(files.test)) == (27, 5, 5)
    # one normalisation statistic: the same images, the same computation
    assert torch.equal(files.mean, images.mean) and torch.equal(files.std, images.std)
    device = DeviceLoader(images.train, r.data, files.mean, files.std, device="cpu", batching=Batching(8), seed=0)
    stream = loader(r, splits=files)
    assert len(stream) == len(device) == 3
    assert [y.tolist() for _, _, y in batches(stream, 2)] == [y.tolist() for _, _, y in device.train_batches(2)]
    assert torch.equal(stream.pixels_at([0, 2, 3]), device.pixels_at([0, 2, 3]))  # the same decode
    assert torch.equal(stream.images_at([0, 2, 3]), device.images_at([0, 2, 3]))  # and normalisation


def test_training_batches_are_seeded_and_resumable(tmp_path, folder):
    stream = loader(recipe(tmp_path, folder))
    full = batches(stream, epoch=1)
    assert [s for s, _, _ in full] == [0, 1, 2] and full[0][1].shape == (8, 3, 16, 16)
    resumed = batches(stream, epoch=1, start_step=1)
    assert [s for s, _, _ in resumed] == [1, 2]
    for (_, x, y), (_, rx, ry) in zip(full[1:], resumed):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    other = batches(stream, epoch=2)
    assert [y.tolist() for _, _, y in other] != [y.tolist() for _, _, y in full]
    # augmented: no training image equals any plain (un-augmented) image. Comparing with the
    # first plain images would pass through the shuffle alone, augmentation or not.
    plain = stream.images_at(list(range(len(stream.dataset))))
    for _, x, _ in full:
        assert not any(torch.equal(image, p) for image in x for p in plain)


def test_augmentations_switch_off(tmp_path, folder):
    off = {"crop": False, "flip": False, "rotation": 0, "color_jitter": 0}
    r = recipe(tmp_path, folder, augment=off)
    stream = loader(r)
    _, x, y = batches(stream)[0]
    plain = stream.images_at(list(range(len(stream.dataset))))
    labels = [label for _, label in stream.dataset.files.files]
    for image, label in zip(x, y):  # every batch image is one of the plain images, unchanged
        assert any(torch.equal(image, p) and label == l for p, l in zip(plain, labels))


def test_two_ranks_concatenate_to_one_process(tmp_path, folder):
    r = recipe(tmp_path, folder)
    splits = load_file_splits(r)
    one = batches(loader(r, splits=splits))
    ranks = [batches(loader(r, rank=k, world=2, splits=splits)) for k in range(2)]
    for (_, x, y), (_, x0, y0), (_, x1, y1) in zip(one, *ranks):
        assert x0.shape[0] == 4 and torch.equal(torch.cat([y0, y1]), y)
        assert torch.equal(torch.cat([x0, x1]), x)  # the same augmentation of every image


def test_eval_covers_each_sample_once_across_ranks(tmp_path, folder):
    r = recipe(tmp_path, folder)
    splits = load_file_splits(r)
    whole = {}
    for x, y, index in loader(r, "test", splits=splits).eval_batches():
        whole.update({i: (image, label) for i, image, label in zip(index.tolist(), x, y.tolist()) if i >= 0})
        assert len(x) == 8  # the last batch is padded to full size (index -1), as in the device pipeline
    assert sorted(whole) == list(range(18))
    seen = []
    for rank in range(4):  # 18 samples over 4 ranks: 5 each, two padding rows
        for x, y, index in loader(r, "test", rank=rank, world=4, splits=splits).eval_batches(batch_size=3):
            for i, image, label in zip(index.tolist(), x, y.tolist()):
                if i >= 0:
                    seen.append(i)
                    assert torch.equal(image, whole[i][0]) and label == whole[i][1]
    assert sorted(seen) == list(range(18))


def test_results_do_not_depend_on_the_number_of_workers(tmp_path, folder):
    serial = batches(loader(recipe(tmp_path, folder, num_workers=0)), epoch=3)
    parallel = batches(loader(recipe(tmp_path, folder, num_workers=2)), epoch=3)
    assert len(serial) == len(parallel) == 3
    for (s, x, y), (ps, px, py) in zip(serial, parallel):
        assert s == ps and torch.equal(x, px) and torch.equal(y, py)


@pytest.mark.slow
def test_end_to_end_run_on_an_image_folder(tmp_path, folder, builtin_registry):
    data = tiny_recipe_dict(tmp_path, data={"dataset": "imagefolder", "root": str(folder), "pipeline": "dataloader",
                                            "num_workers": 0, "val_fraction": 0.25},
                            train={"epochs": 2, "batch_size": 8})
    report = train(from_dict(data, registry=builtin_registry))
    test = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert test["samples"] == 18 and test["top1"] == report["top1"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and all(row["val_top1"] is not None for row in rows)
    assert (tmp_path / "run" / "attention.json").is_file()


def test_dataloader_pipeline_is_for_image_folders(tmp_path):
    data = tiny_recipe_dict(tmp_path, data={"dataset": "cifar10", "pipeline": "dataloader", "num_workers": -1})
    with pytest.raises(RecipeError) as err:
        from_dict(data, check_plugins=False)
    assert "streams image folders" in str(err.value) and "data.num_workers: must be >= 0" in str(err.value)
