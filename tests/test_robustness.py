"""`attnzoo eval RUN --corruptions`: corruptions.json from the best checkpoint, clear errors."""

import csv
import json
import shutil

import pytest
import yaml
from attnzoo.cli import main
from attnzoo.config import recipe as recipes
from attnzoo.data.corruptions import CORRUPTIONS
from attnzoo.run.trainer import train
from conftest import tiny_recipe_dict

pytestmark = pytest.mark.slow  # every test here trains a run first


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    data = tiny_recipe_dict(tmp, data={"max_train_samples": 256, "max_eval_samples": 60},
                            train={"epochs": 2, "batch_size": 32})
    train(recipes.from_dict(data))
    return tmp / "run"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_corruptions_writes_a_well_formed_file(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, out, err = run_cli(capsys, "eval", str(run), "--corruptions")
    assert code == 0, err
    record = json.loads((run / "corruptions.json").read_text())
    assert record["weights"] == "best.safetensors" and record["seed"] == 0 and record["samples"] == 60
    assert record["severities"] == [1, 2, 3, 4, 5]
    assert set(record["corruptions"]) == set(CORRUPTIONS) >= {"gaussian_noise", "gaussian_blur", "contrast",
                                                              "jpeg_compression", "shift"}
    for name, r in record["corruptions"].items():
        assert len(r["top1"]) == len(r["top5"]) == len(r["loss"]) == len(r["values"]) == 5, name
        assert all(0 <= a <= b <= 1 for a, b in zip(r["top1"], r["top5"])), name
    values = [v for r in record["corruptions"].values() for v in r["top1"]]
    assert record["mean_corruption_top1"] == pytest.approx(sum(values) / 25)
    # The best epoch's weights, evaluated clean, are the weights the run was tested with.
    test = json.loads((run / "test_metrics.json").read_text())
    assert record["clean_top1"] == pytest.approx(test["top1"])
    assert record["relative_corruption_top1"] == pytest.approx(record["mean_corruption_top1"] / record["clean_top1"])
    assert "gaussian_noise" in out and "mean corruption top1" in out
    # Nothing else in the run changes.
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != "corruptions.json"} == before


def test_same_seed_same_result(trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    results = []
    for seed in ("3", "3"):
        assert run_cli(capsys, "eval", str(run), "--corruptions", "--seed", seed)[0] == 0
        results.append(json.loads((run / "corruptions.json").read_text()))
    strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert results[0]["seed"] == 3 and strip(results[0]) == strip(results[1])


def test_bad_runs_are_one_clear_message(trained_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "eval", str(tmp_path / "missing"), "--corruptions")
    assert code == 2 and "not found" in err and "Traceback" not in err
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "best.safetensors").unlink()
    code, _, err = run_cli(capsys, "eval", str(run), "--corruptions")
    assert code == 2 and "has no best.safetensors" in err and "Traceback" not in err
    (run / "best.safetensors").write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "eval", str(run), "--corruptions")
    assert code == 2 and "truncated or corrupted" in err
    assert not (run / "corruptions.json").exists()


def test_a_study_option_evaluates_every_run(tmp_path, capsys):
    data = tiny_recipe_dict(tmp_path, data={"max_train_samples": 128, "max_eval_samples": 40},
                            train={"epochs": 1, "batch_size": 32}, variants=["softmax", "cosine"], seeds=[0],
                            robustness={"corruptions": True}, output_dir=str(tmp_path / "study"))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = run_cli(capsys, "study", str(path))
    assert code == 0, err
    for arm in ("softmax", "cosine"):
        record = json.loads((tmp_path / "study" / f"{arm}-seed0" / "corruptions.json").read_text())
        assert record["variant"] == arm and record["samples"] == 40
    results = (tmp_path / "study" / "results.md").read_text()
    assert "## Robustness" in results and "## Accuracy against cost" in results
    assert results.index("## Robustness") < results.index("## Runs")  # before the per-run table
    for name in ("accuracy_vs_cost.png", "robustness.png"):
        data = (tmp_path / "study" / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000 and f"figures/{name}" in results
    with open(tmp_path / "study" / "results.csv", newline="") as f:
        rows = {row["arm"]: row for row in csv.DictReader(f)}
    cosine = json.loads((tmp_path / "study" / "cosine-seed0" / "corruptions.json").read_text())
    assert float(rows["cosine"]["mean_corruption_top1_mean"]) == pytest.approx(cosine["mean_corruption_top1"])
    cost = json.loads((tmp_path / "study" / "softmax-seed0" / "cost.json").read_text())
    assert float(rows["softmax"]["flops_per_image_mean"]) == cost["flops_per_image"]
    # Running the study again evaluates nothing twice.
    stamp = (tmp_path / "study" / "cosine-seed0" / "corruptions.json").stat().st_mtime_ns
    assert run_cli(capsys, "study", str(path))[0] == 0
    assert (tmp_path / "study" / "cosine-seed0" / "corruptions.json").stat().st_mtime_ns == stamp


def test_images_come_back_to_their_pixels(trained_run):
    """The loaders hand out normalised images; undoing that must give the very pixels back, or
    every corruption would carry an extra one."""
    from attnzoo.run.evaluate import load_best_run
    from attnzoo.run.robustness import accuracy

    trainer = load_best_run(trained_run)
    clean, identity = accuracy(trainer, None, 0, 0), accuracy(trainer, "contrast", 0, 0)
    assert (clean["top1"], clean["top5"], clean["samples"]) == (identity["top1"], identity["top5"], identity["samples"])
    assert clean["loss"] == pytest.approx(identity["loss"], abs=1e-5)
