"""The cost.json a run writes (the FLOP counts themselves: test_flops.py)."""

import json

import pytest
import torch
from attnzoo.config import recipe as recipes
from attnzoo.model.flops import model_flops
from attnzoo.model.vit import VisionTransformer
from attnzoo.run.cost import write_cost
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict

REPORT = {"parameters": 12345, "train_seconds": 6.5, "mean_epoch_seconds": 3.25, "peak_memory_mib": None,
          "epochs_trained": 2, "top1": 0.42, "top5": 0.9}

COST_KEYS = ["parameters", "flops_per_image", "forward_flops_per_image", "attention_flops_per_image",
             "attention_forward_flops_per_image", "attention_path", "opaque_ops", "images_seen", "train_flops",
             "train_seconds", "mean_epoch_seconds", "peak_memory_mib", "epochs_trained", "top1", "flop_counter"]


def small_model(registry):
    return VisionTransformer(image_size=16, patch_size=4, num_classes=10, dim=32, depth=2, heads=2, mlp_ratio=2.0,
                             dropout=0.0, kernel=registry.kernel("softmax"))


def test_write_cost_records_the_count_with_the_runs_time_and_memory(tmp_path, builtin_registry):
    model = small_model(builtin_registry)
    rng = torch.random.get_rng_state()
    cost = write_cost(model, 16, REPORT, 384, tmp_path)
    assert torch.equal(torch.random.get_rng_state(), rng)  # counting draws inputs, but not from the run's RNG
    assert json.loads((tmp_path / "cost.json").read_text()) == cost
    assert list(cost) == COST_KEYS
    counted = model_flops(model, 16)
    assert cost["flops_per_image"] == counted["flops_per_image"] > 0
    assert cost["images_seen"] == 384 and cost["train_flops"] == 384 * counted["flops_per_image"]
    assert {k: cost[k] for k in ("parameters", "train_seconds", "mean_epoch_seconds", "peak_memory_mib",
                                 "epochs_trained", "top1")} == {k: v for k, v in REPORT.items() if k != "top5"}
    assert cost["flop_counter"]["batch"] == 2 and cost["flop_counter"]["counted_on"] == "cpu, float32"


def test_a_model_the_counter_cannot_run_still_gets_time_and_memory(tmp_path, capsys):
    not_a_vit = torch.nn.Linear(3, 3)  # no blocks to count: the counter fails
    cost = write_cost(not_a_vit, 16, REPORT, 384, tmp_path)
    assert json.loads((tmp_path / "cost.json").read_text()) == cost == {
        "parameters": 12345, "train_seconds": 6.5, "peak_memory_mib": None, "top1": 0.42,
        "flops_error": "AttributeError: 'Linear' object has no attribute 'blocks'"}
    assert "note: FLOPs not counted (AttributeError" in capsys.readouterr().out

@pytest.mark.slow
def test_a_run_writes_cost_json(tmp_path, builtin_registry):
    r = recipes.from_dict(tiny_recipe_dict(tmp_path, train={"epochs": 2},
                                           data={"max_train_samples": 200, "max_eval_samples": 50}), registry=builtin_registry)
    report = train(r)
    cost = json.loads((tmp_path / "run" / "cost.json").read_text())
    assert cost["parameters"] == report["parameters"] and cost["train_seconds"] == report["train_seconds"]
    assert cost["flops_per_image"] > cost["forward_flops_per_image"] > cost["attention_forward_flops_per_image"] > 0
    assert cost["images_seen"] == 2 * (200 // 64) * 64  # whole batches only
    assert cost["train_flops"] == cost["flops_per_image"] * cost["images_seen"]
    assert cost["flop_counter"]["tool"] == "torch.utils.flop_counter.FlopCounterMode"


def test_eval_cost_rebuilds_the_cost_json_of_an_older_run(tmp_path, capsys):
    from attnzoo.cli import main

    r = recipes.from_dict(tiny_recipe_dict(tmp_path, train={"epochs": 2, "batch_size": 32},
                                           data={"max_train_samples": 100, "max_eval_samples": 30}))
    train(r)
    written = tmp_path / "run" / "cost.json"
    at_the_end = json.loads(written.read_text())
    written.unlink()  # as in a run made before runs wrote cost.json
    assert main(["eval", str(tmp_path / "run"), "--cost"]) == 0
    assert json.loads(written.read_text()) == at_the_end
    assert "GFLOPs per training image" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nothing"), "--cost"]) == 2
    assert "not found" in capsys.readouterr().err
