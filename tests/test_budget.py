"""train.budget: a run stops at its budget of steps, FLOPs or seconds, its schedule fitted onto it."""

from __future__ import annotations

import json
import math

import pytest

from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.run import budget
from attnzoo.run.rundir import Resume
from conftest import tiny_recipe_dict

COSINE = {"lr": 3e-3, "schedule": "cosine", "min_lr": 1e-5, "warmup_epochs": 0.5}


def budget_recipe(tmp_path, registry, given, **sections):
    # batch 16 of the synthetic train split: several steps an epoch, so a budget ends mid-epoch
    data = tiny_recipe_dict(tmp_path, optim=COSINE, train={"epochs": 3, "batch_size": 16, "budget": given},
                            data={"max_train_samples": 96, "max_eval_samples": 64}, **sections)
    return recipes.from_dict(data, registry=registry)


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("given,message", [
    ({"steps": 0}, "train.budget.steps: must be a positive finite number"),
    ({"steps": 2.5}, "train.budget.steps: must be a whole number of optimizer steps, got 2.5"),
    ({"flops": "lots"}, "train.budget.flops: must be a positive finite number"),
    ({"seconds": float("nan")}, "train.budget.seconds: must be a positive finite number"),
    ({"steps": 10, "seconds": 5}, "train.budget: give exactly one of steps, flops, seconds, got steps, seconds"),
    ({"stpes": 10}, "train.budget.stpes: unknown kind of budget (did you mean 'steps'?)"),
    ({}, "train.budget: expected a mapping of one of steps, flops, seconds"),
    (100, "train.budget: expected a mapping"),
])
def test_a_bad_budget_is_refused_with_what_to_write(tmp_path, given, message):
    with pytest.raises(AttnzooError) as info:
        recipes.from_dict(tiny_recipe_dict(tmp_path, train={"budget": given}), check_plugins=False)
    assert message in str(info.value)


def test_a_budget_in_yaml_notation_is_a_number(tmp_path):
    # YAML 1.1 reads 2e15 (no dot) as a string: the recipe takes it as the number it means
    r = recipes.from_dict(tiny_recipe_dict(tmp_path, train={"budget": {"flops": "2e15"}}), check_plugins=False)
    assert r.train.budget == {"flops": 2e15}


def test_the_fitted_schedule_ends_at_its_final_value_whatever_the_budget(tmp_path):
    r = recipes.from_dict(tiny_recipe_dict(tmp_path, optim=COSINE, train={"epochs": 10}), check_plugins=False)
    for total in (7, 100, 1234):
        rates = [budget.learning_rate(r, i / total, (i + 1) / total) for i in range(total)]
        assert rates[-1] == pytest.approx(1e-5, abs=1e-15)  # cosine's floor, min_lr
        assert max(rates) == pytest.approx(3e-3)
        # warm-up keeps its fraction of the run: 0.5 of 10 epochs = 5 % of the steps
        assert sum(rate < 3e-3 * (1 - 1e-9) for rate in rates[: math.ceil(0.05 * total)]) >= 0.05 * total - 1
    r.optim.schedule, r.optim.milestones, r.optim.gamma, r.optim.warmup_epochs = "step", [5, 8], 0.1, 0.0
    rates = [budget.learning_rate(r, i / 20, (i + 1) / 20) for i in range(20)]
    # milestones at 50 % and 80 % of the run
    assert rates[8] == pytest.approx(3e-3) and rates[9] == pytest.approx(3e-4) and rates[15] == pytest.approx(3e-5)


def test_a_step_budget_stops_at_its_step_annealed(tmp_path, builtin_registry):
    from attnzoo.run.trainer import Trainer

    r = budget_recipe(tmp_path, builtin_registry, {"steps": 13})
    trainer = Trainer(r, registry=builtin_registry)
    steps_per_epoch = len(trainer.train_loader)
    assert steps_per_epoch < 13 < 3 * steps_per_epoch  # ends mid-epoch, before train.epochs would
    report = trainer.fit()
    rows = metrics(r.run_dir)
    assert len(rows) == math.ceil(13 / steps_per_epoch)
    assert trainer.state.global_step == 13
    assert rows[-1]["lr"] == pytest.approx(budget.final_learning_rate(r)) == pytest.approx(1e-5)
    assert report["budget"] == {"kind": "steps", "value": 13, "steps": 13, "steps_taken": 13}
    assert json.loads((r.run_dir / "test_metrics.json").read_text())["budget"]["steps_taken"] == 13


@pytest.mark.slow
def test_a_step_budget_run_resumes_exactly(tmp_path, builtin_registry):
    from attnzoo.run.trainer import Trainer

    r = budget_recipe(tmp_path, builtin_registry, {"steps": 13})
    report = Trainer(r, registry=builtin_registry).fit()
    rows = metrics(r.run_dir)
    # Stopped in its first epoch and resumed: the same steps, the same weights.
    again = budget_recipe(tmp_path / "again", builtin_registry, {"steps": 13})
    interrupted = Trainer(again, registry=builtin_registry)
    interrupted._stop_requested = lambda step: step == 2  # a signal after the third step
    with pytest.raises(Exception, match="stopped by"):
        interrupted.fit()
    resumed = Trainer(again, registry=builtin_registry)
    resumed_report = resumed.fit(Resume.LATEST)
    assert resumed.state.global_step == 13
    assert resumed_report["top1"] == report["top1"]
    assert [row["train_loss"] for row in metrics(again.run_dir)] == [row["train_loss"] for row in rows]


def test_a_flops_budget_is_turned_into_steps_once_and_recorded(tmp_path, builtin_registry):
    from attnzoo.run.trainer import Trainer

    probe = Trainer(budget_recipe(tmp_path / "probe", builtin_registry, {"steps": 1}), registry=builtin_registry)
    per_step = budget.flops_per_step(probe.recipe, probe.raw_model)
    r = budget_recipe(tmp_path, builtin_registry, {"flops": 9.5 * per_step})
    trainer = Trainer(r, registry=builtin_registry)
    report = trainer.fit()
    assert report["budget"] == {"kind": "flops", "value": 9.5 * per_step, "steps": 9, "flops_per_step": per_step,
                                "steps_taken": 9}
    assert metrics(r.run_dir)[-1]["lr"] == pytest.approx(1e-5)


def test_counting_flops_leaves_the_training_rng_where_it_was(tmp_path, builtin_registry):
    import torch

    from attnzoo.run.trainer import Trainer

    trainer = Trainer(budget_recipe(tmp_path, builtin_registry, {"steps": 1}), registry=builtin_registry)
    before = torch.random.get_rng_state()
    budget.flops_per_step(trainer.recipe, trainer.raw_model)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_a_seconds_budget_stops_within_a_step_of_its_time(tmp_path, builtin_registry):
    from attnzoo.run.trainer import Trainer

    r = budget_recipe(tmp_path, builtin_registry, {"seconds": 10.0})
    trainer = Trainer(r, registry=builtin_registry)
    ticks = iter(range(10**6))
    trainer._timer.clock = lambda: next(ticks) * 0.25  # a fake clock: each read is a quarter second later
    trainer.fit()
    spent, steps = trainer.state.train_seconds, trainer.state.global_step
    step = spent / steps  # the fake clock makes every step about as long as the others
    assert 10.0 - 2 * step <= spent <= 10.0 + step
    assert steps_between(10.0, step) == pytest.approx(steps, abs=2)
    rows = metrics(r.run_dir)
    assert rows[-1]["lr"] == pytest.approx(1e-5)  # ended at the schedule's final value
    assert trainer.state.seconds_budget_spent


def steps_between(seconds: float, step: float) -> float:
    return seconds / step
