"""Figures for reports: the one place a matplotlib Figure is made, drawn and saved.

Each figure function draws from the runs' own files (runs.RunResult) and returns a Plot, or None
when the runs hold nothing to draw (no attention.json, no validation split). Nothing is written
here until the report saves every Plot once, with the rest of the report (report.build_report).
The object-oriented matplotlib API (Figure, not pyplot) renders with Agg and touches no
global backend state, so reports also build on headless machines and inside other programs.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from attnzoo.run.rundir import RunDir
from attnzoo.study.stats import mean_std

FOLDER = "figures"  # under the study folder; results.md links figures/<name>
MANY_CLASSES = 20  # above this, confusion matrices carry no class names
MAX_PANELS = 12  # confusion matrices / attention maps: at most this many arms, the best by top-1


@dataclass
class Plot:
    """A drawn figure, not yet written."""

    name: str  # file name under figures/, what the report links
    caption: str  # its heading and alt text in results.md
    figure: object  # a matplotlib Figure


def new_figure(width: float = 7.0, height: float = 4.5, layout: str | None = "constrained", **subplots):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    return fig, fig.subplots(**subplots)


def save_figure(fig, folder: Path, name: str) -> str:
    """Write `fig` as folder/name at 120 dpi; returns the file name (what the report links)."""
    fig.savefig(folder / name, dpi=120)
    return name


# ---------------------------------------------------------------- the report's figures


def _curve(runs: list, key: str) -> tuple[list[int], list[float], list[float]]:
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


def figure_loss(arms) -> Plot:
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
    return Plot("loss.png", "Training and validation loss per epoch", fig)


def figure_metric(arms, key: str, ylabel: str, title: str, name: str, caption: str,
                  scale: float = 1.0) -> Plot | None:
    fig, ax = new_figure()
    for i, (label, runs) in enumerate(arms.items()):
        _plot_curve(ax, runs, key, f"C{i}", label, scale=scale)
    if not ax.lines:
        return None  # e.g. no validation split
    _epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title + _band_note(arms), fontsize="medium")
    ax.legend(fontsize="small")
    return Plot(name, caption, fig)


def figure_learning_rate(arms) -> Plot:
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
    return Plot("learning_rate.png", "Learning rate per epoch", fig)


def figure_epoch_time(arms) -> Plot:
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
    return Plot("epoch_time.png", "Training time per epoch", fig)


def figure_confusion(arms) -> Plot:
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
    return Plot("confusion.png", "Test confusion matrices", fig)


def figure_entropy(arms) -> Plot | None:
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
    return Plot("attention_entropy.png", "Attention entropy per layer", fig)


def _test_images(run, indices: list[int]):
    """The test images the attention maps were drawn on, as (H, W, 3) uint8, from the run's own
    attention_images.safetensors; None for runs made before runs saved them (maps without images)."""
    from attnzoo.run.analysis import read_map_images

    saved = read_map_images(RunDir(run.path).attention_images)
    if saved is None or saved[1] != list(indices):
        return None
    return [image.permute(1, 2, 0).numpy() for image in saved[0]]


def figure_attention_maps(arms) -> Plot | None:
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
    return Plot("attention_maps.png", "Class-token attention maps", fig)


def swept_keys(arms) -> list[str]:
    keys: list[str] = []
    for runs in arms.values():
        keys += [k for k in runs[0].arm.get("grid", {}) if k not in keys]
    return keys


def figure_grid_key(arms, key: str) -> Plot:
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
    return Plot("grid_" + re.sub(r"[^A-Za-z0-9]+", "_", key) + ".png", f"Test top-1 against {key}", fig)


def best_arms(arms, count: int) -> dict:
    """The `count` arms with the best mean test top-1, in the study's order (all when there are no more)."""
    if len(arms) <= count:
        return arms
    best = sorted(arms, key=lambda label: -statistics.fmean(r.test["top1"] for r in arms[label]))[:count]
    return {label: runs for label, runs in arms.items() if label in best}


def report_figures(arms) -> list[Plot]:
    """Every figure of the report's "Figures" section, in reading order."""
    panels = best_arms(arms, MAX_PANELS)
    more = f" ({MAX_PANELS} best arms by top-1)" if len(panels) < len(arms) else ""
    plots = [figure_grid_key(arms, key) for key in swept_keys(arms)]
    plots += [
        figure_loss(arms),
        figure_metric(arms, "val_top1", "validation top-1 accuracy (%)", "Validation top-1 accuracy",
                      "val_top1.png", "Validation top-1 accuracy per epoch", scale=100),
        figure_metric(arms, "val_top5", "validation top-5 accuracy (%)", "Validation top-5 accuracy",
                      "val_top5.png", "Validation top-5 accuracy per epoch", scale=100),
        figure_learning_rate(arms),
        figure_epoch_time(arms),
        with_note(figure_confusion(panels), more),
        figure_entropy(arms),
        with_note(figure_attention_maps(panels), more),
    ]
    return [plot for plot in plots if plot is not None]  # figures without data (no attention.json) are left out


def with_note(plot: Plot | None, note: str) -> Plot | None:
    return plot and dataclasses.replace(plot, caption=plot.caption + note)
