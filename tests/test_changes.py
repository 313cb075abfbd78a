"""The one change policy: every recipe key has a kind, and `train --resume`, continuing a run and
planning a study answer the same for each of them."""

from __future__ import annotations

import json

import pytest
import yaml
from attnzoo.config import recipe as recipes
from attnzoo.config.changes import recipe_changes
from attnzoo.config.keys import KINDS, Kind, classified, flatten, kind_of
from attnzoo.errors import AttnzooError
from attnzoo.run import extend, rundir
from attnzoo.study.plan import PlannedRun, plan_actions

LABEL = {"name", "description", "output_dir", "requires_plugins"}
HOUSEKEEPING = {"train.log_with", "train.log_every", "train.keep_checkpoints", "data.num_workers", "data.download"}
CONTINUABLE = {"train.epochs", "train.early_stopping_patience"}
STUDY = {"bench.variants", "bench.image_sizes", "bench.batch_size", "bench.warmup_steps", "bench.steps",
         "bench.rounds", "bench.compare_timm", "bench.compare_naive", "bench.data_pipeline",
         "robustness.corruptions", "robustness.seed", "robustness.attacks", "robustness.attack_epsilons", "variants", "seeds", "grid", "baseline",
         "power.sd", "power.reference", "power.target_delta", "tune",
         "slurm.partition", "slurm.gpus_per_run", "slurm.cpus_per_task", "slurm.mem_gb", "slurm.time_minutes",
         "slurm.account", "slurm.qos", "slurm.array_parallelism", "slurm.runs_per_task",
         "slurm.additional_parameters", "slurm.setup"}
RESULT = {"model.image_size", "model.patch_size", "model.dim", "model.depth", "model.heads", "model.mlp_ratio",
          "model.dropout", "model.init", "model.arch", "model.pretrained", "model.init_from", "attention.name",
          "data.dataset", "data.root", "data.val_fraction", "data.max_train_samples", "data.max_eval_samples",
          "data.pipeline", "data.augment.crop", "data.augment.crop_padding", "data.augment.flip",
          "data.augment.rotation", "data.augment.color_jitter", "data.image_key", "data.label_key",
          "optim.lr", "optim.weight_decay", "optim.betas", "optim.schedule", "optim.warmup_epochs",
          "optim.milestones", "optim.gamma", "optim.min_lr", "optim.label_smoothing", "optim.grad_clip",
          "optim.fused",
          "train.batch_size", "train.grad_accum_steps", "train.seed", "train.mixed_precision", "train.compile",
          "train.matmul_precision", "train.channels_last", "train.deterministic", "train.on_nonfinite",
          # the strong recipe's parts and fine-tuning's layer decay
          "model.drop_path", "data.augment.auto_augment", "data.augment.auto_ops", "data.augment.auto_magnitude",
          "data.augment.random_erasing", "data.augment.mixup", "data.augment.cutmix", "data.augment.mix_prob",
          "optim.layer_decay", "train.ema_decay", "train.budget"}
EXPECTED = {**dict.fromkeys(LABEL, Kind.LABEL), **dict.fromkeys(HOUSEKEEPING, Kind.HOUSEKEEPING),
            **dict.fromkeys(CONTINUABLE, Kind.CONTINUABLE), **dict.fromkeys(STUDY, Kind.STUDY),
            **dict.fromkeys(RESULT, Kind.RESULT)}
# The value the run on disk was made with, where "something else" is not enough: fewer epochs (its
# schedule is the step one, so more epochs continue it), and a patience the recipe now drops.
RUN_VALUES = {"output_dir": "where/the/run/was/made", "train.epochs": 1, "train.early_stopping_patience": 1}
EVERY_KEY = sorted(flatten(recipes.Recipe().to_dict()))


def test_every_key_of_the_recipe_has_its_expected_kind():
    """A key added to the recipe fails here until it is classified in attnzoo.config.keys."""
    assert set(EVERY_KEY) == set(EXPECTED), "classify the new keys in attnzoo/config/keys.py and here"
    assert {key: classified(key) for key in EVERY_KEY} == EXPECTED


def test_no_key_of_the_recipe_is_unclassified():
    assert [key for key in EVERY_KEY if classified(key) is None] == []
    assert all(classified(key) is not None for key in KINDS)


def test_a_section_classifies_its_keys_and_an_unknown_key_counts_as_a_change():
    assert classified("attention.scale") is Kind.RESULT  # a variant's option
    assert classified("grid.model.depth") is Kind.STUDY and classified("bench.anything") is Kind.STUDY
    assert classified("train.removed_long_ago") is None and kind_of("train.removed_long_ago") is Kind.RESULT


def _different(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return value + [value[-1] if value else 1]
    return 1  # None: an optional value set


def _run_with(tmp_path, key: str, finished: bool = False):
    """A run folder holding a run whose recipe.yaml differs from `now` in `key` only; `now` has its checkpoint."""
    now = recipes.Recipe(output_dir=str(tmp_path / "run"), train=recipes.TrainConfig(epochs=2))
    old = now.to_dict()
    recipes.set_key(old, key, RUN_VALUES.get(key, _different(recipes.get_key(old, key))))
    run = rundir.RunDir(tmp_path / "run")
    (run.path / "checkpoints" / "epoch-0001").mkdir(parents=True)
    run.write_marker()  # a run attnzoo made (a recipe.yaml alone is a user's folder)
    run.recipe.write_text(yaml.safe_dump({k: v for k, v in old.items() if recipes.is_run_key(k)}))
    run.metrics.write_text(json.dumps({"epoch": 1, "val_top1": 0.1}) + "\n")
    if finished:
        run.write_test_metrics({"top1": 0.1})
    return run, now


def _study_plan(run: rundir.RunDir, now: recipes.Recipe, extend_: bool = False) -> str:
    return plan_actions([PlannedRun("arm", 0, now)], extend_)[0]


@pytest.mark.parametrize("key", EVERY_KEY)
def test_resume_extend_and_study_agree_on_an_interrupted_run(key, tmp_path, capsys):
    run, now = _run_with(tmp_path, key)
    kind = EXPECTED[key]
    if kind in (Kind.LABEL, Kind.HOUSEKEEPING, Kind.STUDY):
        assert _study_plan(run, now) == "started"  # the study plans to resume it...
        assert rundir.prepare(run.path, now, resume=True)  # ...and the resume accepts it
        assert extend.prepare_resume(now) and not run.extensions.exists()  # train --resume: nothing to continue
    elif kind is Kind.CONTINUABLE:
        with pytest.raises(AttnzooError, match=f"{key}: 1 in the run"):
            _study_plan(run, now)  # stops before training anything...
        assert _study_plan(run, now, extend_=True) == "extend"  # ...and --extend continues it
        assert extend.prepare_resume(now)  # as train --resume does
        assert "continuing the run" in capsys.readouterr().out
        assert recipe_changes(run.read_recipe(), now.to_dict()) == {}  # its recipe.yaml says so
        assert [json.loads(line)["changes"] for line in run.extensions.read_text().splitlines()] == \
            [{key: [RUN_VALUES[key], recipes.get_key(now.to_dict(), key)]}]
        assert rundir.prepare(run.path, now, resume=True)
    else:
        with pytest.raises(AttnzooError, match=f"{key}: .* in the run"):
            _study_plan(run, now)
        assert _study_plan(run, now, extend_=True) == "rerun"
        with pytest.raises(AttnzooError, match=f"holds a run of a different recipe \\({key}: "):
            rundir.prepare(run.path, now, resume=True)
        assert extend.prepare_resume(now)  # left to the resume's own check above, which names the key
        assert not run.extensions.exists()


@pytest.mark.parametrize("key", sorted(LABEL | HOUSEKEEPING | STUDY))
def test_a_finished_run_is_skipped_by_the_study_and_train_resume_alike(key, tmp_path, capsys):
    run, now = _run_with(tmp_path, key, finished=True)
    assert _study_plan(run, now) == "finished"
    assert extend.prepare_resume(now) is False
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize("old, new, exact", [
    (3, 5, True), (3, None, True), (None, None, True),  # larger or none: never stops it sooner
    (None, 4, True),  # at least the 4 epochs it trained: could not have stopped it either
    (5, 3, False), (None, 3, False),  # could have stopped it after 3 epochs without a gain
])
def test_a_new_patience_continues_a_run_where_that_is_exact(old, new, exact, tmp_path):
    run = rundir.RunDir(tmp_path / "run")
    (run.path / "checkpoints" / "epoch-0004").mkdir(parents=True)
    run.recipe.write_text(yaml.safe_dump({"optim": {"schedule": "step"}, "train": {"early_stopping_patience": old}}))
    run.metrics.write_text("".join(json.dumps({"epoch": e, "val_top1": 0.1}) + "\n" for e in range(1, 5)))
    refusal = extend.extension_refusal(run.path, {"train.early_stopping_patience": (old, new)})
    if exact:
        assert refusal is None
    else:
        assert refusal == (f"it trained 4 epochs with {'no early stopping' if old is None else 'a patience of 5'}; "
                           "a patience of 3 could have stopped it sooner, which would be a different run")


def test_an_old_run_recipe_lacking_a_key_counts_as_its_default_in_every_kind():
    now = recipes.Recipe().to_dict()
    old = recipes.Recipe().to_dict()
    del old["train"]["keep_checkpoints"], old["train"]["early_stopping_patience"], old["model"]["init"]
    assert recipe_changes(old, now) == {}
    now["train"]["early_stopping_patience"], now["data"]["num_workers"] = 4, 0
    changes = recipe_changes(old, now)
    assert changes == {"train.early_stopping_patience": (None, 4), "data.num_workers": (2, 0)}
    assert changes.that_matter == {"train.early_stopping_patience": (None, 4)} and changes.different_run == {}


def test_the_report_and_the_grid_leave_out_the_study_keys_of_the_one_table():
    from attnzoo.study import report

    for key in ("bench", "robustness", "variants", "seeds", "grid", "baseline", "name", "output_dir"):
        assert key in report.IGNORED_RECIPE_KEYS and key in recipes._NOT_IN_GRID
    assert recipes.NOT_RUN_KEYS == ("bench", "robustness", "variants", "seeds", "grid", "baseline", "power",
                                   "tune", "slurm")
    with pytest.raises(AttnzooError, match=r"grid.robustness.corruptions: cannot be swept by a grid \(it is not a "
                                           r"setting of a run\)"):
        recipes.from_dict({"grid": {"robustness.corruptions": [True, False]}}, check_plugins=False)
