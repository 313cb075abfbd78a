"""One writer per run: the run lock, taken atomically, released however a run ends, taken over when stale."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from attnzoo.cli import main
from attnzoo.run import lock
from attnzoo.run.lock import LOCK, RunLocked, acquire, try_acquire
from conftest import tiny_recipe_dict


def test_the_lock_records_its_holder_and_is_released(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with acquire(tmp_path / "run") as held:
        record = json.loads((tmp_path / "run" / LOCK).read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["job"] == {"SLURM_JOB_ID": "4242"} and record["started"]
        before = record["heartbeat"]
        time.sleep(0.01)
        held.beat(force=True)
        assert json.loads((tmp_path / "run" / LOCK).read_text())["heartbeat"] > before
    assert not (tmp_path / "run").exists()  # it created the folder and nothing was written: gone again


def test_a_held_lock_names_its_holder_and_how_to_take_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "started": "then",
                                                 "heartbeat": time.time(), "job": {}, "token": "x"}))
        with pytest.raises(RunLocked, match=rf"being trained by pid {holder.pid} on host .*delete .*run.lock"):
            acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_whose_process_is_gone_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then",
                                             "heartbeat": time.time(), "job": {}, "token": "old"}))
    with acquire(tmp_path) as held:
        assert held.record["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"taking over the run lock of pid {dead.pid}" in out and f"its process {dead.pid} on this host is gone" in out


def test_a_lock_from_another_host_is_stale_only_after_its_heartbeat_limit(tmp_path):
    record = {"host": "elsewhere", "pid": 1, "started": "then", "heartbeat": time.time() - 100, "job": {}, "token": "t"}
    (tmp_path / LOCK).write_text(json.dumps(record))
    assert try_acquire(tmp_path, stale_after=600)["host"] == "elsewhere"  # still held
    got = try_acquire(tmp_path, stale_after=50, say=lambda *a, **k: None)
    assert isinstance(got, lock.RunLock)
    got.release()


def test_two_trainings_of_one_run_one_loses_with_a_clear_message(tmp_path):
    """Two real `attnzoo train` processes on one folder: exactly one trains, the other exits 2."""
    recipe = tmp_path / "r.yaml"
    data = tiny_recipe_dict(tmp_path, train={"epochs": 2, "batch_size": 64, "seed": 0},
                            data={"max_train_samples": 512, "max_eval_samples": 64})
    import yaml

    recipe.write_text(yaml.safe_dump(data))
    cmd = [sys.executable, "-m", "attnzoo", "train", str(recipe), "--auto-resume"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    loser = [err for rc, _, err in results if rc == 2]
    if codes == [0, 0]:  # the second started after the first had finished: it found nothing to do
        pytest.skip("the two processes did not overlap on this machine")
    assert codes == [0, 2], results
    assert "is being trained by pid" in loser[0] and "only one process may train a run" in loser[0]
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 2  # one writer: one row per epoch
    assert not (tmp_path / "run" / LOCK).exists()  # released at the end


def test_train_releases_the_lock_when_it_fails(tmp_path, capsys):
    import yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    (tmp_path / "run").mkdir()
    assert main(["train", str(recipe), "--resume"]) == 2  # nothing to resume: an error after the lock was taken
    assert "holds no run to resume" in capsys.readouterr().err
    assert not (tmp_path / "run" / LOCK).exists()
