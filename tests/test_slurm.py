"""`attnzoo study --launcher slurm` through submitit, and `attnzoo study --status`, on the CPU: submitit's
LocalExecutor runs the array tasks; the sbatch script is made without a cluster and read as text."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.study import plan, slurm
from conftest import tiny_recipe_dict

submitit = pytest.importorskip("submitit")


def study_recipe(tmp_path, name: str, registry=None, **sections):
    sections = {"variants": ["softmax", "cosine"], "seeds": [0, 1],
                "data": {"max_train_samples": 128, "max_eval_samples": 64}, **sections}
    data = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / name), **sections)
    return recipes.from_dict(data, registry=registry), data


def local_executor(recipe):
    executor = submitit.LocalExecutor(folder=recipe.run_dir / slurm.LOGS / "%j")
    executor.update_parameters(timeout_min=30)
    return executor


def test_the_sbatch_script_carries_partition_gpus_time_limit_and_array_size(tmp_path, builtin_registry):
    recipe, _ = study_recipe(tmp_path, "s", builtin_registry, slurm={
        "partition": "gpu-long", "gpus_per_run": 2, "time_minutes": 90, "array_parallelism": 3, "mem_gb": 48,
        "account": "vision", "additional_parameters": {"constraint": "a100"}, "setup": ["module load cuda"]})
    script = slurm.sbatch_script(recipe, tasks=len(plan.plan_runs(recipe, builtin_registry)))
    for line in ("#SBATCH --partition=gpu-long", "#SBATCH --gpus-per-node=2", "#SBATCH --time=90",
                 "#SBATCH --array=0-3%3", "#SBATCH --mem=48GB", "#SBATCH --account=vision",
                 "#SBATCH --constraint=a100", "#SBATCH --signal=USR2@120", "#SBATCH --cpus-per-task=8",
                 "module load cuda"):
        assert line in script.splitlines(), line
    assert "qos" not in script  # not set: left to the cluster
    # Two runs a task: half the tasks.
    assert "#SBATCH --array=0-1%2" in slurm.sbatch_script(recipe, tasks=len(slurm.task_groups(list("abcd"), 2)))


def _fake_slurm(tmp_path, monkeypatch):
    """`srun` and `sbatch` stand-ins on PATH: sbatch keeps each script it is given and answers as SLURM does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(ls {tmp_path}/scripts | wc -l)
cp "$1" {tmp_path}/scripts/$n.sh
echo "Submitted batch job $((4200 + n))"
""")
    (tmp_path / "scripts").mkdir()
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "scripts"


def test_submitting_to_slurm_makes_one_array_of_the_unfinished_runs_and_a_report_job_after_it(
        tmp_path, builtin_registry, monkeypatch, capsys):
    scripts = _fake_slurm(tmp_path, monkeypatch)
    recipe, _ = study_recipe(tmp_path, "sub", builtin_registry, slurm={"partition": "gpu", "time_minutes": 30})
    finished = plan.plan_runs(recipe, builtin_registry)[3]
    assert finished.run_dir.name == "cosine-seed1"
    _made_up_run(finished.run_dir, ("test_metrics.json", "{}"))  # finished, with its arm's recipe: not submitted
    (finished.run_dir / "recipe.yaml").write_text(recipes.dump_run(finished.recipe))
    (recipe.run_dir / plan.STUDY_FILE).write_text(recipes.dump(recipe))
    out = slurm.submit_study(recipe)
    assert out["pending"] == ["softmax-seed0", "softmax-seed1", "cosine-seed0"]
    assert [job.job_id for job in out["jobs"]] == ["4200_0", "4200_1", "4200_2"] and out["report"].job_id == "4201"
    array, report = (scripts / "0.sh").read_text(), (scripts / "1.sh").read_text()
    assert "#SBATCH --array=0-2%3" in array and "#SBATCH --partition=gpu" in array and "#SBATCH --time=30" in array
    assert "#SBATCH --dependency=afterany:4200" in report and "--array" not in report
    assert "job 4200" in capsys.readouterr().out
    record = json.loads((recipe.run_dir / slurm.LOGS / slurm.SUBMITTED).read_text())
    assert record["runs"] == {"4200_0": ["softmax-seed0"], "4200_1": ["softmax-seed1"], "4200_2": ["cosine-seed0"]}
    assert not (recipe.run_dir / slurm.LOGS / "%j").exists()


def test_without_sbatch_the_slurm_launcher_says_where_to_submit_from(tmp_path, builtin_registry, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun, no sbatch
    recipe, _ = study_recipe(tmp_path, "nosl", builtin_registry)
    with pytest.raises(AttnzooError, match="login node"):
        slurm.submit_study(recipe)


def test_a_task_of_several_gpus_starts_its_runs_with_accelerate_launch(tmp_path):
    one = slurm.child_command(tmp_path / "study.yaml", ["a-seed0"], gpus=1)
    assert one[1:4] == ["-m", "attnzoo", "study"] and one[-2:] == ["--runs", "a-seed0"]
    four = slurm.child_command(tmp_path / "study.yaml", ["a-seed0", "b-seed0"], gpus=4)
    assert four[1:3] == ["-m", "accelerate.commands.launch"]
    assert four[four.index("--num_processes") + 1] == "4" and four[-1] == "a-seed0,b-seed0"


def test_slurm_keys_are_checked_with_a_fix(tmp_path, builtin_registry):
    data = tiny_recipe_dict(tmp_path, slurm={"gpus_per_run": -1, "time_minutes": 0, "mem_gb": 0, "partiton": "gpu"})
    with pytest.raises(AttnzooError) as info:
        recipes.from_dict(data, registry=builtin_registry)
    message = str(info.value)
    for text in ("slurm.partiton: unknown key (did you mean 'partition'?)", "slurm.gpus_per_run: must be at least 0",
                 "slurm.time_minutes: must be at least 1", "slurm.mem_gb: must be a positive number of GB"):
        assert text in message


def test_without_submitit_the_slurm_launcher_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # what an install without the extra has
    with pytest.raises(AttnzooError, match=r"pip install 'attnzoo\[slurm\]'"):
        slurm.import_submitit()


def test_attnzoo_imports_without_submitit():
    code = ("import sys, attnzoo, attnzoo.cli, attnzoo.study.slurm, attnzoo.study.plan\n"
            "assert 'submitit' not in sys.modules, 'submitit imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _made_up_run(folder, *files):
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"format": 1, "run_id": folder.name}))
    (folder / "recipe.yaml").write_text("name: t\n")
    for name, text in files:
        (folder / name).write_text(text)


def test_status_shows_every_run_from_its_folder_and_lock(tmp_path, builtin_registry, capsys):
    recipe, data = study_recipe(tmp_path, "st", builtin_registry, seeds=[0, 1, 2])
    study = recipe.run_dir
    _made_up_run(study / "softmax-seed0", ("test_metrics.json", "{}"))
    live = {"host": socket.gethostname(), "pid": os.getpid(), "started": "now", "heartbeat": time.time(),
            "job": {"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1"}, "token": "x"}
    _made_up_run(study / "softmax-seed1", ("run.lock", json.dumps(live)))
    log = tmp_path / "77_2_log.err"
    log.write_text("epoch 1\nTraceback ...\nRuntimeError: CUDA error: an illegal memory access\n\n")
    _made_up_run(study / "softmax-seed2")
    plan.record_failure(study / "softmax-seed2", "RuntimeError: CUDA error", log=str(log))
    _made_up_run(study / "cosine-seed0", ("diverged.json", "{}"))
    gone = dict(live, pid=2**22 + 12345, token="y")  # a pid no process has: its holder is gone
    _made_up_run(study / "cosine-seed1", ("run.lock", json.dumps(gone)))
    _made_up_run(study / "cosine-seed2")  # started, stopped at a checkpoint
    before = sorted(p.relative_to(study) for p in study.rglob("*"))
    study_file = tmp_path / "st.yaml"
    study_file.write_text(yaml.safe_dump(data))
    from attnzoo.cli import main

    assert main(["study", str(study_file), "--status"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("  ")}
    assert out.splitlines()[0].endswith("1 finished, 1 diverged, 1 running, 2 failed, 1 stopped, 0 queued of 6 runs")
    assert lines["softmax-seed0"].split()[1] == "finished"
    assert lines["softmax-seed1"].split()[1] == "running" and f"pid {os.getpid()}" in lines["softmax-seed1"]
    assert "SLURM_ARRAY_JOB_ID=77" in lines["softmax-seed1"]
    assert lines["softmax-seed2"].split()[1] == "failed"
    assert f"RuntimeError: CUDA error: an illegal memory access (log: {log})" in lines["softmax-seed2"]
    assert lines["cosine-seed0"].split()[1] == "diverged"
    assert lines["cosine-seed1"].split()[1] == "failed" and "is gone" in lines["cosine-seed1"]
    assert lines["cosine-seed2"].split()[1] == "stopped"
    assert sorted(p.relative_to(study) for p in study.rglob("*")) == before  # nothing written, no lock taken
    (study / "softmax-seed0" / "test_metrics.json").unlink()
    import shutil

    shutil.rmtree(study / "cosine-seed2")
    assert plan.run_status(study / "cosine-seed2") == ("queued", "")


def test_a_requeued_task_removes_the_lock_its_earlier_attempt_left(tmp_path, monkeypatch, capsys):
    run = tmp_path / "softmax-seed0"
    run.mkdir()
    mine = {"host": "node7", "pid": 1, "heartbeat": time.time(), "token": "a",
            "job": {"SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "3"}}
    (run / "run.lock").write_text(json.dumps(mine))
    other = tmp_path / "cosine-seed0"
    other.mkdir()
    (other / "run.lock").write_text(json.dumps(dict(mine, job={"SLURM_ARRAY_JOB_ID": "9", "SLURM_ARRAY_TASK_ID": "4"})))
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "9")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    slurm.release_own_locks(tmp_path, ["softmax-seed0", "cosine-seed0"])
    assert not (run / "run.lock").exists()
    assert (other / "run.lock").exists()  # another task's: alive as far as this task knows
    assert "earlier attempt of this task" in capsys.readouterr().out


TIMING = ("seconds", "per_sec", "memory", "time", "throughput", "img_s")  # the machine's, not the result's


def results(folder):
    """Each finished run's test metrics, less those that measure time or memory."""
    return {p.name: {k: v for k, v in json.loads((p / "test_metrics.json").read_text()).items()
                     if not any(t in k for t in TIMING)}
            for p in sorted(folder.iterdir()) if (p / "test_metrics.json").is_file()}


@pytest.mark.slow
def test_local_executor_runs_the_study_as_array_tasks_and_the_report_follows(tmp_path):
    recipe, data = study_recipe(tmp_path, "array", slurm={"runs_per_task": 2})
    out = slurm.submit_study(recipe, make_executor=local_executor)
    assert [job.result() for job in out["jobs"]] == [{"softmax-seed0": "finished", "softmax-seed1": "finished"},
                                                    {"cosine-seed0": "finished", "cosine-seed1": "finished"}]
    assert not list(recipe.run_dir.glob("*/run.lock"))
    slurm.ReportTask(str(recipe.run_dir / plan.STUDY_FILE))()
    assert (recipe.run_dir / "results.md").is_file()
    logs = list((recipe.run_dir / slurm.LOGS).glob("*/*_log.out"))
    assert len(logs) == 2 and all("--worker --runs" in log.read_text() for log in logs)
    # Submitted again: nothing left to train, nothing submitted.
    assert slurm.submit_study(recipe, make_executor=local_executor)["jobs"] == []


@pytest.mark.slow
def test_a_preempted_task_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path):
    # Enough epochs that the signal, sent after the first, lands while the run still trains: on an idle
    # machine three tiny epochs could end (test metrics written) before submitit passes the signal on.
    sections = {"variants": ["softmax"], "seeds": [0], "train": {"epochs": 12, "batch_size": 32, "seed": 0},
                "data": {"max_train_samples": 256, "max_eval_samples": 64}}
    plain = tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "plain"), **sections)
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(plain))
    done = subprocess.run([sys.executable, "-m", "attnzoo", "study", str(tmp_path / "plain.yaml")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    recipe = recipes.from_dict(tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / "pre"), **sections))
    (job,) = slurm.submit_study(recipe, make_executor=local_executor)["jobs"]
    run = recipe.run_dir / "softmax-seed0"
    deadline = time.monotonic() + 300
    while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and not job.done(), "the task never finished its first epoch"
        time.sleep(0.2)
    task = json.loads(next((recipe.run_dir / slurm.LOGS / "tasks").glob("*.json")).read_text())
    os.kill(task["pid"], signal.SIGUSR2)  # what SLURM sends before a time limit or a preemption (--signal)
    assert job.result() == {"softmax-seed0": "finished"}
    log = next((recipe.run_dir / slurm.LOGS).glob("*/*_log.out")).read_text()
    assert "this task is requeued" in log and log.count("running: ") == 2  # stopped, then started again
    assert (run / "resumes.jsonl").is_file()  # the second attempt resumed from the checkpoint
    resumed, plain = results(recipe.run_dir), results(tmp_path / "plain")
    assert resumed == plain and "top1" in plain["softmax-seed0"]


def test_the_slurm_flags_are_the_recipes_slurm_keys(tmp_path, monkeypatch, capsys):
    scripts = _fake_slurm(tmp_path, monkeypatch)
    _, data = study_recipe(tmp_path, "flags", slurm={"partition": "from-recipe", "time_minutes": 60})
    study_file = tmp_path / "flags.yaml"
    study_file.write_text(yaml.safe_dump(data))
    from attnzoo.cli import main

    assert main(["study", str(study_file), "--launcher", "slurm", "--partition", "from-flag", "--gpus-per-run", "0",
                 "--runs-per-task", "2", "--array-parallelism", "1"]) == 0
    array = (scripts / "0.sh").read_text()
    assert "#SBATCH --partition=from-flag" in array and "#SBATCH --time=60" in array  # a flag wins, a key stays
    assert "#SBATCH --array=0-1%1" in array and "gpus-per-node" not in array
    assert main(["study", str(study_file), "--launcher", "slurm", "--workers", "2"]) == 2
    assert "leave out --workers" in capsys.readouterr().err
