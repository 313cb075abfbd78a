"""The report's sections: what each part of results.md says, and the columns it adds to results.csv.

A Section is built from the runs' own files and written by nobody here: report.build_report
collects every section (these, tradeoffs' cost and robustness, the recipe) and writes
results.md, results.csv and the figures once each. This module holds the per-arm summary
(mean and sample std over seeds), the statistics over arms (Friedman's omnibus test, the
Holm-corrected comparisons with the baseline, the bootstrap ranks, the power of the study) and
the tables and sentences made from them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from attnzoo.study.figures import FOLDER, Plot, new_figure
from attnzoo.study.runs import RunResult, run_entropy
from attnzoo.study.stats import (
    NO_SPREAD,
    Comparison,
    PairedDifference,
    RankUncertainty,
    bootstrap_ranks,
    detectable_difference,
    friedman,
    holm_comparisons,
    mean_std,
    paired_difference,
    per_seed_differences,
    pooled_sd,
    seeds_needed,
)

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
    comparisons = {c.arm: c for c in holm_comparisons(top1_scores(arms), baselines(arms))}
    ranks = {r.arm: r for r in bootstrap_ranks(top1_scores(arms))[0]}
    for row in rows:
        row["holm"], row["rank"] = comparisons.get(row["arm"]), ranks.get(row["arm"])
    return rows


def top1_scores(arms: dict[str, list[RunResult]]) -> dict[str, dict[int, float]]:
    """Each arm's test top-1 by seed: what the study's statistics compare."""
    return {label: {r.seed: r.test["top1"] for r in runs} for label, runs in arms.items()}


def baselines(arms: dict[str, list[RunResult]]) -> dict[str, str]:
    """arm -> the arm it is compared with (arm.json), for arms that have one other than themselves."""
    found = {label: runs[0].arm.get("baseline") for label, runs in arms.items()}
    return {label: base for label, base in found.items() if base and base != label and base in arms}


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
        c, rank = row["holm"], row["rank"]
        values |= {"top1_diff_p": c and c.p_value, "top1_diff_p_holm": c and c.p_holm, "top1_diff_d_z": c and c.d_z,
                   "top1_diff_holm_low": c and c.low, "top1_diff_holm_high": c and c.high,
                   "p_best": rank and rank.p_best, "rank_low": rank and rank.rank_low,
                   "rank_high": rank and rank.rank_high}
        d = row["paired"]
        values |= {"baseline": row["baseline"] if d else "", "top1_diff_mean": d and d.mean,
                   "top1_diff_low": d and d.low, "top1_diff_high": d and d.high, "top1_diff_n": d and d.n}
        out.append(values)
    return out


def _diff_text(c: Comparison | None) -> str:
    """Δ with its simultaneous interval; bold and starred only where it holds after Holm's correction."""
    if c is None:
        return ""
    if c.low is None:
        return f"{100 * c.mean:+.2f} (no interval: {c.why_no_test})"
    text = f"{100 * c.mean:+.2f} [{100 * c.low:+.2f}, {100 * c.high:+.2f}]"
    return f"**{text}** \\*" if c.significant() else text


def leaderboard_table(rows: list[dict], diverged: list[dict]) -> str:
    """Arms sorted by mean test top-1; arms whose every seed diverged at the bottom."""
    metrics = [m for m in METRICS if m[0] in ("top1", "top5", "f1_macro", "ece")] + [ENTROPY]
    metrics += [m for m in METRICS if m[0] == "train_seconds"]
    header = ["rank", "arm", "seeds"] + [m[1] for m in metrics] + ["Δ top-1 vs baseline (pp) [simultaneous 95 % CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    failed = {}
    for record in diverged:
        failed.setdefault(record["arm"], []).append(record)
    ranked = sorted(rows, key=lambda r: -(r["top1_mean"] if r["top1_mean"] is not None else -1))
    for rank, row in enumerate(ranked, 1):
        seeds = str(row["n_seeds"]) + (f" (+{len(failed[row['arm']])} diverged)" if row["arm"] in failed else "")
        paired = _diff_text(row["holm"]) + (f" vs {row['baseline']}" if row["holm"] else "")
        paired = paired or ("baseline" if row["baseline"] == row["arm"] else "")
        lines.append("| " + " | ".join([str(rank), row["arm"], seeds] + [_cell(row, m) for m in metrics] + [paired])
                     + " |")
    for arm, records in failed.items():
        if arm not in {r["arm"] for r in rows}:
            where = ", ".join(f"seed {r['seed']}: epoch {r['epoch']} step {r['step']}" for r in records)
            lines.append("| " + " | ".join(["–", arm, f"0 (+{len(records)} diverged)", f"diverged ({where})"]
                                            + [""] * len(metrics)) + " |")
    return "\n".join(lines)


def _p_text(p: float | None) -> str:
    return "" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def paired_table(rows: list[dict]) -> list[str]:
    compared = [row for row in rows if row["holm"] is not None]
    if not compared:
        return ["No arm has a baseline arm in this study (the default baseline is the softmax arm with the same "
                "grid values; the study key `baseline:` names another variant arm)."]
    m = compared[0]["holm"].m
    lines = ["| arm | baseline | seeds paired | Δ top-1 (pp) | simultaneous 95 % CI (pp) | d_z | p | Holm p "
             "| differs after Holm |", "|---|---|---|---|---|---|---|---|---|"]
    for row in compared:
        c = row["holm"]
        interval = f"no interval can be given: {c.why_no_test}" if c.low is None else \
            f"[{100 * c.low:+.2f}, {100 * c.high:+.2f}]"
        d_z = "" if c.d_z is None else f"{c.d_z:+.2f}"
        mark = "" if c.p_holm is None else ("**yes**" if c.significant() else "no")
        lines.append(f"| {row['arm']} | {row['baseline']} | {c.n} | {100 * c.mean:+.2f} | {interval} | {d_z} "
                     f"| {_p_text(c.p_value)} | {_p_text(c.p_holm)} | {mark} |")
    lines += ["", f"Δ is the arm's test top-1 minus its baseline arm's, in percentage points, averaged over the "
                  f"seeds both finished (paired by seed: the same seed gives both the same data order). p is the "
                  f"paired t-test's; Holm p corrects it for the study's {m} comparison(s) with a baseline, and an "
                  f"arm differs after Holm where that is below 0.05 (\\* in the leaderboard). The interval is "
                  f"simultaneous: Δ ± t(1 − 0.05/(2·{m}), n−1)·s/√n, with s the standard deviation of the per-seed "
                  f"differences, so all {m} intervals hold together with 95 % probability; Holm's test is the "
                  f"sharper of the two, so an interval may touch 0 where Holm p is below 0.05. d_z = Δ / s is the "
                  f"effect size in units of the seed-to-seed spread of the differences."]
    if any(row["holm"].n == 1 for row in compared):
        lines += ["", "With one seed no interval can be given: add seeds to see whether a difference is more "
                      "than seed-to-seed noise."]
    if any(row["holm"].why_no_test.startswith("identical") for row in compared):
        lines += ["", "Where every seed gave the same difference, the spread over seeds is zero and a t-test "
                      "cannot be made; none is given (more seeds or more test images resolve it). Such a "
                      "comparison still counts in the correction, as not different."]
    return lines


def omnibus_lines(arms: dict[str, list[RunResult]]) -> list[str]:
    result = friedman(top1_scores(arms))
    if result.p_value is None:
        return [f"Friedman's test over the arms cannot be run: {result.why_not}."]
    verdict = ("some arm differs from the others" if result.p_value < 0.05 else
               "no evidence that any arm differs from the others")
    return [f"Friedman's test over the {len(result.arms)} arms, on the {len(result.seeds)} seeds every arm finished "
            f"(seeds {', '.join(map(str, result.seeds))}; test top-1 ranked within each seed): "
            f"χ² = {result.statistic:.2f}, p = {_p_text(result.p_value)}: {verdict} at the 5 % level. It is read "
            "first: where it finds nothing, a single corrected comparison below is weak evidence."]


def rank_lines(rows: list[dict]) -> list[str]:
    ranked = [row for row in rows if row["rank"] is not None]
    if not ranked:
        return ["Ranks cannot be given an uncertainty: it needs 2 arms or more and 2 seeds or more that every arm "
                "finished."]
    ranked.sort(key=lambda row: -row["rank"].p_best)
    lines = ["| arm | mean top-1 (%) | P(best) | 95 % rank interval |", "|---|---|---|---|"]
    for row in ranked:
        r: RankUncertainty = row["rank"]
        interval = str(r.rank_low) if r.rank_low == r.rank_high else f"{r.rank_low}–{r.rank_high}"
        lines.append(f"| {row['arm']} | {100 * row['top1_mean']:.2f} | {r.p_best:.2f} | {interval} |")
    return lines + ["", "A bootstrap over the seeds every arm finished (2000 resamples of those seeds, the same for "
                        "every arm, so the pairing by seed is kept; seeded, so the report is reproducible): P(best) "
                        "is the share of resamples in which the arm has the highest mean test top-1 (a tie shares "
                        "it), and the rank interval holds 95 % of its ranks (1 = best). With few seeds the bootstrap sees "
                        "only the values it has and understates the uncertainty: read it with the corrected "
                        "comparisons above."]


# ---------------------------------------------------------------- power


def power_sentence(n: int, sd: float | None, m: int, target: float | None = None, spread: str = "") -> str:
    """What a study of n seeds can detect at 80 % power, in pp, for a seed-to-seed spread sd (pp) of the
    per-seed differences, and how many seeds the target difference needs. `spread` says where sd came from."""
    if n < 2:
        return (f"With {n} seed(s) no difference can be told from seed-to-seed noise: a comparison needs 2 seeds "
                "or more" + (f" ({seeds_needed(sd, target, m)} to detect {target:g} pp)" if sd and target else ""))
    if sd is None or sd < 100 * NO_SPREAD:
        return (f"With {n} seeds the per-seed differences do not vary{spread}, so no power can be given (more test "
                "images make accuracy less coarse)")
    one, corrected = detectable_difference(sd, n), detectable_difference(sd, n, m)
    text = (f"With {n} seeds and a spread of {sd:.2g} pp{spread} the study can detect differences of about "
            f"{one:.1f} pp at 80 % power" + (f" ({corrected:.1f} pp after correcting for {m} comparisons)"
                                             if m > 1 else ""))
    if target:
        needed = seeds_needed(sd, target, m)
        needed = f"{needed} seeds" if needed else "more than 10,000 seeds"
        text += f"; {needed} would detect {target:g} pp"
        if corrected > target:
            text += f", so it cannot separate arms that differ by {target:g} pp"
    return text


def conclusion(rows: list[dict], target: float | None) -> str:
    """The one sentence saying what the study can and cannot conclude, from the spread it observed."""
    compared = [row["holm"] for row in rows if row["holm"] is not None]
    if not compared:
        return ("No arm is compared with a baseline, so the study cannot say whether any arm differs from another "
                "(the study key `baseline:` names the arm to compare with).")
    tested = [c for c in compared if c.p_value is not None]
    n = min(c.n for c in tested) if tested else max(c.n for c in compared)
    sd = pooled_sd(compared)
    power = power_sentence(n, None if sd is None else 100 * sd, len(compared), target,
                           " (observed, per-seed differences to the baseline)")
    differ = [c for c in compared if c.significant()]
    bases = sorted({c.baseline for c in compared})
    base = bases[0] if len(bases) == 1 else "its baseline"
    rest = [c for c in compared if not c.significant()]
    bounds = _bounds_text(rest)
    if not differ:
        return f"{power}; no arm differs from {base} after Holm correction: it cannot rank these arms{bounds}."
    names = ", ".join(f"{c.arm} ({100 * c.mean:+.1f} pp)" for c in differ)
    others = ", ".join(c.arm for c in rest)
    return (f"{power}; {names} {'differs' if len(differ) == 1 else 'differ'} from {base} after Holm correction"
            + (f", and {others} cannot be told from it{bounds}." if rest else "."))


def _bounds_text(rest: list[Comparison]) -> str:
    """What the arms that cannot be told from their baseline still allow: the largest difference inside
    each one's simultaneous interval ("no difference larger than X pp" is a result too). An interval
    wider than ±100 pp rules out nothing top-1 can show, and is counted, not quoted."""
    largest = {c.arm: 100 * max(abs(c.low), abs(c.high)) for c in rest if c.low is not None and c.high is not None}
    informative = {arm: x for arm, x in largest.items() if x < 100}
    wide = len(largest) - len(informative)
    parts = []
    if len(largest) == 1 and informative:
        parts.append(f"its simultaneous interval rules out a difference of more than {next(iter(informative.values())):.1f} pp")
    elif 0 < len(informative) <= 3:
        parts.append("their simultaneous intervals rule out differences of more than "
                     + ", ".join(f"{x:.1f} pp for {arm}" for arm, x in informative.items()))
    elif informative:
        parts.append(f"the simultaneous intervals of {len(informative)} of them rule out differences of more than "
                     f"{min(informative.values()):.1f}-{max(informative.values()):.1f} pp")
    if wide:
        parts.append(f"{wide} interval(s) span more than ±100 pp and rule out nothing")
    return f" ({'; '.join(parts)})" if parts else ""


# ---------------------------------------------------------------- sections


def leaderboard_section(rows: list[dict], diverged: list[dict]) -> Section:
    return Section("Leaderboard", ["Arms sorted by mean test top-1. Attention entropy is normalised (1 = uniform), "
                                   "mean over layers and heads.", "", leaderboard_table(rows, diverged)])


def paired_section(rows: list[dict], arms: dict[str, list[RunResult]] | None = None) -> Section:
    plot = figure_paired_differences(rows, arms) if arms else None
    lines = paired_table(rows)
    if plot:
        lines += ["", f"![{plot.caption}]({FOLDER}/{plot.name})"]
    return Section("Paired comparison with the baseline", lines, figures=[plot] if plot else [])


def figure_paired_differences(rows: list[dict], arms: dict[str, list[RunResult]]) -> Plot | None:
    """Each compared arm's per-seed differences to its baseline (dots), their mean and simultaneous
    interval (bar): the picture of what the paired comparison decides. None without a comparison."""
    scores, bases = top1_scores(arms), baselines(arms)
    compared = [row for row in rows if row["arm"] in bases and row.get("holm") is not None]
    if not compared:
        return None
    fig, ax = new_figure(7.0, 1.2 + 0.6 * len(compared))
    for y, row in enumerate(compared):
        c = row["holm"]
        diffs = [100 * d for d in per_seed_differences(scores[row["arm"]], scores[bases[row["arm"]]])]
        ax.scatter(diffs, [y] * len(diffs), s=14, alpha=0.5, color="C0", zorder=2)
        if c.low is not None:
            color = "C3" if c.significant() else "C7"
            ax.errorbar([100 * c.mean], [y], xerr=[[100 * (c.mean - c.low)], [100 * (c.high - c.mean)]], fmt="D",
                        color=color, capsize=4, zorder=3)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(compared)), [f"{r['arm']} − {bases[r['arm']]}" for r in compared])
    ax.set_ylim(-0.6, len(compared) - 0.4)
    ax.set_xlabel("test top-1 minus the baseline's, same seed (pp)")
    ax.set_title("dots: seeds; bar: mean, simultaneous 95 % CI; red: differs after Holm", fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    return Plot("paired_differences.png", "Per-seed differences to the baseline", fig)


def conclusion_section(rows: list[dict], target: float | None) -> Section:
    return Section("What this study can conclude", [conclusion(rows, target)])


def omnibus_section(arms: dict[str, list[RunResult]]) -> Section:
    return Section("Omnibus test", omnibus_lines(arms))


def rank_section(rows: list[dict]) -> Section:
    return Section("Rank uncertainty", rank_lines(rows))


def budget_text(recipe: dict) -> str:
    """How long a run trained, from its recipe: 'fixed epochs (10)' or its budget, e.g. 'flops=2e+15'."""
    train = recipe.get("train") or {}
    found = train.get("budget")
    if not found:
        return f"fixed epochs ({train.get('epochs', '?')})"
    return ", ".join(f"{kind}={value:g}" if isinstance(value, (int, float)) else f"{kind}={value}"
                     for kind, value in found.items())


def budget_rankings_section(arms: dict[str, list[RunResult]], rows: list[dict]) -> Section | None:
    """When the arms trained for different kinds of length (fixed epochs and a train.budget, say, as
    grid values), the ranking within each: a variant may lead at equal epochs and trail at equal
    cost. None when every arm trained the same way."""
    length = {label: budget_text(runs[0].recipe) for label, runs in arms.items()}
    groups = list(dict.fromkeys(length.values()))
    if len(groups) < 2:
        return None
    by_arm = {row["arm"]: row for row in rows}
    table: dict[str, dict[str, tuple[int, float]]] = {}  # variant (and other grid values) -> group -> (rank, top-1)
    for group in groups:
        members = sorted((label for label in arms if length[label] == group),
                         key=lambda label: -(by_arm[label]["top1_mean"] or 0))
        for rank, label in enumerate(members, 1):
            table.setdefault(_without_budget(arms[label][0]), {})[group] = (rank, by_arm[label]["top1_mean"])
    header = "| arm | " + " | ".join(f"{g}: rank | top-1 (%)" for g in groups) + " |"
    lines = ["Each kind of training length ranked on its own (mean test top-1 over seeds): fixed epochs give "
             "every arm the same steps, a budget the same cost.", "", header,
             "|---|" + "---|---|" * len(groups)]
    for name, cells in table.items():
        shown = [f"{cells[g][0]} | {100 * cells[g][1]:.2f}" if g in cells else "n/a | n/a" for g in groups]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return Section("Rankings by training length", lines)


def _without_budget(run: RunResult) -> str:
    """The arm a run belongs to with its training length left out: its variant arm and other grid values."""
    grid = {k: v for k, v in (run.arm.get("grid") or {}).items() if k not in ("train.budget", "train.epochs")}
    variant = run.arm.get("variant") or run.label
    return variant + "".join(f", {k}={v}" for k, v in grid.items())


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
