"""The run directory: what a run writes, and the guard that nothing is overwritten.

This module is the one owner of a run folder's layout: the names of its files (which users,
scripts and runs made by earlier versions rely on, so none is ever renamed), whether a run
is finished, its metrics.jsonl, and the label and seed of a study's run.

A folder is a run because attnzoo says so in it: run.json, the marker attnzoo writes first when
it creates a run (a format version and a run id). A recipe.yaml proves nothing: users keep
their own. attnzoo writes into, resumes and deletes only folders that hold its marker (or the
files every earlier version wrote, see `RunDir.kind`), and refuses every other non-empty folder.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
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

MARKER = "run.json"  # {"format", "run_id", "created", "attnzoo"}: written by attnzoo, first, in every run it creates
MARKER_FORMAT = 1
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
    def marker(self) -> Path:
        return self.path / MARKER

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

    def kind(self) -> Literal["empty", "run", "legacy", "foreign"]:
        """What the folder holds, judged only by files attnzoo writes itself:

        - "empty": nothing (or it does not exist), or only what attnzoo leaves while it creates
          a run (its temporary files and a run lock): a kill in that window must not leave a
          folder that can never be used again;
        - "run": attnzoo's marker, run.json;
        - "legacy": a run of a version before the marker: recipe.yaml and environment.json
          (which names attnzoo), with checkpoints/ or test_metrics.json;
        - "foreign": anything else, e.g. a user's own recipe.yaml and metrics.jsonl. Never
          written into, resumed or deleted."""
        if not self.path.is_dir():
            return "empty"
        names = {p.name for p in self.path.iterdir()}
        if self.marker.is_file():
            return "run"
        if all(_is_creation_leftover(name) for name in names):
            return "empty"
        if self._looks_like_legacy_run():
            return "legacy"
        return "foreign"

    def _looks_like_legacy_run(self) -> bool:
        if not (self.recipe.is_file() and self.environment.is_file()):
            return False
        if not ((self.path / "checkpoints").is_dir() or self.is_finished()):
            return False
        try:
            env = json.loads(self.environment.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(env, dict) and "attnzoo" in env and "plugins" in env  # keys of `environment`

    def is_run(self) -> bool:
        """Whether attnzoo made this folder's run (this version, or an earlier one)."""
        return self.kind() in ("run", "legacy")

    def read_marker(self) -> dict:
        return read_json(self.marker, {})

    def write_marker(self) -> None:
        """run.json, written once: a run keeps its id for life."""
        if not self.marker.is_file():
            write_text(self.marker, json.dumps({
                "format": MARKER_FORMAT, "run_id": uuid.uuid4().hex, "attnzoo": __version__,
                "created": datetime.now().astimezone().isoformat(timespec="seconds")}, indent=1) + "\n")

    def remove_leftovers(self) -> list[str]:
        """Delete the temporary files and folders attnzoo itself leaves when it is killed mid-write
        (`.<file>.tmp`, `.<weights>.safetensors.<random>`, `checkpoints/.epoch-*`); nothing else."""
        removed = []
        candidates = list(self.path.iterdir()) if self.path.is_dir() else []
        checkpoints = self.path / "checkpoints"
        if checkpoints.is_dir():
            candidates += [p for p in checkpoints.iterdir() if p.name.startswith(".epoch-")]
        for path in candidates:
            if path.parent == checkpoints or _is_temporary(path.name):
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(self.path)))
        return removed

    def read_test_metrics(self) -> dict:
        """test_metrics.json; OSError when absent, ValueError when damaged (callers say what that means)."""
        return json.loads(self.test_metrics.read_text())

    def write_test_metrics(self, report: dict) -> None:
        write_text(self.test_metrics, json.dumps(report, indent=1))

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl, one row per epoch; OSError when absent; a damaged row is a clear error."""
        rows = []
        for number, line in enumerate(self.metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise AttnzooError(f"{str(self.metrics)!r} line {number} is not a JSON row ({exc}); the run's "
                                   "files were damaged. Restore the file, or delete the run folder and train the "
                                   "run again.") from None
        return rows

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
        try:
            data = yaml.safe_load(self.recipe.read_text()) or {}
        except yaml.YAMLError as exc:
            raise AttnzooError(f"{str(self.recipe)!r} is not valid YAML ({str(exc).splitlines()[0]}); the run's "
                               "recipe was damaged. Restore it, or delete the run folder and train the run "
                               "again.") from None
        if not isinstance(data, dict):
            raise AttnzooError(f"{str(self.recipe)!r} holds no recipe (a mapping of keys); the run's recipe was "
                               "damaged. Restore it, or delete the run folder and train the run again.")
        return data

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


# attnzoo's temporary names: write_text's `.<file>.tmp` and save_weights' `.<file>.safetensors.<random>`.
_TEMPORARY = re.compile(r"^\.[^/]+\.tmp$|^\.[^/]+\.safetensors\.[A-Za-z0-9_]+$")
_LOCK_FILE = "run.lock"  # attnzoo.run.lock.LOCK (kept here too: rundir is below lock)


def _is_temporary(name: str) -> bool:
    return bool(_TEMPORARY.match(name))


def _is_creation_leftover(name: str) -> bool:
    """A file a run being created holds before its marker: a temporary file or the run's lock."""
    return name == _LOCK_FILE or _is_temporary(name)


def check_can_hold_run(run_dir: Path) -> str:
    """The folder's kind (`RunDir.kind`) when attnzoo may write a run into it; a folder attnzoo did
    not create is refused, its files left as they are."""
    kind = RunDir(run_dir).kind()
    if kind == "foreign":
        raise AttnzooError(f"output directory {str(run_dir)!r} exists and is not an attnzoo run (it holds no "
                           f"{MARKER}, the file attnzoo writes in every run it creates); attnzoo never writes into "
                           "or deletes a folder it did not create, so nothing in it was changed. "
                           "Set output_dir=... to a new or empty folder.")
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise AttnzooError(f"output directory {str(run_dir)!r} is a file, not a folder. Set output_dir=... to a folder.")
    return kind


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
        return self.mode == "latest" or (self.mode == "auto" and RunDir(run_dir).is_run()
                                            and RunDir(run_dir).recipe.is_file())


Resume.NO, Resume.LATEST, Resume.AUTO = Resume("no"), Resume("latest"), Resume("auto")


def prepare(run_dir: Path, recipe: Recipe, resume: bool) -> bool:
    """Check the folder can take this run. Returns True when there is state to resume.
    Called with the run's lock held (attnzoo.run.lock), so nobody else writes it meanwhile."""
    run = RunDir(run_dir)
    kind = check_can_hold_run(run_dir)
    if kind == "empty" or (kind == "run" and not run.recipe.is_file()):
        # Nothing, or a run killed while it was being created: start it (again).
        if resume:
            raise AttnzooError(f"--resume: {str(run_dir)!r} holds no run to resume. Drop --resume to start it.")
        return False
    old = run.read_recipe() or {}
    diffs = recipe_differences(old, recipe.to_dict())
    if diffs:
        raise AttnzooError(f"output directory {str(run_dir)!r} holds a run of a different recipe "
                           f"({'; '.join(diffs[:5])}). Set output_dir=... to a new folder, or delete that one "
                           "if you no longer need it.")
    if not resume:
        raise AttnzooError(f"output directory {str(run_dir)!r} already holds this run. Pass --resume to "
                           "continue it, or set output_dir=... to start a new one.")
    if not list_checkpoints(run_dir) and not run.is_finished():
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
    """recipe.yaml and environment.json at the first start; a resume appends to resumes.jsonl.

    The marker comes first, so from the first file on the folder is known to be attnzoo's: a kill
    before recipe.yaml exists leaves a run that simply starts again. A run of an earlier version
    gets its marker when it is resumed. Temporary files of a killed write are removed first."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run = RunDir(run_dir)
    run.remove_leftovers()
    run.write_marker()
    if resuming or (run.environment.exists() and run.recipe.is_file()):
        with open(run.resumes, "a") as f:
            f.write(json.dumps(env) + "\n")
        return
    write_text(run.recipe, dump_run(recipe))
    write_text(run.environment, json.dumps(env, indent=1))


def write_text(path: Path, text: str) -> None:
    """Write `path` whole or not at all. The temporary name is unique to this write, so two
    processes writing one file (the workers of a study each write its study.yaml) never
    rename each other's temporary away."""
    tmp = unique_temporary(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def unique_temporary(path: Path) -> Path:
    """A fresh `.<name>.<random>.tmp` beside `path`, created empty (a leftover of it is removed by
    remove_leftovers)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)
