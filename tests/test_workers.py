"""A study shared by processes: --workers N on one machine and --shard K/N, each run trained once."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.study.plan import parse_shard, plan_runs, shard_of
from conftest import tiny_recipe_dict

# Columns that measure time or the machine, not the result: they differ between any two studies.
TIMING = ("seconds", "per_sec", "memory", "time", "eta")


def study_file(tmp_path, name: str):
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / name), variants=["softmax", "cosine"], seeds=[0, 1],
                            data={"max_train_samples": 128, "max_eval_samples": 64})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def attnzoo(*words, timeout=600):
    return subprocess.run([sys.executable, "-m", "attnzoo", *words], capture_output=True, text=True, timeout=timeout)


def results(folder):
    with open(folder / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in rows]


@pytest.mark.slow
def test_two_workers_train_every_run_once_and_report_as_one_worker_does(tmp_path):
    one = attnzoo("study", str(study_file(tmp_path, "one")))
    assert one.returncode == 0, one.stderr
    two = attnzoo("study", str(study_file(tmp_path, "two")), "--workers", "2")
    assert two.returncode == 0, two.stderr + two.stdout
    assert "4 done, 0 running, 0 failed, 0 left of 4" in two.stdout
    runs = sorted(p for p in (tmp_path / "two").iterdir() if (p / "run.json").is_file())
    assert len(runs) == 4
    starts = {}
    for run in runs:
        assert not (run / "resumes.jsonl").exists() and not (run / "run.lock").exists()
        starts[run.name] = json.loads((run / "environment.json").read_text())["command"]
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch, trained once
    logs = [(tmp_path / "two" / "worker-logs" / f"worker-{k}.log").read_text() for k in (1, 2)]
    trained = [line for log in logs for line in log.splitlines() if ": starting;" in line]
    assert len(trained) == 4 and len({line.split(":")[0] for line in trained}) == 4  # every run started once
    one_rows, two_rows = results(tmp_path / "one"), results(tmp_path / "two")
    assert [r["arm"] for r in two_rows] == [r["arm"] for r in one_rows]
    for a, b in zip(one_rows, two_rows):
        assert (a["top1_mean"], a["top5_mean"]) == (b["top1_mean"], b["top5_mean"])  # the same predictions
        for key in a:  # other sums differ in the last digits: a worker runs with half the CPU threads
            if a[key] != b[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-7), key


def test_shards_together_plan_every_run_exactly_once(tmp_path, builtin_registry):
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "st"), variants=["softmax", "cosine"],
                            seeds=[0, 1, 2], grid={"model.depth": [1, 2]})
    runs = plan_runs(recipes.from_dict(data, registry=builtin_registry))
    shards = [shard_of(runs, (k, 3)) for k in (1, 2, 3)]
    names = [r.run_dir.name for shard in shards for r in shard]
    assert sorted(names) == sorted(r.run_dir.name for r in runs) and len(names) == len(set(names)) == 12
    assert [len(s) for s in shards] == [4, 4, 4]
    again = plan_runs(recipes.from_dict(data, registry=builtin_registry))
    assert [r.run_dir.name for r in shard_of(again, (2, 3))] == [r.run_dir.name for r in shards[1]]  # deterministic


@pytest.mark.parametrize("text", ["0/3", "4/3", "2", "a/b", "1/0"])
def test_a_bad_shard_is_a_clear_error(text):
    with pytest.raises(AttnzooError, match="expected K/N with 1 <= K <= N"):
        parse_shard(text)


@pytest.mark.slow  # two studies, one killed with SIGKILL in the middle of its run
def test_a_killed_worker_leaves_its_run_to_the_next_one_which_takes_over_and_resumes(tmp_path):
    from attnzoo.run.checkpoint import list_checkpoints
    from test_train import assert_same_run, cli, wait_for

    def recipe(name):
        data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / name), variants=["softmax"], seeds=[0],
                                train={"epochs": 4, "log_every": 1, "deterministic": True},
                                data={"max_train_samples": 1600})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def finish(*words):  # one thread, like the killed worker: thread counts round differently
        proc = cli(*words)
        out = proc.communicate(timeout=600)[0]
        return proc.returncode, out

    code, out = finish("study", str(recipe("reference")))
    assert code == 0, out
    killed = recipe("killed")
    run = tmp_path / "killed" / "softmax-seed0"
    worker = cli("study", str(killed))
    wait_for(lambda: len(list_checkpoints(run)) >= 1, worker)
    worker.kill()
    worker.wait()
    assert (run / "run.lock").is_file() and not (run / "test_metrics.json").exists()  # the dead worker's claim
    code, out = finish("study", str(killed))
    assert code == 0, out
    assert "taking over the run lock" in out
    assert_same_run(tmp_path / "reference" / "softmax-seed0", run)
    assert not (run / "run.lock").exists()


def test_progress_counts_a_run_extend_trains_again_only_once_it_has_finished_again(tmp_path):
    """With --extend, a stale run is finished on disk before it is trained again: it is not yet done."""
    import os
    import time
    from types import SimpleNamespace

    from attnzoo.study.workers import _progress

    runs = []
    for name in ("kept", "stale"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "test_metrics.json").write_text("{}")
        os.utime(folder / "test_metrics.json", (1000.0, 1000.0))  # finished long ago
        runs.append(SimpleNamespace(run_dir=folder))
    since = time.time()
    stale = {tmp_path / "stale"}
    assert _progress(runs, 0, time.monotonic(), 1, stale, since).startswith("study: 1 done, 0 running, 0 failed, 1 left of 2")
    (tmp_path / "stale" / "test_metrics.json").write_text("{}")  # trained again
    assert _progress(runs, 0, time.monotonic(), 1, stale, since).startswith("study: 2 done, 0 running, 0 failed, 0 left of 2")
