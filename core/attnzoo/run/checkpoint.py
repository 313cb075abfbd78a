"""Checkpoints as safetensors + JSON: no pickle anywhere, atomic, verified on load.

A checkpoint is a folder ``checkpoints/epoch-EEEE-step-SSSSSS`` (1-based epoch, steps done in
that epoch: the way the training messages count; the end of epoch 1 of 25 steps is
``epoch-0001-step-000025``) holding
``model.safetensors``, ``optimizer.safetensors`` and ``state.json`` (trainer counters,
metric history, optimizer hyper-parameters, and the sha256 of both weight files).
It is written under a temporary name and renamed, so a killed write leaves no
half-checkpoint under a real name; a truncated or edited file fails the hash check.

state.json is checked too, since a resume trusts it: the hashes are required (without them an
edited weight would load silently), its counters must agree with the history it carries, and
the recipe it records must be the resuming run's (a checkpoint of another run is refused).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from attnzoo.config.changes import recipe_changes
from attnzoo.errors import AttnzooError

CHECKPOINTS = "checkpoints"
WEIGHT_FILES = ("model.safetensors", "optimizer.safetensors")
# What a resume cannot do without. The trainer's other counters have defaults: checkpoints of
# earlier versions lack the ones added since.
REQUIRED_STATE = ("epoch", "step", "global_step", "history", "optimizer", "sha256")
# The run folder's recipe, the identity of a checkpoint written before checkpoints recorded
# their recipe (attnzoo.run.rundir.RECIPE; not imported from there: rundir imports this module).
RUN_RECIPE = "recipe.yaml"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(state_dict: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    """Atomically write a safetensors file (temporary file in the same folder, then rename)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise AttnzooError(f"weights file {str(path)!r} not found.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise AttnzooError(f"weights file {str(path)!r} is truncated or corrupted ({exc}). "
                           "Use another checkpoint or retrain.") from None


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, per_param in state["state"].items():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, key = flat.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def checkpoint_name(epochs_done: int, step: int, steps_per_epoch: int) -> str:
    """The folder name of a checkpoint taken after `epochs_done` epochs and `step` more steps.

    Named as the messages count: epoch 1-based, step = steps done in that epoch. Folders of
    earlier versions (``epoch-<epochs done>-step-<steps>``) still sort before every folder
    this names after resuming from them, so the newest checkpoint is still the last name."""
    if step == 0:  # the end of epoch `epochs_done`
        return f"epoch-{epochs_done:04d}-step-{steps_per_epoch:06d}"
    return f"epoch-{epochs_done + 1:04d}-step-{step:06d}"


def save_checkpoint(run_dir: Path, *, model_state: dict, optimizer_state: dict, trainer_state: dict,
                    keep: int, name: str) -> Path:
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file({k: v.detach().contiguous().cpu() for k, v in opt_tensors.items()}, str(tmp / "optimizer.safetensors"))
        state = dict(trainer_state, optimizer=opt_meta, sha256={f: sha256(tmp / f) for f in WEIGHT_FILES})
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders start with a dot and are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch-"))


def verify_checkpoint(path: Path, steps_per_epoch: int | None = None) -> dict:
    """Return state.json of `path` after checking it (its keys and counters, and with
    `steps_per_epoch` its step counters too) and both weight files against their hashes."""
    path = Path(path)
    others = [p.name for p in list_checkpoints(path.parent.parent) if p != path]
    offer = f" Earlier checkpoints: {', '.join(others)}; pass one with --resume PATH." if others else ""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as exc:
        raise AttnzooError(f"checkpoint {str(path)!r} is incomplete or corrupted: state.json unreadable ({exc}).{offer}") from None
    problem = state_problem(state, steps_per_epoch)
    if problem:
        raise AttnzooError(f"checkpoint {str(path)!r} cannot be trusted: its state.json {problem}. It was damaged or "
                           f"edited by hand; nothing was loaded.{offer}")
    for name in WEIGHT_FILES:
        file = path / name
        if not file.is_file() or sha256(file) != state["sha256"][name]:
            raise AttnzooError(f"checkpoint {str(path)!r} is corrupted: {name} is missing, truncated or modified "
                               f"(sha256 mismatch).{offer}")
    return state


def state_problem(state: Any, steps_per_epoch: int | None = None) -> str | None:
    """What is wrong with a checkpoint's state.json, in words; None when it can be resumed."""
    if not isinstance(state, dict):
        return "does not hold a JSON object"
    missing = [key for key in REQUIRED_STATE if key not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    hashes = state["sha256"]
    if not isinstance(hashes, dict) or not all(isinstance(hashes.get(name), str) for name in WEIGHT_FILES):
        return f"records no sha256 of each of {', '.join(WEIGHT_FILES)}"
    counters = {key: state[key] for key in ("epoch", "step", "global_step")}
    bad = [key for key, value in counters.items() if type(value) is not int or value < 0]
    if bad:
        return f"holds {', '.join(f'{key}={counters[key]!r}' for key in bad)}, not a count (an integer >= 0)"
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return "holds a history that is not a list of per-epoch rows"
    epoch, step = counters["epoch"], counters["step"]
    # The history has one row per finished epoch, so a changed epoch count shows.
    if [row.get("epoch") for row in history] != list(range(1, epoch + 1)):
        return (f"says {epoch} epoch(s) finished, its history holds epochs "
                f"{[row.get('epoch') for row in history]}")
    if steps_per_epoch is not None and (step > steps_per_epoch
                                        or counters["global_step"] != epoch * steps_per_epoch + step):
        return (f"counts global step {counters['global_step']}, which is not epoch {epoch} x {steps_per_epoch} "
                f"steps per epoch + step {step}")
    return None


def check_same_run(path: Path, state: dict, recipe: dict, run_dir: Path) -> None:
    """Refuse a checkpoint of another run: one whose recipe differs in a key that changes the
    result (adopting its weights and history would mix two runs). A checkpoint records its recipe;
    one written before that is judged by the recipe.yaml of the run folder it lies in. The same
    recipe in another folder is the same run (a copied or moved checkpoint), so it is accepted."""
    path = Path(path)
    source = path.parent.parent
    recorded = state.get("recipe")
    if not isinstance(recorded, dict):
        recorded = _folder_recipe(source)
    if recorded is None:
        return  # nothing records what run it was: as earlier versions did, trust the other checks
    changes = recipe_changes(recorded, recipe).different_run
    if changes:
        differences = "; ".join(f"{key}: {old!r} in that run, {new!r} in this one"
                                for key, (old, new) in list(changes.items())[:5])
        raise AttnzooError(f"--resume: checkpoint {str(path)!r} belongs to another run, {str(source)!r}, not to "
                           f"this run {str(run_dir)!r} ({differences}). Resume a checkpoint of {str(run_dir)!r}, or "
                           f"resume that run with its own recipe.")


def _folder_recipe(run_dir: Path) -> dict | None:
    try:
        recorded = yaml.safe_load((Path(run_dir) / RUN_RECIPE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return recorded if isinstance(recorded, dict) else None


def load_checkpoint(path: Path, steps_per_epoch: int | None = None) -> tuple[dict, dict, dict]:
    """(model_state, optimizer_state, trainer_state) of a verified checkpoint."""
    state = verify_checkpoint(path, steps_per_epoch)
    model_state = load_weights(Path(path) / "model.safetensors")
    optimizer_state = _unflatten_optimizer(load_weights(Path(path) / "optimizer.safetensors"), state.pop("optimizer"))
    return model_state, optimizer_state, state
