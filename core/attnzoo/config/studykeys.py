"""A study's keys checked: the grid and tune sections, each value checked as if it were set in the recipe.

Also the dotted-key helpers a study plans with (set_key, get_key, grid_key_kind) and the keys a grid
may not sweep or tune may not tune, each with the reason the error gives.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from typing import Any

from attnzoo.config.checks import _build, _check_ranges, _coerce
from attnzoo.config.keys import Kind, flatten, keys_of
from attnzoo.config.schema import Recipe
from attnzoo.errors import did_you_mean


# Keys a grid may not sweep: the labels of the study and its own keys (attnzoo.config.keys), and the
# two settings that have a study key of their own. Each with the reason the error gives.
_WHY_NOT_IN_GRID = {"name": "it names the study", "description": "it describes the study",
                    "output_dir": "the study's runs live in one folder", "variants": "it is a study key",
                    "seeds": "it is a study key", "grid": "it is the grid itself", "baseline": "it is a study key",
                    "tune": "it is a study key"}
_NOT_IN_GRID = {**{key: _WHY_NOT_IN_GRID.get(key, "it is not a setting of a run")
                   for key in keys_of(Kind.LABEL, Kind.STUDY)},
                "attention": "list attention variants and their options under `variants:` instead",
                "train.seed": "list seeds under `seeds:` instead"}


def _check_study_keys(r: Recipe, data: dict, problems: list[str]) -> None:
    if not (r.variants == "all" or isinstance(r.variants, list)):
        problems.append(f"variants: expected a list of variant arms or the word all, got {r.variants!r}")
    if r.baseline is not None and not isinstance(r.baseline, str):
        problems.append(f"baseline: expected the label of a variant arm, got {r.baseline!r}")
    if not isinstance(r.grid, dict):
        problems.append(f"grid: expected a mapping of recipe keys to lists of values, e.g. "
                        f"{{model.depth: [6, 8]}}, got {r.grid!r}")
        r.grid = {}
        return
    r.grid = {key: _check_grid_key(key, values, r, problems) for key, values in flatten_grid(r.grid).items()}
    _check_tune(r, problems)


TUNE_METRICS = {"val_top1": max, "val_top5": max, "val_loss": min}  # each trial's best epoch by this metric
TUNE_SEED_BASE = 1000  # `tune.seeds: k` trains each trial with seeds 1000 ... 1000 + k - 1
# Keys whose trials would not be compared on one validation split, or that the study itself sets.
_NOT_TUNED = {"data.val_fraction": "it changes the validation split the trials are compared on",
              "data.max_eval_samples": "it changes the validation split the trials are compared on",
              "data.dataset": "it changes the validation split the trials are compared on",
              "data.root": "it changes the validation split the trials are compared on"}


def _check_tune(r: Recipe, problems: list[str]) -> None:
    """`tune: {optim.lr: [3e-4, 1e-3], seeds: 1, metric: val_top1}`, written back in one form: the swept keys
    (flat, typed like grid values), `seeds` as a list and `metric`."""
    if not r.tune:
        r.tune = {}
        return
    if not isinstance(r.tune, dict):
        problems.append(f"tune: expected a mapping of recipe keys to lists of values plus seeds and metric, e.g. "
                        f"{{optim.lr: [3e-4, 1e-3, 3e-3], seeds: 1, metric: val_top1}}, got {r.tune!r}")
        r.tune = {}
        return
    written = dict(r.tune)
    seeds, metric = written.pop("seeds", 1), written.pop("metric", "val_top1")
    if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
        seeds = [TUNE_SEED_BASE + i for i in range(seeds)]
    elif not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
              and len(set(seeds)) == len(seeds)):
        problems.append(f"tune.seeds: give how many seeds each trial trains (e.g. 1), or a list of distinct integer "
                        f"seeds, got {seeds!r}")
        seeds = []
    if metric not in TUNE_METRICS:
        problems.append(f"tune.metric: expected one of {', '.join(TUNE_METRICS)} (each trial's best epoch on the "
                        f"validation split), got {metric!r}")
    values = {}
    for key, choices in flatten_grid(written).items():
        reason = _NOT_TUNED.get(key) or ("the grid sweeps it already" if key in r.grid else None)
        if reason:
            problems.append(f"tune.{key}: cannot be tuned ({reason})")
            continue
        values[key] = _check_grid_key(key, choices, r, problems, where=f"tune.{key}")
    if not values:
        problems.append("tune: name at least one recipe key to tune with its values, e.g. "
                        "tune: {optim.lr: [3e-4, 1e-3, 3e-3]}")
    if r.data.val_fraction <= 0 and r.data.dataset != "imagefolder":
        problems.append("tune: the trials are compared on the validation split, and data.val_fraction is 0; "
                        "set data.val_fraction (e.g. 0.1)")
    r.tune = {**values, "seeds": seeds, "metric": metric}


def flatten_grid(grid: dict) -> dict:
    """{model: {depth: [6, 8]}} and {model.depth: [6, 8]} are the same grid."""
    return flatten(grid)


def grid_key_kind(key: str) -> Any:
    """The field type a dotted key names (a dataclass for a section such as data.augment).
    Raises KeyError(message) for a key that names no field."""
    kind: Any = Recipe
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(kind):
            raise KeyError(f"{'.'.join(parts[:i])} is a value, not a section")
        names = [f.name for f in dataclasses.fields(kind)]
        if part not in names:
            where = ".".join(parts[:i]) or "the recipe"
            raise KeyError(f"unknown key {part!r} in {where}{did_you_mean(part, names)}")
        kind = typing.get_type_hints(kind)[part]
    return kind


def set_key(data: dict, key: str, value: Any) -> None:
    """Set a dotted key in a recipe mapping; a mapping value for a section updates that section."""
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    if isinstance(value, dict):
        node[leaf] = {**(node.get(leaf) or {}), **{k: v for k, v in value.items() if k != "label"}}
    else:
        node[leaf] = value


def get_key(data: dict, key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _check_grid_key(key: str, values: Any, recipe: Recipe, problems: list[str], where: str = "") -> list:
    """Check one grid (or tune) key and each of its values as if it were set in `recipe`; returns the values
    coerced by the field's type (mappings for a section are kept as written)."""
    where = where or f"grid.{key}"
    reason = _NOT_IN_GRID.get(key) or _NOT_IN_GRID.get(key.split(".")[0])
    if reason:
        problems.append(f"{where}: cannot be swept by a grid ({reason})")
        return values if isinstance(values, list) else []
    try:
        kind = grid_key_kind(key)
    except KeyError as exc:
        problems.append(f"{where}: {exc.args[0]}")
        return values if isinstance(values, list) else []
    if not isinstance(values, list) or not values:
        problems.append(f"{where}: expected a non-empty list of values like [6, 8], got {values!r}")
        return []
    section = dataclasses.is_dataclass(kind)
    # The range problems the rest of the recipe has with this key at its default are its own, reported
    # once without the grid; a value is blamed for the ones it adds.
    own: list[str] = []
    _check_ranges(_with_value(recipe, key, _get_field(Recipe(), key)), own)
    coerced = []
    for i, value in enumerate(values):
        if section and not isinstance(value, dict):
            problems.append(f"{where}[{i}]: {key} is a section: give a mapping of its keys, "
                            f"e.g. {{label: crop-flip, rotation: 0}}, got {value!r}")
            coerced.append(value)
            continue
        found: list[str] = []
        typed = _coerce_grid_value(key, kind, value, recipe, found)
        in_range: list[str] = []
        _check_ranges(_with_value(recipe, key, typed), in_range)
        found += [p for p in in_range if p not in own]
        problems.extend(f"{where}[{i}]: {p}" for p in found)
        coerced.append(value if section else typed)
    if len({repr(v) for v in coerced}) < len(coerced):
        problems.append(f"{where}: a value is listed twice in {values!r}")
    return coerced


def _coerce_grid_value(key: str, kind: Any, value: Any, recipe: Recipe, problems: list[str]) -> Any:
    """A grid value typed as the recipe types that key; a section's mapping updates the recipe's section
    (its `label` only names the grid point)."""
    if not dataclasses.is_dataclass(kind):
        return _coerce(value, kind, key, problems)
    written = {k: v for k, v in value.items() if k != "label"}
    return _build(kind, {**dataclasses.asdict(_get_field(recipe, key)), **written}, key, problems)


def _get_field(recipe: Recipe, key: str) -> Any:
    node: Any = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _with_value(recipe: Recipe, key: str, value: Any) -> Recipe:
    """A copy of `recipe` with the dotted field `key` set to `value`."""
    trial = copy.deepcopy(recipe)
    *parents, leaf = key.split(".")
    setattr(_get_field(trial, ".".join(parents)) if parents else trial, leaf, value)
    return trial
