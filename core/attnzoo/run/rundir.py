"""The run directory: what a run writes, and the guard that nothing is overwritten.

This module is the one owner of a run folder's layout: the names of its files (which users,
scripts and runs made by earlier versions rely on, so none is ever renamed), whether a run
is finished, its metrics.jsonl, and the label and seed of a study's run.
"""

from __future__ import annotations

import json
import os
import platform
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import torch
import yaml

from attnzoo.config.changes import recipe_changes
from attnzoo.config.recipe import Recipe, dump_run
from attnzoo.errors import AttnzooError
from attnzoo.run.checkpoint import list_checkpoints
from attnzoo.version import __version__

RECIPE = "recipe.yaml"
ENVIRONMENT = "environment.json"
RESUMES = "resumes.jsonl"  # one environment record per resume
METRICS = "metrics.jsonl"  # one row per epoch
TEST_METRICS = "test_metrics.json"  # written when training ends: its presence means the run is finished
BEST_WEIGHTS = "best.safetensors"  # the weights of the best validation epoch so far
FINAL_WEIGHTS = "model.safetensors"  # the weights tested at the end (the best ones)
ATTENTION = "attention.json"
ATTENTION_IMAGES = "attention_images.safetensors"  # the test images under the attention maps (uint8)
COST = "cost.json"
CORRUPTIONS = "corruptions.json"
EVAL = "eval.json"
EXTENSIONS = "extensions.jsonl"  # the results a run had before it was continued to more epochs
ARM = "arm.json"  # a study's run: its arm, variant arm, grid values, baseline arm and seed
DIVERGED = "diverged.json"  # a study's run whose loss turned non-finite: where, and the message


def run_name(label: str, seed: int) -> str:
    """The folder name of a study's run of one arm and seed."""
    return f"{label}-seed{seed}"


@dataclass(frozen=True)
class RunDir:
    """One run's folder: the paths of its files and the reading and writing of its records."""

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    @property
    def recipe(self) -> Path:
        return self.path / RECIPE

    @property
    def environment(self) -> Path:
        return self.path / ENVIRONMENT

    @property
    def resumes(self) -> Path:
        return self.path / RESUMES

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def test_metrics(self) -> Path:
        return self.path / TEST_METRICS

    @property
    def best_weights(self) -> Path:
        return self.path / BEST_WEIGHTS

    @property
    def final_weights(self) -> Path:
        return self.path / FINAL_WEIGHTS

    @property
    def attention(self) -> Path:
        return self.path / ATTENTION

    @property
    def attention_images(self) -> Path:
        return self.path / ATTENTION_IMAGES

    @property
    def cost(self) -> Path:
        return self.path / COST

    @property
    def corruptions(self) -> Path:
        return self.path / CORRUPTIONS

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    @property
    def extensions(self) -> Path:
        return self.path / EXTENSIONS

    @property
    def arm(self) -> Path:
        return self.path / ARM

    @property
    def diverged(self) -> Path:
        return self.path / DIVERGED

    def is_finished(self) -> bool:
        return self.test_metrics.is_file()

    def read_test_metrics(self) -> dict:
        """test_metrics.json; OSError when absent, ValueError when damaged (callers say what that means)."""
        return json.loads(self.test_metrics.read_text())

    def write_test_metrics(self, report: dict) -> None:
        write_text(self.test_metrics, json.dumps(report, indent=1))

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl, one row per epoch; OSError when absent."""
        return [json.loads(line) for line in self.metrics.read_text().splitlines() if line.strip()]

    def append_metrics(self, row: dict) -> None:
        """One epoch's row, written as one line in one write."""
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")

    def rewrite_metrics(self, rows: list[dict]) -> None:
        """Replace metrics.jsonl by `rows` at once (a crash leaves the old file or the new one)."""
        write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def read_recipe(self) -> dict | None:
        """The run's own recipe.yaml as written, or None if the folder holds no run."""
        if not self.recipe.is_file():
            return None
        return yaml.safe_load(self.recipe.read_text()) or {}

    def arm_record(self) -> dict:
        """{arm, variant, grid, baseline, seed} of a study's run, from its arm.json.

        Runs made before studies wrote arm.json (or missing a key of it) take their seed from
        their recipe.yaml and their arm label from their folder name, `run_name`'s
        '<label>-seed<seed>': the only place that name is read back."""
        label = re.sub(r"-seed-?\d+$", "", self.path.name)
        named_seed = re.search(r"-seed(-?\d+)$", self.path.name)
        seed = ((self.read_recipe() or {}).get("train") or {}).get("seed")
        if seed is None and named_seed:
            seed = int(named_seed[1])
        default = {"arm": label, "variant": label, "grid": {}, "baseline": None, "seed": seed}
        return {**default, **read_json(self.arm, {})}


def read_json(path: Path, default=None):
    """A run's JSON file; `default` when absent; a damaged one is a clear error."""
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise AttnzooError(f"{str(path)!r} is not valid JSON ({exc}); the run's files were damaged. "
                           "Delete that run folder and run the study again to retrain it.") from None


def recipe_differences(old: dict, new: dict) -> list[str]:
    """The changes that make `new` another run than the one `old` describes, in words. Every other
    change (a label, housekeeping, when the run stops) may be resumed: attnzoo.config.changes."""
    return [f"{key}: {a!r} in the run, {b!r} now" for key, (a, b) in
            recipe_changes(old, new).different_run.items()]


@dataclass(frozen=True)
class Resume:
    """What a run does with a folder that may already hold it.

    - ``Resume.NO``: start; a folder that holds this run already is an error (nothing is overwritten).
    - ``Resume.LATEST``: continue from the last checkpoint; a folder with no run is an error.
    - ``Resume.AUTO``: continue if the folder holds this run, else start (requeued cluster jobs).
    - ``Resume.at(path)``: continue from that checkpoint.
    """

    mode: Literal["no", "latest", "auto"] = "no"
    checkpoint: Path | None = None

    @classmethod
    def at(cls, checkpoint: str | Path) -> "Resume":
        return cls("latest", Path(checkpoint))

    def wanted(self, run_dir: Path) -> bool:
        """Whether to continue a run in `run_dir` (AUTO: when it holds one)."""
        return self.mode == "latest" or (self.mode == "auto" and RunDir(run_dir).recipe.is_file())


Resume.NO, Resume.LATEST, Resume.AUTO = Resume("no"), Resume("latest"), Resume("auto")


def prepare(run_dir: Path, recipe: Recipe, resume: bool) -> bool:
    """Check the folder can take this run. Returns True when there is state to resume."""
    recipe_file = RunDir(run_dir).recipe
    if not run_dir.exists() or not any(run_dir.iterdir()):
        if resume:
            raise AttnzooError(f"--resume: {str(run_dir)!r} holds no run to resume. Drop --resume to start it.")
        return False
    if not recipe_file.is_file():
        raise AttnzooError(f"output directory {str(run_dir)!r} exists and is not an attnzoo run. "
                           "Set output_dir=... to another folder.")
    old = yaml.safe_load(recipe_file.read_text()) or {}
    diffs = recipe_differences(old, recipe.to_dict())
    if diffs:
        raise AttnzooError(f"output directory {str(run_dir)!r} holds a run of a different recipe "
                           f"({'; '.join(diffs[:5])}). Set output_dir=... to a new folder, or delete that one "
                           "if you no longer need it.")
    if not resume:
        raise AttnzooError(f"output directory {str(run_dir)!r} already holds this run. Pass --resume to "
                           "continue it, or set output_dir=... to start a new one.")
    if not list_checkpoints(run_dir) and not RunDir(run_dir).is_finished():
        return False  # killed before its first checkpoint: start over in place
    return True


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        if rev.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5,
                               cwd=Path(__file__).parent).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(registry, world_size: int, device: torch.device) -> dict:
    import accelerate

    return {
        "time": datetime.now().astimezone().isoformat(timespec="milliseconds"),  # orders a study's runs
        "command": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "accelerate": accelerate.__version__,
        "attnzoo": __version__,
        "git_revision": git_revision(),
        "world_size": world_size,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "plugins": [p.as_dict() for p in registry.plugins],
    }


def write_start(run_dir: Path, recipe: Recipe, env: dict, resuming: bool) -> None:
    """recipe.yaml and environment.json at the first start; a resume appends to resumes.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    if resuming or run.environment.exists():
        with open(run.resumes, "a") as f:
            f.write(json.dumps(env) + "\n")
        return
    write_text(run.recipe, dump_run(recipe))
    write_text(run.environment, json.dumps(env, indent=1))


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
