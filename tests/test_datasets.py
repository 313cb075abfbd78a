"""Images are decoded by their mode: every mode PIL writes comes out as the 8-bit RGB it shows,
16-bit images scaled (never clipped to white), images without a fixed range refused. Image folders in
ImageNet's layout (train/ + val/) are read like train/ + test/, the split's name recorded."""

import json
import pickle

import numpy as np
import pytest
import torch
from attnzoo.config.recipe import from_dict
from attnzoo.data.datasets import decode_one, held_out_folder, list_imagefolder, load_cifar, load_imagefolder
from attnzoo.data.loader import load_splits
from attnzoo.errors import AttnzooError
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict, write_cifar100_fixture
from PIL import Image


def decoded(tmp_path, img, name="img.png", size=None):
    path = tmp_path / name
    img.save(path)
    return decode_one(path, size or img.size[0])  # (3, H, W) uint8


def test_a_16_bit_png_is_scaled_to_8_bits_not_saturated(tmp_path):
    ramp = (np.arange(1024, dtype=np.uint16) * 64).reshape(32, 32)  # 0 .. 65472
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    out = decoded(tmp_path, img)
    assert out.dtype == np.uint8 and out.shape == (3, 32, 32)
    expected = np.round(ramp / 257).astype(np.uint8)
    for channel in out:
        np.testing.assert_array_equal(channel, expected)
    assert out.min() == 0 and out[0, 16, 0] == 128  # 32768 / 257 = 127.5
    assert (out == 255).mean() == 2 / 1024  # 65408 and 65472; the earlier decoder made 99 % of it white


def test_16_bit_full_scale_and_8_bit_values_stored_in_16_bits(tmp_path):
    values = np.array([[0, 257 * 128, 65535, 257]], dtype=np.uint16)
    img = Image.fromarray(np.repeat(values, 4, axis=0))  # 4 x 4
    out = decoded(tmp_path, img)
    assert out[0, 0].tolist() == [0, 128, 255, 1]


def test_a_32_bit_integer_image_in_the_16_bit_range_is_scaled(tmp_path):
    values = np.array([[0, 65535], [257 * 10, 257 * 200]], dtype=np.int32)
    img = Image.fromarray(values)
    assert img.mode == "I"
    assert decoded(tmp_path, img, "img.tiff")[1].tolist() == [[0, 255], [10, 200]]


@pytest.mark.parametrize("mode, values, message", [
    ("I", np.array([[0, 70000], [1, 2]], dtype=np.int32), r"holds I pixels from 0 to 70000, outside the 16-bit range"),
    ("I", np.array([[-5, 0], [1, 2]], dtype=np.int32), r"holds I pixels from -5 to 2"),
    ("F", np.array([[0.5, 1.0], [0.0, 2.0]], dtype=np.float32), r"holds floating-point pixels \(mode F\)"),
])
def test_images_without_an_8_bit_reading_are_refused_with_the_file_named(tmp_path, mode, values, message):
    img = Image.fromarray(values)
    assert img.mode == mode
    with pytest.raises(AttnzooError, match=rf"image '{tmp_path / 'img.tiff'}' {message}.*Save it as an 8- or 16-bit"):
        decoded(tmp_path, img, "img.tiff")


def test_grayscale_comes_out_as_three_equal_channels(tmp_path):
    gray = np.array([[0, 50], [200, 255]], dtype=np.uint8)
    out = decoded(tmp_path, Image.fromarray(gray))
    assert [channel.tolist() for channel in out] == [gray.tolist()] * 3


def test_rgba_keeps_the_colours_and_drops_the_alpha(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], dtype=np.uint8).repeat(2, axis=0)
    out = decoded(tmp_path, Image.fromarray(rgba, "RGBA"))
    assert out[:, 0, 0].tolist() == [10, 20, 30] and out[:, 0, 1].tolist() == [40, 50, 60]


def test_a_palette_image_decodes_to_its_palette_colours(tmp_path):
    img = Image.new("P", (2, 2))
    img.putpalette([255, 0, 0, 0, 128, 255] + [0] * (254 * 3))
    img.putdata([0, 1, 1, 0])
    out = decoded(tmp_path, img)
    assert out[:, 0, 0].tolist() == [255, 0, 0] and out[:, 0, 1].tolist() == [0, 128, 255]


def test_cmyk_is_converted_to_rgb(tmp_path):
    img = Image.new("CMYK", (2, 2))
    img.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 255, 0, 0)])
    out = decoded(tmp_path, img, "img.tiff")  # lossless (a CMYK JPEG blurs 2 x 2 pixels)
    assert out[:, 0, 0].tolist() == [255, 255, 255] and out[:, 0, 1].tolist() == [0, 255, 255]
    assert out[:, 1, 0].tolist() == [0, 0, 0] and out[:, 1, 1].tolist() == [255, 0, 255]


def test_a_damaged_image_file_is_named(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(AttnzooError, match=rf"cannot read image '{tmp_path / 'bad.png'}' .*Remove or replace"):
        decode_one(tmp_path / "bad.png", 8)


# ---------------------------------------------------------------- train/ + val/


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


def write_folder(root, classes=("cat", "dog"), per_class=3, size=8):
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (40 * i, 10 * j, 0)).save(root / split / name / f"{j}.png")


def test_cifar100_official_layout(tmp_path):
    write_cifar100_fixture(tmp_path, train=50, test=10)
    train, test = load_cifar("cifar100", tmp_path, download=False)
    assert train.images.shape == (50, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.labels.tolist() == list(range(10)) and len(train.classes) == 100
    raw = pickle.loads((tmp_path / "cifar-100-python" / "train").read_bytes())[b"data"]
    # channel-major rows of 3072 bytes: first 1024 are red
    assert np.array_equal(train.images[3, 0].numpy().ravel(), raw[3, :1024])


def test_cifar100_through_a_recipe(tmp_path, builtin_registry):
    write_cifar100_fixture(tmp_path / "data", train=80, test=20)
    r = from_dict(tiny_recipe_dict(tmp_path, data={"dataset": "cifar100", "root": str(tmp_path / "data"),
                                                   "download": False, "val_fraction": 0.25},
                                   model={"image_size": 32}), registry=builtin_registry)
    splits = load_splits(r)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 20, 20)
    assert splits.train.images.shape[-1] == 32 and splits.mean.shape == (3,)


def test_missing_cifar_without_download(tmp_path):
    with pytest.raises(AttnzooError, match="cifar100 not found .*data.download=true"):
        load_cifar("cifar100", tmp_path, download=False)


def test_cifar_refuses_code_in_pickles(tmp_path):
    write_cifar100_fixture(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "cifar-100-python" / "meta").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(AttnzooError, match="refusing to load builtins.print"):
        load_cifar("cifar100", tmp_path, download=False)


def test_imagefolder_reads_and_resizes(tmp_path):
    write_folder(tmp_path, size=10)
    train, test = load_imagefolder(tmp_path, 8)
    assert train.images.shape == (6, 3, 8, 8) and train.classes == ["cat", "dog"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    again, _ = load_imagefolder(tmp_path, 8)  # from the cache
    assert torch.equal(again.images, train.images)


@pytest.mark.parametrize("breakage,message", [
    ("missing", "not found"),
    ("empty_class", "has no images"),
    ("bad_image", "cannot read image"),
    ("mismatch", "class folders differ"),
])
def test_imagefolder_errors(tmp_path, breakage, message):
    write_folder(tmp_path)
    root = tmp_path
    if breakage == "missing":
        root = tmp_path / "nowhere"
    elif breakage == "empty_class":
        (tmp_path / "train" / "empty").mkdir()
        (tmp_path / "test" / "empty").mkdir()
    elif breakage == "bad_image":
        (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    else:
        (tmp_path / "test" / "bird").mkdir()
    with pytest.raises(AttnzooError, match=message):
        load_imagefolder(root, 8)


def test_imagefolder_decodes_only_the_samples_a_recipe_uses(tmp_path, monkeypatch):
    """Limits select the same samples as from the decoded folder; the other files are never opened."""
    from attnzoo.data import datasets
    from attnzoo.data.loader import split
    from conftest import tiny_recipe_dict

    write_folder(tmp_path / "imgs", classes=("cat", "dog", "emu"), per_class=20, size=16)
    recipe = from_dict(tiny_recipe_dict(tmp_path, data={"dataset": "imagefolder", "root": str(tmp_path / "imgs"),
                                                        "max_train_samples": 10, "max_eval_samples": 4}),
                       check_plugins=False)
    train, test = load_imagefolder(tmp_path / "imgs", 16)
    expected = split(train, test, recipe.data)
    opened = []
    decode = datasets.decode_one
    monkeypatch.setattr(datasets, "decode_one", lambda path, size: opened.append(path) or decode(path, size))
    splits = load_splits(recipe)
    assert len(opened) == 10 + 4 + 4  # train, validation, test: not the folder's 120 images
    for got, want in zip((splits.train, splits.val, splits.test), expected, strict=True):
        assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)
