"""A study's tune: section: trials on the validation split, one choice per arm, the runs with that choice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError, RecipeError
from attnzoo.run.rundir import RunDir
from attnzoo.study import tune
from attnzoo.study.plan import plan_runs, plan_trials, run_study
from conftest import tiny_recipe_dict
from PIL import Image

LRS = [1e-4, 3e-3]


def tuned_recipe(folder: Path, registry=None, **changes) -> recipes.Recipe:
    data = tiny_recipe_dict(folder, output_dir=str(folder / "study"), variants=["softmax", "cosine"], seeds=[0, 1],
                            tune={"optim.lr": LRS, "seeds": 1})
    data.update(changes)
    return recipes.from_dict(data, registry=registry)


# ---------------------------------------------------------------- the section in a recipe


def test_the_section_is_written_back_in_one_form(tmp_path, builtin_registry):
    recipe = tuned_recipe(tmp_path, builtin_registry, tune={"optim": {"lr": ["3e-4", 1e-3]}, "seeds": 2})
    assert recipe.tune == {"optim.lr": [3e-4, 1e-3], "seeds": [1000, 1001], "metric": "val_top1"}
    again = recipes.from_dict(yaml.safe_load(recipes.dump(recipe)), registry=builtin_registry)
    assert again.tune == recipe.tune


def test_every_problem_of_the_section_is_named(tmp_path, builtin_registry):
    with pytest.raises(RecipeError) as caught:
        tuned_recipe(tmp_path, builtin_registry, grid={"model.depth": [1, 2]},
                     tune={"optim.lr": [1e-3, "fast"], "model.depth": [1, 2], "data.val_fraction": [0.1, 0.2],
                           "seeds": 0, "metric": "test_top1"})
    text = str(caught.value)
    assert "tune.seeds: give how many seeds each trial trains (e.g. 1), or a list of distinct integer seeds, got 0" in text
    assert "tune.metric: expected one of val_top1, val_top5, val_loss" in text and "got 'test_top1'" in text
    assert "tune.optim.lr[1]: optim.lr: expected a number, got 'fast'" in text
    assert "tune.model.depth: cannot be tuned (the grid sweeps it already)" in text
    assert "tune.data.val_fraction: cannot be tuned (it changes the validation split the trials are compared on)" in text


def test_a_tuned_key_can_be_given_on_the_command_line(tmp_path, builtin_registry):
    data = recipes.apply_overrides(tiny_recipe_dict(tmp_path, variants=["softmax"]),
                                   ["tune.optim.lr=[1e-3, 3e-3]", "tune.metric=val_loss"])
    recipe = recipes.from_dict(data, registry=builtin_registry)
    assert recipe.tune == {"optim.lr": [1e-3, 3e-3], "seeds": [1000], "metric": "val_loss"}


def test_the_trials_are_every_arm_times_every_value_on_the_tuning_seeds(tmp_path, builtin_registry):
    recipe = tuned_recipe(tmp_path, builtin_registry, grid={"model.depth": [1, 2]})
    trials_recipe, trials = plan_trials(recipe)
    assert trials_recipe.run_dir == tmp_path / "study" / "tune"
    assert not trials_recipe.tune and not trials_recipe.robustness.corruptions
    names = sorted(t.run_dir.name for t in trials)
    assert names == sorted(f"{arm}-depth{d}-lr{lr:g}-seed1000" for arm in ("softmax", "cosine") for d in (1, 2)
                           for lr in LRS)
    assert {t.recipe.optim.lr for t in trials} == set(LRS)
    # Before a choice the runs are planned with the recipe's own values, and name no choice.
    runs = plan_runs(recipe, builtin_registry)
    assert {r.recipe.optim.lr for r in runs} == {3e-3} and all(r.tuned is None for r in runs)


# ---------------------------------------------------------------- the choice, on made-up trials


def fake_trial(folder: Path, val: list[float], test: float, diverged: bool = False, key: str = "val_top1") -> Path:
    """A finished trial whose epochs scored `val` on validation and `test` on the test split."""
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, key: v, "val_top5": 1.0} for i, v in enumerate(val)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test_metrics.json").write_text(json.dumps({"top1": test}))
    if diverged:
        (folder / "diverged.json").write_text("{}")
    return folder


def choice_of(tmp_path, builtin_registry, scores: dict, metric: str = "val_top1") -> dict:
    """scores: {(arm, lr): [(val epochs, test), ...] one per tuning seed}."""
    recipe = tuned_recipe(tmp_path, builtin_registry, tune={"optim.lr": LRS, "seeds": 2, "metric": metric})
    trials = []
    for (arm, lr), seeds in scores.items():
        for i, (val, test, *diverged) in enumerate(seeds):
            path = fake_trial(tmp_path / "t" / f"{arm}-{lr}-{i}", val, test, bool(diverged), metric)
            trials.append((arm, {"optim.lr": lr}, path))
    return tune.choose(recipe, trials)


def test_each_arm_chooses_the_best_mean_of_its_best_epochs_never_the_test_score(tmp_path, builtin_registry):
    record = choice_of(tmp_path, builtin_registry, {
        # softmax: 1e-4 has the better test score, 3e-3 the better validation: validation decides.
        ("softmax", 1e-4): [([0.30, 0.40], 0.90), ([0.35, 0.38], 0.90)],
        ("softmax", 3e-3): [([0.50, 0.45], 0.10), ([0.20, 0.44], 0.10)],
        # cosine: the best single epoch (0.9) loses to the better mean over seeds.
        ("cosine", 1e-4): [([0.90], 0.5), ([0.10], 0.5)],
        ("cosine", 3e-3): [([0.60], 0.5), ([0.60], 0.5)],
    })
    assert tune.chosen_values(record, "softmax") == {"optim.lr": 3e-3}
    assert tune.chosen_values(record, "cosine") == {"optim.lr": 3e-3}
    trials = record["arms"]["softmax"]["trials"]
    assert [t["scores"] for t in trials] == [[0.40, 0.38], [0.50, 0.44]]  # each seed's best epoch
    assert trials[0]["mean"] == pytest.approx(0.39) and trials[1]["mean"] == pytest.approx(0.47)
    assert record["arms"]["cosine"]["trials"][0]["mean"] == pytest.approx(0.5)


def test_a_tie_goes_to_the_value_listed_first_and_val_loss_is_minimised(tmp_path, builtin_registry):
    tie = choice_of(tmp_path / "a", builtin_registry, {("softmax", 1e-4): [([0.5], 0), ([0.5], 0)],
                                                       ("softmax", 3e-3): [([0.5], 0), ([0.5], 0)]})
    assert tune.chosen_values(tie, "softmax") == {"optim.lr": 1e-4}
    loss = choice_of(tmp_path / "b", builtin_registry, {("softmax", 1e-4): [([2.0, 1.5], 0), ([1.4], 0)],
                                                        ("softmax", 3e-3): [([1.0, 1.2], 0), ([1.1], 0)]},
                     metric="val_loss")
    assert tune.chosen_values(loss, "softmax") == {"optim.lr": 3e-3}
    assert loss["arms"]["softmax"]["trials"][0]["scores"] == [1.5, 1.4]


def test_a_diverged_trial_is_never_chosen(tmp_path, builtin_registry):
    record = choice_of(tmp_path, builtin_registry, {("softmax", 1e-4): [([0.2], 0), ([0.2], 0)],
                                                    ("softmax", 3e-3): [([0.9], 0, "diverged"), ([0.9], 0)]})
    assert tune.chosen_values(record, "softmax") == {"optim.lr": 1e-4}
    assert record["arms"]["softmax"]["trials"][1]["mean"] is None
    with pytest.raises(AttnzooError, match="every trial of the arm 'cosine' diverged or has no val_top1"):
        choice_of(tmp_path / "b", builtin_registry, {("cosine", 1e-4): [([0.2], 0, "diverged"), ([0.2], 0)],
                                                     ("cosine", 3e-3): [([0.9], 0, "diverged"), ([0.9], 0)]})


def test_a_choice_made_for_another_tune_section_is_not_used(tmp_path, builtin_registry):
    recipe = tuned_recipe(tmp_path, builtin_registry)
    tune.write_choice(recipe.run_dir, {"tune": recipe.tune, "metric": "val_top1",
                                       "arms": {"softmax": {"chosen": {"optim.lr": 1e-4}, "trials": []}}})
    assert tune.chosen_values(tune.read_choice(recipe), "softmax") == {"optim.lr": 1e-4}
    runs = plan_runs(recipe, builtin_registry)
    assert {r.recipe.optim.lr for r in runs if r.label == "softmax"} == {1e-4}  # the arm's runs take its choice
    assert {r.recipe.optim.lr for r in runs if r.label == "cosine"} == {3e-3}  # no choice for it in this record
    changed = tuned_recipe(tmp_path, builtin_registry, tune={"optim.lr": [1e-4, 1e-2], "seeds": 1})
    assert tune.read_choice(changed) is None


# ---------------------------------------------------------------- end to end


def write_two_class_folder(root: Path) -> Path:
    """train/ and test/ image folders of two classes told apart by colour (learnable in two tiny epochs)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("test", 24)):
        for c, name in enumerate(["a", "b"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 150, (16, 16, 3), dtype=np.uint8)
                pixels[..., c] += 90
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def e2e_recipe(folder: Path, data_root: Path, registry) -> recipes.Recipe:
    return tuned_recipe(folder, registry, data={"dataset": "imagefolder", "root": str(data_root), "val_fraction": 0.25},
                        train={"epochs": 2, "batch_size": 32, "seed": 0})


@pytest.fixture(scope="module")
def tuned_study(tmp_path_factory, builtin_registry) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tuned")
    data_root = write_two_class_folder(folder / "data")
    run_study(e2e_recipe(folder, data_root, builtin_registry))
    return folder / "study", data_root


@pytest.mark.slow
def test_every_arm_runs_its_seeds_with_the_value_its_trials_chose(tuned_study):
    study, _ = tuned_study
    trials = sorted(p.name for p in (study / "tune").iterdir() if RunDir(p).is_finished())
    assert trials == sorted(f"{arm}-lr{lr:g}-seed1000" for arm in ("softmax", "cosine") for lr in LRS)
    record = json.loads((study / "tune" / "choice.json").read_text())
    for arm in ("softmax", "cosine"):
        entry = record["arms"][arm]
        means = [t["mean"] for t in entry["trials"]]
        assert entry["chosen"] == entry["trials"][means.index(max(means))]["values"]
        for seed in (0, 1):
            run_recipe = yaml.safe_load((study / f"{arm}-seed{seed}" / "recipe.yaml").read_text())
            assert run_recipe["optim"]["lr"] == entry["chosen"]["optim.lr"]
    results = (study / "results.md").read_text()
    assert "## Tuning" in results and "| arm | chosen | optim.lr=0.0001 | optim.lr=0.003 |" in results
    assert "the test split took no part in the choice" in results
    assert (study / "figures" / "tuning.png").is_file()
    header = (study / "results.csv").read_text().splitlines()[0].split(",")
    assert "tuned_optim.lr" in header
    # The trials are not runs of the study's report.
    assert not any("seed1000" in line for line in results.splitlines() if line.startswith("| softmax"))


@pytest.mark.slow
def test_the_choice_does_not_move_when_the_test_labels_change(tuned_study, tmp_path, builtin_registry):
    study, data_root = tuned_study
    swapped = shutil.copytree(data_root, tmp_path / "swapped")
    (swapped / "test" / "a").rename(swapped / "test" / "c")  # every test image gets the other label
    (swapped / "test" / "b").rename(swapped / "test" / "a")
    (swapped / "test" / "c").rename(swapped / "test" / "b")
    run_study(e2e_recipe(tmp_path, swapped, builtin_registry), tune_only=True)
    before = json.loads((study / "tune" / "choice.json").read_text())
    after = json.loads((tmp_path / "study" / "tune" / "choice.json").read_text())
    assert after["arms"] == before["arms"]  # every trial's scores and every choice, exactly
    trial = "softmax-lr0.003-seed1000"
    test_before = json.loads((study / "tune" / trial / "test_metrics.json").read_text())["top1"]
    test_after = json.loads((tmp_path / "study" / "tune" / trial / "test_metrics.json").read_text())["top1"]
    assert test_after == pytest.approx(1 - test_before)  # the test split did change, and the choice ignored it
    assert not any((tmp_path / "study").glob("*-seed0"))  # --tune-only trains no run of the study


@pytest.mark.slow
def test_workers_share_the_trials_and_choose_as_one_process(tuned_study, tmp_path):
    study, _ = tuned_study
    recipe = yaml.safe_load((study / "study.yaml").read_text())
    recipe["output_dir"] = str(tmp_path / "study")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    done = subprocess.run([sys.executable, "-m", "attnzoo", "study", str(tmp_path / "r.yaml"), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "tune: softmax chose optim.lr=" in done.stdout
    before = json.loads((study / "tune" / "choice.json").read_text())
    after = json.loads((tmp_path / "study" / "tune" / "choice.json").read_text())
    assert {arm: e["chosen"] for arm, e in after["arms"].items()} == {arm: e["chosen"] for arm, e in before["arms"].items()}
    assert all(RunDir(tmp_path / "study" / f"{arm}-seed{s}").is_finished() for arm in ("softmax", "cosine")
               for s in (0, 1))
    assert "## Tuning" in (tmp_path / "study" / "results.md").read_text()


def test_a_worker_never_tunes_and_slurm_waits_for_the_choice(tmp_path, builtin_registry):
    recipe = tuned_recipe(tmp_path, builtin_registry)
    with pytest.raises(AttnzooError, match="have not chosen their values yet"):
        run_study(recipe, worker=True)
    from attnzoo.cli import main

    path = tmp_path / "r.yaml"
    path.write_text(recipes.dump(recipe))
    assert main(["study", str(path), "--launcher", "slurm"]) == 2
