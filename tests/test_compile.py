"""attnzoo.model.compile: auto's rule, the compile cache a run records, the fallback to eager on
any of the first compiled steps, and compile time apart from steady training."""

import json

import pytest
import torch
from attnzoo.config import recipe as recipes
from attnzoo.model import compile as compiling
from attnzoo.run.trainer import EpochTimer, train
from conftest import tiny_recipe_dict


def make(tmp_path, registry, **sections):
    return recipes.from_dict(tiny_recipe_dict(tmp_path, **sections), registry=registry)


def test_auto_is_eager_for_runs_too_short_for_compile_to_pay():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    below = compiling.AUTO_EAGER_BELOW_STEPS
    assert compiling.effective_mode("auto", cuda, steps=below - 1) == "none"
    assert compiling.effective_mode("auto", cuda, steps=below) == "cudagraphs"
    assert compiling.effective_mode("auto", cuda) == "cudagraphs"  # no step count: as before
    assert compiling.effective_mode("auto", cpu, steps=10 * below) == "none"
    # a mode the recipe names is kept, however short the run
    assert compiling.effective_mode("cudagraphs", cuda, steps=10) == "cudagraphs"


def test_a_compiler_that_fails_on_the_second_step_falls_back_to_eager(tmp_path, builtin_registry, monkeypatch,
                                                                      capsys):
    """CUDA-graph trees record on a later call than the first: a capture error at step 2 must not
    end the run. The stub runs the model on its first call and fails on its second."""
    calls = []

    def compiler_failing_on_step_2(model, mode, device):
        def forward(images):
            calls.append(len(calls) + 1)
            if len(calls) == 2:
                raise RuntimeError("CUDA graph capture failed\nlong traceback")
            return model(images)
        return forward

    monkeypatch.setattr("attnzoo.model.compile.compile_model", compiler_failing_on_step_2)
    r = make(tmp_path, builtin_registry, train={"epochs": 1, "compile": "default"})
    report = train(r)
    assert "warning: train.compile=default failed (RuntimeError: CUDA graph capture failed); continuing " \
           "without compilation" in capsys.readouterr().out
    assert calls == [1, 2]  # eager from the failed step on
    assert report["compile"] == "none" and 0 <= report["top1"] <= 1


@pytest.mark.slow
def test_a_compiler_failing_after_the_guarded_steps_is_an_error(tmp_path, builtin_registry, monkeypatch):
    """Past the first GUARDED_STEPS steps a failure is no compiler failure to hide."""
    calls = []

    def compiler_failing_late(model, mode, device):
        def forward(images):
            calls.append(1)
            if len(calls) == compiling.GUARDED_STEPS + 1:
                raise RuntimeError("a real error")
            return model(images)
        return forward

    monkeypatch.setattr("attnzoo.model.compile.compile_model", compiler_failing_late)
    r = make(tmp_path, builtin_registry, train={"epochs": 1, "compile": "default"})
    with pytest.raises(RuntimeError, match="a real error"):
        train(r)


def test_epoch_timer_splits_compile_from_steady_time():
    """5 warm-up steps in 10.5 s, then 5 more steps in 2.5 s (0.5 s each): the warm-up holds
    5 x 0.5 s of steady work, so compile is 8.0 s and the steady epoch 5.0 s."""
    timer = EpochTimer(torch.device("cpu"))
    timer.WARMUP_STEPS = 5
    timer.steps_seen, timer.warmup_seconds = 10, 10.5
    timer._epoch_steps, timer._warmup_epoch_steps = 10, 5
    split = timer.split(images=100, seconds=13.0)
    assert split["compile_seconds"] == pytest.approx(8.0)
    assert split["steady_seconds"] == pytest.approx(5.0)
    assert split["steady_images_per_sec"] == pytest.approx(100 * 5 / 10 / 2.5)
    later = EpochTimer(torch.device("cpu"))  # an epoch after the warm-up one: all steady
    later.WARMUP_STEPS, later.steps_seen, later.warmup_seconds, later._epoch_steps = 5, 20, 10.5, 10
    assert later.split(images=100, seconds=4.0) == {"warmup_seconds": 0.0, "steady_images_per_sec": 25.0,
                                                     "compile_seconds": 0.0, "steady_seconds": 4.0}


def test_a_run_records_compile_and_steady_seconds_and_its_compile_cache(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry, train={"epochs": 2})
    report = train(r)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(row["compile_seconds"] >= 0 and row["steady_seconds"] > 0 for row in rows)
    assert rows[1]["compile_seconds"] == 0.0 and rows[1]["steady_seconds"] == rows[1]["epoch_seconds"]
    assert report["compile_seconds"] == pytest.approx(sum(row["compile_seconds"] for row in rows))
    assert report["steady_seconds"] + report["compile_seconds"] == pytest.approx(report["train_seconds"], rel=1e-6)
    saved = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert saved["steady_seconds"] == pytest.approx(report["steady_seconds"])
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert set(env["compile_cache"]) == {"fx_graph_cache", "dir"}
