"""The strong recipe's parts: batched RandAugment / TrivialAugment, random erasing, Mixup / CutMix with
label smoothing, the weight average, stochastic depth and layer-wise LR decay, and runs that use them."""


import json
import math

import numpy as np
import pytest
import torch
from attnzoo.config import recipe as recipes
from attnzoo.data import augment
from attnzoo.errors import RecipeError
from attnzoo.model.vit import DropPath, VisionTransformer, drop_path_rates, layer_id, parameter_groups
from attnzoo.run import checkpoint
from attnzoo.run.ema import WeightAverage, split_checkpoint_state
from attnzoo.run.rundir import Resume
from attnzoo.run.trainer import Trainer, train
from conftest import ROOT, tiny_recipe_dict
from safetensors.torch import load_file
from torch import nn


def rng(seed=0, total=None, offset=0):
    return augment.BatchRandom(torch.Generator().manual_seed(seed), total=total, offset=offset)


def images(n=8, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- RandAugment / TrivialAugment


@pytest.mark.parametrize("steps", [[("randaugment", (2, 9))], [("trivialaugment", ())]])
def test_auto_augment_keeps_shape_and_range_and_changes_images(steps):
    x = images(32)
    y = augment.apply_strong(x, steps, rng())
    assert y.shape == x.shape and y.dtype == x.dtype
    assert 0 <= y.min() and y.max() <= 1
    changed = (y - x).abs().flatten(1).amax(1) > 0
    assert changed.sum() >= 16, changed  # identity is one op of 14: most images change


def test_auto_augment_depends_only_on_the_seed_and_splits_across_processes():
    x = images(8)
    steps = [("randaugment", (2, 9))]
    whole = augment.apply_strong(x, steps, rng(5))
    assert torch.equal(whole, augment.apply_strong(x, steps, rng(5)))
    halves = [augment.apply_strong(x[i * 4:(i + 1) * 4], steps, rng(5, total=8, offset=i * 4)) for i in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)  # two processes augment each image as one does
    assert not torch.equal(whole, augment.apply_strong(x, steps, rng(6)))


def test_batched_colour_operations_match_torchvision():
    from torchvision.transforms.v2 import functional as TF

    pixels = (torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) ** 2 * 255).round().to(torch.uint8)
    x = pixels.float() / 255
    assert torch.equal(augment._equalize(x), TF.equalize(pixels).float() / 255)
    factor = torch.full((4,), 1.7)
    assert torch.allclose(augment._blend(x, augment._sharp_blur(x), factor), TF.adjust_sharpness(x, 1.7), atol=1e-6)
    assert torch.allclose(augment._blend(x, torch.zeros_like(x), factor), TF.adjust_brightness(x, 1.7), atol=1e-6)


def test_magnitude_zero_randaugment_leaves_colours_of_enhance_ops_alone():
    """At magnitude 0 an enhancement factor is exactly 1 and a shift 0: only posterize (8 bits: the
    same levels), autocontrast, equalize and solarize (threshold 1) may change pixels."""
    x = (images(64) * 255).round() / 255
    op = torch.tensor([augment.OPS.index(n) for n in ("brightness", "color", "contrast", "sharpness", "shear_x",
                                                      "translate_y", "rotate", "posterize")] * 8)
    zero = torch.zeros(64)
    ranges = augment._RANGES["randaugment"]
    out = augment._photometric(augment._affine(x, op, zero, ranges), op, zero, zero, ranges)
    assert torch.allclose(out, x, atol=1e-6)


# ---------------------------------------------------------------- random erasing


def test_random_erasing_fills_one_rectangle_with_noise_at_the_probability():
    x = torch.full((400, 3, 16, 16), 7.0)  # a value the N(0, 1) noise never gives
    y = augment.random_erasing(x, 0.5, rng(3))
    erased = (y != 7.0).any(1)  # (B, H, W)
    hit = erased.flatten(1).any(1)
    assert 0.4 < hit.float().mean() < 0.6  # p = 0.5 over 400 images
    for mask in erased[hit][:50]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == h * w  # one full rectangle
        assert 0.02 * 256 * 0.5 <= h * w <= 256 / 3 * 1.6  # 2 %..1/3 of the area, up to rounding and clipping
    assert torch.equal(y, augment.random_erasing(x, 0.5, rng(3)))
    assert torch.equal(augment.random_erasing(x, 0.0, rng(3)), x)


# ---------------------------------------------------------------- Mixup / CutMix


def strong_augment(**keys) -> recipes.AugmentConfig:
    return recipes.AugmentConfig(**keys)


@pytest.mark.parametrize("keys", [{"mixup": 0.8}, {"cutmix": 1.0}, {"mixup": 0.8, "cutmix": 1.0}])
def test_mixed_targets_sum_to_one_and_carry_two_labels(keys):
    mixer = augment.Mixer(strong_augment(**keys), num_classes=10, label_smoothing=0.1)
    labels = torch.arange(8)
    x, targets = mixer(images(8), labels, seed=11)
    assert x.shape == (8, 3, 16, 16) and targets.shape == (8, 10)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    # each row: its own label and the label of its partner (the batch read backwards) above the smoothing floor
    floor = 0.1 / 10
    for i in range(8):
        above = set((targets[i] > floor + 1e-6).nonzero().flatten().tolist())
        assert above and above <= {i, 7 - i}


def test_mixup_is_seeded_per_step_and_leaves_numpys_global_state_alone():
    mixer = augment.Mixer(strong_augment(mixup=0.8), num_classes=10, label_smoothing=0.0)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    a = mixer(images(8), torch.arange(8), seed=5)
    assert np.array_equal(np.random.get_state()[1], before)
    b = mixer(images(8), torch.arange(8), seed=5)
    c = mixer(images(8), torch.arange(8), seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    # mixup: image i = lam * x_i + (1 - lam) * x_(7-i), and its target weighs label i by lam
    lam = a[1][0, 0].item()
    x = images(8)
    assert torch.allclose(a[0][0], lam * x[0] + (1 - lam) * x[7], atol=1e-6)


def test_mixer_refuses_an_odd_batch():
    mixer = augment.Mixer(strong_augment(mixup=0.8), num_classes=10, label_smoothing=0.0)
    with pytest.raises(Exception, match="odd"):
        mixer(images(7), torch.arange(7), seed=0)


# ---------------------------------------------------------------- the weight average


def test_weight_average_follows_the_closed_form():
    model = nn.Linear(3, 2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    average = WeightAverage(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(-2.0)
    for _ in range(5):
        average.update()
    # constant weights w after n updates from e0: e_n = d^n e0 + (1 - d^n) w
    d5 = 0.9 ** 5
    assert torch.allclose(average.state["weight"], d5 * start["weight"] + (1 - d5) * 1.0, atol=1e-6)
    assert torch.allclose(average.state["bias"], d5 * start["bias"] + (1 - d5) * -2.0, atol=1e-6)
    with average.swapped_in():
        assert torch.equal(model.weight, average.state["weight"])
    assert torch.equal(model.weight, torch.ones(2, 3))  # the trained weights are back


def test_weight_average_round_trips_through_a_checkpoints_tensors():
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.add_(1.0)
    average.update()
    weights, ema_tensors = split_checkpoint_state({**model.state_dict(), **average.checkpoint_tensors()})
    assert set(weights) == {"weight", "bias"} and set(ema_tensors) == {"ema.weight", "ema.bias"}
    other = WeightAverage(model, decay=0.5)
    other.load(ema_tensors)
    assert torch.equal(other.state["weight"], average.state["weight"])


# ---------------------------------------------------------------- stochastic depth and layer decay


def tiny_vit(registry, **kw):
    return VisionTransformer(image_size=16, patch_size=4, num_classes=10, dim=32, depth=4, heads=2, mlp_ratio=2.0,
                             dropout=0.0, kernel=registry.kernel("softmax", {}), **kw)


def test_drop_path_is_the_identity_at_eval_and_drops_whole_images_in_training(builtin_registry):
    torch.manual_seed(0)
    with_drop = tiny_vit(builtin_registry, drop_path=0.5)
    torch.manual_seed(0)
    without = tiny_vit(builtin_registry)
    assert with_drop.state_dict().keys() == without.state_dict().keys()
    x = images(16)
    with_drop.eval(), without.eval()
    assert torch.equal(with_drop(x), without(x))
    assert drop_path_rates(0.5, 4) == [0.0, 0.5 / 3, 1.0 / 3, 0.5]
    assert isinstance(with_drop.blocks[0].drop_path, nn.Identity) and with_drop.blocks[3].drop_path.rate == 0.5
    drop = DropPath(0.5).train()
    out = drop(torch.ones(1000, 4, 8))
    kept = out[:, 0, 0] != 0
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept images scaled by 1 / (1 - rate)
    assert (out == out[:, :1, :1]).all()  # one draw per image
    assert 0.4 < kept.float().mean() < 0.6


def test_layer_decay_scales_each_depths_learning_rate(builtin_registry):
    model = tiny_vit(builtin_registry)
    groups = parameter_groups(model, 0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert len(scale_of) == len(named)  # every parameter once
    assert scale_of[id(named["pos_embed"])] == 0.5 ** 5 and scale_of[id(named["patch_embed.proj.weight"])] == 0.5 ** 5
    assert scale_of[id(named["blocks.0.attn.qkv.weight"])] == 0.5 ** 4
    assert scale_of[id(named["blocks.3.mlp.fc2.bias"])] == 0.5
    assert scale_of[id(named["head.weight"])] == 1.0 and scale_of[id(named["norm.weight"])] == 1.0
    assert wd_of[id(named["blocks.2.attn.qkv.weight"])] == 0.05 and wd_of[id(named["blocks.2.attn.qkv.bias"])] == 0.0
    plain = parameter_groups(model, 0.05)
    assert len(plain) == 2 and all("lr_scale" not in g for g in plain)  # off: the groups of before


def test_layer_decay_groups_of_a_timm_model_and_the_lrs_a_step_trains_with(tmp_path, builtin_registry):
    recipe = recipes.from_dict(tiny_recipe_dict(
        tmp_path, model={"arch": "timm/vit_tiny_patch16_224", "patch_size": 16, "image_size": 32, "dropout": 0.0},
        optim={"lr": 1e-3, "layer_decay": 0.75, "schedule": "constant"}), registry=builtin_registry)
    trainer = Trainer(recipe, registry=builtin_registry)
    depth = len(trainer.raw_model.blocks)
    assert depth == 12
    assert layer_id("blocks.11.attn.proj.weight", depth) == 12 and layer_id("cls_token", depth) == 0
    trainer.fit()
    lrs = {g["layer"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[depth + 1] == pytest.approx(1e-3) and lrs[1] == pytest.approx(1e-3 * 0.75 ** 12)
    assert lrs[0] == pytest.approx(1e-3 * 0.75 ** 13)


# ---------------------------------------------------------------- recipe keys


def test_strong_keys_are_validated_with_their_ranges(tmp_path):
    data = tiny_recipe_dict(tmp_path, model={"drop_path": 1.0}, train={"ema_decay": -0.1, "batch_size": 63},
                            optim={"layer_decay": 0.0},
                            data={"augment": {"random_erasing": 1.5, "mixup": -1, "auto_ops": 0, "auto_magnitude": 31,
                                              "auto_augment": "randaugmnet"}})
    with pytest.raises(RecipeError) as err:
        recipes.from_dict(data)
    text = str(err.value)
    for message in ("model.drop_path: must be in [0, 1)", "train.ema_decay: must be in [0, 1)",
                    "optim.layer_decay: must be in (0, 1]", "data.augment.random_erasing: must be a probability",
                    "data.augment.mixup: must be a Beta alpha >= 0", "data.augment.auto_ops: must be between 1 and 14",
                    "data.augment.auto_magnitude: must be between 0 and 30", "'randaugmnet' is not one of"):
        assert message in text, text
    data = tiny_recipe_dict(tmp_path, train={"batch_size": 63}, data={"augment": {"mixup": 0.8}})
    with pytest.raises(RecipeError, match="train.batch_size: Mixup/CutMix pairs the images of a batch; 63 is odd"):
        recipes.from_dict(data)


def test_strong_recipes_validate_and_state_their_anchor():
    for name, anchor in (("cifar10-strong", "CIFAR-10"), ("cifar100-strong", "CIFAR-100")):
        path = ROOT / "recipes" / f"{name}.yaml"
        header = path.read_text().split("\n\n")[0]
        assert "Lee et al" in header and anchor in header and "not measured" in header
        r = recipes.load(path)
        a = r.data.augment
        assert a.auto_augment != "none" and a.mixup > 0 and a.cutmix > 0 and a.random_erasing > 0
        assert r.model.drop_path > 0 and r.train.ema_decay > 0 and r.optim.label_smoothing > 0
    for name in ("finetune-cifar10", "finetune-cifar100"):
        r = recipes.load(ROOT / "recipes" / f"{name}.yaml")
        assert r.model.arch.startswith("timm/") and r.model.pretrained and r.optim.layer_decay
        assert 0 < r.optim.warmup_epochs <= 1 and r.attention.name != "softmax"


# ---------------------------------------------------------------- runs

STRONG = dict(model={"drop_path": 0.1}, optim={"label_smoothing": 0.1}, train={"ema_decay": 0.9, "epochs": 2},
              data={"augment": {"auto_augment": "randaugment", "random_erasing": 0.25, "mixup": 0.8, "cutmix": 1.0},
                    "max_train_samples": 640})


def strong_recipe(tmp_path, registry, folder, **extra):
    data = tiny_recipe_dict(tmp_path, **STRONG)
    data["output_dir"] = str(tmp_path / folder)
    data["train"].update(extra)
    return recipes.from_dict(data, registry=registry)


@pytest.mark.slow
def test_a_strong_run_resumes_from_a_mid_epoch_checkpoint_to_the_uninterrupted_result(tmp_path, builtin_registry,
                                                                                      monkeypatch):
    reference = train(strong_recipe(tmp_path, builtin_registry, "ref"), registry=builtin_registry)
    assert reference["weights"] == "ema"
    interrupted = Trainer(strong_recipe(tmp_path, builtin_registry, "run"), registry=builtin_registry)
    original = interrupted._stop_requested
    # stop in the middle of epoch 2 (10 steps an epoch), with its checkpoint
    monkeypatch.setattr(interrupted, "_stop_requested",
                        lambda step: original(step) or (interrupted.state.epoch == 1 and step == 4))
    with pytest.raises(Exception, match="stopped"):
        interrupted.fit()
    resumed = train(strong_recipe(tmp_path, builtin_registry, "run"), Resume.LATEST, registry=builtin_registry)
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(tmp_path / "run" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["top1"] == reference["top1"] and resumed["loss"] == reference["loss"]
    # the weights kept are the average: the last checkpoint's average is the final model.safetensors' source
    last = checkpoint.list_checkpoints(tmp_path / "ref")[-1]
    _, ema_tensors = split_checkpoint_state(load_file(str(last / "model.safetensors")))
    best = load_file(str(tmp_path / "ref" / "best.safetensors"))
    assert ema_tensors and set(best) == {k.removeprefix("ema.") for k in ema_tensors}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar10-strong", "cifar100-strong"])
def test_a_strong_recipe_runs_end_to_end_at_a_tiny_size(tmp_path, builtin_registry, name):
    recipe = recipes.load(ROOT / "recipes" / f"{name}.yaml", [
        "data.dataset=synthetic", f"output_dir={tmp_path / 'run'}", "model.image_size=16", "model.patch_size=4",
        "model.dim=32", "model.depth=2", "model.heads=2", "train.epochs=2", "train.batch_size=32",
        "data.max_train_samples=256", "data.max_eval_samples=64", "train.compile=none", "train.mixed_precision=no",
    ], registry=builtin_registry)
    report = train(recipe, registry=builtin_registry)
    assert report["weights"] == "ema" and report["epochs_trained"] == 2
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["weights"] == "ema" and math.isfinite(metrics["loss"])


@pytest.mark.slow
def test_a_finetuning_recipe_runs_end_to_end_on_cifar10(cifar10_jpg, tmp_path, builtin_registry):
    """From a locally saved timm checkpoint (nothing downloads in tests) of another image size and
    number of classes, its attention swapped, with layer decay and warm-up, at 32 pixels."""
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=1000)
    weights = tmp_path / "vit_tiny.pth"
    torch.save(source.state_dict(), weights)
    recipe = recipes.load(ROOT / "recipes" / "finetune-cifar10.yaml", [
        "data.dataset=imagefolder", f"data.root={cifar10_jpg}", f"output_dir={tmp_path / 'run'}",
        "model.arch=timm/vit_tiny_patch16_224", "model.pretrained=false", f"model.init_from={weights}",
        "model.image_size=32", "train.epochs=2", "train.batch_size=32", "data.max_train_samples=320",
        "data.max_eval_samples=64", "train.compile=none", "train.mixed_precision=no",
    ], registry=builtin_registry)
    assert recipe.optim.layer_decay and recipe.attention.name != "softmax"
    report = train(recipe, registry=builtin_registry)
    assert report["samples"] == 64 and len(report["classes"]) == 10 and math.isfinite(report["loss"])
    init = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert "pos_embed" in init["resized"] and "head.weight" in init["reinitialised"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2


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
