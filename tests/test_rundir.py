"""The run folder's own records: finished or not, metrics.jsonl, and a study run's arm and seed."""

from __future__ import annotations

import json

import pytest
import yaml
from attnzoo.errors import AttnzooError
from attnzoo.run import rundir
from attnzoo.run.rundir import RunDir, run_name
from attnzoo.study.report import load_run


def test_a_run_is_finished_once_its_test_metrics_are_written(tmp_path):
    run = RunDir(tmp_path)
    run.append_metrics({"epoch": 1})
    run.best_weights.write_bytes(b"")
    assert not run.is_finished()
    run.write_test_metrics({"top1": 0.5, "seed": 3})
    assert run.is_finished()
    assert run.read_test_metrics() == {"top1": 0.5, "seed": 3}
    assert (tmp_path / "test_metrics.json").is_file()  # the file name users rely on


def test_metrics_rows_are_appended_then_rewritten_as_a_whole(tmp_path):
    run = RunDir(str(tmp_path))  # a str is taken too
    run.append_metrics({"epoch": 1, "train_loss": 2.5})
    run.append_metrics({"epoch": 2, "train_loss": 2.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert lines == ['{"epoch": 1, "train_loss": 2.5}\n', '{"epoch": 2, "train_loss": 2.0}\n']  # one line per epoch
    assert [row["epoch"] for row in run.read_metrics()] == [1, 2]
    run.rewrite_metrics([{"epoch": 1, "train_loss": 2.5}])
    assert run.read_metrics() == [{"epoch": 1, "train_loss": 2.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left


def test_an_interrupted_rewrite_leaves_the_old_metrics(tmp_path, monkeypatch):
    run = RunDir(tmp_path)
    run.rewrite_metrics([{"epoch": 1}, {"epoch": 2}])

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        run.rewrite_metrics([])
    assert run.read_metrics() == [{"epoch": 1}, {"epoch": 2}]


def test_a_study_run_takes_its_arm_and_seed_from_arm_json(tmp_path):
    run = RunDir(tmp_path / "moved-elsewhere")  # the folder name no longer says anything
    run.path.mkdir()
    record = {"arm": "cosine-depth8", "variant": "cosine", "grid": {"model.depth": 8}, "baseline": "softmax-depth8",
              "seed": 4}
    run.arm.write_text(json.dumps(record))
    assert run.arm_record() == record


def test_a_run_made_before_arm_json_takes_its_label_from_the_folder_and_seed_from_its_recipe(tmp_path):
    run = RunDir(tmp_path / run_name("cosine-depth8", 3))
    run.path.mkdir()
    run.recipe.write_text(yaml.safe_dump({"attention": {"name": "cosine"}, "train": {"seed": 3}}))
    run.write_test_metrics({"top1": 0.25, "top5": 0.75, "seed": 3})
    assert run.arm_record() == {"arm": "cosine-depth8", "variant": "cosine-depth8", "grid": {}, "baseline": None,
                                "seed": 3}
    result = load_run(run.path)
    assert (result.label, result.seed) == ("cosine-depth8", 3)


def test_without_a_recipe_the_seed_is_read_from_the_folder_name(tmp_path):
    run = RunDir(tmp_path / run_name("softmax", -2))
    assert run.path.name == "softmax-seed-2"
    assert (run.arm_record()["arm"], run.arm_record()["seed"]) == ("softmax", -2)
    assert RunDir(tmp_path / "plain").arm_record()["seed"] is None


def test_a_damaged_run_file_is_a_clear_error(tmp_path):
    RunDir(tmp_path).arm.write_text("{not json")
    with pytest.raises(AttnzooError, match="arm.json' is not valid JSON.*Delete that run folder"):
        RunDir(tmp_path).arm_record()
