"""Accuracy of a run's best checkpoint under common corruptions, written to corruptions.json.

The test images are corrupted batch by batch on the run's device (JPEG on the CPU) with the
functions of :mod:`attnzoo.corruptions`, then normalised and classified exactly as in
training. The corruption noise is drawn from (seed, corruption, batch), so a result is
reproducible for a seed, a batch size and a number of processes; runs with the same seed
see the very same corrupted images, which pairs the comparison of arms.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from attnzoo.data.corruptions import CORRUPTIONS, PARAMETERS, SEVERITIES, corrupt
from attnzoo.errors import AttnzooError
from attnzoo.run import rundir
from attnzoo.run.metrics import topk_accuracy

WEIGHTS = rundir.BEST_WEIGHTS  # evaluated: the weights of the best validation epoch


@torch.no_grad()
def accuracy(run, name: str | None, severity: int, seed: int) -> dict:
    """top-1, top-5 and loss on the test split under one corruption (None: clean), every sample once."""
    acc = run.accelerator

    def corrupted(pixels: torch.Tensor, batch: int) -> torch.Tensor:
        return corrupt(pixels, name, severity, seed, batch * acc.num_processes + acc.process_index)

    logits, labels = run.forward.predict(run.test_loader, len(run.splits.classes),
                                         pixels=corrupted if name is not None else None)
    if not len(labels):
        raise AttnzooError(f"{str(run.path)!r}: the run's test split is empty; there is nothing to evaluate.")
    return {"top1": topk_accuracy(logits, labels, 1), "top5": topk_accuracy(logits, labels, 5),
            "loss": torch.nn.functional.cross_entropy(logits, labels).item(), "samples": len(labels)}


def evaluate_corruptions(run_dir: Path, *, seed: int | None = None, accelerator=None, splits=None,
                         registry=None) -> dict:
    """Clean and corrupted test accuracy of the run's best weights; written to <run_dir>/corruptions.json."""
    run_dir = Path(run_dir)
    from attnzoo.run.evaluate import load_best_run

    run = load_best_run(run_dir, accelerator=accelerator, splits=splits, registry=registry,
                        then="evaluate it under corruptions")
    seed = run.recipe.train.seed if seed is None else seed
    started = time.perf_counter()
    clean = accuracy(run, None, 0, seed)
    results = corruption_table(run, seed)
    record = _record(run, seed, clean, results, time.perf_counter() - started)
    if run.accelerator.is_main_process:
        rundir.write_text(rundir.RunDir(run_dir).corruptions, json.dumps(record, indent=1))
        print(summary(record, run_dir), flush=True)
    return record


def corruption_table(run, seed: int) -> dict:
    """Per corruption: its parameter, the parameter's value at each severity, and top-1, top-5 and
    loss at each severity."""
    results = {}
    for name in CORRUPTIONS:
        rows = [accuracy(run, name, s, seed) for s in SEVERITIES]
        parameter, values = PARAMETERS[name]
        results[name] = {"parameter": parameter, "values": list(values),
                         **{key: [row[key] for row in rows] for key in ("top1", "top5", "loss")}}
    return results


def _record(run, seed: int, clean: dict, results: dict, seconds: float) -> dict:
    """corruptions.json: what was evaluated, the clean accuracy, the table and its summary."""
    mean_top1 = statistics.fmean(v for r in results.values() for v in r["top1"])
    return {
        "weights": WEIGHTS, "variant": run.recipe.attention.name, "seed": seed, "samples": clean["samples"],
        "severities": list(SEVERITIES), "clean_top1": clean["top1"], "clean_top5": clean["top5"],
        "mean_corruption_top1": mean_top1,
        "relative_corruption_top1": mean_top1 / clean["top1"] if clean["top1"] > 0 else None,
        "corruptions": results, "device": str(run.accelerator.device), "world_size": run.accelerator.num_processes,
        "seconds": seconds,
    }


def summary(record: dict, run_dir: Path) -> str:
    lines = [f"{run_dir}: {record['variant']} ({record['weights']}) on {record['samples']} test images, "
             f"clean top1 {record['clean_top1']:.4f}",
             f"{'corruption':<18}" + "".join(f"{'severity ' + str(s):>12}" for s in record["severities"])]
    for name, r in record["corruptions"].items():
        lines.append(f"{name:<18}" + "".join(f"{v:>12.4f}" for v in r["top1"]))
    ratio = record["relative_corruption_top1"]
    lines.append(f"mean corruption top1 {record['mean_corruption_top1']:.4f}"
                 + (f" ({100 * ratio:.1f} % of clean)" if ratio is not None else "")
                 + f"; {record['seconds']:.1f}s -> {rundir.RunDir(run_dir).corruptions}")
    return "\n".join(lines)


def _needs_evaluation(run_dir: Path, seed: int | None) -> bool:
    """A finished run without corruptions.json, or with one made with another seed."""
    run = rundir.RunDir(run_dir)
    if not run.is_finished() or not run.best_weights.is_file():
        return False
    if not run.corruptions.is_file():
        return True
    try:
        wanted = seed if seed is not None else run.read_test_metrics()["seed"]
        return json.loads(run.corruptions.read_text())["seed"] != wanted
    except (ValueError, KeyError):
        return True  # unreadable: evaluate again


def evaluate_study_runs(run_dirs: list[Path], recipe, accelerator, splits=None) -> None:
    """For a study with `robustness.corruptions: true`: evaluate every finished run not yet evaluated."""
    import gc

    from attnzoo.data.pipeline import load_data

    todo = [d for d in run_dirs if _needs_evaluation(d, recipe.robustness.seed)]
    accelerator.wait_for_everyone()  # every process has its list before the main one writes
    for i, run_dir in enumerate(todo, 1):
        accelerator.print(f"[{i}/{len(todo)}] {run_dir.name}: evaluating under corruptions", flush=True)
        splits = splits or load_data(recipe)  # the same data for every run: loaded once
        evaluate_corruptions(run_dir, seed=recipe.robustness.seed, accelerator=accelerator, splits=splits)
        accelerator.free_memory()  # the shared Accelerator holds every model it prepared
        gc.collect()
