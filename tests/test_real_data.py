"""End to end on real images: the CIFAR-10 JPEG copy (a subset), every built-in variant."""

import json

import pytest
from attnzoo.config import recipe as recipes
from attnzoo.run.trainer import train
from conftest import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["softmax", "cosine", "standardized"])
def test_tiny_recipe_learns_cifar10(cifar10_jpg, tmp_path, builtin_registry, variant):
    recipe = recipes.load(ROOT / "recipes" / "tiny.yaml", [
        "data.dataset=imagefolder", f"data.root={cifar10_jpg}", f"attention.name={variant}",
        f"output_dir={tmp_path / 'run'}", "train.epochs=2", "data.max_train_samples=4000",
    ], registry=builtin_registry)
    report = train(recipe)
    assert report["samples"] == 1000 and len(report["classes"]) == 10
    assert report["top1"] > 0.2, report["top1"]  # chance is 0.1
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["train_loss"] < json.loads(rows[0])["train_loss"]
