"""A study: one training run per (variant arm x grid point x seed), then a report across them.

The study directory (the recipe's ``output_dir``) holds ``study.yaml`` and one run
directory per arm and seed, ``<arm label>-seed<seed>/``; an arm is a variant arm plus one
point of the recipe's ``grid`` (e.g. ``cosine-depth8-rotation0``). Running the same study
again skips finished runs, resumes interrupted ones from their last checkpoint, and starts
the missing ones, so a study can be stopped and continued at any time. A run made with a
different recipe than its arm now asks for is never skipped silently: the study stops
before training anything and names it (``--extend`` brings such runs up to date).
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from attnzoo.config import recipe as recipes
from attnzoo.config.recipe import Recipe
from attnzoo.errors import AttnzooError, PluginError, RecipeError, Stopped
from attnzoo.run import extend as extending
from attnzoo.run import lock as run_lock
from attnzoo.run import rundir
from attnzoo.study import tune

STUDY_FILE = "study.yaml"
# A run whose training failed (an error, or its process died) has a record here until it is claimed again:
# <study>/failures/<run>.json with the error and the log that holds the whole story (attnzoo study --status).
FAILURES = "failures"
LOG_VARIABLE = "ATTNZOO_LOG_FILE"  # set by a launcher (a SLURM task, a worker) to the log it writes
ACTIONS = {"finished": "finished, skipped", "diverged": "diverged earlier, skipped", "started": "resuming",
           "new": "training", "extend": "continuing to more epochs", "rerun": "training again from the start"}


@dataclass
class PlannedRun:
    label: str  # the arm's label (variant arm + grid point), shared by its seeds
    seed: int
    recipe: Recipe  # a single-run recipe, validated
    variant: str = ""  # the variant arm's label, e.g. 'cosine'
    point: dict = field(default_factory=dict)  # the grid values of this arm
    baseline: str | None = None  # the label of the arm this one is compared with, same grid values
    tuned: dict | None = None  # the values its arm chose in the study's tuning (attnzoo.study.tune)

    @property
    def run_dir(self) -> Path:
        return self.recipe.run_dir

    def arm_record(self) -> dict:
        point = {k: (v.get("label", v) if isinstance(v, dict) else v) for k, v in self.point.items()}
        return {"arm": self.label, "variant": self.variant, "grid": point, "baseline": self.baseline,
                "seed": self.seed}


@dataclass(frozen=True)
class Arm:
    """One variant arm of a study: a variant, its options, and the label its runs are named by."""

    name: str
    options: dict
    label: str


def parse_arm(entry: Any) -> Arm:
    """A `variants:` entry: a name, or a mapping with `name`, the variant's options and an optional
    `label` (default: name plus options, e.g. 'standardized-scale=inv_sqrt_d')."""
    if isinstance(entry, str):
        return Arm(entry, {}, entry)
    if isinstance(entry, dict) and "name" in entry:
        name = str(entry["name"])
        options = {k: v for k, v in entry.items() if k not in ("name", "label")}
        label = entry.get("label") or "-".join([name] + [f"{k}={v}" for k, v in sorted(options.items())])
        return Arm(name, options, str(label))
    raise PluginError(f"a variant arm must be a name or a mapping with 'name', got {entry!r}")


def study_arms(recipe: Recipe, registry) -> list[Arm]:
    """The study's variant arms, each checked against the plugins (every problem at once). `all`
    is every installed variant (softmax first); without `variants`, the recipe's own attention
    is the only arm."""
    if recipe.variants == "all":
        return [Arm(name, {}, name) for name in sorted(registry.variants, key=lambda name: (name != "softmax", name))]
    if not recipe.variants:
        return [Arm(recipe.attention.name, dict(recipe.attention.options), recipe.attention.name)]
    arms, problems = [], []
    for i, entry in enumerate(recipe.variants):
        try:
            arm = parse_arm(entry)
            registry.resolve_options(arm.name, arm.options)
            arms.append(arm)
        except PluginError as exc:
            problems.append(f"variants[{i}]: {exc}")
            continue
        bad_label = label_problem(arm.label)
        if bad_label:
            problems.append(f"variants[{i}]: the arm's label {arm.label!r} {bad_label}. Give it a plain `label:` "
                            "(letters, digits, '-', '_', '=', '.'), e.g. {name: cosine, label: cosine-v2}.")
    if problems:
        raise RecipeError(problems, f"the study {recipe.name!r}")
    return arms


def label_problem(label: str) -> str | None:
    """Why `label` cannot name a run folder inside the study folder, or None. A label is one path
    component: a label that climbs out ('../x') or goes down ('a/b') would write, or with
    --extend delete, folders that are not the study's."""
    if not label:
        return "is empty"
    if "/" in label or "\\" in label:
        return "holds a path separator ('/' or '\\')"
    if label.startswith("."):
        return "starts with a dot ('.', '..' and hidden names are not run folders)"
    if "\0" in label or len(label.encode()) > 200:
        return "is not a usable folder name (a NUL byte, or over 200 bytes)"
    return None


def check_inside(study_dir: Path, path: Path) -> Path:
    """`path` when it is a folder directly inside the study folder; an error before anything is
    written or deleted otherwise (the last guard behind the label checks)."""
    study, target = Path(study_dir).resolve(), Path(path).resolve()
    if target.parent != study:
        raise AttnzooError(f"{str(path)!r} is not a folder inside the study folder {str(study_dir)!r}; a study writes "
                           "and deletes only its own run folders. Nothing was written or deleted; check the arm and "
                           "grid labels.")
    return Path(path)


def study_seeds(recipe: Recipe) -> list[int]:
    return list(recipe.seeds) or [recipe.train.seed]


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest; [{}] without a grid."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part, or more of it where two keys share their last part."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if sum(k == name or k.endswith("." + name) for k in keys) == 1:
                break
        names[key] = name
    return names


def _value_text(value) -> str:
    if isinstance(value, dict):
        return str(value.get("label") or ",".join(f"{k}={v}" for k, v in value.items()))
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def point_label(point: dict) -> str:
    """'depth8-rotation0' for numbers, 'init=torch_default' for words, a section's own label."""
    names = _short_names(list(point))
    parts = []
    for key, value in point.items():
        if isinstance(value, dict) and value.get("label"):
            parts.append(str(value["label"]))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{names[key]}{_value_text(value)}")
        else:
            parts.append(f"{names[key]}={_value_text(value)}")
    return "-".join(parts)


def _baseline_label(recipe: Recipe, variant_labels: list[str]) -> str | None:
    if recipe.baseline is None:
        return "softmax" if "softmax" in variant_labels else None
    if recipe.baseline not in variant_labels:
        raise AttnzooError(f"baseline: {recipe.baseline!r} is not one of the study's variant arms "
                           f"({', '.join(variant_labels)}); set baseline to one of them.")
    return recipe.baseline


def arm_label(variant_label: str, point: dict) -> str:
    """The label of the arm a variant arm makes at a grid point, e.g. 'cosine-depth8'."""
    suffix = point_label(point)
    return f"{variant_label}-{suffix}" if suffix else variant_label


def plan_runs(recipe: Recipe, registry=None) -> list[PlannedRun]:
    """Every (grid point, arm, seed) run of the study, each as its own validated single-run recipe,
    its arm resolved in `registry` (None: the installed plugins). With a `tune:` section each run
    carries the values its arm chose once the trials have chosen (tune/choice.json); before that,
    the recipe's own values."""
    from attnzoo.contract.registry import installed_or

    registry = installed_or(registry)
    study_dir = recipe.run_dir
    arms = study_arms(recipe, registry)
    variant_labels = [arm.label for arm in arms]
    repeated = sorted({label for label in variant_labels if variant_labels.count(label) > 1})
    if repeated:
        raise AttnzooError(f"variants: two arms share the run name {repeated[0]!r}; give one of them a "
                           "distinct `label:` (e.g. {name: standardized, scale: inv_sqrt_d, label: std-sqrtd}).")
    baseline = _baseline_label(recipe, variant_labels)
    choice = tune.read_choice(recipe) if recipe.tune else None
    runs, problems = [], []
    for point in grid_points(recipe.grid):
        suffix = point_label(point)
        bad_point = label_problem(suffix) if suffix else None
        if bad_point:
            problems.append(f"grid: the grid point {point!r} is labelled {suffix!r}, which {bad_point}. Give its "
                            "values plain labels (letters, digits, '-', '_', '=', '.').")
            continue
        for arm in arms:
            label = arm_label(arm.label, point)
            chosen = tune.chosen_values(choice, label)
            for seed in study_seeds(recipe):
                data = recipe.to_dict()
                data.update(variants=[], seeds=[], grid={}, baseline=None, attention={"name": arm.name, **arm.options},
                            output_dir=str(study_dir / rundir.run_name(label, seed)), tune={})
                data["train"]["seed"] = seed
                for key, value in {**point, **(chosen or {})}.items():
                    recipes.set_key(data, key, value)
                # Re-validating resolves the arm's options to the variant's full, typed set.
                try:
                    run_recipe = recipes.from_dict(data, registry=registry, source=f"study arm {label!r}")
                except AttnzooError as exc:
                    problems.append(str(exc))
                    break
                base = f"{baseline}-{suffix}" if baseline and suffix else baseline
                runs.append(PlannedRun(label, seed, run_recipe, arm.label, point, base, chosen))
    if problems:
        raise AttnzooError("\n".join(problems))
    return runs


def _check_study_dir(study_dir: Path) -> None:
    """A study may only go into an empty folder or one that already holds a study."""
    if not study_dir.exists() or not any(study_dir.iterdir()) or (study_dir / STUDY_FILE).is_file():
        return
    what = "a single run" if rundir.RunDir(study_dir).recipe.is_file() else "something else"
    raise AttnzooError(f"output directory {str(study_dir)!r} holds {what}, not a study. "
                       "Set output_dir=... to a new folder for the study.")


def _run_state(run_dir: Path) -> str:
    run = rundir.RunDir(run_dir)
    kind = run.kind()
    if kind == "foreign":
        return "foreign"
    if kind == "empty" or not run.recipe.is_file():
        return "new"  # nothing yet, or killed while it was being created
    if run.is_finished():
        return "finished"
    if run.diverged.is_file():
        return "diverged"
    return "started"


def failure_record(run_dir: Path) -> Path:
    return Path(run_dir).parent / FAILURES / f"{Path(run_dir).name}.json"


def record_failure(run_dir: Path, message: str, log: str | None = None) -> None:
    """Note that training `run_dir` failed, with the log to read (LOG_VARIABLE's, unless given)."""
    import socket

    log = log or os.environ.get(LOG_VARIABLE)
    record = {"message": message, "log": log, "host": socket.gethostname(),
              "job": {k: os.environ[k] for k in run_lock.JOB_VARIABLES if k in os.environ}}
    failure_record(run_dir).parent.mkdir(exist_ok=True)
    _write_json(failure_record(run_dir), record)


def run_status(run_dir: Path) -> tuple[str, str]:
    """What a run of a study is doing, read from its folder, its lock and its failure record; takes no lock.
    (state, detail): finished, diverged, running (who holds it), failed (why), stopped (it resumes from its
    checkpoint when it is next claimed) or queued (not started)."""
    state = _run_state(run_dir)
    if state in ("finished", "diverged", "foreign"):
        return state, ""
    holder = run_lock._read(Path(run_dir) / run_lock.LOCK)
    if holder:
        gone = run_lock.stale_reason(holder)
        if gone is None:
            return "running", run_lock.describe_holder(holder)
        return "failed", f"its holder is gone ({gone}); the next claim takes the lock over and resumes the run"
    failure = rundir.read_json(failure_record(run_dir))
    if failure:
        return "failed", _last_log_line(failure.get("log")) or failure.get("message", "")
    return ("queued", "") if state == "new" else ("stopped", "resumes from its last checkpoint when claimed")


def _last_log_line(log: str | None) -> str:
    """The last non-empty line of a log, with where it is; '' when there is no such log."""
    try:
        lines = [line for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    except (OSError, TypeError):
        return ""
    return f"{lines[-1].strip()} (log: {log})" if lines else ""


def plan_actions(runs: list[PlannedRun], extend: bool = False) -> list[str]:
    """What to do with each run. A run whose files were made with a different recipe than its arm
    asks for stops the study here, before anything is trained or written, unless `extend`."""
    actions, stale = [], []
    foreign = [run.run_dir for run in runs if _run_state(run.run_dir) == "foreign"]
    if foreign:
        raise AttnzooError(f"the study folder holds {len(foreign)} folder(s) named like its runs that attnzoo did not "
                           f"write (no {rundir.MARKER}): {', '.join(str(p) for p in foreign[:5])}. attnzoo never "
                           "writes into or deletes them; nothing was trained or changed. Move them elsewhere, or set "
                           "output_dir=... to a new folder for the study.")
    for run in runs:
        state = _run_state(run.run_dir)
        changes = extending.changes_from_run(run.run_dir, run.recipe) if state != "new" else {}
        if not changes:
            actions.append(state)
            continue
        refusal = "it diverged" if state == "diverged" else extending.extension_refusal(run.run_dir, changes)
        stale.append((run, state, changes, refusal))
        actions.append("rerun" if refusal else "extend")
    if stale and not extend:
        raise AttnzooError(_stale_message(runs[0].run_dir.parent, stale))
    return actions


def _stale_message(study_dir: Path, stale: list) -> str:
    lines = [f"the study folder {str(study_dir)!r} holds {len(stale)} run(s) made with a different recipe than "
             "their arm now asks for. Nothing was trained or changed."]
    for run, state, changes, refusal in stale:
        fix = f"--extend would train it again ({refusal})" if refusal else "--extend would continue it"
        lines.append(f"  - {run.run_dir.name} ({state}): {extending.describe_changes(changes)}; {fix}")
    lines.append("Either set output_dir=... to a new folder to run this recipe from scratch, or pass --extend to "
                 "bring these runs up to date: a run whose only change is more epochs continues where the "
                 "learning rate of its past steps stays the same (constant or step schedule), one whose only change "
                 "is its early-stopping patience continues where that patience could not have stopped it sooner, "
                 "every other one is trained again from the start (its old files are replaced).")
    return "\n".join(lines)


def _point_accelerator_at(accelerator, run_dir: Path) -> None:
    """Tracker logs (e.g. TensorBoard) go into each run's own folder, not one shared folder."""
    config = accelerator.project_configuration
    config.project_dir = config.logging_dir = str(run_dir)


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) as (K, N)."""
    try:
        k, n = (int(part) for part in str(text).split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise AttnzooError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. --shard 2/4 for the second of "
                           "four shards.")
    return k, n


def shard_of(runs: list[PlannedRun], shard: tuple[int, int] | None) -> list[PlannedRun]:
    """Shard K/N of the plan: every N-th run from the K-th on, so arms and seeds spread over the
    shards, and the N shards together hold every run exactly once. The plan's order is fixed by the
    recipe, so every shard computes the same slices."""
    if shard is None:
        return runs
    k, n = shard
    return runs[k - 1::n]


def run_study(recipe: Recipe, *, accelerator=None, extend: bool = False, shard: tuple[int, int] | None = None,
              worker: bool = False, only: list[str] | None = None, tune_only: bool = False) -> list[dict]:
    """Train every arm x seed not yet finished, then write the report. Returns the report's rows.

    `shard`: train only shard K/N of the plan (attnzoo.study.plan.shard_of). `worker`: one of the
    processes of `attnzoo study --workers N` (attnzoo.study.workers), which leaves the tuning, the
    robustness evaluation and the report to its parent. Each run is claimed (its run lock) before it is
    trained, so processes running the same study train every run once. `only`: the run folder names to
    train (a SLURM array task's, attnzoo.study.slurm), none of the others. With a `tune:` section the
    trials come first (all of them, whatever the shard) and every arm's choice is made before its runs
    are planned; `tune_only` stops there."""
    from attnzoo.run.assembly import make_accelerator

    all_runs = plan_runs(recipe)  # every arm is checked before any compute is spent
    _check_study_dir(recipe.run_dir)
    if recipe.tune and worker and tune.read_choice(recipe) is None:
        raise AttnzooError(f"tune: the arms of {str(recipe.run_dir)!r} have not chosen their values yet; the "
                           "study's own process trains the trials first (attnzoo study RECIPE, or with "
                           "--tune-only).")
    if not recipe.tune:
        plan_actions(_selected(all_runs, shard, only), extend)  # and every existing run, before anything is written
    # Accelerate's state is a process singleton: one Accelerator serves every run.
    own = accelerator is None
    accelerator = accelerator or make_accelerator(recipe)
    try:
        if recipe.tune and not worker:
            if accelerator.is_main_process:
                write_study_file(recipe)  # the folder is the study's from its first trial on
            tune_arms(recipe, accelerator, extend)
            if tune_only:
                return []
            all_runs = plan_runs(recipe)  # now with each arm's chosen values
        runs = _selected(all_runs, shard, only)
        actions = plan_actions(runs, extend)
        done = _run_all(recipe, runs, actions, accelerator, extend)
        if worker:
            return []
        if shard is not None and not all(rundir.RunDir(r.run_dir).is_finished() or rundir.RunDir(r.run_dir).diverged.is_file()
                                         for r in all_runs):
            accelerator.print(f"shard {shard[0]}/{shard[1]} done; the report is written by the shard that finishes "
                              f"last, or by hand with: attnzoo report {recipe.run_dir}")
            return []
        return _finish_study(recipe, all_runs, accelerator, done)
    finally:
        if own:
            accelerator.end_training()  # ends the process group once, after the last run


def _selected(runs: list[PlannedRun], shard: tuple[int, int] | None, only: list[str] | None) -> list[PlannedRun]:
    """The runs of this process: its shard of the plan, and only the named ones when `only` is given."""
    runs = shard_of(runs, shard)
    if only is None:
        return runs
    unknown = sorted(set(only) - {run.run_dir.name for run in runs})
    if unknown:
        raise AttnzooError(f"the study plans no run named {', '.join(unknown)}; its runs are the folders "
                           f"{', '.join(run.run_dir.name for run in runs[:5])}, ...")
    return [run for run in runs if run.run_dir.name in only]


def write_study_file(recipe: Recipe) -> None:
    """The study folder, holding the recipe the study runs with (study.yaml)."""
    recipe.run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_text(recipe.run_dir / STUDY_FILE, recipes.dump(recipe))


# ---------------------------------------------------------------- tuning (attnzoo.study.tune)


def plan_trials(recipe: Recipe) -> tuple[Recipe, list[PlannedRun]]:
    """The tuning trials of a study with a `tune:` section: their study recipe and runs."""
    trials_recipe = tune.trial_recipe(recipe)
    return trials_recipe, plan_runs(trials_recipe)


def make_choice(recipe: Recipe, trials: list[PlannedRun]) -> dict:
    """Every arm's choice from its finished trials (each trial's arm is its label without the tuned keys)."""
    keys = list(tune.tuned_keys(recipe))
    found = [(arm_label(t.variant, {k: v for k, v in t.point.items() if k not in keys}),
              {k: t.point[k] for k in keys}, t.run_dir) for t in trials]
    return tune.choose(recipe, found)


def unfinished_trials(trials: list[PlannedRun]) -> list[PlannedRun]:
    """The trials not finished yet (a diverged trial is done: it is never chosen)."""
    return [t for t in trials if _run_state(t.run_dir) not in ("finished", "diverged")]


def tune_arms(recipe: Recipe, accelerator, extend: bool = False, poll_seconds: float = 10.0,
              announce: bool = True) -> dict:
    """Train every tuning trial this process can claim, wait for those other processes hold, then make
    and write each arm's choice. Returns the choice record (attnzoo.study.tune.choose)."""
    import time

    trials_recipe, trials = plan_trials(recipe)
    _check_study_dir(trials_recipe.run_dir)
    if announce:
        accelerator.print(tune.plan_line(recipe, len(trials)), flush=True)
    while True:
        _run_all(trials_recipe, trials, plan_actions(trials, extend), accelerator, extend, report_plan=False)
        pending = unfinished_trials(trials)
        if not pending:
            break
        running = [t for t in pending if run_status(t.run_dir)[0] == "running"]
        if not running:
            raise AttnzooError(f"tune: {len(pending)} trial(s) are not finished and nobody is training them "
                               f"(e.g. {pending[0].run_dir}); see `attnzoo study RECIPE --status` and the "
                               "failure's log, then run the study again.")
        accelerator.print(f"tune: waiting for {len(running)} trial(s) other processes are training "
                          f"(e.g. {running[0].run_dir.name})", flush=True)
        while any(run_status(t.run_dir)[0] == "running" for t in running):
            time.sleep(poll_seconds)
    choice = make_choice(recipe, trials)
    if accelerator.is_main_process:
        tune.write_choice(recipe.run_dir, choice)
    accelerator.wait_for_everyone()
    for line in tune.choice_lines(choice):
        accelerator.print(line, flush=True)
    return choice


def _write_json(path: Path, data: dict) -> None:
    rundir.write_text(path, json.dumps(data, indent=1) + "\n")


def _plan_line(recipe: Recipe, runs: list[PlannedRun], left: int, accelerator) -> str:
    """What the study will do, before it does it; the first run adds a time estimate."""
    d = recipe.data
    images = f"up to {d.max_train_samples:,} train images" if d.max_train_samples else "all train images"
    arms, seeds = len({run.label for run in runs}), len({run.seed for run in runs})
    return (f"study {recipe.run_dir}: {len(runs)} runs ({arms} arm(s) x {seeds} seed(s)), "
            f"{recipe.train.epochs} epoch(s) each on {images} of "
            f"{d.dataset}; {len(runs) - left} done, {left} to train on {accelerator.device} x "
            f"{accelerator.num_processes} process(es). A time estimate follows the first steps."
            + (f"\n{power}" if (power := power_line(recipe, runs)) else ""))


def power_line(recipe: Recipe, runs: list[PlannedRun]) -> str | None:
    """What the study's seeds can detect at 80 % power, from the spread its `power:` key gives (its sd, or
    a reference study's observed spread); None for a study that compares no arm with a baseline."""
    from attnzoo.study.sections import power_sentence

    compared = len({run.label for run in runs if run.baseline and run.baseline != run.label})
    if not compared:
        return None
    power, seeds = recipe.power, len({run.seed for run in runs})
    if power.sd is None and power.reference is None:
        return (f"power: unknown; set power.sd (the seed-to-seed spread of an arm's difference to its baseline, in "
                f"pp of top-1) or power.reference (a finished study folder) to see what {seeds} seed(s) can detect.")
    if power.reference is not None:
        from attnzoo.study.report import observed_spread

        sd, source = observed_spread(Path(power.reference)), f" (observed in {power.reference})"
    else:
        sd, source = power.sd, " (power.sd)"
    return f"power: {power_sentence(seeds, sd, compared, power.target_delta, source)}."


def _action_text(run: PlannedRun, action: str) -> str:
    """What is done with a run, in words; a run continued with a new patience only says so."""
    if action != "extend":
        return ACTIONS[action]
    changes = extending.changes_from_run(run.run_dir, run.recipe)
    return ACTIONS[action] if "train.epochs" in changes else f"continuing {extending.continuation_text(changes)}"


def _claim(run: PlannedRun, accelerator):
    """The run's lock, or None when another live process is training it (said so)."""
    got = run_lock.try_acquire(run.run_dir, say=accelerator.print) if accelerator.is_main_process else None
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        claimed = broadcast_object_list([isinstance(got, run_lock.RunLock)])[0]
    else:
        claimed = isinstance(got, run_lock.RunLock)
    if not claimed:
        if accelerator.is_main_process:
            accelerator.print(f"  {run.run_dir.name}: being trained by {run_lock.describe_holder(got)}; left to it")
        return None
    return got if accelerator.is_main_process else _NOT_MAIN


class _NotMainProcess:
    """The claim on the other processes of a multi-process run: the main one holds the lock."""

    def beat(self, force=False):
        pass

    def release(self):
        pass


_NOT_MAIN = _NotMainProcess()


def _run_all(recipe: Recipe, runs: list[PlannedRun], actions: list[str], accelerator, extend: bool = False,
             report_plan: bool = True) -> dict:
    """Train the runs this process can claim; {"splits", "diverged"} for the study's end."""
    from attnzoo.data.pipeline import load_data
    from attnzoo.run.trainer import NonFiniteLoss, Trainer

    if accelerator.is_main_process:
        write_study_file(recipe)
    splits = None  # the data is the same for every run: load it once, when first needed
    diverged = []
    left = sum(action not in ("finished", "diverged") for action in actions)
    if report_plan:
        accelerator.print(_plan_line(recipe, runs, left, accelerator), flush=True)
    for i, (run, action) in enumerate(zip(runs, actions), 1):
        if action in ("finished", "diverged"):
            accelerator.print(f"[{i}/{len(runs)}] {run.label} seed {run.seed}: {_action_text(run, action)}", flush=True)
            continue
        accelerator.wait_for_everyone()  # every process has read the state before the main one writes
        claim = _claim(run, accelerator)
        if claim is None:
            left -= 1
            continue
        try:
            # Under the claim the run's state is read again: another process may have finished it.
            action = plan_actions([run], extend)[0]
            accelerator.print(f"[{i}/{len(runs)}] {run.label} seed {run.seed}: {_action_text(run, action)}", flush=True)
            if action in ("finished", "diverged"):
                continue
            if accelerator.is_main_process:
                failure_record(run.run_dir).unlink(missing_ok=True)  # tried again: no longer failed
            splits = splits or load_data(recipe)
            try:
                if _train_run(run, action, claim, accelerator, splits, left, Trainer, NonFiniteLoss):
                    diverged.append(run.run_dir.name)
            except Exception as exc:  # not a stop (Stopped) nor Ctrl-C: those leave a run to continue
                if accelerator.is_main_process and not isinstance(exc, Stopped):
                    record_failure(run.run_dir, f"{type(exc).__name__}: {exc}")
                raise
            left -= 1
        finally:
            accelerator.wait_for_everyone()
            claim.release()
    return {"splits": splits, "diverged": diverged}


def _train_run(run: PlannedRun, action: str, claim, accelerator, splits, left: int, Trainer, NonFiniteLoss) -> bool:
    """Train one claimed run; True when it diverged (recorded in its diverged.json)."""
    study_dir = run.run_dir.parent
    check_inside(study_dir, run.run_dir)
    if accelerator.is_main_process:
        if action == "rerun":
            _restart(run.run_dir)
        elif action == "extend":
            extending.extend_run(run.run_dir, run.recipe)
    accelerator.wait_for_everyone()
    _point_accelerator_at(accelerator, run.run_dir)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # peak memory is reported per run
    trainer = Trainer(run.recipe, accelerator=accelerator, splits=splits, runs_left=left)
    diverged = False
    try:
        trainer.fit(rundir.Resume.LATEST if action in ("started", "extend") else rundir.Resume.NO,
                    lock=claim if accelerator.is_main_process else None)
    except NonFiniteLoss as exc:
        # A diverging arm is a result of the study, not a reason to drop the others.
        accelerator.print(f"  {run.label} seed {run.seed} diverged: {exc}")
        diverged = True
        if accelerator.is_main_process:
            _write_json(rundir.RunDir(run.run_dir).diverged, {"epoch": exc.epoch, "step": exc.step,
                                                      "variant": run.recipe.attention.name, "message": str(exc)})
    finally:
        del trainer
        accelerator.free_memory()  # the shared Accelerator keeps every model it prepared otherwise
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    if accelerator.is_main_process:
        _write_json(rundir.RunDir(run.run_dir).arm, run.arm_record())
    return diverged


def _restart(run_dir: Path) -> None:
    """Empty a run folder of attnzoo's for its training again from the start; its lock (ours) stays.
    A folder attnzoo did not write is never deleted."""
    if not rundir.RunDir(run_dir).is_run():
        raise AttnzooError(f"{str(run_dir)!r} is not a run attnzoo wrote; it is not deleted. Move it elsewhere.")
    for path in run_dir.iterdir():
        if path.name == run_lock.LOCK:
            continue
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _finish_study(recipe: Recipe, runs: list[PlannedRun], accelerator, done: dict) -> list[dict]:
    """The study's end: the robustness evaluation of every run, then the report."""
    from attnzoo.study.report import build_report, finished_runs

    study_dir = recipe.run_dir
    _point_accelerator_at(accelerator, study_dir)
    if recipe.robustness.corruptions:
        from attnzoo.run.robustness import evaluate_study_runs
        evaluate_study_runs([run.run_dir for run in runs], recipe, accelerator, done.get("splits"))
    if recipe.robustness.attacks:
        from attnzoo.run.attacks import attack_study_runs
        attack_study_runs([run.run_dir for run in runs], recipe, accelerator, done.get("splits"))
    rows = []
    if accelerator.is_main_process and finished_runs(study_dir):
        rows = build_report(study_dir)
    accelerator.wait_for_everyone()
    diverged = done.get("diverged") or []
    if diverged:
        accelerator.print(f"{len(diverged)} run(s) diverged (a non-finite loss), recorded in their {rundir.DIVERGED} "
                          f"and listed in the report: {', '.join(diverged)}")
    return rows
