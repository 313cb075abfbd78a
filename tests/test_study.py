"""A study end to end on synthetic data: runs, report, figures, skip and resume, re-evaluation."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from attnzoo.cli import main
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.run.evaluate import evaluate_run
from attnzoo.study.plan import plan_runs, run_study
from attnzoo.study.report import build_report
from conftest import tiny_recipe_dict

ARMS = ["softmax", "cosine"]
SEEDS = [0, 1]
RUNS = [f"{arm}-seed{seed}" for arm in ARMS for seed in SEEDS]
FIGURES = ["paired_differences.png", "loss.png", "val_top1.png", "val_top5.png", "learning_rate.png", "epoch_time.png", "confusion.png",
           "attention_entropy.png", "attention_maps.png"]


def study_recipe(folder: Path, registry, **changes) -> recipes.Recipe:
    data = tiny_recipe_dict(folder, output_dir=str(folder / "study"), variants=ARMS, seeds=SEEDS,
                            data={"max_train_samples": 256, "max_eval_samples": 128})
    data.update(changes)
    return recipes.from_dict(data, registry=registry)


@pytest.fixture(scope="module")
def study(tmp_path_factory, builtin_registry) -> Path:
    """One study for the whole module (training is the slow part); tests that change it work on copies."""
    folder = tmp_path_factory.mktemp("study")
    run_study(study_recipe(folder, builtin_registry))
    return folder / "study"


def run_metrics(study: Path, run: str) -> dict:
    return json.loads((study / run / "test_metrics.json").read_text())


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_arm_and_seed_is_a_finished_run(study):
    assert (study / "study.yaml").is_file()
    assert sorted(p.name for p in study.iterdir() if p.is_dir() and p.name != "figures") == sorted(RUNS)
    for run in RUNS:
        for name in ("recipe.yaml", "environment.json", "metrics.jsonl", "test_metrics.json", "model.safetensors",
                     "best.safetensors", "attention.json"):
            assert (study / run / name).is_file(), f"{run}/{name}"
        run_recipe = recipes.read_yaml(study / run / "recipe.yaml")
        arm, seed = run.split("-seed")
        assert run_recipe["attention"]["name"] == arm and run_recipe["train"]["seed"] == int(seed)
        assert "variants" not in run_recipe and run_recipe["output_dir"] == str(study / run)


@pytest.mark.slow
def test_results_table_is_the_mean_of_the_runs(study):
    rows = read_csv(study / "results.csv")
    assert [r["arm"] for r in rows] == ARMS  # in the order the study ran them
    markdown = (study / "results.md").read_text()
    for row in rows:
        top1 = [run_metrics(study, f"{row['arm']}-seed{s}")["top1"] for s in SEEDS]
        assert row["n_seeds"] == "2" and row["seeds"] == "0 1"
        assert float(row["top1_mean"]) == pytest.approx(statistics.fmean(top1))
        assert float(row["top1_std"]) == pytest.approx(statistics.stdev(top1))
        f1 = [run_metrics(study, f"{row['arm']}-seed{s}")["f1_macro"] for s in SEEDS]
        assert float(row["f1_macro_mean"]) == pytest.approx(statistics.fmean(f1))
        assert row["peak_memory_mib_mean"] == ""  # measured on CUDA only
        assert f"| {row['arm']} | 2 | {100 * statistics.fmean(top1):.2f}" in markdown
    for column in ("top5", "precision_macro", "recall_macro", "ece", "loss", "parameters", "train_seconds",
                   "mean_epoch_seconds", "images_per_sec", "best_epoch"):
        assert all(r[f"{column}_mean"] != "" for r in rows), column


@pytest.mark.slow
def test_figures_are_non_empty_pngs(study):
    for name in FIGURES:
        data = (study / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
        assert f"figures/{name}" in (study / "results.md").read_text()


@pytest.mark.slow
def test_running_again_skips_finished_runs_and_resumes_interrupted_ones(study, builtin_registry, tmp_path,
                                                                         capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    expected = run_metrics(study, "cosine-seed1")["top1"]
    for name in ("test_metrics.json", "model.safetensors", "attention.json"):  # as if killed before the test
        (copy / "cosine-seed1" / name).unlink()
    finished = [run for run in RUNS if run != "cosine-seed1"]
    before = {run: (copy / run / "test_metrics.json").stat().st_mtime_ns for run in finished}
    capsys.readouterr()
    run_study(study_recipe(tmp_path, builtin_registry))
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == len(finished)
    assert {run: (copy / run / "test_metrics.json").stat().st_mtime_ns for run in finished} == before
    assert "cosine seed 1: resuming" in out
    assert (copy / "cosine-seed1" / "resumes.jsonl").is_file()  # the resume is on record
    assert run_metrics(copy, "cosine-seed1")["top1"] == pytest.approx(expected)


@pytest.mark.slow
def test_report_is_rebuilt_from_the_files_alone(study, tmp_path, capsys):
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    expected = read_csv(copy / "results.csv")
    shutil.rmtree(copy / "figures")
    for name in ("results.md", "results.csv", "study.yaml"):
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    assert "top-1 (%)" in capsys.readouterr().out  # the summary table
    rebuilt = read_csv(copy / "results.csv")
    assert [r["top1_mean"] for r in rebuilt] == [r["top1_mean"] for r in expected]
    assert all((copy / "figures" / name).stat().st_size > 5000 for name in FIGURES)


def test_report_of_a_folder_without_finished_runs_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    with pytest.raises(AttnzooError, match="not found"):
        build_report(tmp_path / "missing")


@pytest.mark.slow
def test_eval_reproduces_the_test_top1_and_writes_only_eval_json(study, builtin_registry, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(study / "softmax-seed1", run)
    files_before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    report = evaluate_run(run, registry=builtin_registry)
    recorded = json.loads((run / "test_metrics.json").read_text())
    assert report["top1"] == pytest.approx(recorded["top1"])
    assert report["top5"] == pytest.approx(recorded["top5"])
    assert json.loads((run / "eval.json").read_text())["top1"] == report["top1"]
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "eval.json"} == files_before


@pytest.mark.slow
def test_eval_errors_are_clear(study, builtin_registry, tmp_path):
    with pytest.raises(AttnzooError, match="not found"):
        evaluate_run(tmp_path / "missing", registry=builtin_registry)
    with pytest.raises(AttnzooError, match="no recipe.yaml"):
        evaluate_run(tmp_path, registry=builtin_registry)
    run = tmp_path / "run"
    shutil.copytree(study / "cosine-seed0", run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(AttnzooError, match="truncated or corrupted"):
        evaluate_run(run, registry=builtin_registry)
    weights.unlink()
    with pytest.raises(AttnzooError, match="no model.safetensors"):
        evaluate_run(run, registry=builtin_registry)


def test_arms_with_the_same_name_need_labels(tmp_path, builtin_registry):
    with pytest.raises(AttnzooError, match="label"):
        plan_runs(study_recipe(tmp_path, builtin_registry, variants=["standardized", "standardized"]))
    arms = ["standardized", {"name": "standardized", "scale": "inv_sqrt_d", "label": "std-sqrtd"}]
    runs = plan_runs(study_recipe(tmp_path, builtin_registry, variants=arms, seeds=[3]))
    assert [r.run_dir.name for r in runs] == ["standardized-seed3", "std-sqrtd-seed3"]
    assert runs[1].recipe.attention.options["scale"] == "inv_sqrt_d" and runs[1].recipe.train.seed == 3


def test_a_study_never_writes_into_a_single_run_folder(tmp_path, builtin_registry):
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "recipe.yaml").write_text("name: x\n")
    with pytest.raises(AttnzooError, match="not a study"):
        run_study(study_recipe(tmp_path, builtin_registry))


@pytest.mark.slow
def test_eval_builds_no_optimizer_and_no_trainer(study, builtin_registry, tmp_path, monkeypatch):
    import attnzoo.assembly
    import attnzoo.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation must not build this")

    monkeypatch.setattr(attnzoo.assembly, "build_optimizer", refuse)
    monkeypatch.setattr(attnzoo.trainer.Trainer, "__init__", refuse)
    run = tmp_path / "run"
    shutil.copytree(study / "cosine-seed0", run)
    report = evaluate_run(run, registry=builtin_registry)
    assert report["top1"] == pytest.approx(run_metrics(study, "cosine-seed0")["top1"])


@pytest.mark.slow
def test_a_run_saves_the_images_under_its_attention_maps(study):
    from attnzoo.data.loader import load_splits
    from attnzoo.run.analysis import read_map_images

    run = study / "softmax-seed0"
    images, indices = read_map_images(run / "attention_images.safetensors")
    assert indices == json.loads((run / "attention.json").read_text())["image_indices"]
    test = load_splits(recipes.load(run / "recipe.yaml")).test
    assert images.dtype == torch.uint8 and torch.equal(images, test.images[indices])


@pytest.mark.slow
def test_the_report_draws_attention_maps_without_the_dataset(study, tmp_path, monkeypatch):
    import attnzoo.data.loader
    import attnzoo.data.pipeline

    def no_dataset(*args, **kwargs):
        raise AssertionError("the report must not load a dataset")

    monkeypatch.setattr(attnzoo.data.loader, "load_splits", no_dataset)
    monkeypatch.setattr(attnzoo.data.pipeline, "load_data", no_dataset)
    copy = tmp_path / "new"
    shutil.copytree(study, copy)
    build_report(copy)
    # a run of an earlier version, without the images: the maps are drawn alone
    old = tmp_path / "old"
    shutil.copytree(study, old)
    for run in old.glob("*-seed*"):
        (run / "attention_images.safetensors").unlink()
    build_report(old)
    with_images, without = (folder / "figures" / "attention_maps.png" for folder in (copy, old))
    assert with_images.stat().st_size > without.stat().st_size > 5000


@pytest.mark.slow
def test_a_run_recipe_holds_only_run_keys(study):
    for run in RUNS:
        keys = set(recipes.read_yaml(study / run / "recipe.yaml"))
        assert keys.isdisjoint({"bench", "robustness", "variants", "seeds", "grid", "baseline"}), run
        assert {"model", "attention", "data", "optim", "train"} <= keys
    assert "variants" in recipes.read_yaml(study / "study.yaml")  # the study's own recipe keeps them


def test_every_bad_arm_is_reported_at_once(tmp_path, builtin_registry):
    arms = ["cosin", {"name": "cosine", "temp": 2}, 5, "softmax"]
    with pytest.raises(AttnzooError) as caught:
        plan_runs(study_recipe(tmp_path, builtin_registry, variants=arms))
    message = str(caught.value)
    assert "3 problem(s)" in message and "variants[0]: Unknown attention variant 'cosin'" in message
    assert "variants[1]:" in message and "'temp'" in message
    assert "variants[2]: a variant arm must be a name or a mapping with 'name', got 5" in message


def test_validate_checks_a_study_and_says_how_many_runs(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "study"), variants=["softmax", "cosine"],
                            seeds=[0, 1, 2])
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["validate", str(path)]) == 0
    assert "6 runs (2 arm(s) x 3 seed(s))" in capsys.readouterr().err
    assert main(["validate", str(path), "variants=[softmax, sofmax]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("attnzoo: error: ") and "variants[1]: Unknown attention variant 'sofmax'" in err


@pytest.mark.slow
def test_a_study_resumes_over_changes_that_leave_a_result_as_it_is(study, builtin_registry, tmp_path, capsys):
    """What the study plans as resuming is what the resume accepts: it never stops partway. A new
    early-stopping patience stops it before anything is trained; --extend continues every run."""
    copy = tmp_path / "study"
    shutil.copytree(study, copy)
    expected = run_metrics(study, "cosine-seed1")["top1"]
    for name in ("test_metrics.json", "model.safetensors", "attention.json"):  # as if killed before the test
        (copy / "cosine-seed1" / name).unlink()
    base = tiny_recipe_dict(tmp_path, data={"max_train_samples": 256, "max_eval_samples": 128})
    housekeeping = {"data": {**base["data"], "num_workers": 0, "download": False},
                    "train": {**base["train"], "keep_checkpoints": 1, "log_every": 7}}
    capsys.readouterr()
    run_study(study_recipe(tmp_path, builtin_registry, **housekeeping))
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 3 and "cosine seed 1: resuming" in out
    assert run_metrics(copy, "cosine-seed1")["top1"] == pytest.approx(expected)
    assert len(list((copy / "cosine-seed1" / "checkpoints").iterdir())) == 1  # keep_checkpoints=1 applied

    housekeeping["train"]["early_stopping_patience"] = 2
    before = {run: (copy / run / "test_metrics.json").stat().st_mtime_ns for run in RUNS}
    with pytest.raises(AttnzooError, match="train.early_stopping_patience: None in the run, 2 now; --extend would "
                                           "continue it"):
        run_study(study_recipe(tmp_path, builtin_registry, **housekeeping))
    assert {run: (copy / run / "test_metrics.json").stat().st_mtime_ns for run in RUNS} == before
    run_study(study_recipe(tmp_path, builtin_registry, **housekeeping), extend=True)
    out = capsys.readouterr().out
    assert out.count("continuing with train.early_stopping_patience 2 (was None)") == 4
    for run in RUNS:  # one epoch trained: a patience of 2 could not have stopped it, so the result is the same
        assert recipes.read_yaml(copy / run / "recipe.yaml")["train"]["early_stopping_patience"] == 2
        assert run_metrics(copy, run)["top1"] == pytest.approx(run_metrics(study, run)["top1"])
    run_study(study_recipe(tmp_path, builtin_registry, **housekeeping))
    assert capsys.readouterr().out.count("finished, skipped") == 4
