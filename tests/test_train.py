"""End-to-end training on tiny models: the run directory, guards, exact resume, faults."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError, Stopped
from attnzoo.run.checkpoint import checkpoint_name, list_checkpoints, verify_checkpoint
from attnzoo.run.rundir import Resume
from attnzoo.run.trainer import NonFiniteLoss, Trainer, train
from conftest import ROOT, tiny_recipe_dict
from safetensors.torch import load_file

RUN_FILES = {"recipe.yaml", "environment.json", "metrics.jsonl", "test_metrics.json", "model.safetensors",
             "best.safetensors", "attention.json", "attention_images.safetensors", "checkpoints"}


def make(tmp_path, registry, **sections):
    return recipes.from_dict(tiny_recipe_dict(tmp_path, **sections), registry=registry)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["softmax", "cosine", "standardized"])
def test_end_to_end_run_directory(tmp_path, builtin_registry, variant):
    r = make(tmp_path, builtin_registry, attention={"name": variant}, train={"epochs": 2})
    report = train(r)
    run = tmp_path / "run"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    for key in ("train_loss", "val_loss", "val_top1", "val_top5", "lr", "epoch_seconds", "images_per_sec"):
        assert all(isinstance(row[key], float) for row in rows), key
    test = json.loads((run / "test_metrics.json").read_text())
    assert test["top1"] == report["top1"] and 0 <= test["top1"] <= test["top5"] <= 1
    assert test["variant"] == variant and test["samples"] == 500
    env = json.loads((run / "environment.json").read_text())
    assert env["world_size"] == 1 and {p["name"] for p in env["plugins"]} >= {"softmax", "cosine", "standardized"}
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert resolved["attention"]["name"] == variant and resolved["optim"]["lr"] == 3e-3
    weights = load_file(str(run / "model.safetensors"))
    assert "blocks.0.attn.qkv.weight" in weights and "head.weight" in weights


@pytest.mark.slow
def test_learns_the_synthetic_task(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry, train={"epochs": 4})
    assert train(r)["top1"] > 0.5  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_existing_run_is_never_overwritten(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry)
    train(r)
    before = (tmp_path / "run" / "model.safetensors").read_bytes()
    with pytest.raises(AttnzooError, match="already holds this run. Pass --resume"):
        train(r)
    other = make(tmp_path, builtin_registry, model={"dim": 64})
    with pytest.raises(AttnzooError, match="holds a run of a different recipe \\(model.dim: 32 in the run, 64 now"):
        train(other, resume=Resume.LATEST)
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == before
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("mine")
    foreign = make(tmp_path, builtin_registry, output_dir=str(tmp_path / "plain"))
    with pytest.raises(AttnzooError, match="is not an attnzoo run"):
        train(foreign)


@pytest.mark.slow
def test_resume_of_a_finished_run_returns_its_metrics(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry)
    first = train(r)
    assert train(r, resume=Resume.LATEST)["top1"] == first["top1"]


@pytest.mark.slow
def test_resume_rejects_missing_and_mismatched_checkpoints(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry)
    with pytest.raises(AttnzooError, match="holds no run to resume"):
        train(r, resume=Resume.LATEST)
    train(make(tmp_path, builtin_registry, train={"epochs": 2}))
    (tmp_path / "run" / "test_metrics.json").unlink()
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    other = make(tmp_path, builtin_registry, attention={"name": "cosine"}, output_dir=str(tmp_path / "run2"))
    trainer = Trainer(other)
    with pytest.raises(AttnzooError, match="trained with variant 'softmax', the recipe asks for 'cosine'"):
        trainer.restore(ckpt)
    with pytest.raises(AttnzooError, match="not found"):
        trainer.restore(tmp_path / "nope")


@pytest.mark.slow
def test_corrupted_checkpoint_is_detected_and_previous_offered(tmp_path, builtin_registry):
    train(make(tmp_path, builtin_registry, train={"epochs": 3}))
    older, newest = list_checkpoints(tmp_path / "run")[-2:]
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(AttnzooError, match=f"corrupted.*sha256 mismatch.*{older.name}"):
        verify_checkpoint(newest)
    verify_checkpoint(older)


@pytest.mark.slow
def test_keeps_the_last_k_checkpoints(tmp_path, builtin_registry):
    train(make(tmp_path, builtin_registry, train={"epochs": 3, "keep_checkpoints": 2}))
    # 1800 synthetic train images (2000 less 10 % validation) in batches of 64: 28 full steps
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch-0002-step-000028", "epoch-0003-step-000028"]


@pytest.mark.parametrize("epochs_done, step, name", [
    (1, 0, "epoch-0001-step-000028"),  # the end of epoch 1
    (1, 3, "epoch-0002-step-000003"),  # "stopped at epoch 2, step 3"
    (0, 28, "epoch-0001-step-000028"),  # stopped after the last step, before the epoch's end
])
def test_checkpoint_names_count_as_the_messages_do(epochs_done, step, name):
    assert checkpoint_name(epochs_done, step, 28) == name


@pytest.mark.slow
def test_checkpoints_of_the_earlier_naming_still_resume(tmp_path, builtin_registry, capsys):
    """Folders named epoch-<epochs done>-step-<steps> (earlier versions) are found and resumed."""
    train(make(tmp_path, builtin_registry, train={"epochs": 2}))
    run = tmp_path / "run"
    for old in list_checkpoints(run):
        state = json.loads((old / "state.json").read_text())
        old.rename(old.with_name(f"epoch-{state['epoch']:04d}-step-{state['step']:06d}"))
    for name in ("test_metrics.json", "model.safetensors", "attention.json"):
        (run / name).unlink()
    capsys.readouterr()
    train(make(tmp_path, builtin_registry, train={"epochs": 3}), resume=Resume.LATEST)
    assert "resuming at epoch 3" in capsys.readouterr().out
    assert [p.name for p in list_checkpoints(run)][-2:] == ["epoch-0002-step-000000", "epoch-0003-step-000028"]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.slow
def test_a_signal_during_evaluation_stops_at_the_epochs_checkpoint(tmp_path, builtin_registry, monkeypatch):
    r = make(tmp_path, builtin_registry, train={"epochs": 2})
    evaluate = Trainer.evaluate

    def evaluate_then_signal(self, loader):
        report = evaluate(self, loader)
        if self.state.epoch == 0 and loader is self.val_loader:
            self._on_signal(signal.SIGTERM, None)  # as if it arrived while epoch 1 was validated
        return report

    monkeypatch.setattr(Trainer, "evaluate", evaluate_then_signal)
    with pytest.raises(Stopped, match=r"^stopped by SIGTERM at the end of epoch 1; checkpoint epoch-0001-step-000028 "):
        train(r)
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["epoch-0001-step-000028"]
    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    train(r, resume=Resume.LATEST)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow
def test_restart_without_a_checkpoint_keeps_metrics_in_step(tmp_path, builtin_registry):
    """Killed after epoch 1's metrics row, before its checkpoint: the run starts over in place
    and metrics.jsonl holds one row per epoch, 1 and 2, not 1, 1, 2."""
    r = make(tmp_path, builtin_registry, train={"epochs": 2})
    train(r)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints")
    for name in ("test_metrics.json", "model.safetensors", "attention.json"):
        (run / name).unlink()
    first = (run / "metrics.jsonl").read_text().splitlines()[0]
    (run / "metrics.jsonl").write_text(first + "\n")
    train(r, resume=Resume.LATEST)
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_variant(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry, optim={"lr": 1e30}, train={"epochs": 2, "log_every": 1})
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss or gradient at epoch 1, step \d+ with variant 'softmax'"):
        train(r)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert list_checkpoints(tmp_path / "run") == []


@pytest.mark.slow
def test_non_finite_steps_can_be_skipped(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry, optim={"lr": 1e30}, train={"on_nonfinite": "skip"})
    report = train(r)
    assert report["skipped_steps"] > 0


@pytest.mark.slow
def test_gradient_accumulation_matches_the_large_batch(tmp_path, builtin_registry):
    runs = []
    for accum in (1, 4):
        r = make(tmp_path, builtin_registry, output_dir=str(tmp_path / f"acc{accum}"),
                 train={"grad_accum_steps": accum, "deterministic": True}, data={"max_train_samples": 512})
        runs.append(train(r))
    a, b = (load_file(str(list_checkpoints(tmp_path / f"acc{n}")[-1] / "model.safetensors")) for n in (1, 4))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"grad accumulation 4x16 vs 1x64 after 8 AdamW steps: max weight diff {diff:.2e}")
    assert diff < 1e-4, diff
    assert abs(runs[0]["loss"] - runs[1]["loss"]) < 1e-4


# ---------------------------------------------------------------- processes


def write_recipe(tmp_path, **sections) -> Path:
    data = tiny_recipe_dict(tmp_path, **sections)
    data["train"].update(deterministic=True)
    path = tmp_path / f"recipe-{len(list(tmp_path.glob('recipe-*')))}.yaml"
    path.write_text("# attnzoo train this\n" + yaml.safe_dump(data))
    return path


def cli(*args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "attnzoo", *args], env=env, cwd=kw.get("cwd", ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_state(run: Path):
    weights = load_file(str(run / "model.safetensors"))
    metrics = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return weights, metrics, json.loads((run / "test_metrics.json").read_text())


def assert_same_run(a: Path, b: Path):
    wa, ma, ta = final_state(a)
    wb, mb, tb = final_state(b)
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) == 0.0
    for ra, rb in zip(ma, mb, strict=True):
        # the epoch's mean train loss is summed in two parts after a mid-epoch stop: float rounding only
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
        assert ra["val_top1"] == rb["val_top1"] and ra["val_loss"] == rb["val_loss"]
    assert ta["top1"] == tb["top1"] and ta["loss"] == tb["loss"]


def wait_for(predicate, proc, timeout=120):
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)


SECTIONS = dict(train={"epochs": 4, "log_every": 1}, data={"max_train_samples": 1600})


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run the interrupted ones must reproduce (1600 train images: 25 steps an epoch)."""
    tmp_path = tmp_path_factory.mktemp("reference")
    reference = write_recipe(tmp_path, output_dir=str(tmp_path / "ref"), **SECTIONS)
    proc = cli("train", str(reference))
    out = proc.communicate()[0]
    assert proc.returncode == 0, out
    return tmp_path / "ref", out


@pytest.mark.slow  # a subprocess run
def test_a_run_says_what_it_will_do_and_how_long(reference_run):
    out = reference_run[1]
    assert "starting; softmax(), " in out and "4 epoch(s) of 1600 train images, 200 val / 500 test images; cpu" in out
    assert re.search(r"estimate: ~\d+ s left for this run \(\d+ ms per step of the first 20 on cpu\)", out), out


@pytest.mark.slow  # several subprocess runs
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "SIGINT"])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, how, reference_run):
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "run"), **SECTIONS)
    # overrides as a user types them, one needing shell quotes: the printed command repeats them
    overrides = ["train.epochs=4", "description=stopped and resumed"]
    proc = cli("train", str(recipe), *overrides)
    wait_for(lambda: len(list_checkpoints(tmp_path / "run")) >= 1, proc)  # somewhere in epoch 2
    time.sleep(0.05)  # early in epoch 2: epochs take a fraction of a second on an idle machine
    if how == "SIGKILL":
        proc.kill()
        proc.wait()
        command = ["train", str(recipe), *overrides, "--resume"]
    else:  # mid-epoch: a checkpoint is written at the current step, then the process exits
        proc.send_signal(getattr(signal, how))
        out = proc.communicate()[0]
        # 75 (EX_TEMPFAIL): stopped with a checkpoint, not an error; a scheduler may requeue
        assert proc.returncode == 75 and "error" not in out, out
        # mid-epoch, or at the end of an epoch when the signal came during its evaluation
        stop = re.search(rf"attnzoo: stopped by {how} at (?:epoch (\d+), step (\d+)|the end of epoch (\d+)); "
                         r"checkpoint (\S+) saved", out)
        assert stop, out
        if stop[3]:  # 25 steps an epoch: the end of epoch E is its step 25, E epochs done
            epoch, step, done = int(stop[3]), 25, (int(stop[3]), 0)
        else:
            epoch, step, done = int(stop[1]), int(stop[2]), (int(stop[1]) - 1, int(stop[2]))
        name = stop[4]
        assert name == f"epoch-{epoch:04d}-step-{step:06d}" and epoch >= 2
        assert list_checkpoints(tmp_path / "run")[-1].name == name
        state = verify_checkpoint(tmp_path / "run" / "checkpoints" / name)
        assert (state["epoch"], state["step"]) == done
        printed = out.split("Continue with:\n  ")[1].splitlines()[0]
        assert printed == f"attnzoo train {shlex.quote(str(recipe))} train.epochs=4 'description=stopped and resumed' --resume"
        command = shlex.split(printed)[1:]
    assert not (tmp_path / "run" / "test_metrics.json").exists()
    resumed = cli(*command)
    out = resumed.communicate()[0]
    assert resumed.returncode == 0, out
    assert_same_run(reference_run[0], tmp_path / "run")
    assert (tmp_path / "run" / "resumes.jsonl").exists()


@pytest.mark.slow  # a subprocess run, stopped and resumed
def test_a_stopped_and_resumed_run_counts_the_training_time_before_its_stop(tmp_path):
    """train_seconds (and so the report's throughput) of a run stopped halfway through an epoch and
    resumed counts the steps before the stop: the interrupted epoch takes about as long as the
    run's other epochs, where it would take about half without them. The epochs are compared within
    the run, not with a second run: two processes on one VM ran 30 % apart in speed in this very
    test (tests/test_checkpoint.py pins the bookkeeping exactly, with a made-up 1000 s)."""
    sections = dict(model={"dim": 64, "depth": 2, "heads": 2}, train={"epochs": 4, "log_every": 1},
                    data={"max_train_samples": 1600})
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "run"), **sections)
    proc = cli("train", str(recipe))
    wait_for(lambda: len(list_checkpoints(tmp_path / "run")) >= 2, proc)  # epoch 3 has begun
    seconds = [json.loads(line)["epoch_seconds"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    time.sleep(sum(seconds) / len(seconds) / 2)  # about halfway through epoch 3
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate()[0]
    assert proc.returncode == 75 and "stopped by SIGTERM at epoch 3, step" in out, out
    resumed = cli("train", str(recipe), "--resume")
    assert resumed.wait() == 0
    report = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    epochs = [json.loads(line)["epoch_seconds"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert report["train_seconds"] == pytest.approx(sum(epochs), rel=1e-9)
    assert epochs[2] > 0.75 * min(epochs[:2]), epochs  # the steps before the stop are in epoch 3's time


@pytest.mark.slow  # torchrun
def test_two_processes_match_one(tmp_path):
    """torchrun with 2 CPU processes (gloo) vs 1 process, same global batch."""
    single = write_recipe(tmp_path, output_dir=str(tmp_path / "one"), train={"epochs": 2})
    double = write_recipe(tmp_path, output_dir=str(tmp_path / "two"), train={"epochs": 2})
    assert cli("train", str(single)).wait() == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "attnzoo", "train", str(double)], env=env, cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out = proc.communicate(timeout=300)[0]
    finally:  # never leave worker processes behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out
    env_json = json.loads((tmp_path / "two" / "environment.json").read_text())
    assert env_json["world_size"] == 2
    one, two = final_state(tmp_path / "one"), final_state(tmp_path / "two")
    loss_diff = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(one[1], two[1], strict=True))
    weight_diff = max((one[0][k] - two[0][k]).abs().max().item() for k in one[0])
    print(f"two processes vs one: max train-loss diff {loss_diff:.2e}, max weight diff {weight_diff:.2e}")
    # AdamW divides by sqrt(v): float-rounding differences of near-zero gradients grow to ~1e-3
    # in a few weights over 56 steps, while the loss curves agree to ~1e-7.
    assert loss_diff < 1e-5 and weight_diff < 1e-2
    assert one[2]["samples"] == two[2]["samples"] == 500  # every test image counted exactly once


def test_out_of_memory_names_the_batch_and_suggests_accumulation(tmp_path, builtin_registry, monkeypatch):
    def no_memory(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_train_epochs", no_memory)
    with pytest.raises(AttnzooError, match=r"train.batch_size=64 \(64 per process.*train.grad_accum_steps=2"):
        train(make(tmp_path, builtin_registry))
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["global_batch_size"] == 64 and env["per_process_batch_size"] == 64


@pytest.mark.slow
def test_epoch_rows_time_the_warm_up_apart(tmp_path, builtin_registry):
    r = make(tmp_path, builtin_registry, train={"epochs": 2})
    report = train(r)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first, second = rows
    assert 0 < first["warmup_seconds"] < first["epoch_seconds"] and second["warmup_seconds"] == 0.0
    assert second["steady_images_per_sec"] == pytest.approx(second["images_per_sec"])
    assert first["compile"] == "none" and report["compile"] == "none"
    assert report["warmup_seconds"] == first["warmup_seconds"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_reports_compile_time(tmp_path, builtin_registry):
    runs = {}
    for mode in ("none", "default"):
        r = make(tmp_path / mode, builtin_registry, attention={"name": "standardized"},
                 train={"epochs": 1, "compile": mode})
        runs[mode] = train(r)
        row = json.loads((tmp_path / mode / "run" / "metrics.jsonl").read_text().splitlines()[0])
        assert row["compile"] == mode and row["warmup_seconds"] > 0
    # Inductor fuses differently from eager: the same training, not the same bits.
    assert runs["default"]["loss"] == pytest.approx(runs["none"]["loss"], rel=2e-2)


@pytest.mark.slow
def test_a_failing_attention_analysis_never_costs_a_run_its_test_metrics(tmp_path, capsys):
    """attention_weights that breaks only at the model's token count (past the load-time check):
    the run still finishes with its test metrics; the analysis failure is a warning."""
    from attnzoo import AttentionVariant, Variant
    from attnzoo.contract.registry import Registry

    class Fragile(AttentionVariant):
        def attention_weights(self, q, k):
            if q.shape[-2] > 8:
                raise RuntimeError("no weights past 8 tokens")
            return torch.softmax(q @ k.transpose(-2, -1) / self.head_dim ** 0.5, -1)

        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    registry = Registry({"fragile": Variant("fragile", "softmax, weights up to 8 tokens", Fragile)}, [])
    report = train(make(tmp_path, registry, attention={"name": "fragile"}), registry=registry)
    run = tmp_path / "run"
    assert json.loads((run / "test_metrics.json").read_text())["top1"] == report["top1"]
    assert not (run / "attention.json").exists()
    err = capsys.readouterr().err
    assert "attention analysis of variant 'fragile' failed (RuntimeError: no weights past 8 tokens)" in err


@pytest.mark.slow
def test_finish_writes_weights_and_test_metrics_before_any_plugin_code_runs(tmp_path, builtin_registry, monkeypatch):
    files_when_analysed = []

    def analyse_attention(self):
        files_when_analysed.extend(sorted(p.name for p in self.run.path.iterdir()))

    monkeypatch.setattr(Trainer, "analyse_attention", analyse_attention)
    report = train(make(tmp_path, builtin_registry, data={"max_train_samples": 64, "max_eval_samples": 16}))
    assert {"model.safetensors", "test_metrics.json"} <= set(files_when_analysed)
    assert "cost.json" not in files_when_analysed  # the cost comes last: it is the least valuable
    assert json.loads((tmp_path / "run" / "test_metrics.json").read_text()) == report
    assert (tmp_path / "run" / "cost.json").is_file()


@pytest.mark.slow
def test_a_failing_compiler_falls_back_to_eager(tmp_path, builtin_registry, monkeypatch, capsys):
    def broken_compiler(model, mode, device):
        def forward(images):
            raise RuntimeError("inductor exploded\nlong traceback")
        return forward

    monkeypatch.setattr("attnzoo.model.compile.compile_model", broken_compiler)
    r = make(tmp_path, builtin_registry, train={"epochs": 1, "compile": "default"})
    report = train(r)
    assert "warning: train.compile=default failed (RuntimeError: inductor exploded); continuing without " \
           "compilation" in capsys.readouterr().out
    assert report["compile"] == "none" and 0 <= report["top1"] <= 1


def test_compile_auto_is_eager_on_the_cpu_and_cuda_graphs_on_a_gpu():
    from attnzoo.model.compile import effective_mode
    assert effective_mode("auto", torch.device("cpu")) == "none"
    assert effective_mode("auto", torch.device("cuda")) == "cudagraphs"
    assert effective_mode("cudagraphs", torch.device("cpu")) == "default"


@pytest.mark.slow  # several subprocess runs
def test_ctrl_c_in_a_study_prints_the_study_command(tmp_path):
    recipe = write_recipe(tmp_path, output_dir=str(tmp_path / "study"), variants=["softmax", "cosine"],
                          train={"epochs": 2, "log_every": 1}, data={"max_train_samples": 640})
    proc = cli("study", str(recipe), "seeds=[0]")
    wait_for(lambda: len(list_checkpoints(tmp_path / "study" / "softmax-seed0")) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate()[0]
    assert f"study {tmp_path / 'study'}: 2 runs (2 arm(s) x 1 seed(s)), 2 epoch(s) each on up to 640 " \
           "train images of synthetic; 0 done, 2 to train on cpu x 1 process(es)" in out, out
    assert proc.returncode == 75 and "attnzoo: stopped by SIGINT at " in out, out
    printed = out.split("Continue with:\n  ")[1].splitlines()[0]
    assert printed == f"attnzoo study {shlex.quote(str(recipe))} 'seeds=[0]'"
    again = cli(*shlex.split(printed)[1:])
    out = again.communicate()[0]
    assert again.returncode == 0, out
    assert "[1/2] softmax seed 0: resuming" in out and "[2/2] cosine seed 0: training" in out
    assert (tmp_path / "study" / "cosine-seed0" / "test_metrics.json").is_file()


# A custom autograd Function whose backward raises past the load-time check's 5 tokens (the tiny
# recipe's model has 17): the plugin loads, training fails in its first backward pass.
BACKWARD_RAISES = """
    import torch
    from attnzoo import AttentionVariant, hookimpl

    class Fragile(torch.autograd.Function):
        @staticmethod
        def forward(ctx, weights):
            ctx.tokens = weights.shape[-1]
            return weights

        @staticmethod
        def backward(ctx, grad):
            if ctx.tokens > 8:
                raise ValueError("no gradient past 8 tokens")
            return grad

    class BadGrad(AttentionVariant):
        def attention_weights(self, q, k):
            return Fragile.apply(torch.softmax(q @ k.transpose(-2, -1) * self.head_dim ** -0.5, -1))

    @hookimpl
    def register_attention_variants(register):
        register(name="badgrad", description="a backward that raises", factory=BadGrad)
    """


@pytest.mark.slow  # a subprocess run
def test_an_exception_in_a_variants_backward_names_it_with_exit_2(tmp_path):
    from test_plugin_loading import attnzoo, install_fake, write_tiny_recipe

    install_fake(tmp_path, "badgrad", BACKWARD_RAISES)
    proc = attnzoo(tmp_path, "train", write_tiny_recipe(tmp_path, name="badgrad"))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("attnzoo: error:")]
    assert message == [
        "attnzoo: error: variant 'badgrad' (plugin 'broken_badgrad', attnzoo-broken-badgrad 0.3) failed in the "
        "backward pass (the gradients of its forward(q, k, v)): ValueError: no gradient past 8 tokens. The error is "
        "in the variant's code, not attnzoo's; `attnzoo check-plugin NAME` tests a variant, --debug shows the "
        "traceback"], proc.stderr
    assert not list_checkpoints(tmp_path / "run")
