"""A study's `tune:` section: every arm picks its own values on the validation split before its seeds run.

    tune: {optim.lr: [3e-4, 1e-3, 3e-3], seeds: 1, metric: val_top1}

The trials are a study of their own, in ``<study>/tune/``: every arm (variant arm x grid point)
times every combination of the tuned values, each trained with the tuning seeds. Those are kept
apart from the study's seeds (1000, 1001, ... by default), so the runs the report compares are not
the runs their values were chosen on. Every arm gets the same trials, so the same tuning budget.

A trial is scored by its best epoch on the validation split (`metric`: val_top1, val_top5 or
val_loss, read from its metrics.jsonl); an arm chooses the combination with the best mean score
over the tuning seeds, the first one listed on a tie. A trial that diverged is never chosen.
Nothing here reads a test metric: the test split takes no part in a choice. The choice is written
to ``tune/choice.json`` and into each of the arm's runs' own recipe (attnzoo.study.plan).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from attnzoo.config import recipe as recipes
from attnzoo.config.recipe import TUNE_METRICS, Recipe
from attnzoo.errors import AttnzooError
from attnzoo.run.rundir import RunDir, read_json, write_text
from attnzoo.study.figures import Plot, new_figure
from attnzoo.study.sections import Section

TUNE_DIR = "tune"  # the trials' study folder, inside the study folder
CHOICE_FILE = "choice.json"


def tuned_keys(recipe: Recipe) -> dict[str, list]:
    """The swept keys of the recipe's `tune:` section and their values (without `seeds` and `metric`)."""
    return {key: values for key, values in recipe.tune.items() if key not in ("seeds", "metric")}


def tune_dir(study_dir: Path) -> Path:
    return Path(study_dir) / TUNE_DIR


def trial_recipe(recipe: Recipe) -> Recipe:
    """The trials as a study: the study's arms, its grid plus the tuned keys, the tuning seeds; no robustness
    evaluation and no power statement (a trial is only ever read for its validation scores)."""
    data = recipe.to_dict()
    folder = str(tune_dir(recipe.run_dir)).replace("{", "{{").replace("}", "}}")  # a literal path, not a pattern
    data.update(output_dir=folder, description=f"the tuning trials of {recipe.name}",
                grid={**recipe.grid, **tuned_keys(recipe)}, seeds=list(recipe.tune["seeds"]), tune={},
                power={}, robustness={**data["robustness"], "corruptions": False, "attacks": False})
    return recipes.from_dict(data, source=f"the tuning trials of {recipe.name!r}")


def trial_score(run_dir: Path, metric: str) -> float | None:
    """The trial's best epoch by `metric` on the validation split; None when it diverged or has no such
    column (a run without a validation split)."""
    run = RunDir(run_dir)
    if run.diverged.is_file():
        return None
    values = [row[metric] for row in run.read_metrics() if row.get(metric) is not None]
    finite = [float(v) for v in values if math.isfinite(float(v))]
    return TUNE_METRICS[metric](finite) if finite else None


def choose(recipe: Recipe, trials: list[tuple[str, dict, Path]]) -> dict:
    """Each arm's chosen values from its finished trials, given as (arm label, tuned values, run folder).

    Returns the record written to choice.json: the tune section it was made for, and per arm its
    trials in the order listed (values, the score of each tuning seed, their mean) and its choice."""
    metric = recipe.tune["metric"]
    arms: dict[str, list[dict]] = {}
    for arm, values, run_dir in trials:
        entries = arms.setdefault(arm, [])
        entry = next((e for e in entries if e["values"] == values), None)
        if entry is None:
            entry = {"values": values, "scores": []}
            entries.append(entry)
        entry["scores"].append(trial_score(run_dir, metric))
    better = TUNE_METRICS[metric]
    record = {"tune": recipe.tune, "metric": metric, "arms": {}}
    for arm, entries in arms.items():
        for entry in entries:
            scores = entry["scores"]
            entry["mean"] = None if None in scores else sum(scores) / len(scores)
        usable = [e for e in entries if e["mean"] is not None]
        if not usable:
            raise AttnzooError(f"tune: every trial of the arm {arm!r} diverged or has no {metric} (a validation "
                               f"split), so it has no value to choose. Give tune values it can train with (e.g. a "
                               f"smaller optim.lr), and check that data.val_fraction is above 0.")
        best = better(e["mean"] for e in usable)
        chosen = next(e for e in usable if e["mean"] == best)  # the first listed on a tie
        record["arms"][arm] = {"chosen": chosen["values"], "trials": entries}
    return record


def write_choice(study_dir: Path, record: dict) -> None:
    tune_dir(study_dir).mkdir(parents=True, exist_ok=True)
    write_text(tune_dir(study_dir) / CHOICE_FILE, json.dumps(record, indent=1) + "\n")


def read_choice(recipe: Recipe) -> dict | None:
    """The choice the trials of this recipe's `tune:` section made; None before they are all done, or
    when the section has changed since (its trials then choose again)."""
    record = read_json(tune_dir(recipe.run_dir) / CHOICE_FILE, None)
    if not record or record.get("tune") != json.loads(json.dumps(recipe.tune)):
        return None
    return record


def chosen_values(record: dict | None, arm: str) -> dict | None:
    """The values the arm chose, or None when the record has no choice for it."""
    entry = (record or {}).get("arms", {}).get(arm)
    return dict(entry["chosen"]) if entry else None


def value_text(values: dict) -> str:
    return ", ".join(f"{key}={_number(value)}" for key, value in values.items())


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value.get("label", value) if isinstance(value, dict)
                                                               else value)


def plan_line(recipe: Recipe, trials: int) -> str:
    keys = tuned_keys(recipe)
    combos = math.prod(len(v) for v in keys.values())
    return (f"tune: {trials} trial(s) before the study's runs, {combos} value(s) of {', '.join(keys)} per arm "
            f"x {len(recipe.tune['seeds'])} tuning seed(s), each arm choosing on its best epoch's "
            f"{recipe.tune['metric']} (validation split only)")


def choice_lines(record: dict) -> list[str]:
    return [f"tune: {arm} chose {value_text(entry['chosen'])}" for arm, entry in record["arms"].items()]


# ---------------------------------------------------------------- the report's section


def tuning_section(study_dir: Path) -> Section | None:
    """What each arm tried and chose, from tune/choice.json; None for a study without tuning."""
    record = read_json(tune_dir(study_dir) / CHOICE_FILE, None)
    if not record or not record.get("arms"):
        return None
    metric, seeds = record["metric"], record["tune"].get("seeds", [])
    percent = metric != "val_loss"
    first = next(iter(record["arms"].values()))["trials"]
    headers = [value_text(t["values"]) for t in first]
    lines = [f"Before its seeds ran, every arm trained the same {len(first)} trial(s) on the tuning seed(s) "
             f"{', '.join(str(s) for s in seeds)} (apart from the study's seeds) and kept the values with the best "
             f"mean {metric} of its best epoch; the test split took no part in the choice. Scores are "
             f"{'validation accuracy in %' if percent else 'validation loss'}, mean over tuning seeds; "
             f"the chosen one is in bold.", "",
             "| arm | chosen | " + " | ".join(headers) + " |", "|---|---|" + "---|" * len(headers)]
    columns = {}
    for arm, entry in record["arms"].items():
        cells = []
        for trial in entry["trials"]:
            text = "diverged" if trial["mean"] is None else (f"{100 * trial['mean']:.2f}" if percent
                                                             else f"{trial['mean']:.4f}")
            cells.append(f"**{text}**" if trial["values"] == entry["chosen"] else text)
        lines.append(f"| {arm} | {value_text(entry['chosen'])} | " + " | ".join(cells) + " |")
        columns[arm] = {f"tuned_{key}": value for key, value in entry["chosen"].items()}
    return Section("Tuning", lines, columns, [_tuning_figure(record, headers)])


def _tuning_figure(record: dict, headers: list[str]) -> Plot:
    """Each arm's tuning curve: its mean validation score at every tried value."""
    fig, ax = new_figure(7.0, 4.0)
    percent = record["metric"] != "val_loss"
    positions = list(range(len(headers)))
    for arm, entry in record["arms"].items():
        means = [None if t["mean"] is None else (100 * t["mean"] if percent else t["mean"]) for t in entry["trials"]]
        shown = [(x, y) for x, y in zip(positions, means) if y is not None]
        ax.plot([x for x, _ in shown], [y for _, y in shown], marker="o", label=arm)
    ax.set_xticks(positions, headers, rotation=20 if len(headers) > 3 else 0)
    ax.set_xlabel("tried values")
    ax.set_ylabel(f"{record['metric']} {'(%)' if percent else ''}".strip())
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Plot("tuning.png", "Each arm's tuning curve on the validation split", fig)
