"""What a run cost, written to its cost.json: parameters, training FLOPs per image (counted
by :mod:`attnzoo.model.flops`, which says what the count includes), training time and peak memory.

A run writes cost.json when it finishes (:func:`write_cost`); ``attnzoo eval RUN --cost``
writes it for a finished run made before runs did (:func:`write_finished_run_cost`), the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from attnzoo.errors import AttnzooError
from attnzoo.model.flops import counter_record, model_flops
from attnzoo.run import rundir
from attnzoo.run.assembly import build_model
from attnzoo.run.evaluate import load_run_recipe


def run_cost(model: torch.nn.Module, image_size: int, report: dict, images_seen: int) -> dict:
    """The record written to cost.json: counted FLOPs plus the run's measured time and memory."""
    flops = model_flops(model, image_size)
    return {
        "parameters": report.get("parameters"),
        **flops,
        "images_seen": images_seen,
        "train_flops": flops["flops_per_image"] * images_seen,
        "train_seconds": report.get("train_seconds"),
        "mean_epoch_seconds": report.get("mean_epoch_seconds"),
        "peak_memory_mib": report.get("peak_memory_mib"),
        "epochs_trained": report.get("epochs_trained"),
        "top1": report.get("top1"),
        "flop_counter": counter_record(),
    }


def cost_without_flops(report: dict, error: Exception) -> dict:
    """The record written when the FLOPs cannot be counted: time and memory, and why."""
    return {"parameters": report.get("parameters"), "train_seconds": report.get("train_seconds"),
            "peak_memory_mib": report.get("peak_memory_mib"), "top1": report.get("top1"),
            "flops_error": f"{type(error).__name__}: {error}"}


def write_cost(model: torch.nn.Module, image_size: int, report: dict, images_seen: int, run_dir: Path) -> dict:
    """Write <run_dir>/cost.json for `model` (at `image_size`, trained on `images_seen` images),
    with time and memory from `report` (test_metrics.json's content). A model the counter
    cannot run gets a cost.json with time and memory only: it must not fail a finished run."""
    try:
        with torch.random.fork_rng(devices=[]):  # the count draws random inputs; leave the run's RNG alone
            cost = run_cost(model, image_size, report, images_seen)
    except Exception as exc:  # noqa: BLE001 - a variant the counter cannot run must not fail a finished run
        cost = cost_without_flops(report, exc)
        print(f"note: FLOPs not counted ({cost['flops_error']}); {rundir.COST} has time and memory only", flush=True)
    rundir.write_text(rundir.RunDir(run_dir).cost, json.dumps(cost, indent=1))
    return cost


def write_finished_run_cost(run_dir: Path, *, registry=None) -> dict:
    """cost.json for a finished run that has none (made before runs wrote it), written as the run
    would have: the model from its recipe.yaml, time and memory from test_metrics.json, images
    seen from metrics.jsonl. Raises when the FLOPs cannot be counted: they are what was asked for."""
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir, registry)
    report, classes, images_seen = _finished_run_record(run_dir)
    with torch.random.fork_rng(devices=[]):  # building the model draws initial weights; the count needs none
        model = build_model(recipe, classes, starting_weights=False)  # only its shape is counted
    cost = write_cost(model, recipe.model.image_size, report, images_seen, run_dir)
    if "flops_error" in cost:
        raise AttnzooError(f"the FLOPs of {str(run_dir)!r} could not be counted ({cost['flops_error']}); its "
                           f"{rundir.COST} holds time and memory only. Run `attnzoo check-plugin "
                           f"{recipe.attention.name}` to see whether the variant runs on the CPU.")
    print(summary(cost, run_dir), flush=True)
    return cost


def _finished_run_record(run_dir: Path) -> tuple[dict, int, int]:
    """A finished run's test_metrics.json, its number of classes, and the training images it saw
    (from metrics.jsonl)."""
    run = rundir.RunDir(run_dir)
    try:
        report = run.read_test_metrics()
        history = run.read_metrics()
        classes = len(report["classes"])
    except (OSError, ValueError, KeyError) as exc:
        raise AttnzooError(f"{str(run_dir)!r} is not a finished run: its test_metrics.json or metrics.jsonl is "
                           f"missing or damaged ({exc}). Finish it with `attnzoo train RECIPE --resume`.") from None
    # images / second x seconds = the images of the epoch (whole batches), up to float rounding
    images_seen = sum(round(row["images_per_sec"] * row["epoch_seconds"]) for row in history)
    return report, classes, images_seen


def summary(cost: dict, run_dir: Path) -> str:
    """One line: FLOPs per training image, the attention share, how counted, parameters."""
    return (f"{run_dir}: {cost['flops_per_image'] / 1e9:.4g} GFLOPs per training image "
            f"({100 * cost['attention_flops_per_image'] / cost['flops_per_image']:.1f} % attention, "
            f"{cost['attention_path']} path), {cost['parameters']:,} parameters -> {rundir.RunDir(run_dir).cost}")
