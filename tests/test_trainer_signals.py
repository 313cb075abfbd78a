"""SIGTERM and Ctrl-C at every point of a run: during validation, the test evaluation, the attention
analysis and data loading the run stops within a batch (or at once when nothing needs saving), with
exit status 75 and the command that continues it, and the continued run ends as an uninterrupted one."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from attnzoo.config import recipe as recipes
from attnzoo.data import loader as loaders
from attnzoo.errors import Stopped
from attnzoo.run.checkpoint import list_checkpoints, verify_checkpoint
from attnzoo.run.rundir import Resume
from attnzoo.run.trainer import Trainer, train
from conftest import ROOT, tiny_recipe_dict
from safetensors.torch import load_file

# 1800 synthetic train images in batches of 64: 28 steps an epoch; 200 val images (4 batches), 500 test (8).
SECTIONS = dict(train={"epochs": 2, "deterministic": True})


def make(tmp_path, registry, name):
    return recipes.from_dict(tiny_recipe_dict(tmp_path, output_dir=str(tmp_path / name), **SECTIONS),
                             registry=registry)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, builtin_registry):
    """The uninterrupted run that the stopped and resumed ones must reproduce."""
    tmp_path = tmp_path_factory.mktemp("reference")
    train(make(tmp_path, builtin_registry, "ref"))
    return tmp_path / "ref"


def assert_same_result(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    for ra, rb in zip(*rows, strict=True):
        for key in ("epoch", "train_loss", "val_loss", "val_top1", "val_top5", "lr"):
            assert ra[key] == rb[key], key
    ta, tb = (json.loads((run / "test_metrics.json").read_text()) for run in (a, b))
    for key in ("top1", "top5", "loss", "best_epoch", "epochs_trained", "confusion_matrix"):
        assert ta[key] == tb[key], key


def signal_in_evaluation(monkeypatch, evaluation: int, batch: int, signum: int) -> list[int]:
    """Send `signum` to this process just before batch `batch` (1-based) of the `evaluation`-th
    evaluation of the run (1, 2: the validations of epochs 1 and 2; 3: the test); returns the
    number of batches each evaluation handed out."""
    original = loaders.Loader.eval_batches
    handed_out = []

    def eval_batches(self, *args, **kwargs):
        handed_out.append(0)
        for number, item in enumerate(original(self, *args, **kwargs), 1):
            if len(handed_out) == evaluation and number == batch:
                os.kill(os.getpid(), signum)
            handed_out[-1] += 1
            yield item

    monkeypatch.setattr(loaders.Loader, "eval_batches", eval_batches)
    return handed_out


@pytest.mark.slow
def test_a_signal_during_validation_stops_within_a_batch_and_the_resume_redoes_it(
        tmp_path, builtin_registry, monkeypatch, reference):
    handed_out = signal_in_evaluation(monkeypatch, evaluation=2, batch=2, signum=signal.SIGTERM)
    r = make(tmp_path, builtin_registry, "run")
    with pytest.raises(Stopped) as stopped:
        train(r)
    run = tmp_path / "run"
    assert str(stopped.value) == (f"stopped by SIGTERM at epoch 2, step 28; checkpoint epoch-0002-step-000028 saved "
                                  f"in {run / 'checkpoints'}; epoch 2's validation was cut short; a resume redoes it")
    assert handed_out == [4, 2]  # epoch 1's whole validation; epoch 2's ended at the batch the signal came before
    # The epoch's 28 steps are kept, not its validation: the checkpoint is "epoch 1 done, 28 steps of epoch 2".
    assert [p.name for p in list_checkpoints(run)] == ["epoch-0001-step-000028", "epoch-0002-step-000028"]
    state = verify_checkpoint(run / "checkpoints" / "epoch-0002-step-000028")
    assert (state["epoch"], state["step"], len(state["history"])) == (1, 28, 1)
    assert not (run / "test_metrics.json").exists()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.undo()
    train(r, resume=Resume.LATEST)
    assert_same_result(reference, run)


@pytest.mark.slow
def test_a_signal_during_the_test_evaluation_leaves_the_run_unfinished_and_the_resume_tests_again(
        tmp_path, builtin_registry, monkeypatch, reference):
    handed_out = signal_in_evaluation(monkeypatch, evaluation=3, batch=3, signum=signal.SIGINT)
    r = make(tmp_path, builtin_registry, "run")
    with pytest.raises(Stopped) as stopped:
        train(r)
    run = tmp_path / "run"
    assert str(stopped.value) == (f"stopped by SIGINT at the end of epoch 2; checkpoint epoch-0002-step-000028 saved "
                                  f"in {run / 'checkpoints'}; the test evaluation was cut short; a resume runs it again")
    assert handed_out == [4, 4, 3]  # the test's 8 batches end at the third
    for name in ("test_metrics.json", "model.safetensors", "attention.json", "cost.json"):
        assert not (run / name).exists(), name  # not finished: a resume (or a study run again) tests it
    monkeypatch.undo()
    train(r, resume=Resume.LATEST)
    assert_same_result(reference, run)
    assert (run / "attention.json").is_file() and (run / "cost.json").is_file()


@pytest.mark.slow
def test_a_signal_during_the_attention_analysis_stops_once_the_run_is_written(tmp_path, builtin_registry, monkeypatch):
    """The analysis and the cost take seconds: they are written, then the stop is acted on, so a
    study does not go on to its next run."""
    analyse = Trainer.analyse_attention

    def analyse_with_a_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)
        analyse(self)

    monkeypatch.setattr(Trainer, "analyse_attention", analyse_with_a_signal)
    r = recipes.from_dict(tiny_recipe_dict(tmp_path, data={"max_train_samples": 128, "max_eval_samples": 32}),
                          registry=builtin_registry)
    with pytest.raises(Stopped, match=f"^stopped by SIGTERM as the run finished; its results are saved in {tmp_path / 'run'}$"):
        train(r)
    for name in ("test_metrics.json", "model.safetensors", "attention.json", "cost.json"):
        assert (tmp_path / "run" / name).is_file(), name


def test_a_signal_while_the_run_is_prepared_stops_before_its_first_step(tmp_path, builtin_registry, monkeypatch):
    from attnzoo.run import rundir

    prepare = rundir.prepare

    def prepare_with_a_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler is in place: only a flag is set
        return prepare(*args, **kwargs)

    monkeypatch.setattr(rundir, "prepare", prepare_with_a_signal)
    steps = []
    monkeypatch.setattr(Trainer, "_step", lambda self, images, labels, step: steps.append(step))
    r = recipes.from_dict(tiny_recipe_dict(tmp_path, data={"max_train_samples": 128, "max_eval_samples": 32}),
                          registry=builtin_registry)
    with pytest.raises(Stopped, match="^stopped by SIGTERM before training started; nothing was lost$"):
        train(r)
    assert steps == [] and list_checkpoints(tmp_path / "run") == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the trainer put the handler back


# ---------------------------------------------------------------- processes

# Imported by every Python process started with its folder on PYTHONPATH (a study's workers too):
# makes one phase slow, and says when it has begun, so a test can signal inside it.
SLOW_PHASE_HOOK = '''
import os, time
PHASE = os.environ.get("ATTNZOO_TEST_SLOW_PHASE")
if PHASE == "data":
    from attnzoo.data import pipeline

    def load_data(recipe, _original=pipeline.load_data):
        print("test hook: loading data", flush=True)
        time.sleep(120)
        return _original(recipe)

    pipeline.load_data = load_data
if PHASE == "test":
    from attnzoo.data import loader
    from attnzoo.run import trainer

    testing = []

    def test(self, _original=trainer.Trainer.test):
        print(f"test hook: testing {self.run_dir.name}", flush=True)
        testing.append(True)
        return _original(self)

    def eval_batches(self, *args, _original=loader.Loader.eval_batches, **kwargs):
        for item in _original(self, *args, **kwargs):
            if testing:
                time.sleep(3)  # 8 test batches: 24 s and more
            yield item

    trainer.Trainer.test = test
    loader.Loader.eval_batches = eval_batches
'''


def cli(tmp_path, phase, *args):
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(SLOW_PHASE_HOOK)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ATTNZOO_TEST_SLOW_PHASE=phase,
               PYTHONPATH=os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "attnzoo", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def signal_when(proc, seen, signum, timeout=180) -> tuple[str, float]:
    """Send `signum` once `seen()` is true; the output and the seconds from the signal to the exit."""
    deadline = time.time() + timeout
    try:
        while not seen():
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "the phase never began"
            time.sleep(0.05)
        sent = time.time()
        proc.send_signal(signum)
        out = proc.communicate(timeout=120)[0]
        return out, time.time() - sent
    finally:
        if proc.poll() is None:  # never leave a process (or a study's workers) behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def line_printed(proc, text):
    """A predicate: `text` appeared in the process's output (read line by line, kept)."""
    lines = []

    def seen():
        line = proc.stdout.readline()
        lines.append(line)
        return text in line
    seen.lines = lines
    return seen


def write_recipe(tmp_path, **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(tiny_recipe_dict(tmp_path, **sections)))  # JSON is YAML
    return path


@pytest.mark.slow  # subprocess runs
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT"])
def test_a_signal_while_the_data_loads_exits_75_with_the_command_to_run(tmp_path, how):
    recipe = write_recipe(tmp_path)
    proc = cli(tmp_path, "data", "train", str(recipe), "train.epochs=1")
    seen = line_printed(proc, "test hook: loading data")
    out, seconds = signal_when(proc, seen, getattr(signal, how))
    out = "".join(seen.lines) + out
    assert proc.returncode == 75, out  # was 143 (SIGTERM) with no message
    assert f"attnzoo: stopped by {how} while no run was training (loading data, or between runs); nothing was " \
           f"lost. Continue with:\n  attnzoo train {shlex.quote(str(recipe))} train.epochs=1\n" in out, out
    assert "Traceback" not in out and seconds < 15, (seconds, out)


@pytest.mark.slow  # subprocess runs
def test_a_signal_during_a_study_runs_test_stops_the_study_before_its_next_run(tmp_path):
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "study"), variants=["softmax", "cosine"],
                          data={"max_train_samples": 256, "max_eval_samples": 500})
    proc = cli(tmp_path, "test", "study", str(recipe), "seeds=[0]")
    seen = line_printed(proc, "test hook: testing softmax-seed0")
    out, seconds = signal_when(proc, seen, signal.SIGINT)
    out = "".join(seen.lines) + out
    assert proc.returncode == 75, out  # was 0, after training the next run too
    assert "attnzoo: stopped by SIGINT at the end of epoch 1; checkpoint epoch-0001-step-000004 saved in " in out, out
    assert "the test evaluation was cut short; a resume runs it again. Continue with:\n" \
           f"  attnzoo study {shlex.quote(str(recipe))} 'seeds=[0]'\n" in out, out
    assert seconds < 15, (seconds, out)
    assert not (tmp_path / "study" / "softmax-seed0" / "test_metrics.json").exists()
    assert not list_checkpoints(tmp_path / "study" / "cosine-seed0")  # the next run never started


@pytest.mark.slow  # a study with two worker processes
def test_a_signal_to_a_study_with_workers_stops_every_worker_and_exits_75(tmp_path):
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "study"), variants=["softmax", "cosine"],
                          data={"max_train_samples": 256, "max_eval_samples": 500})
    proc = cli(tmp_path, "test", "study", str(recipe), "seeds=[0]", "--workers", "2")
    def worker_logs():  # wherever the study keeps them
        return "".join(p.read_text() for p in sorted((tmp_path / "study").glob("**/worker-*.log")))

    def both_testing():
        return worker_logs().count("test hook: testing") == 2

    out, seconds = signal_when(proc, both_testing, signal.SIGTERM)
    logs = worker_logs()
    assert proc.returncode == 75, out + logs
    assert logs.count("the test evaluation was cut short; a resume runs it again") == 2, logs
    assert "attnzoo: study stopped; every worker saved a checkpoint of the run it was training" in out, out
    assert seconds < 20, (seconds, out)
    for arm in ("softmax-seed0", "cosine-seed0"):
        assert not (tmp_path / "study" / arm / "test_metrics.json").exists()
