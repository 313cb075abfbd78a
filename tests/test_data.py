"""Datasets from disk (official CIFAR layout, image folders) and the batched augmentations."""

import pickle

import numpy as np
import pytest
import torch
from attnzoo.config.recipe import DataConfig, from_dict
from attnzoo.data import augment
from attnzoo.data.datasets import load_cifar, load_imagefolder
from attnzoo.data.loader import Batching, DeviceLoader, load_splits
from attnzoo.errors import AttnzooError
from conftest import tiny_recipe_dict, write_cifar100_fixture
from PIL import Image


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


def write_folder(root, classes=("cat", "dog"), per_class=3, size=8):
    for split in ("train", "test"):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (40 * i, 10 * j, 0)).save(root / split / name / f"{j}.png")


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


def test_augmentations_keep_shape_range_and_are_seeded():
    x = torch.rand(16, 3, 12, 12)
    for fn in (lambda g: augment.random_crop(x, 4, g), lambda g: augment.random_flip(x, g),
               lambda g: augment.random_rotation(x, 15, g), lambda g: augment.color_jitter(x, 0.3, g)):
        a = fn(augment.BatchRandom(torch.Generator().manual_seed(1)))
        b = fn(augment.BatchRandom(torch.Generator().manual_seed(1)))
        assert a.shape == x.shape and torch.equal(a, b) and a.min() >= 0 and a.max() <= 1


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).view(2, 3, 5, 5)
    out = augment.random_crop(x, 2, augment.BatchRandom(torch.Generator().manual_seed(0)))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, i:i + 5, j:j + 5] for i in range(5) for j in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)


def test_flip_and_zero_rotation():
    x = torch.rand(64, 3, 4, 4)
    out = augment.random_flip(x, augment.BatchRandom(torch.Generator().manual_seed(0)))
    flipped = [(torch.equal(o, i.flip(-1))) for o, i in zip(out, x)]
    assert 10 < sum(flipped) < 54
    torch.testing.assert_close(augment.random_rotation(x, 0.0, augment.BatchRandom(torch.Generator())), x, atol=1e-5, rtol=0)


def loader(n=100, batch=10, rank=0, world=1, seed=0):
    from attnzoo.data.datasets import ImageSet

    images = torch.randint(0, 255, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    data = ImageSet(images, torch.arange(n), ["x"])
    return DeviceLoader(data, DataConfig(), torch.zeros(3), torch.ones(3), device="cpu",
                        batching=Batching(batch, world, rank), seed=seed)


def test_training_order_is_seeded_and_resumable():
    a = [l.tolist() for _, _, l in loader().train_batches(epoch=2)]
    b = [l.tolist() for _, _, l in loader().train_batches(epoch=2, start_step=4)]
    assert a[4:] == b and sorted(sum(a, [])) == list(range(100))
    assert a != [l.tolist() for _, _, l in loader().train_batches(epoch=3)]


def test_ranks_split_each_global_batch_and_eval_covers_every_sample_once():
    ranks = [loader(rank=r, world=2) for r in range(2)]
    for (_, x0, l0), (_, x1, l1), (_, full_x, full) in zip(ranks[0].train_batches(0), ranks[1].train_batches(0),
                                                           loader().train_batches(0)):
        assert torch.cat([l0, l1]).tolist() == full.tolist()
        torch.testing.assert_close(torch.cat([x0, x1]), full_x)  # same augmentation as one process
    n = 7
    seen = []
    for r in range(3):
        for _, labels, index in loader(n=n, batch=3, rank=r, world=3).eval_batches():
            seen += index[index >= 0].tolist()
    assert sorted(seen) == list(range(n))


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
