"""The report of a study, rebuilt from the runs' own files at any time.

Reads each finished run's test_metrics.json, metrics.jsonl, attention.json (and the test
images under its maps, attention_images.safetensors), recipe.yaml,
arm.json (its arm, grid values and baseline arm) and environment.json (start time,
device), plus diverged.json of runs whose loss turned non-finite, and writes into the study folder: results.md (a leaderboard, the paired
comparison with the baseline arm, the recipe values the runs were made with), results.csv
(one row per arm: mean and sample std over seeds) and PNG figures under figures/.
Nothing here needs the plugins, the trained weights or the dataset.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from attnzoo.errors import AttnzooError
from attnzoo.run.rundir import RunDir, read_json
from attnzoo.study.figures import new_figure, save_figure
from attnzoo.study.stats import PairedDifference, paired_difference

FIGURES = "figures"
MANY_CLASSES = 20  # above this, confusion matrices carry no class names

# (key in test_metrics.json, column title, factor for display, decimals). The CSV keeps raw values.
METRICS = [
    ("top1", "top-1 (%)", 100, 2),
    ("top5", "top-5 (%)", 100, 2),
    ("precision_macro", "precision macro (%)", 100, 2),
    ("recall_macro", "recall macro (%)", 100, 2),
    ("f1_macro", "F1 macro (%)", 100, 2),
    ("ece", "ECE (%)", 100, 2),
    ("loss", "test loss", 1, 3),
    ("best_epoch", "best epoch", 1, 1),
    ("parameters", "parameters", 1, 0),
    ("train_seconds", "train time (s)", 1, 1),
    ("mean_epoch_seconds", "epoch time (s)", 1, 2),
    ("images_per_sec", "images/s", 1, 0),
    ("peak_memory_mib", "peak memory (MiB)", 1, 0),
]
QUALITY = METRICS[:8]
COST = METRICS[8:]
SUMMARY_KEYS = ["top1", "top5", "f1_macro", "ece", "loss", "mean_epoch_seconds", "images_per_sec"]
ENTROPY = ("entropy", "attention entropy", 1, 3)  # normalised, mean over layers and heads (attention.json)
MAX_PANELS = 12  # confusion matrices / attention maps: at most this many arms, the best by top-1
IGNORED_RECIPE_KEYS = ("name", "description", "output_dir", "requires_plugins", "bench", "variants", "seeds",
                       "grid", "baseline", "train.seed")


@dataclass
class RunResult:
    path: Path
    label: str  # the arm, from arm.json (rundir.RunDir.arm_record)
    seed: int  # from arm.json too
    test: dict  # test_metrics.json
    history: list[dict]  # metrics.jsonl, one row per epoch
    attention: dict | None  # attention.json
    recipe: dict  # recipe.yaml
    environment: dict  # environment.json, {} if absent
    arm: dict  # arm.json: {arm, variant, grid, baseline, seed}; see rundir.RunDir.arm_record for older runs


# ---------------------------------------------------------------- reading runs


def finished_runs(study_dir: Path) -> list[Path]:
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        return []
    return sorted(p for p in study_dir.iterdir() if RunDir(p).is_finished())


def unfinished_runs(study_dir: Path) -> list[Path]:
    runs = [RunDir(p) for p in sorted(Path(study_dir).iterdir())]
    return [r.path for r in runs if r.recipe.is_file() and not r.is_finished() and not r.diverged.is_file()]


def diverged_runs(study_dir: Path) -> list[dict]:
    """Runs whose loss turned non-finite: folder, arm, seed, epoch and step (diverged.json)."""
    found = []
    for path in sorted(Path(study_dir).iterdir()):
        run = RunDir(path)
        if run.diverged.is_file() and not run.is_finished():
            record = read_json(run.diverged, {})
            arm = run.arm_record()
            found.append({"run": path.name, "arm": arm["arm"], "variant": record.get("variant"),
                          "seed": arm.get("seed"), "epoch": record.get("epoch"), "step": record.get("step")})
    return found


def load_run(path: Path) -> RunResult:
    run = RunDir(path)
    test = read_json(run.test_metrics)
    history = run.read_metrics() if run.metrics.is_file() else []
    arm = run.arm_record()
    seed = arm["seed"] if arm["seed"] is not None else test.get("seed", 0)
    return RunResult(run.path, arm["arm"], int(seed), test, history, read_json(run.attention),
                     run.read_recipe() or {}, read_json(run.environment, {}), arm)


def group_by_arm(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Arms in the order the study started them (a run's start time), seeds in order."""
    arms: dict[str, list[RunResult]] = {}
    for run in sorted(runs, key=lambda r: (r.environment.get("time", ""), r.label, r.seed)):
        arms.setdefault(run.label, []).append(run)
    return {label: sorted(rs, key=lambda r: r.seed) for label, rs in arms.items()}


# ---------------------------------------------------------------- statistics


def mean_std(values: list) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values); None entries skipped."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def run_entropy(run: RunResult) -> float | None:
    """Normalised attention entropy of a run, mean over layers and heads."""
    layers = (run.attention or {}).get("entropy")
    return statistics.fmean(v for heads in layers for v in heads) if layers else None


def summarize(arms: dict[str, list[RunResult]]) -> list[dict]:
    rows = []
    for label, runs in arms.items():
        first = runs[0].test
        row = {"arm": label, "variant": first.get("variant"),
               "options": json.dumps(first.get("attention_options", {}), sort_keys=True),
               "grid": json.dumps(runs[0].arm.get("grid", {})), "baseline": runs[0].arm.get("baseline") or "",
               "n_seeds": len(runs), "seeds": " ".join(str(r.seed) for r in runs)}
        for key, *_ in METRICS:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r.test.get(key) for r in runs])
        row["entropy_mean"], row["entropy_std"] = mean_std([run_entropy(r) for r in runs])
        row["paired"] = _paired(label, arms)
        rows.append(row)
    return rows


def _paired(label: str, arms: dict[str, list[RunResult]]) -> PairedDifference | None:
    """This arm's top-1 minus its baseline arm's (same grid values), paired by seed."""
    baseline = arms[label][0].arm.get("baseline")
    if not baseline or baseline == label or baseline not in arms:
        return None
    return paired_difference({r.seed: r.test["top1"] for r in arms[label]},
                             {r.seed: r.test["top1"] for r in arms[baseline]})


# ---------------------------------------------------------------- tables


def _cell(row: dict, metric: tuple) -> str:
    """'mean ± std' (std left out for a single seed or a constant such as the parameter count)."""
    key, _, factor, decimals = metric
    mean, std = row[f"{key}_mean"], row[f"{key}_std"]
    if mean is None:
        return "n/a"
    text = f"{factor * mean:,.{decimals}f}"
    return text if not std else f"{text} ± {factor * std:,.{decimals}f}"


def markdown_table(rows: list[dict], metrics: list[tuple]) -> str:
    header = ["variant", "seeds"] + [m[1] for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["arm"], str(row["n_seeds"])] + [_cell(row, m) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(rows: list[dict]) -> str:
    """The summary for the terminal: fixed-width columns."""
    metrics = [m for m in METRICS if m[0] in SUMMARY_KEYS]
    header = ["variant", "n"] + [m[1] for m in metrics]
    body = [[row["arm"], str(row["n_seeds"])] + [_cell(row, m) for m in metrics] for row in rows]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))  # noqa: E731
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(line) for line in body])


def write_csv(rows: list[dict], path: Path) -> None:
    columns = ["arm", "variant", "options", "grid", "n_seeds", "seeds"]
    names = [m[0] for m in METRICS] + ["entropy"]
    columns += [f"{name}_{stat}" for name in names for stat in ("mean", "std")]
    columns += ["baseline", "top1_diff_mean", "top1_diff_low", "top1_diff_high", "top1_diff_n"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            d = row["paired"]
            values = dict(row, top1_diff_mean=d and d.mean, top1_diff_low=d and d.low, top1_diff_high=d and d.high,
                          top1_diff_n=d and d.n, baseline=row["baseline"] if d else "")
            writer.writerow({k: ("" if values[k] is None else values[k]) for k in columns})


# ---------------------------------------------------------------- leaderboard and paired comparison


def _diff_text(d: PairedDifference | None) -> str:
    if d is None:
        return ""
    if d.low is None:
        return f"{100 * d.mean:+.2f} (no interval: {d.why_no_interval})"
    text = f"{100 * d.mean:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
    return f"**{text}** \\*" if d.excludes_zero else text


def leaderboard_table(rows: list[dict], diverged: list[dict]) -> str:
    """Arms sorted by mean test top-1; arms whose every seed diverged at the bottom."""
    metrics = [m for m in METRICS if m[0] in ("top1", "top5", "f1_macro", "ece")] + [ENTROPY]
    metrics += [m for m in METRICS if m[0] == "train_seconds"]
    header = ["rank", "arm", "seeds"] + [m[1] for m in metrics] + ["Δ top-1 vs baseline (pp) [95 % CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    failed = {}
    for record in diverged:
        failed.setdefault(record["arm"], []).append(record)
    ranked = sorted(rows, key=lambda r: -(r["top1_mean"] if r["top1_mean"] is not None else -1))
    for rank, row in enumerate(ranked, 1):
        seeds = str(row["n_seeds"]) + (f" (+{len(failed[row['arm']])} diverged)" if row["arm"] in failed else "")
        paired = _diff_text(row["paired"]) + (f" vs {row['baseline']}" if row["paired"] else "")
        paired = paired or ("baseline" if row["baseline"] == row["arm"] else "")
        lines.append("| " + " | ".join([str(rank), row["arm"], seeds] + [_cell(row, m) for m in metrics] + [paired])
                     + " |")
    for arm, records in failed.items():
        if arm not in {r["arm"] for r in rows}:
            where = ", ".join(f"seed {r['seed']}: epoch {r['epoch']} step {r['step']}" for r in records)
            lines.append("| " + " | ".join(["–", arm, f"0 (+{len(records)} diverged)", f"diverged ({where})"]
                                            + [""] * len(metrics)) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict]) -> list[str]:
    compared = [row for row in rows if row["paired"] is not None]
    if not compared:
        return ["No arm has a baseline arm in this study (the default baseline is the softmax arm with the same "
                "grid values; the study key `baseline:` names another variant arm)."]
    lines = ["| arm | baseline | seeds paired | Δ top-1 (pp) | 95 % CI (pp) | interval excludes 0 |",
             "|---|---|---|---|---|---|"]
    for row in compared:
        d = row["paired"]
        interval = f"no interval can be given: {d.why_no_interval}" if d.low is None else \
            f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]"
        mark = "" if d.low is None else ("**yes**" if d.excludes_zero else "no")
        lines.append(f"| {row['arm']} | {row['baseline']} | {d.n} | {100 * d.mean:+.2f} | {interval} | {mark} |")
    lines += ["", "Δ is the arm's test top-1 minus its baseline arm's, in percentage points, averaged over the "
                  "seeds both finished (paired by seed: the same seed gives both the same data order). The interval "
                  "is the 95 % Student-t interval of that mean, Δ ± t(0.975, n−1)·s/√n, with s the standard "
                  "deviation of the per-seed differences; \\* in the leaderboard marks an interval that excludes 0."]
    if any(row["paired"].n == 1 for row in compared):
        lines += ["", "With one seed no interval can be given: add seeds to see whether a difference is more "
                      "than seed-to-seed noise."]
    if any(row["paired"].why_no_interval.startswith("identical") for row in compared):
        lines += ["", "Where every seed gave the same difference, the spread over seeds is zero and a t-interval "
                      "would have zero width; none is given (more seeds or more test images resolve it)."]
    return lines


# ---------------------------------------------------------------- the recipe the runs were made with


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_values(runs: list[RunResult]) -> tuple[dict, list[str]]:
    """The flattened recipe values every run shares, and the keys whose values differ between runs."""
    flat = [{k: v for k, v in _flatten(r.recipe).items()
             if not any(k == i or k.startswith(i + ".") for i in IGNORED_RECIPE_KEYS)} for r in runs]
    keys = sorted(set().union(*flat))
    shared = {k: flat[0].get(k) for k in keys if all(f.get(k) == flat[0].get(k) for f in flat)}
    return shared, [k for k in keys if k not in shared]


def recipe_section(arms: dict[str, list[RunResult]]) -> list[str]:
    runs = [r for rs in arms.values() for r in rs]
    shared, varying = recipe_values(runs)
    lines = ["## Recipe of these runs", "", "Read from each run's own `recipe.yaml`."]
    varying = [k for k in varying if not k.startswith("attention.")]  # the arm's variant, in the run table
    if varying:
        lines += ["", "Values that differ between arms (several values in one cell: its seeds differ):", "",
                  "| arm | " + " | ".join(f"`{k}`" for k in varying) + " |", "|---|" + "---|" * len(varying)]
        for label, rs in arms.items():
            cells = []
            for key in varying:
                values = []
                for r in rs:
                    value = _flatten(r.recipe).get(key)
                    if value not in values:
                        values.append(value)
                cells.append(" / ".join(str(v) for v in values))
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "<details><summary>Values shared by every run</summary>", "",
              "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k, v in shared.items()]
    lines += ["", "</details>", ""]
    return lines


def _setup_lines(run: RunResult, varying: list[str] = ()) -> list[str]:
    """The setup in words, from a run's recipe; a value that differs between runs reads 'varies'."""
    r = _unflatten({k: ("varies" if k in varying else v) for k, v in _flatten(run.recipe).items()})
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


def write_markdown(study_dir: Path, rows: list[dict], arms: dict[str, list[RunResult]], figures: dict[str, str],
                   unfinished: list[Path], diverged: list[dict] = ()) -> None:
    first = next(iter(arms.values()))[0]
    _, varying = recipe_values([r for rs in arms.values() for r in rs])
    lines = [f"# Results: {first.recipe.get('name', study_dir.name)}", "",
             f"{sum(len(rs) for rs in arms.values())} finished runs in `{study_dir}`"
             + (f", {len(diverged)} diverged" if diverged else "") + "; "
             "values are mean ± sample standard deviation over seeds, on the test split, with the weights "
             "of the best validation epoch.", ""]
    lines += _setup_lines(first, varying) + [""]
    lines += ["## Leaderboard", "", "Arms sorted by mean test top-1. Attention entropy is normalised (1 = uniform), "
              "mean over layers and heads.", "", leaderboard_table(rows, list(diverged)), ""]
    lines += ["## Paired comparison with the baseline", ""] + paired_table(rows) + [""]
    lines += recipe_section(arms)
    lines += ["## Accuracy and calibration", "", markdown_table(rows, QUALITY), ""]
    lines += ["## Cost", "", markdown_table(rows, COST), "",
              "Peak memory is measured on CUDA devices only (n/a on CPU).", ""]
    lines += ["## Figures", ""]
    for name, caption in figures.items():
        lines += [f"### {caption}", "", f"![{caption}]({FIGURES}/{name})", ""]
    lines += ["## Runs", "", "| run | variant | options | seed | test top-1 (%) | top-5 (%) | best epoch |",
              "|---|---|---|---|---|---|---|"]
    for runs in arms.values():
        for run in runs:
            t = run.test
            lines.append(f"| `{run.path.name}` | {t.get('variant')} | `{json.dumps(t.get('attention_options', {}))}` "
                         f"| {run.seed} | {100 * t['top1']:.2f} | {100 * t['top5']:.2f} | {t.get('best_epoch')} |")
    if diverged:
        lines += ["", "## Diverged runs", "", "The loss turned non-finite; the run stopped there (diverged.json).", "",
                  "| run | arm | variant | seed | epoch | step |", "|---|---|---|---|---|---|"]
        lines += [f"| `{d['run']}` | {d['arm']} | {d['variant']} | {d['seed']} | {d['epoch']} | {d['step']} |"
                  for d in diverged]
    if unfinished:
        lines += ["", f"Not finished (not in the tables): {', '.join(f'`{p.name}`' for p in unfinished)}. "
                      "Run the study again to resume them."]
    (study_dir / "results.md").write_text("\n".join(lines) + "\n")


def _curve(runs: list[RunResult], key: str) -> tuple[list[int], list[float], list[float]]:
    """Epochs, mean and std over seeds of one metrics.jsonl column (epochs every seed reached)."""
    epochs = min(len(r.history) for r in runs)
    xs, means, stds = [], [], []
    for e in range(epochs):
        mean, std = mean_std([r.history[e].get(key) for r in runs])
        if mean is not None:
            xs.append(runs[0].history[e]["epoch"])
            means.append(mean)
            stds.append(std or 0.0)
    return xs, means, stds


def _plot_curve(ax, runs, key, color, label, scale=1.0, **style):
    xs, means, stds = _curve(runs, key)
    if not xs:
        return
    means, stds = [scale * m for m in means], [scale * s for s in stds]
    ax.plot(xs, means, color=color, label=label, marker="o", markersize=3, **style)
    if len(runs) > 1:  # a band of one std over seeds
        ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=color, alpha=0.15, linewidth=0)


def _epoch_axis(ax) -> None:
    """Integer ticks (epochs, layers) and a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def _band_note(arms) -> str:
    return "\nmean over seeds, band = ±1 std" if any(len(rs) > 1 for rs in arms.values()) else ""


def figure_loss(arms, folder: Path) -> str:
    from matplotlib.lines import Line2D

    fig, ax = new_figure()
    for i, (label, runs) in enumerate(arms.items()):
        _plot_curve(ax, runs, "train_loss", f"C{i}", None, linestyle="--")
        _plot_curve(ax, runs, "val_loss", f"C{i}", label)
    _epoch_axis(ax)
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_title("Training (dashed) and validation (solid) loss" + _band_note(arms), fontsize="medium")
    handles = [Line2D([], [], color=f"C{i}", label=label) for i, label in enumerate(arms)]
    handles += [Line2D([], [], color="gray", linestyle="--", label="train"),
                Line2D([], [], color="gray", label="validation")]
    ax.legend(handles=handles, fontsize="small")
    return save_figure(fig, folder, "loss.png")


def figure_metric(arms, folder: Path, key: str, ylabel: str, title: str, name: str,
                  scale: float = 1.0) -> str | None:
    fig, ax = new_figure()
    for i, (label, runs) in enumerate(arms.items()):
        _plot_curve(ax, runs, key, f"C{i}", label, scale=scale)
    if not ax.lines:
        return None  # e.g. no validation split
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title + _band_note(arms), fontsize="medium")
    ax.legend(fontsize="small")
    return save_figure(fig, folder, name)


def figure_learning_rate(arms, folder: Path) -> str:
    fig, ax = new_figure()
    styles = ["-", "--", ":", "-."]
    for i, (label, runs) in enumerate(arms.items()):  # usually identical: styles keep every arm visible
        xs, lrs, _ = _curve(runs[:1], "lr")
        ax.plot(xs, lrs, color=f"C{i}", label=label, linestyle=styles[i % 4], marker="o", markersize=3)
    _epoch_axis(ax)
    ax.set_ylabel("learning rate at the end of the epoch")
    ax.set_ylim(bottom=0)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.set_title("Learning rate schedule")
    ax.legend(fontsize="small")
    return save_figure(fig, folder, "learning_rate.png")


def figure_epoch_time(arms, folder: Path) -> str:
    fig, ax = new_figure()
    labels = list(arms)
    stats = [mean_std([r.test.get("mean_epoch_seconds") for r in arms[label]]) for label in labels]
    ax.bar(range(len(labels)), [m or 0 for m, _ in stats], yerr=[s or 0 for _, s in stats], capsize=5,
           color=[f"C{i}" for i in range(len(labels))])
    for i, label in enumerate(labels):  # each seed as a dot: one disturbed run shows as an outlier
        seconds = [r.test.get("mean_epoch_seconds") for r in arms[label]]
        ax.scatter([i] * len(seconds), seconds, color="black", s=12, zorder=3, label="one seed" if i == 0 else None)
    ax.set_xticks(range(len(labels)), labels, rotation=20 if len(labels) > 3 else 0,
                  ha="right" if len(labels) > 3 else "center")
    ax.legend(fontsize="small")
    ax.set_xlabel("variant")
    ax.set_ylabel("training time per epoch (s)")
    ax.set_title("Training time per epoch\nmean over seeds, error bar = ±1 std", fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, folder, "epoch_time.png")


def figure_confusion(arms, folder: Path) -> str:
    import numpy as np

    n = len(arms)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = new_figure(4.2 * cols + 1, 4.0 * rows, nrows=rows, ncols=cols, squeeze=False)
    image = None
    for ax, (label, runs) in zip(axes.flat, arms.items()):
        cm = sum(np.asarray(r.test["confusion_matrix"], dtype=float) for r in runs)
        cm = cm / np.clip(cm.sum(axis=1, keepdims=True), 1, None)  # rows: fraction of each true class
        image = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
        classes = runs[0].test.get("classes", [])
        if len(classes) <= MANY_CLASSES:
            ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize="x-small")
            ax.set_yticks(range(len(classes)), classes, fontsize="x-small")
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{label} ({len(runs)} seed{'s' if len(runs) > 1 else ''} summed)", fontsize="medium")
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes, label="fraction of the true class", shrink=0.8)
    fig.suptitle("Test confusion matrices (row-normalised)")
    return save_figure(fig, folder, "confusion.png")


def figure_entropy(arms, folder: Path) -> str | None:
    fig, ax = new_figure()
    drawn = False
    for i, (label, runs) in enumerate(arms.items()):
        per_seed = [[statistics.fmean(heads) for heads in r.attention["entropy"]] for r in runs if r.attention]
        if not per_seed:
            continue
        layers = range(1, len(per_seed[0]) + 1)
        stats = [mean_std([seed[layer] for seed in per_seed]) for layer in range(len(per_seed[0]))]
        ax.errorbar(list(layers), [m for m, _ in stats], yerr=[s or 0 for _, s in stats], color=f"C{i}",
                    label=label, marker="o", capsize=3)
        drawn = True
    if not drawn:
        return None
    _epoch_axis(ax)
    # Said on the axis itself, so the figure cannot be read without it.
    ax.set_xlabel("layer\n(weights of non-softmax variants, e.g. cosine, taken as |w| / sum |w| over keys)")
    ax.set_ylabel("normalised entropy (1 = uniform, 0 = one-hot)")
    ax.set_ylim(top=min(ax.get_ylim()[1], 1.01))  # bottom left free: the differences are often small
    ax.set_title("Attention entropy per layer\nmean over heads, queries, test images; error bar = ±1 std over seeds",
                 fontsize="medium")
    ax.legend(fontsize="small")
    return save_figure(fig, folder, "attention_entropy.png")


def _test_images(run: RunResult, indices: list[int]):
    """The test images the attention maps were drawn on, as (H, W, 3) uint8, from the run's own
    attention_images.safetensors; None for runs made before runs saved them (maps without images)."""
    from attnzoo.run.analysis import read_map_images

    saved = read_map_images(RunDir(run.path).attention_images)
    if saved is None or saved[1] != list(indices):
        return None
    return [image.permute(1, 2, 0).numpy() for image in saved[0]]


def figure_attention_maps(arms, folder: Path) -> str | None:
    """Rows = variants, columns = the same test images: last-layer class-token attention (first seed)."""
    shown = {label: runs[0] for label, runs in arms.items() if runs[0].attention and runs[0].attention.get("cls_maps")}
    if not shown:
        return None
    first = next(iter(shown.values()))
    indices = first.attention.get("image_indices") or list(range(len(first.attention["cls_maps"])))
    images = _test_images(first, indices)
    rows = len(shown) + (images is not None)
    # A fixed layout: the constrained solver takes seconds on a grid of this many axes.
    width, height = 1.3 * len(indices) + 2.6, 1.3 * rows + 0.7
    fig, axes = new_figure(width, height, layout=None, nrows=rows, ncols=len(indices), squeeze=False)
    fig.subplots_adjust(left=1.6 / width, right=1 - 1.0 / width, bottom=0.1 / height, top=1 - 0.45 / height,
                        wspace=0.05, hspace=0.08)
    map_rows = list(axes)
    if images is not None:
        for ax, img in zip(map_rows.pop(0), images):
            ax.imshow(img)
        gray = [img.mean(axis=2) for img in images]  # in grey under the maps, so the map's colours read
        axes[0][0].set_ylabel("image", rotation=0, ha="right", va="center", fontsize="small")
    mappable = None
    for ax_row, (label, run) in zip(map_rows, shown.items()):
        maps = run.attention["cls_maps"]
        for ax, grid_map, j in zip(ax_row, maps, range(len(indices))):
            size = images[j].shape[0] if images is not None else len(grid_map)
            if images is not None:
                ax.imshow(gray[j], cmap="gray", vmin=0, vmax=255)
            mappable = ax.imshow(grid_map, cmap="inferno", vmin=0, vmax=1, alpha=0.6 if images is not None else 1,
                                 extent=(-0.5, size - 0.5, size - 0.5, -0.5), interpolation="nearest")
        ax_row[0].set_ylabel(f"{label}\nseed {run.seed}", rotation=0, ha="right", va="center", fontsize="small")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if mappable is not None:
        bar = fig.add_axes((1 - 0.85 / width, 0.15, 0.12 / width, 0.6))
        fig.colorbar(mappable, cax=bar, label="attention / max over patches")
    fig.suptitle("Last-layer class-token attention over patches (mean |w| over heads), same test images")
    return save_figure(fig, folder, "attention_maps.png")


def swept_keys(arms) -> list[str]:
    keys: list[str] = []
    for runs in arms.values():
        keys += [k for k in runs[0].arm.get("grid", {}) if k not in keys]
    return keys


def figure_grid_key(arms, folder: Path, key: str) -> str:
    """Test top-1 against one swept key, one line per variant arm: mean over seeds and over the
    other grid keys' values, with every run as a dot."""
    runs = [r for rs in arms.values() for r in rs if key in r.arm.get("grid", {})]
    values = []
    for r in runs:
        if str(r.arm["grid"][key]) not in values:
            values.append(str(r.arm["grid"][key]))
    variants = []
    for r in runs:
        if r.arm.get("variant") not in variants:
            variants.append(r.arm.get("variant"))
    fig, ax = new_figure()
    width = 0.8 / max(len(variants), 1)
    for i, variant in enumerate(variants):
        xs = [j + (i - (len(variants) - 1) / 2) * width * 0.5 for j in range(len(values))]
        per_value = [[100 * r.test["top1"] for r in runs if r.arm.get("variant") == variant
                      and str(r.arm["grid"][key]) == value] for value in values]
        stats = [mean_std(v) for v in per_value]
        ax.errorbar(xs, [m if m is not None else float("nan") for m, _ in stats],
                    yerr=[sd or 0 for _, sd in stats], color=f"C{i}", label=variant, marker="o", capsize=4)
        for x, points in zip(xs, per_value):
            ax.scatter([x] * len(points), points, color=f"C{i}", s=10, alpha=0.5)
    ax.set_xticks(range(len(values)), values)
    ax.set_xlabel(key)
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"Test top-1 against {key}\nmean over seeds and the other grid values, error bar = ±1 std, "
                 "dots = runs", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, folder, "grid_" + re.sub(r"[^A-Za-z0-9]+", "_", key) + ".png")


def _best_arms(arms, count: int) -> dict:
    if len(arms) <= count:
        return arms
    best = sorted(arms, key=lambda label: -statistics.fmean(r.test["top1"] for r in arms[label]))[:count]
    return {label: runs for label, runs in arms.items() if label in best}


def write_figures(arms, folder: Path) -> dict[str, str]:
    """Every figure; returns {file name: caption} in reading order."""
    folder.mkdir(parents=True, exist_ok=True)
    panels = _best_arms(arms, MAX_PANELS)
    more = f" ({MAX_PANELS} best arms by top-1)" if len(panels) < len(arms) else ""
    figures = {figure_grid_key(arms, folder, key): f"Test top-1 against {key}" for key in swept_keys(arms)}
    figures |= {
        figure_loss(arms, folder): "Training and validation loss per epoch",
        figure_metric(arms, folder, "val_top1", "validation top-1 accuracy (%)", "Validation top-1 accuracy",
                      "val_top1.png", scale=100): "Validation top-1 accuracy per epoch",
        figure_metric(arms, folder, "val_top5", "validation top-5 accuracy (%)", "Validation top-5 accuracy",
                      "val_top5.png", scale=100): "Validation top-5 accuracy per epoch",
        figure_learning_rate(arms, folder): "Learning rate per epoch",
        figure_epoch_time(arms, folder): "Training time per epoch",
        figure_confusion(panels, folder): "Test confusion matrices" + more,
        figure_entropy(arms, folder): "Attention entropy per layer",
        figure_attention_maps(panels, folder): "Class-token attention maps" + more,
    }
    figures.pop(None, None)  # figures without data (no attention.json) are left out
    return figures


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
    figures = write_figures(arms, study_dir / FIGURES)
    write_csv(rows, study_dir / "results.csv")
    write_markdown(study_dir, rows, arms, figures, unfinished_runs(study_dir), diverged_runs(study_dir))
    from attnzoo.study.tradeoffs import add_to_report
    add_to_report(study_dir, arms, study_dir / FIGURES)  # accuracy against cost, robustness
    print(text_table(rows))
    print(f"report: {study_dir / 'results.md'}, {study_dir / 'results.csv'}, {len(figures)} figures in "
          f"{study_dir / FIGURES}")
    return rows
