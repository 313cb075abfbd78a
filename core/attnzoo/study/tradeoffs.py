"""The report's sections on accuracy against cost and on robustness.

Built from each run's cost.json (written at the end of training), corruptions.json
(`attnzoo eval RUN --corruptions`, or a study with `robustness.corruptions: true`), cifar_c.json
(`attnzoo eval RUN --cifar-c DIR`, the released corruption arrays) and
attacks.json (`attnzoo eval RUN --attack`, or `robustness.attacks: true`), as runs.load_run read them; a run without the file is left out of that section, and a study
where no run has it has no such section. Each section brings its table, its columns for
results.csv and its figure; report.build_report writes them with the rest of the report.
"""

from __future__ import annotations

import statistics

from attnzoo.study.figures import FOLDER, Plot, new_figure
from attnzoo.study.sections import Section
from attnzoo.study.stats import mean_std


def _fmt(stats: tuple, factor: float = 1.0, decimals: int = 1, spec: str | None = None) -> str:
    """'mean ± std' (std left out when there is none or it is zero); `spec` overrides the number format."""
    mean, std = stats
    if mean is None:
        return "n/a"
    spec = spec or f",.{decimals}f"
    text = format(factor * mean, spec)
    return text if not std else f"{text} ± {format(factor * std, spec)}"


# ---------------------------------------------------------------- rows


def cost_rows(arms: dict) -> list[dict]:
    """Per arm with cost.json: top-1, parameters, FLOPs per image, time, memory (mean and std over seeds)."""
    rows = []
    for label, runs in arms.items():
        costs = [(run, run.cost) for run in runs if run.cost]
        if not costs:
            continue
        get = lambda key: [c.get(key) for _, c in costs]  # noqa: E731
        share = [c["attention_flops_per_image"] / c["flops_per_image"] for _, c in costs
                 if c.get("flops_per_image") and c.get("attention_flops_per_image") is not None]
        rows.append({
            "arm": label, "n_seeds": len(costs),
            "top1": mean_std(run.test.get("top1") for run, _ in costs),
            "parameters": mean_std(get("parameters")),
            "flops_per_image": mean_std(get("flops_per_image")),
            "attention_share": mean_std(share),
            "attention_path": ", ".join(sorted({c.get("attention_path") or "n/a" for _, c in costs})),
            "train_seconds": mean_std(get("train_seconds")),
            "peak_memory_mib": mean_std(get("peak_memory_mib")),
        })
    return rows


def robustness_rows(arms: dict, source: str = "corruptions") -> list[dict]:
    """Per arm with corruptions.json (`source` "cifar_c": cifar_c.json, the same schema): clean and mean
    corrupted top-1, their ratio, each corruption's mean."""
    rows = []
    for label, runs in arms.items():
        records = [getattr(run, source) for run in runs if getattr(run, source)]
        if not records:
            continue
        names = list(records[0]["corruptions"])
        rows.append({
            "arm": label, "n_seeds": len(records), "corruptions": names,
            "clean_top1": mean_std(r["clean_top1"] for r in records),
            "mean_corruption_top1": mean_std(r["mean_corruption_top1"] for r in records),
            "relative": mean_std(r.get("relative_corruption_top1") for r in records),
            "per_corruption": {n: mean_std(statistics.fmean(r["corruptions"][n]["top1"]) for r in records
                                            if n in r["corruptions"]) for n in names},
        })
    return rows


def attack_rows(arms: dict) -> dict[str, dict]:
    """Per arm with attacks.json: the budgets, the worst-case top-1 over the attacks at each (mean and
    std over seeds), and why any seed's numbers look like gradient masking (empty: they do not)."""
    rows = {}
    for label, runs in arms.items():
        records = [run.attacks for run in runs if run.attacks]
        if not records:
            continue
        eps = records[0]["epsilons_255"]
        same = [r for r in records if r["epsilons_255"] == eps]  # seeds attacked at other budgets are left out
        reasons = []
        for r in same:
            reasons += [reason for reason in r["masking"]["reasons"] if reason not in reasons]
        rows[label] = {"n_seeds": len(same), "epsilons_255": eps, "clean_top1": mean_std(r["clean_top1"] for r in same),
                       "robust_top1": [mean_std(r["robust_top1"][i] for r in same) for i in range(len(eps))],
                       "masking": reasons}
    return rows


# ---------------------------------------------------------------- tables


def cost_table(rows: list[dict]) -> str:
    lines = ["| variant | seeds | top-1 (%) | parameters | training GFLOPs / image | attention share (%) "
             "| counted path | train time (s) | peak memory (MiB) |", "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['n_seeds']} | {_fmt(r['top1'], 100, 2)} | {_fmt(r['parameters'], 1, 0)} "
                     f"| {_fmt(r['flops_per_image'], 1e-9, spec='.4g')} | {_fmt(r['attention_share'], 100, 1)} "
                     f"| {r['attention_path']} | {_fmt(r['train_seconds'], 1, 1)} | {_fmt(r['peak_memory_mib'], 1, 0)} |")
    return "\n".join(lines)


def robustness_table(rows: list[dict], attacks: dict | None = None) -> str:
    """One row per arm with either file: the corruption columns, then (with attacks.json) the worst-case
    top-1 under attack at each budget and whether the numbers look masked."""
    attacks = attacks or {}
    by_arm = {r["arm"]: r for r in rows}
    names = rows[0]["corruptions"] if rows else []
    eps = next(iter(attacks.values()))["epsilons_255"] if attacks else []
    header = ["variant", "seeds"]
    if rows:
        header += ["clean top-1 (%)", "mean corrupted top-1 (%)", "ratio to clean (%)"]
        header += [f"{n.replace('_', ' ')} (%)" for n in names]
    if attacks:
        header += (["clean top-1, float32 (%)"] if not rows else []) + [f"attacked ε={e:g}/255 (%)" for e in eps]
        header += ["gradient masking"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    none = (None, None)
    for arm in dict.fromkeys([*by_arm, *attacks]):  # arms with corruptions.json first, as before
        r, a = by_arm.get(arm), attacks.get(arm)
        cells = [arm, str(r["n_seeds"] if r else a["n_seeds"])]
        if rows and r:
            cells += [_fmt(r["clean_top1"], 100, 2), _fmt(r["mean_corruption_top1"], 100, 2),
                      _fmt(r["relative"], 100, 1)] + [_fmt(r["per_corruption"].get(n, none), 100, 2) for n in names]
        elif rows:
            cells += ["n/a"] * (3 + len(names))
        if attacks:
            if not rows:
                cells.append(_fmt(a["clean_top1"], 100, 2) if a else "n/a")
            same_eps = a is not None and a["epsilons_255"] == eps
            cells += [_fmt(stats, 100, 2) for stats in a["robust_top1"]] if same_eps else ["n/a"] * len(eps)
            cells.append(("**suspected**" if a["masking"] else "no") if a else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both counts (lower cost, higher accuracy), by cost."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def _flops_unit(arms: dict) -> tuple[str, float]:
    """MFLOPs for tiny models, GFLOPs from a billion on: tick labels stay short."""
    counts = [(run.cost or {}).get("flops_per_image") or 0 for runs in arms.values() for run in runs]
    return ("GFLOPs", 1e-9) if max(counts, default=0) >= 1e9 else ("MFLOPs", 1e-6)


def figure_cost(arms: dict) -> Plot | None:
    """top-1 against training time and against training FLOPs per image, one point per run."""
    from matplotlib.ticker import MaxNLocator

    unit, scale = _flops_unit(arms)
    panels = [("train_seconds", "training time (s)", 1.0), ("flops_per_image", f"training {unit} per image", scale)]
    fig, axes = new_figure(11, 4.5, ncols=2)
    drawn = False
    for ax, (key, xlabel, factor) in zip(axes, panels):
        points = []
        for i, (label, runs) in enumerate(arms.items()):
            xs, ys = [], []
            for run in runs:
                cost = run.cost
                if cost and cost.get(key) is not None and run.test.get("top1") is not None:
                    xs.append(factor * cost[key])
                    ys.append(100 * run.test["top1"])
            if xs:
                ax.scatter(xs, ys, color=f"C{i}", label=label, s=30, zorder=3)
                points += list(zip(xs, ys))
        if len(points) > 1:
            fx, fy = zip(*pareto_front(points))
            ax.step(fx, fy, where="post", color="gray", linestyle="--", linewidth=1, label="Pareto front", zorder=2)
        drawn = drawn or bool(points)
        ax.xaxis.set_major_locator(MaxNLocator(6))
        ax.ticklabel_format(axis="x", useOffset=False, style="plain")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test top-1 accuracy (%)")
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].legend(fontsize="small")
    fig.suptitle("Accuracy against cost, one point per run (up and left is better)", fontsize="medium")
    return Plot("accuracy_vs_cost.png", "Accuracy against cost", fig)


def figure_robustness(arms: dict, source: str = "corruptions") -> Plot | None:
    """top-1 against severity (0 = clean), a panel per corruption and one for their mean."""
    records = {label: [getattr(run, source) for run in runs if getattr(run, source)] for label, runs in arms.items()}
    records = {label: rs for label, rs in records.items() if rs}
    if not records:
        return None
    names = list(next(iter(records.values()))[0]["corruptions"]) + ["mean"]
    cols = 3
    fig, axes = new_figure(4.0 * cols, 3.3 * -(-len(names) // cols), nrows=-(-len(names) // cols), ncols=cols,
                            squeeze=False)
    for ax, name in zip(axes.flat, names):
        for i, label in enumerate(arms):
            if label not in records:
                continue
            curves = []
            for r in records[label]:
                per_name = [r["corruptions"][n]["top1"] for n in names[:-1]] if name == "mean" else \
                    [r["corruptions"][name]["top1"]]
                curves.append([r["clean_top1"]] + [statistics.fmean(c[s] for c in per_name) for s in range(5)])
            stats = [mean_std(c[s] for c in curves) for s in range(6)]
            offset = 0.06 * (i - (len(arms) - 1) / 2)  # arms side by side, so error bars do not hide each other
            ax.errorbar([s + offset for s in range(6)], [100 * m for m, _ in stats], yerr=[100 * (s or 0) for _, s in stats],
                        color=f"C{i}", label=label, marker="o", markersize=3, capsize=2)
        ax.set_title(name.replace("_", " ") if name != "mean" else "mean over corruptions", fontsize="medium")
        ax.set_xticks(range(6), ["clean", "1", "2", "3", "4", "5"])
        ax.set_xlabel("severity")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    seeds = max(len(rs) for rs in records.values())
    released = source == "cifar_c"
    fig.suptitle(f"Accuracy {'on the released corruption arrays' if released else 'under corruption'} (best "
                 "checkpoint)" + ("; mean over seeds, error bar = ±1 std" if seeds > 1 else ""), fontsize="medium")
    if released:
        return Plot("cifar_c.png", "Accuracy on the released CIFAR-C arrays", fig)
    return Plot("robustness.png", "Accuracy under corruption", fig)


def figure_attacks(arms: dict) -> Plot | None:
    """Worst-case top-1 under attack against ε (0 = clean), one curve per variant; dashed where
    gradient masking is suspected."""
    rows = attack_rows(arms)
    if not rows:
        return None
    fig, ax = new_figure(6.5, 4.5)
    for i, (label, row) in enumerate(rows.items()):
        xs = [0] + list(row["epsilons_255"])
        stats = [row["clean_top1"]] + row["robust_top1"]
        masked = bool(row["masking"])
        ax.errorbar(xs, [100 * m for m, _ in stats], yerr=[100 * (s or 0) for _, s in stats], color=f"C{i}",
                    linestyle="--" if masked else "-", marker="o", markersize=3, capsize=2,
                    label=label + (" (masking suspected)" if masked else ""))
    ax.set_xlabel("ε (pixel levels, /255)")
    ax.set_ylabel("test top-1 under attack (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    seeds = max(row["n_seeds"] for row in rows.values())
    ax.set_title("Accuracy under L-inf attack, worst of FGSM, PGD and Square (best checkpoint)" +
                 ("; mean over seeds, error bar = ±1 std" if seeds > 1 else ""), fontsize="medium")
    return Plot("attacks.png", "Accuracy under attack", fig)


# ---------------------------------------------------------------- sections


def cost_section(arms: dict) -> Section | None:
    """Accuracy against cost: the table, two columns for results.csv, the figure; None without cost.json."""
    rows = cost_rows(arms)
    if not rows:
        return None
    plot = figure_cost(arms)
    lines = [cost_table(rows), "",
             "FLOPs: one forward and backward pass per image (2 FLOPs per multiply-add), counted with "
             "`torch.utils.flop_counter.FlopCounterMode` on the CPU; matrix products and convolutions only "
             "(element-wise work and the optimizer step are not counted). The counted path is `explicit` "
             "where a variant's fast path is an operator the counter cannot see into. Time and memory as "
             "measured during training (memory on CUDA only)."]
    if plot:
        lines += ["", f"![{plot.caption}]({FOLDER}/{plot.name})"]
    columns = {r["arm"]: stat_columns(r, ("attention_share", "flops_per_image")) for r in rows}
    return Section("Accuracy against cost", lines, columns, [plot] if plot else [])


def robustness_section(arms: dict) -> Section | None:
    """Robustness: the table, its columns for results.csv, the figures; None without corruptions.json
    or attacks.json."""
    rows, attacks = robustness_rows(arms), attack_rows(arms)
    if not rows and not attacks:
        return None
    plots = [p for p in ((figure_robustness(arms) if rows else None), (figure_attacks(arms) if attacks else None)) if p]
    lines = [robustness_table(rows, attacks)]
    if rows:
        lines += ["", "Best checkpoint on the test split under each corruption at severities 1-5 (CIFAR-10-C "
                      "parameters); the mean is over corruptions and severities, the ratio divides it by the clean "
                      "accuracy. Per-corruption columns average the five severities."]
    if attacks:
        lines += ["", ATTACK_NOTE]
        lines += [f"- **{arm}**: gradient masking suspected: {'; '.join(a['masking'])}. Its attacked accuracy "
                  "may overstate its robustness." for arm, a in attacks.items() if a["masking"]]
    for plot in plots:
        lines += ["", f"![{plot.caption}]({FOLDER}/{plot.name})"]
    columns = {r["arm"]: stat_columns(r, ("mean_corruption_top1", "relative")) for r in rows}
    for arm, a in attacks.items():
        largest = f"attacked_top1_eps{a['epsilons_255'][-1]:g}"
        columns.setdefault(arm, {}).update({f"{largest}_mean": a["robust_top1"][-1][0],
                                            f"{largest}_std": a["robust_top1"][-1][1],
                                            "gradient_masking_suspected": bool(a["masking"])})
    return Section("Robustness", lines, columns, plots)


ATTACK_NOTE = ("Attacked: best checkpoint on the test split, in float32, the lowest top-1 of three L-inf attacks "
               "in [0, 1] pixel space (FGSM; PGD with a random start; the gradient-free Square attack) at each budget "
               "ε in pixel levels. Gradient masking is suspected when many input gradients are exactly zero, accuracy "
               "does not fall as ε grows, PGD with more steps is weaker, or Square beats PGD: a gradient attack then "
               "overstates robustness.")


def cifar_c_section(arms: dict) -> Section | None:
    """The released CIFAR-10-C / CIFAR-100-C arrays (cifar_c.json, `attnzoo eval RUN --cifar-c DIR`); None
    when no run has been evaluated on them."""
    rows = robustness_rows(arms, "cifar_c")
    if not rows:
        return None
    plot = figure_robustness(arms, "cifar_c")
    sources = sorted({run.cifar_c.get("source", "?") for runs in arms.values() for run in runs if run.cifar_c})
    lines = [robustness_table(rows), "",
             f"Best checkpoint on the released corruption arrays ({', '.join(f'`{s}`' for s in sources)}), severities "
             "1-5; clean is the run's own test split. The mean is over corruptions and severities, the ratio divides "
             "it by the clean accuracy; per-corruption columns average the five severities.", "",
             f"![{plot.caption}]({FOLDER}/{plot.name})"]
    columns = {r["arm"]: {f"cifar_c_{k}": v for k, v in stat_columns(r, ("mean_corruption_top1", "relative")).items()}
               for r in rows}
    return Section("Robustness on CIFAR-C", lines, columns, [plot])


def stat_columns(row: dict, keys: tuple[str, ...]) -> dict:
    """{key_mean, key_std} for results.csv, from a row's (mean, std) pairs."""
    return {f"{key}_{stat}": value for key in keys for stat, value in zip(("mean", "std"), row[key])}


def sections(arms: dict) -> list[Section]:
    """The sections of the runs that have the files: cost, robustness, the released CIFAR-C arrays (none
    when no run has any)."""
    return [s for s in (cost_section(arms), robustness_section(arms), cifar_c_section(arms)) if s is not None]
