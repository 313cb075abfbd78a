"""Recipes: YAML files validated into typed objects before any compute is spent.

Every problem is reported at once with its key path; misspelled keys get a suggestion;
values are coerced by the field's type (PyYAML reads ``1e-3`` as a string).
Recipes never execute code: ``yaml.safe_load`` only.

This module is the public API: from_dict, load, dump, run_dict/dump_run, resolve and the bundled
recipes. Its parts, lowest first: schema (the dataclasses), checks (coercion and one run's range
checks), studykeys (grid and tune), yamlio (bounded YAML reading and key=value overrides).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from attnzoo.config.keys import STUDY_KEYS
from attnzoo.errors import PluginError, RecipeError

# The recipe's parts live in their own modules; their names are re-exported here, where the rest of
# the package and users have always imported them from (attnzoo.config.recipe.X).
from attnzoo.config.schema import (  # noqa: F401 (re-exported)
    AttentionConfig, AugmentConfig, BenchConfig, DataConfig, ModelConfig, OptimConfig, PowerConfig, Recipe,
    RobustnessConfig, SlurmConfig, TrainConfig)
from attnzoo.config.checks import (  # noqa: F401 (re-exported)
    ARCHIVE_SUFFIXES, BUDGET_KINDS, MAX_BATCH_SIZE, MAX_IMAGE_SIZE, MAX_SEED, TIMM_PREFIX, TRACKER_PACKAGES,
    WEIGHT_FILES, _build, _check_ranges)
from attnzoo.config.studykeys import (  # noqa: F401 (re-exported)
    TUNE_METRICS, TUNE_SEED_BASE, _NOT_IN_GRID, _check_study_keys, flatten_grid, get_key, grid_key_kind, set_key)
from attnzoo.config.yamlio import (  # noqa: F401 (re-exported)
    MAX_SHOWN, MAX_YAML_ALIASES, MAX_YAML_NODES, YamlTooLarge, apply_overrides, load_yaml_text, parse_override,
    read_yaml, shorten)

if TYPE_CHECKING:  # the registry imports torch; validating a recipe loads it only when plugins are checked
    from attnzoo.contract.registry import KernelFactory, PluginInfo, Registry


def _check_attention(r: Recipe, problems: list[str], registry) -> None:
    """Check that `attention` resolves, and write its options out in full (defaults filled in,
    values typed): what recipe.yaml records. A study's arms (`variants`) are parsed and checked
    where studies are planned, attnzoo.study.study_arms."""
    if not isinstance(r.attention.name, str):
        return  # already reported as a type problem
    try:
        r.attention.options = resolve(r, registry).kernel.options
    except RecipeError as exc:
        problems.extend(exc.problems)


@dataclass(frozen=True)
class Resolved:
    """What a recipe's run builds, kept apart from the recipe so that the recipe stays plain
    data (copied, compared and written out as it is): the kernel factory of its attention
    variant, and the registry it was resolved in, whose plugins a run records."""

    kernel: KernelFactory
    registry: Registry

    @property
    def plugins(self) -> list[PluginInfo]:
        return self.registry.plugins


def resolve(recipe: Recipe, registry: Registry | None = None) -> Resolved:
    """`recipe.attention` resolved in `registry` (None: the installed plugins): the one place a
    variant name and its options become code. An unknown variant or a bad option raises a
    RecipeError worded as validation reports it (validation calls this too)."""
    from attnzoo.contract.registry import installed_or

    registry = installed_or(registry)
    try:
        kernel = registry.kernel(recipe.attention.name, recipe.attention.options)
    except PluginError as exc:
        raise RecipeError([f"attention: {exc}"], f"recipe {recipe.name!r}") from None
    return Resolved(kernel, registry)


# ---------------------------------------------------------------- public API


def from_dict(data: dict, *, registry=None, source: str = "recipe", check_plugins: bool = True) -> Recipe:
    problems: list[str] = []
    recipe = _build(Recipe, data, "", problems)
    _check_ranges(recipe, problems)
    _check_study_keys(recipe, data, problems)
    if check_plugins:
        _check_attention(recipe, problems, registry)
    if problems:
        raise RecipeError([shorten(problem) for problem in problems], source)
    return recipe


def load(path: str | Path, overrides: list[str] = (), *, registry=None, name: str | None = None) -> Recipe:
    """`name`: the recipe as the user gave it (e.g. a bundled recipe's name), used in messages."""
    data = apply_overrides(read_yaml(path), list(overrides))
    return from_dict(data, registry=registry, source=f"recipe {name or str(path)!r}")


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


# Sections that describe a benchmark or a study, not one run: a run's recipe.yaml leaves them out.
NOT_RUN_KEYS = STUDY_KEYS


def is_run_key(dotted: str) -> bool:
    return dotted.split(".")[0] not in NOT_RUN_KEYS


def run_dict(recipe: Recipe) -> dict:
    """The keys of one run: what its recipe.yaml holds."""
    return {k: v for k, v in recipe.to_dict().items() if is_run_key(k)}


def dump_run(recipe: Recipe) -> str:
    return yaml.safe_dump(run_dict(recipe), sort_keys=False)


def bundled_dir() -> Path:
    return Path(__file__).parents[1] / "recipes"


def bundled_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(bundled_dir().glob("*.yaml"))}


def resolve_path(name_or_path: str) -> Path:
    """A recipe path, or the name of a bundled recipe ('cifar100-seed')."""
    path = Path(name_or_path)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    bundled = bundled_recipes()
    if name_or_path in bundled:
        return bundled[name_or_path]
    return path
