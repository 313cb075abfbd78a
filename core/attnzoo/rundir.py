"""The run directory: what a run writes, and the guard that nothing is overwritten."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import torch
import yaml

from . import __version__
from .checkpoint import list_checkpoints
from .errors import AttnzooError
from .recipe import Recipe, dump

# Keys that may change between a run and its resume (more epochs, a different patience).
RESUMABLE_CHANGES = {"train.epochs", "train.early_stopping_patience", "train.log_every", "output_dir",
                     "bench", "variants", "seeds", "grid", "baseline", "description", "robustness"}


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_changes(old: dict, new: dict, ignore=frozenset()) -> dict[str, tuple]:
    """{dotted key: (value in the run, value now)} for every key that differs.

    A key the run's recipe.yaml lacks (written before the key existed) counts as its default."""
    b = _flatten(new)
    a = {**{k: v for k, v in _flatten(Recipe().to_dict()).items() if k in b}, **_flatten(old)}
    changes = {}
    for key in sorted(set(a) | set(b)):
        if any(key == r or key.startswith(r + ".") for r in ignore):
            continue
        if a.get(key) != b.get(key):
            changes[key] = (a.get(key), b.get(key))
    return changes


def recipe_differences(old: dict, new: dict) -> list[str]:
    return [f"{key}: {a!r} in the run, {b!r} now" for key, (a, b) in
            recipe_changes(old, new, RESUMABLE_CHANGES).items()]


def prepare(run_dir: Path, recipe: Recipe, resume: bool) -> bool:
    """Check the folder can take this run. Returns True when there is state to resume."""
    recipe_file = run_dir / "recipe.yaml"
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
    if not list_checkpoints(run_dir) and not (run_dir / "test_metrics.json").exists():
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
    if resuming or (run_dir / "environment.json").exists():
        with open(run_dir / "resumes.jsonl", "a") as f:
            f.write(json.dumps(env) + "\n")
        return
    write_text(run_dir / "recipe.yaml", dump(recipe))
    write_text(run_dir / "environment.json", json.dumps(env, indent=1))


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
