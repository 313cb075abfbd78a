"""The run folder's own records: finished or not, metrics.jsonl, and a study run's arm and seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from attnzoo.errors import AttnzooError
from attnzoo.run import rundir
from attnzoo.run.rundir import RunDir, run_name, write_text
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


# ---------------------------------------------------------------- the run marker

def _users_own_folder(tmp_path):
    """A folder a user made: their own commented recipe.yaml and a metrics.jsonl, no attnzoo run."""
    from conftest import tiny_recipe_dict

    exp = tmp_path / "exp"
    exp.mkdir()
    data = tiny_recipe_dict(tmp_path, output_dir=str(exp))
    (exp / "recipe.yaml").write_text("# my notes on this experiment\n" + yaml.safe_dump(data))
    (exp / "metrics.jsonl").write_text('{"epoch": 1, "mine": true}\n')
    return exp


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flags", [[], ["--resume"], ["--auto-resume"]])
def test_a_users_folder_with_a_recipe_yaml_is_never_taken_for_a_run(tmp_path, capsys, flags):
    from attnzoo.cli import main

    exp = _users_own_folder(tmp_path)
    before = _snapshot(exp)
    assert RunDir(exp).kind() == "foreign"
    assert main(["train", str(exp / "recipe.yaml"), f"output_dir={exp}", *flags]) == 2
    err = capsys.readouterr().err
    assert "is not an attnzoo run" in err and "run.json" in err and "Set output_dir=" in err
    assert "Pass --resume" not in err  # the advice that used to lead to the overwrite
    assert _snapshot(exp) == before  # byte-identical, and nothing added (no lock, no marker)


def test_a_new_run_writes_its_marker_first(tmp_path):
    run = RunDir(tmp_path / "run")
    calls = []
    original = rundir.write_text

    def recording(path, text):
        calls.append(path.name)
        original(path, text)

    rundir.write_text = recording
    try:
        from attnzoo.config import recipe as recipes
        from conftest import tiny_recipe_dict

        recipe = recipes.from_dict(tiny_recipe_dict(tmp_path))
        rundir.write_start(run.path, recipe, {"attnzoo": "x", "plugins": []}, resuming=False)
    finally:
        rundir.write_text = original
    assert calls == ["run.json", "recipe.yaml", "environment.json"]
    marker = run.read_marker()
    assert marker["format"] == rundir.MARKER_FORMAT and len(marker["run_id"]) == 32
    assert run.kind() == "run"


def test_a_kill_while_a_run_is_created_leaves_a_folder_that_starts_again(tmp_path):
    from attnzoo.config import recipe as recipes
    from conftest import tiny_recipe_dict

    recipe = recipes.from_dict(tiny_recipe_dict(tmp_path))
    folder = recipe.run_dir
    folder.mkdir()
    (folder / ".recipe.yaml.tmp").write_text("name: half")  # the kill window of a run being created
    assert RunDir(folder).kind() == "empty"
    assert rundir.prepare(folder, recipe, resume=False) is False  # starts, not "not an attnzoo run"
    (folder / ".recipe.yaml.tmp").unlink()
    RunDir(folder).write_marker()  # killed after the marker, before recipe.yaml
    assert rundir.prepare(folder, recipe, resume=False) is False
    assert rundir.Resume.AUTO.wanted(folder) is False


def test_leftover_temporaries_are_removed_and_nothing_else(tmp_path):
    run = RunDir(tmp_path)
    run.write_marker()
    for name in (".recipe.yaml.tmp", ".best.safetensors.k2j_x9", "notes.tmp", ".hidden"):
        (tmp_path / name).write_text("x")
    (tmp_path / "checkpoints" / ".epoch-0001-step-000004.abc").mkdir(parents=True)
    (tmp_path / "checkpoints" / ".epoch-0001-step-000004.abc" / "model.safetensors").write_text("x")
    (tmp_path / "checkpoints" / "epoch-0001-step-000004").mkdir()
    assert sorted(run.remove_leftovers()) == [".best.safetensors.k2j_x9", ".recipe.yaml.tmp",
                                             "checkpoints/.epoch-0001-step-000004.abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "checkpoints", "notes.tmp", "run.json"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["epoch-0001-step-000004"]


def test_runs_of_the_previous_version_are_recognised_by_the_files_it_always_wrote(tmp_path):
    import shutil

    pristine = Path("/tmp/compat/runs-pristine/compat/softmax-depth1-seed0")
    if pristine.is_dir():
        shutil.copytree(pristine, tmp_path / "old")
    else:  # what that version wrote: recipe.yaml, environment.json naming attnzoo, test_metrics.json
        (tmp_path / "old").mkdir()
        (tmp_path / "old" / "recipe.yaml").write_text("name: t\n")
        (tmp_path / "old" / "environment.json").write_text(json.dumps({"attnzoo": "0.1", "plugins": []}))
        (tmp_path / "old" / "test_metrics.json").write_text("{}")
    old = RunDir(tmp_path / "old")
    assert not old.marker.exists() and old.kind() == "legacy" and old.is_run()
    # The same two files with neither checkpoints nor test metrics, or an environment.json of
    # someone else, are not enough.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "recipe.yaml").write_text("name: t\n")
    (tmp_path / "mine" / "environment.json").write_text('{"conda": "base"}')
    (tmp_path / "mine" / "test_metrics.json").write_text("{}")
    assert RunDir(tmp_path / "mine").kind() == "foreign"


def test_two_processes_writing_one_file_never_rename_each_others_temporary(tmp_path):
    """Every worker of a study writes study.yaml at its start; with one shared temporary name the
    slower writer's os.replace found its temporary already renamed away (FileNotFoundError)."""
    import multiprocessing

    target = tmp_path / "study.yaml"
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(2) as pool:
        together = manager.Barrier(2)  # both are up before either writes, so their writes overlap
        pool.starmap(_write_repeatedly, [(str(target), "a", together), (str(target), "b", together)])
    assert target.read_text() in ("a" * 1000, "b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["study.yaml"]  # no temporary left behind


def _write_repeatedly(path: str, letter: str, together) -> None:
    together.wait()
    for _ in range(500):
        write_text(Path(path), letter * 1000)
