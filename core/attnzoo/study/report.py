"""The report of a study, rebuilt from the runs' own files at any time.

build_report reads each finished run once (runs.load_run), gathers the report's sections
(sections: what the study can conclude, the leaderboard, the omnibus test, the corrected paired
comparison, rank uncertainty, tables, figures and runs; tradeoffs: accuracy
against cost and robustness; here: the recipe the runs were made with), then writes
results.md, results.csv (one row per arm: mean and sample std over seeds) and each figure
under figures/ exactly once. Nothing is patched after it is written, and nothing here
needs the plugins, the trained weights or the dataset.
"""

from __future__ import annotations

import csv
from pathlib import Path

import yaml

from attnzoo.config.keys import NOT_COMPARED_BETWEEN_RUNS, flatten
from attnzoo.errors import AttnzooError
from attnzoo.study import tradeoffs
from attnzoo.study.figures import FOLDER, report_figures, save_figure

# Re-exported: what this module offered before the report was split into runs, sections and figures.
from attnzoo.study.runs import (  # noqa: F401
    RunResult,
    diverged_runs,
    finished_runs,
    group_by_arm,
    load_run,
    run_entropy,
    unfinished_runs,
)
from attnzoo.study.sections import (
    Section,
    budget_rankings_section,
    conclusion_section,
    cost_summary_section,
    csv_rows,
    diverged_section,
    figures_section,
    leaderboard_section,
    omnibus_section,
    paired_section,
    quality_section,
    rank_section,
    runs_section,
    summarize,
    text_table,
)
from attnzoo.study.sections import baselines, top1_scores
from attnzoo.study.stats import holm_comparisons, pooled_sd
from attnzoo.study.stats import mean_std  # noqa: F401
from attnzoo.study.tune import tuning_section

FIGURES = FOLDER
STUDY_FILE = "study.yaml"  # the recipe the study ran with (study.plan writes it)
RESULTS_MD = "results.md"
RESULTS_CSV = "results.csv"
IGNORED_RECIPE_KEYS = NOT_COMPARED_BETWEEN_RUNS


# ---------------------------------------------------------------- the recipe the runs were made with


def recipe_values(runs: list[RunResult]) -> tuple[dict, list[str]]:
    """The flattened recipe values every run shares, and the keys whose values differ between runs."""
    flat = [{k: v for k, v in flatten(r.recipe).items()
             if not any(k == i or k.startswith(i + ".") for i in IGNORED_RECIPE_KEYS)} for r in runs]
    keys = sorted(set().union(*flat))
    shared = {k: flat[0].get(k) for k in keys if all(f.get(k) == flat[0].get(k) for f in flat)}
    return shared, [k for k in keys if k not in shared]


def recipe_section(arms: dict[str, list[RunResult]]) -> Section:
    """The recipe values the runs were made with: those that differ per arm, those every run shares."""
    runs = [r for rs in arms.values() for r in rs]
    shared, varying = recipe_values(runs)
    lines = ["Read from each run's own `recipe.yaml`."]
    varying = [k for k in varying if not k.startswith("attention.")]  # the arm's variant, in the run table
    if varying:
        lines += ["", "Values that differ between arms (several values in one cell: its seeds differ):", "",
                  "| arm | " + " | ".join(f"`{k}`" for k in varying) + " |", "|---|" + "---|" * len(varying)]
        for label, rs in arms.items():
            cells = []
            for key in varying:
                values = []
                for r in rs:
                    value = flatten(r.recipe).get(key)
                    if value not in values:
                        values.append(value)
                cells.append(" / ".join(str(v) for v in values))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "<details><summary>Values shared by every run</summary>", "",
              "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in shared.items()]
    lines += ["", "</details>"]
    return Section("Recipe of these runs", lines)


def _setup_lines(run: RunResult, varying: list[str] = ()) -> list[str]:
    """The setup in words, from a run's recipe; a value that differs between runs reads 'varies'."""
    r = _unflatten({k: ("varies" if k in varying else v) for k, v in flatten(run.recipe).items()})
    m, d, t, o = r.get("model", {}), r.get("data", {}), r.get("train", {}), r.get("optim", {})
    env = run.environment
    source = "" if d.get("dataset") == "synthetic" else f" from `{d.get('root')}`"
    samples = f", at most {d['max_train_samples']} training images" if d.get("max_train_samples") else ""
    evals = f", {run.test.get('samples')} test images" if run.test.get("samples") else ""
    return [
        f"- data: `{d.get('dataset')}`{source}{samples}{evals}",
        f"- model: ViT, {m.get('image_size')}px images, {m.get('patch_size')}px patches, dim {m.get('dim')}, "
        f"depth {m.get('depth')}, {m.get('heads')} heads",
        f"- training: {t.get('epochs')} epochs, batch {t.get('batch_size')}, AdamW lr {o.get('lr')}, "
        f"{o.get('schedule')} schedule, mixed precision {t.get('mixed_precision')}",
        f"- device: {_device(env)}, "
        f"{env.get('world_size', 1)} process(es), torch {env.get('torch', '?')}",
    ]


def _unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _device(env: dict) -> str:
    name, kind = env.get("device_name") or "unknown", env.get("device") or "?"
    return name if name == kind else f"{name} ({kind})"


# ---------------------------------------------------------------- assembling the report


def report_sections(arms: dict[str, list[RunResult]], rows: list[dict], diverged: list[dict],
                    target: float | None = None, tuning: Section | None = None) -> list[Section]:
    """Every section of results.md, in reading order; `target` is the study's power.target_delta (pp),
    `tuning` what its arms tried and chose (attnzoo.study.tune)."""
    found = [conclusion_section(rows, target), leaderboard_section(rows, diverged), omnibus_section(arms),
             paired_section(rows, arms), rank_section(rows), budget_rankings_section(arms, rows), tuning,
             recipe_section(arms), quality_section(rows),
             cost_summary_section(rows), figures_section(report_figures(arms))]
    found += tradeoffs.sections(arms)  # before the per-run table
    found += [runs_section(arms), diverged_section(diverged)]
    return [s for s in found if s is not None]


def header_lines(study_dir: Path, arms: dict[str, list[RunResult]], diverged: list[dict]) -> list[str]:
    first = next(iter(arms.values()))[0]
    _, varying = recipe_values([r for rs in arms.values() for r in rs])
    lines = [f"# Results: {first.recipe.get('name', study_dir.name)}", "",
             f"{sum(len(rs) for rs in arms.values())} finished runs in `{study_dir}`"
             + (f", {len(diverged)} diverged" if diverged else "") + "; "
             "values are mean ± sample standard deviation over seeds, on the test split, with the weights "
             "of the best validation epoch.", ""]
    return lines + _setup_lines(first, varying) + [""]


def markdown(header: list[str], sections: list[Section], unfinished: list[Path]) -> str:
    lines = header + [line for section in sections for line in section.markdown()]
    if unfinished:
        lines += [f"Not finished (not in the tables): {', '.join(f'`{p.name}`' for p in unfinished)}. "
                  "Run the study again to resume them."]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict], sections: list[Section]) -> None:
    """results.csv: the summary's columns, then each section's columns (empty for an arm it has none for)."""
    table = csv_rows(rows)
    columns = list(table[0])
    for section in sections:
        for values in section.columns.values():
            columns += [c for c in values if c not in columns]
    for row in table:
        for section in sections:
            row.update(section.columns.get(row["arm"], {}))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow({c: "" if row.get(c) is None else row[c] for c in columns})


def write_figures(folder: Path, sections: list[Section]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    return [save_figure(plot.figure, folder, plot.name) for section in sections for plot in section.figures]


def target_delta(study_dir: Path) -> float | None:
    """The difference (pp) the study wants to detect: `power.target_delta` of the study.yaml the study wrote
    (None for a study without one, or one made before the key existed)."""
    path = study_dir / STUDY_FILE
    if not path.is_file():
        return None
    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise AttnzooError(f"{str(path)!r} is not valid YAML ({exc}). It is the recipe the study was run with: "
                           "restore it, or run the study again to write it.") from exc
    power = recipe.get("power") if isinstance(recipe, dict) else None
    value = power.get("target_delta") if isinstance(power, dict) else None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def observed_spread(study_dir: Path) -> float:
    """The spread (pp) of per-seed differences to the baseline a finished study observed, pooled over its
    comparisons: what `power.reference` gives a new study's power statement."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise AttnzooError(f"power.reference: study folder {str(study_dir)!r} not found. Name the output_dir of a "
                           "finished study, or give the spread as power.sd instead.")
    arms = group_by_arm([load_run(p) for p in finished_runs(study_dir)])
    spread = pooled_sd(holm_comparisons(top1_scores(arms), baselines(arms))) if arms else None
    if not spread:
        raise AttnzooError(f"power.reference: {str(study_dir)!r} has no comparison with a baseline over 2 seeds or "
                           "more whose differences vary, so it observed no spread. Name a study with a baseline arm "
                           "and several seeds, or give the spread as power.sd.")
    return 100 * spread


# ---------------------------------------------------------------- public API


def build_report(study_dir: Path) -> list[dict]:
    """Write results.md, results.csv and figures/ from the study's finished runs; print the summary."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise AttnzooError(f"study folder {str(study_dir)!r} not found. Pass the output_dir of a study "
                           "(`attnzoo study RECIPE` creates one).")
    paths = finished_runs(study_dir)
    if not paths:
        raise AttnzooError(f"{str(study_dir)!r} has no finished runs (sub-folders with test_metrics.json). "
                           "Run `attnzoo study RECIPE` first, or pass the folder that holds its runs.")
    arms = group_by_arm([load_run(p) for p in paths])
    rows = summarize(arms)
    diverged = diverged_runs(study_dir)
    sections = report_sections(arms, rows, diverged, target_delta(study_dir), tuning_section(study_dir))
    figures = write_figures(study_dir / FIGURES, sections)
    write_csv(study_dir / RESULTS_CSV, rows, sections)
    (study_dir / RESULTS_MD).write_text(markdown(header_lines(study_dir, arms, diverged), sections,
                                                 unfinished_runs(study_dir)))
    print(text_table(rows))
    print(f"report: {study_dir / RESULTS_MD}, {study_dir / RESULTS_CSV}, {len(figures)} figures in "
          f"{study_dir / FIGURES}")
    return rows
