"""Studies beyond variants x seeds: ablation grids, paired statistics, diverged runs, and the
guard against reusing runs made with a different recipe (study and `train --resume`)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import statistics
from pathlib import Path

import pytest
import yaml
from attnzoo.cli import main
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError, RecipeError
from attnzoo.model.vit import VisionTransformer
from attnzoo.study.plan import plan_runs, point_label, run_study
from conftest import tiny_recipe_dict

GRID = {"model.depth": [1, 2], "data.augment.rotation": [0, 10]}
SEEDS = [0, 1]
ARMS = [f"{variant}-depth{depth}-rotation{rotation}" for depth in (1, 2) for rotation in (0, 10)
        for variant in ("softmax", "cosine")]


def tiny_study(folder: Path, **changes) -> dict:
    data = tiny_recipe_dict(folder, output_dir=str(folder / "study"), variants=["softmax", "cosine"], seeds=SEEDS,
                            data={"max_train_samples": 64, "max_eval_samples": 32})
    data["model"]["dim"] = 16
    data.update(changes)
    return data


def snapshot(folder: Path) -> dict:
    """Every file under folder with its content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def grid_study(tmp_path_factory, builtin_registry) -> Path:
    folder = tmp_path_factory.mktemp("grid")
    recipe = recipes.from_dict(tiny_study(folder, grid=GRID), registry=builtin_registry)
    run_study(recipe)
    return folder / "study"


# ---------------------------------------------------------------- grids


@pytest.mark.slow
def test_a_grid_of_two_keys_runs_every_combination_with_readable_names(grid_study):
    runs = sorted(p.name for p in grid_study.iterdir() if p.is_dir() and p.name != "figures")
    assert runs == sorted(f"{arm}-seed{seed}" for arm in ARMS for seed in SEEDS)
    assert len(runs) == 16
    run = grid_study / "cosine-depth2-rotation10-seed1"
    recipe = recipes.read_yaml(run / "recipe.yaml")
    assert recipe["model"]["depth"] == 2 and recipe["data"]["augment"]["rotation"] == 10.0
    assert recipe["attention"]["name"] == "cosine" and recipe["train"]["seed"] == 1 and "grid" not in recipe
    arm = json.loads((run / "arm.json").read_text())
    assert arm == {"arm": "cosine-depth2-rotation10", "variant": "cosine",
                   "grid": {"model.depth": 2, "data.augment.rotation": 10.0},
                   "baseline": "softmax-depth2-rotation10", "seed": 1}


@pytest.mark.slow
def test_the_grid_report_has_every_arm_a_figure_per_key_and_the_recipe_values(grid_study):
    with open(grid_study / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["arm"] for r in rows) == sorted(ARMS)
    markdown = (grid_study / "results.md").read_text()
    for name in ("grid_model_depth.png", "grid_data_augment_rotation.png"):
        assert (grid_study / "figures" / name).stat().st_size > 5000
        assert f"figures/{name}" in markdown
    assert "## Leaderboard" in markdown and "## Paired comparison with the baseline" in markdown
    # The swept keys are stated per arm, read from the runs.
    assert "| arm | `data.augment.rotation` | `model.depth` |" in markdown
    assert "| cosine-depth2-rotation0 | 0.0 | 2 |" in markdown
    assert "| `optim.lr` | `0.003` |" in markdown  # a shared value
    # Each cosine arm against the softmax arm of the same grid point, paired by seed.
    row = next(r for r in rows if r["arm"] == "cosine-depth1-rotation10")
    top1 = {arm: [json.loads((grid_study / f"{arm}-seed{s}" / "test_metrics.json").read_text())["top1"]
                  for s in SEEDS] for arm in ("cosine-depth1-rotation10", "softmax-depth1-rotation10")}
    diffs = [a - b for a, b in zip(top1["cosine-depth1-rotation10"], top1["softmax-depth1-rotation10"])]
    assert row["baseline"] == "softmax-depth1-rotation10" and row["top1_diff_n"] == "2"
    assert float(row["top1_diff_mean"]) == pytest.approx(statistics.fmean(diffs))
    assert next(r for r in rows if r["arm"] == "softmax-depth1-rotation10")["top1_diff_mean"] == ""


def test_grid_keys_are_validated_like_recipe_keys_all_at_once(tmp_path, builtin_registry):
    grid = {"model.depht": [6], "model.depth": [0, 2], "optim.lr": "1e-3", "train.seed": [1],
            "attention.scale": ["inv_n"]}
    with pytest.raises(RecipeError) as info:
        recipes.from_dict(tiny_study(tmp_path, grid=grid), registry=builtin_registry)
    problems = info.value.problems
    assert any("grid.model.depht: unknown key 'depht'" in p and "did you mean 'depth'" in p for p in problems)
    assert any(p.startswith("grid.model.depth[0]: model.depth: must be a positive integer") for p in problems)
    assert any("grid.optim.lr: expected a non-empty list" in p for p in problems)
    assert any("grid.train.seed: cannot be swept" in p and "seeds" in p for p in problems)
    assert any("grid.attention.scale: cannot be swept" in p and "variants" in p for p in problems)
    assert len(problems) == 5


def test_grid_on_the_command_line_and_value_types(tmp_path, builtin_registry):
    data = recipes.apply_overrides(tiny_study(tmp_path), ["grid.model.depth=[1,2]", "grid.optim.lr=[1e-3, 3e-3]"])
    recipe = recipes.from_dict(data, registry=builtin_registry)
    assert recipe.grid == {"model.depth": [1, 2], "optim.lr": [0.001, 0.003]}  # '1e-3' read as a number
    names = [r.run_dir.name for r in plan_runs(recipe)]
    assert names[:3] == ["softmax-depth1-lr0.001-seed0", "softmax-depth1-lr0.001-seed1", "cosine-depth1-lr0.001-seed0"]
    assert len(names) == 16


def test_grid_labels_for_words_switches_and_sections():
    assert point_label({"model.init": "torch_default", "data.augment.flip": False}) == "init=torch_default-flip=off"
    assert point_label({"data.augment": {"label": "crop-flip", "rotation": 0}}) == "crop-flip"
    assert point_label({"model.dropout": 0.1, "optim.weight_decay": 0.05}) == "dropout0.1-weight_decay0.05"


def test_a_section_value_sets_several_keys(tmp_path, builtin_registry):
    plain = {"label": "crop-flip", "rotation": 0, "color_jitter": 0}
    recipe = recipes.from_dict(tiny_study(tmp_path, seeds=[0], variants=["softmax"],
                                          grid={"data.augment": [{"label": "study-aug"}, plain]}),
                               registry=builtin_registry)
    runs = plan_runs(recipe)
    assert [r.run_dir.name for r in runs] == ["softmax-study-aug-seed0", "softmax-crop-flip-seed0"]
    assert runs[1].recipe.data.augment.rotation == 0 and runs[1].recipe.data.augment.color_jitter == 0
    assert runs[0].recipe.data.augment.rotation == 10.0  # the recipe's own value
    with pytest.raises(RecipeError, match=r"grid.data.augment\[0\]: data.augment.rotaton: unknown key"):
        recipes.from_dict(tiny_study(tmp_path, grid={"data.augment": [{"rotaton": 0}]}), registry=builtin_registry)


def test_variants_all_runs_every_installed_variant_softmax_first(tmp_path, builtin_registry):
    recipe = recipes.from_dict(tiny_study(tmp_path, variants="all", seeds=[0]), registry=builtin_registry)
    assert [r.label for r in plan_runs(recipe, builtin_registry)] == ["softmax", "cosine", "standardized"]
    with pytest.raises(AttnzooError, match="baseline: 'sofmax' is not one of"):
        plan_runs(recipes.from_dict(tiny_study(tmp_path, baseline="sofmax"), registry=builtin_registry))


def test_model_init_torch_default_keeps_pytorch_layer_initialisation(builtin_registry):
    def make(init):
        return VisionTransformer(image_size=16, patch_size=4, num_classes=10, dim=64, depth=1, heads=2,
                                 mlp_ratio=2.0, dropout=0.0, kernel=builtin_registry.kernel("softmax"), init=init)

    timm_like, default = make("trunc_normal").blocks[0].mlp.fc1, make("torch_default").blocks[0].mlp.fc1
    assert timm_like.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert timm_like.bias.abs().max().item() == 0
    # PyTorch's Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), std 1/sqrt(3 fan_in)
    assert default.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 64), rel=0.1)
    assert default.bias.abs().max().item() > 0


# ---------------------------------------------------------------- diverged runs


@pytest.mark.slow
def test_a_diverging_arm_is_recorded_and_the_study_goes_on(tmp_path, builtin_registry, capsys):
    data = tiny_study(tmp_path, variants=["softmax"], seeds=[0], grid={"optim.lr": [3e-3, 1e30]})
    data["train"].update(log_every=1, batch_size=16)  # several steps: the first update blows the weights up
    rows = run_study(recipes.from_dict(data, registry=builtin_registry))
    study = tmp_path / "study"
    assert [r["arm"] for r in rows] == ["softmax-lr0.003"]
    record = json.loads((study / "softmax-lr1e+30-seed0" / "diverged.json").read_text())
    assert record["epoch"] == 1 and record["step"] >= 1 and record["variant"] == "softmax"
    markdown = (study / "results.md").read_text()
    assert "## Diverged runs" in markdown and "| `softmax-lr1e+30-seed0` | softmax-lr1e+30 | softmax | 0 | 1 |" in markdown
    assert "softmax-lr1e+30 | 0 (+1 diverged) | diverged (seed 0: epoch 1 step" in markdown
    assert "1 run(s) diverged" in capsys.readouterr().out
    # Running the study again keeps the result: the diverged run is not retried.
    run_study(recipes.from_dict(data, registry=builtin_registry))
    assert "softmax-lr1e+30 seed 0: diverged earlier, skipped" in capsys.readouterr().out


# ---------------------------------------------------------------- no silent skip, no silent no-op


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, builtin_registry) -> Path:
    folder = tmp_path_factory.mktemp("finished")
    data = tiny_study(folder, variants=["softmax"], seeds=[0, 1])
    (folder / "study.yaml").write_text(json.dumps(data))  # a recipe file for the command line
    assert main(["study", str(folder / "study.yaml")]) == 0
    return folder


@pytest.mark.slow
def test_a_study_with_changed_epochs_stops_before_anything_and_touches_nothing(finished_study, tmp_path, capsys):
    copy = tmp_path / "f"
    shutil.copytree(finished_study, copy)
    data = json.loads((copy / "study.yaml").read_text())
    data["output_dir"] = str(copy / "study")
    (copy / "study.yaml").write_text(json.dumps(data))
    before = snapshot(copy / "study")
    capsys.readouterr()
    assert main(["study", str(copy / "study.yaml"), "train.epochs=2", "optim.schedule=cosine"]) == 2
    err = capsys.readouterr().err
    assert "holds 2 run(s) made with a different recipe" in err and "Nothing was trained or changed" in err
    assert "softmax-seed0 (finished): optim.schedule: 'constant' in the run, 'cosine' now; train.epochs: 1 in the " \
           "run, 2 now; --extend would train it again" in err
    assert "output_dir=" in err and "--extend" in err
    assert snapshot(copy / "study") == before


@pytest.mark.slow
def test_extend_continues_finished_runs_to_more_epochs(finished_study, tmp_path, capsys):
    copy = tmp_path / "f"
    shutil.copytree(finished_study, copy)
    data = json.loads((copy / "study.yaml").read_text())
    data["output_dir"] = str(copy / "study")
    (copy / "study.yaml").write_text(json.dumps(data))
    assert main(["study", str(copy / "study.yaml"), "train.epochs=2"]) == 2
    capsys.readouterr()
    assert main(["study", str(copy / "study.yaml"), "train.epochs=2", "--extend"]) == 0
    out = capsys.readouterr().out
    assert out.count("continuing to more epochs") == 2
    run = copy / "study" / "softmax-seed1"
    assert json.loads((run / "test_metrics.json").read_text())["epochs_trained"] == 2
    assert recipes.read_yaml(run / "recipe.yaml")["train"]["epochs"] == 2
    history = [json.loads(line) for line in (run / "extensions.jsonl").read_text().splitlines()]
    assert history[0]["from_epochs"] == 1 and history[0]["to_epochs"] == 2 and history[0]["test_metrics"]["top1"] >= 0
    assert "| `train.epochs` | `2` |" in (copy / "study" / "results.md").read_text()
    assert main(["study", str(copy / "study.yaml"), "train.epochs=2"]) == 0  # up to date now
    assert capsys.readouterr().out.count("finished, skipped") == 2


@pytest.mark.slow
def test_resume_of_a_finished_run(finished_study, tmp_path, capsys):
    run_recipe = tmp_path / "run.yaml"
    shutil.copytree(finished_study / "study" / "softmax-seed0", tmp_path / "run")
    data = recipes.read_yaml(tmp_path / "run" / "recipe.yaml")
    data["output_dir"] = str(tmp_path / "run")
    run_recipe.write_text(json.dumps(data))
    before = snapshot(tmp_path / "run")
    capsys.readouterr()
    assert main(["train", str(run_recipe), "--resume"]) == 0  # nothing changed: said so
    assert "the run is finished (1 epochs" in capsys.readouterr().out
    assert snapshot(tmp_path / "run") == before
    for overrides, reason in [(["train.epochs=2", "optim.schedule=cosine"], "other values of optim.schedule"),
                              (["train.epochs=2", "optim.lr=0.1"], "other values of optim.lr")]:
        assert main(["train", str(run_recipe), *overrides, "--resume"]) == 2
        err = capsys.readouterr().err
        assert "cannot continue the run" in err and "from 1 to 2 epochs" in err and reason in err
        assert snapshot(tmp_path / "run") == before
    cosine = dict(data, optim={**data["optim"], "schedule": "cosine"})
    (tmp_path / "run" / "recipe.yaml").write_text(json.dumps(cosine))  # as if it had been a cosine run
    before = snapshot(tmp_path / "run")
    run_recipe.write_text(json.dumps(cosine))
    assert main(["train", str(run_recipe), "train.epochs=2", "--resume"]) == 2
    assert "cosine schedule spreads the learning-rate decay" in capsys.readouterr().err
    assert snapshot(tmp_path / "run") == before
    assert main(["train", str(run_recipe), "optim.lr=0.1", "--resume"]) == 2
    assert "is finished and was made with a different recipe (optim.lr: 0.003 in the run, 0.1 now" in capsys.readouterr().err
    assert snapshot(tmp_path / "run") == before


@pytest.mark.slow
def test_resume_with_more_epochs_extends_a_constant_schedule_run(finished_study, tmp_path, capsys):
    shutil.copytree(finished_study / "study" / "softmax-seed0", tmp_path / "run")
    data = recipes.read_yaml(tmp_path / "run" / "recipe.yaml")
    data["output_dir"] = str(tmp_path / "run")
    (tmp_path / "run.yaml").write_text(json.dumps(data))
    assert main(["train", str(tmp_path / "run.yaml"), "--resume", "train.epochs=2"]) == 0  # not a checkpoint
    assert "continuing the run from 1 to 2 epochs" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text())["epochs_trained"] == 2


@pytest.mark.slow
def test_one_seed_gives_no_interval(grid_study, tmp_path):
    from attnzoo.study import report

    copy = tmp_path / "study"
    copy.mkdir()
    for arm in ("softmax-depth1-rotation0", "cosine-depth1-rotation0"):
        shutil.copytree(grid_study / f"{arm}-seed0", copy / f"{arm}-seed0")
    report.build_report(copy)
    markdown = (copy / "results.md").read_text()
    assert "no interval can be given: one seed" in markdown and "With one seed no interval can be given" in markdown
    with open(copy / "results.csv", newline="") as f:
        rows = {r["arm"]: r for r in csv.DictReader(f)}
    assert rows["cosine-depth1-rotation0"]["top1_diff_n"] == "1" and rows["cosine-depth1-rotation0"]["top1_diff_low"] == ""


def test_a_run_recorded_before_a_key_existed_matches_that_keys_default():
    from attnzoo.run.rundir import recipe_changes

    now = recipes.Recipe().to_dict()
    old = recipes.Recipe().to_dict()
    del old["model"]["init"], old["grid"], old["baseline"]  # a recipe.yaml written by an older attnzoo
    assert recipe_changes(old, now) == {}
    now["model"]["init"] = "torch_default"
    assert recipe_changes(old, now) == {"model.init": ("trunc_normal", "torch_default")}


def test_the_study_and_bench_sections_of_an_older_run_recipe_are_no_change():
    """Runs of earlier versions wrote bench:, robustness: and the study keys into their recipe.yaml;
    a run's recipe.yaml now holds its own keys only. Neither counts as a change of the run."""
    from attnzoo.run.rundir import recipe_changes

    old = recipes.Recipe().to_dict()
    old["bench"]["batch_size"] = 512
    old.update(variants=["softmax"], seeds=[0, 1], robustness={"corruptions": False, "seed": None})
    now = recipes.Recipe(robustness=recipes.RobustnessConfig(corruptions=True), seeds=[0, 1, 2])
    assert recipe_changes(old, now.to_dict()) == {}
    assert recipe_changes(recipes.run_dict(now), now.to_dict()) == {}
    assert set(recipes.run_dict(now)) == {"name", "description", "output_dir", "requires_plugins", "model",
                                          "attention", "data", "optim", "train"}


@pytest.mark.parametrize("label,why", [("../../escaped", "path separator"), ("a/b", "path separator"),
                                       ("..", "starts with a dot"), (".hidden", "starts with a dot"),
                                       ("a\\b", "path separator")])
def test_arm_labels_are_single_folder_names(tmp_path, capsys, label, why):
    """validate reports a label that would leave the study folder like any recipe problem, with a fix."""
    recipe = tmp_path / "s.yaml"
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "st" / "inner"), seeds=[0],
                            variants=[{"name": "softmax", "label": label}])
    recipe.write_text(yaml.safe_dump(data))
    for command in ("validate", "study"):
        assert main([command, str(recipe)]) == 2
        err = capsys.readouterr().err
        assert f"variants[0]: the arm's label {label!r}" in err and why in err and "Give it a plain `label:`" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing written anywhere


def test_grid_value_labels_are_single_folder_names(tmp_path, builtin_registry):
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "st"), seeds=[0], variants=["softmax"],
                            grid={"model": [{"label": "../up", "depth": 1}]})
    with pytest.raises(AttnzooError, match=r"grid: the grid point .* labelled '\.\./up', which holds a path separator"):
        plan_runs(recipes.from_dict(data, registry=builtin_registry))


def test_a_study_deletes_only_folders_inside_it_that_attnzoo_wrote(tmp_path):
    from attnzoo.study.plan import _restart, check_inside

    with pytest.raises(AttnzooError, match="not a folder inside the study folder"):
        check_inside(tmp_path / "study", tmp_path / "victim-seed0")
    (tmp_path / "victim-seed0").mkdir()
    (tmp_path / "victim-seed0" / "NOTES.md").write_text("mine")
    with pytest.raises(AttnzooError, match="not a run attnzoo wrote; it is not deleted"):
        _restart(tmp_path / "victim-seed0")
    assert (tmp_path / "victim-seed0" / "NOTES.md").read_text() == "mine"
