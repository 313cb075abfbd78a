"""The runs of a study, as the report reads them: each run's files read once, from the run folder alone.

A finished run holds test_metrics.json; the report also reads its metrics.jsonl, attention.json,
recipe.yaml, arm.json (its arm, grid values and baseline arm), environment.json (start time,
device), cost.json, corruptions.json, cifar_c.json and attacks.json, and the diverged.json of runs whose loss turned
non-finite. Runs made by earlier versions may lack any file but test_metrics.json; a damaged
JSON file is a clear AttnzooError (rundir.read_json), never a silently missing row.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from attnzoo.run.attacks import ATTACKS
from attnzoo.run.cifar_c import CIFAR_C
from attnzoo.run.rundir import RunDir, read_json


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
    cost: dict | None = None  # cost.json; None for runs made before runs wrote it
    corruptions: dict | None = None  # corruptions.json; None unless the run was evaluated under corruption
    attacks: dict | None = None  # attacks.json; None unless the run was attacked (attnzoo.run.attacks)
    cifar_c: dict | None = None  # cifar_c.json: the released CIFAR-10-C / -100-C arrays (attnzoo eval --cifar-c)


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
                     run.read_recipe() or {}, read_json(run.environment, {}), arm,
                     cost=read_json(run.cost), corruptions=read_json(run.corruptions),
                     attacks=read_json(run.path / ATTACKS), cifar_c=read_json(run.path / CIFAR_C))


def group_by_arm(runs: list[RunResult]) -> dict[str, list[RunResult]]:
    """Arms in the order the study started them (a run's start time), seeds in order."""
    arms: dict[str, list[RunResult]] = {}
    for run in sorted(runs, key=lambda r: (r.environment.get("time", ""), r.label, r.seed)):
        arms.setdefault(run.label, []).append(run)
    return {label: sorted(rs, key=lambda r: r.seed) for label, rs in arms.items()}


def run_entropy(run: RunResult) -> float | None:
    """Normalised attention entropy of a run, mean over layers and heads."""
    layers = (run.attention or {}).get("entropy")
    return statistics.fmean(v for heads in layers for v in heads) if layers else None
