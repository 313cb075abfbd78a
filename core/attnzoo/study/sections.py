"""The report's sections: what each part of results.md says, and the columns it adds to results.csv.

A Section is built from the runs' own files and written by nobody here: report.build_report
collects every section (these, tradeoffs' cost and robustness, the recipe) and writes
results.md, results.csv and the figures once each. This module holds the per-arm summary
(mean and sample std over seeds) and the tables made from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from attnzoo.study.figures import FOLDER, Plot
from attnzoo.study.runs import RunResult, run_entropy
from attnzoo.study.stats import PairedDifference, mean_std, paired_difference

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


@dataclass
class Section:
    """One "## title" part of results.md, with the results.csv columns and the figures it brings."""

    title: str
    lines: list[str] = field(default_factory=list)  # the markdown under the heading
    columns: dict[str, dict] = field(default_factory=dict)  # arm -> {results.csv column: value}, in column order
    figures: list[Plot] = field(default_factory=list)  # written under figures/ by the report

    def markdown(self) -> list[str]:
        return [f"## {self.title}", ""] + self.lines + [""]


# ---------------------------------------------------------------- the per-arm summary


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


def csv_rows(rows: list[dict]) -> list[dict]:
    """results.csv's own columns, one dict per arm in column order (sections add theirs after them)."""
    out = []
    for row in rows:
        values = {k: row[k] for k in ("arm", "variant", "options", "grid", "n_seeds", "seeds")}
        for name in [m[0] for m in METRICS] + ["entropy"]:
            values |= {f"{name}_{stat}": row[f"{name}_{stat}"] for stat in ("mean", "std")}
        d = row["paired"]
        values |= {"baseline": row["baseline"] if d else "", "top1_diff_mean": d and d.mean,
                   "top1_diff_low": d and d.low, "top1_diff_high": d and d.high, "top1_diff_n": d and d.n}
        out.append(values)
    return out


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


# ---------------------------------------------------------------- sections


def leaderboard_section(rows: list[dict], diverged: list[dict]) -> Section:
    return Section("Leaderboard", ["Arms sorted by mean test top-1. Attention entropy is normalised (1 = uniform), "
                                   "mean over layers and heads.", "", leaderboard_table(rows, diverged)])


def paired_section(rows: list[dict]) -> Section:
    return Section("Paired comparison with the baseline", paired_table(rows))


def quality_section(rows: list[dict]) -> Section:
    return Section("Accuracy and calibration", [markdown_table(rows, QUALITY)])


def cost_summary_section(rows: list[dict]) -> Section:
    return Section("Cost", [markdown_table(rows, COST), "",
                            "Peak memory is measured on CUDA devices only (n/a on CPU)."])


def figures_section(plots: list[Plot]) -> Section:
    lines = []
    for plot in plots:
        lines += [f"### {plot.caption}", "", f"![{plot.caption}]({FOLDER}/{plot.name})", ""]
    return Section("Figures", lines[:-1], figures=plots)


def runs_section(arms: dict[str, list[RunResult]]) -> Section:
    lines = ["| run | variant | options | seed | test top-1 (%) | top-5 (%) | best epoch |",
             "|---|---|---|---|---|---|---|"]
    for runs in arms.values():
        for run in runs:
            t = run.test
            lines.append(f"| `{run.path.name}` | {t.get('variant')} | `{json.dumps(t.get('attention_options', {}))}` "
                         f"| {run.seed} | {100 * t['top1']:.2f} | {100 * t['top5']:.2f} | {t.get('best_epoch')} |")
    return Section("Runs", lines)


def diverged_section(diverged: list[dict]) -> Section | None:
    if not diverged:
        return None
    lines = ["The loss turned non-finite; the run stopped there (diverged.json).", "",
             "| run | arm | variant | seed | epoch | step |", "|---|---|---|---|---|---|"]
    lines += [f"| `{d['run']}` | {d['arm']} | {d['variant']} | {d['seed']} | {d['epoch']} | {d['step']} |"
              for d in diverged]
    return Section("Diverged runs", lines)
