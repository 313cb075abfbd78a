"""Images are decoded by their mode: every mode PIL writes comes out as the 8-bit RGB it shows,
16-bit images scaled (never clipped to white), images without a fixed range refused. Image folders in
ImageNet's layout (train/ + val/) are read like train/ + test/, the split's name recorded."""

import json

import numpy as np
import pytest
from attnzoo.config.recipe import from_dict
from attnzoo.data.datasets import decode_one, held_out_folder, list_imagefolder
from attnzoo.errors import AttnzooError
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict
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
