"""Recipe YAML read within bounds, problems shortened for the terminal, key=value overrides applied.

Recipes never execute code: ``yaml.safe_load`` only, through a loader that refuses alias bombs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from attnzoo.config.keys import flatten
from attnzoo.errors import AttnzooError, RecipeError


# A recipe is a few hundred YAML nodes. These bounds refuse an alias bomb (a few lines whose
# aliases expand to billions of values) while it is composed, before anything expands it: a
# deep copy, a comparison or an error message would otherwise take hours and all memory.
MAX_YAML_ALIASES = 1_000
MAX_YAML_NODES = 100_000  # counted as expanded: an alias counts every node it stands for
MAX_SHOWN = 500  # characters of one problem shown; a long value is cut in its middle


class YamlTooLarge(ValueError):
    """A YAML document over the bounds above; the message says which and by how much."""


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that counts aliases while composing and the expanded node count of the
    composed document before constructing it."""

    def __init__(self, stream):
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                raise YamlTooLarge(f"it uses more than {MAX_YAML_ALIASES:,} aliases (*name); a recipe needs a few")
        return super().compose_node(parent, index)

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {}, set())
        return node


def _expanded_size(node, sizes: dict, open_nodes: set) -> int:
    """The nodes `node` stands for once every alias is expanded, counted over the shared graph
    (each node once, with its size remembered), so a bomb is measured without being expanded."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:
        raise YamlTooLarge("an alias refers to a node that contains it, which expands without end")
    open_nodes.add(key)
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else [])
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(key)
    if size > MAX_YAML_NODES:
        raise YamlTooLarge(f"it expands to more than {MAX_YAML_NODES:,} values (through its aliases); "
                           "a recipe holds a few hundred")
    sizes[key] = size
    return size


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load within the bounds above: YamlTooLarge beyond them, yaml.YAMLError for bad YAML."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise YamlTooLarge("it nests deeper than Python can read; a recipe nests a few levels") from None
    finally:
        loader.dispose()


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut in its middle to about `limit` characters: a problem keeps its key (at the
    start) and its fix (at the end), and a huge value never floods the terminal."""
    if len(text) <= limit:
        return text
    head, tail = text[: limit * 3 // 5], text[-(limit * 2 // 5):]
    return f"{head} ...[{len(text) - len(head) - len(tail):,} characters left out]... {tail}"


def parse_override(text: str) -> tuple[list[str], Any]:
    shown = shorten(repr(text))
    if "=" not in text or text.startswith("="):
        raise RecipeError([f"override {shown}: expected key=value, e.g. optim.lr=3e-4 or seeds=[0,1]"], "command line")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(p.isidentifier() for p in parts):
        raise RecipeError([f"override {shown}: {shorten(repr(key))} is not a dotted key like train.epochs"],
                          "command line")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except YamlTooLarge as exc:
        raise RecipeError([f"override of {key.strip()}: the value is too large: {exc}"], "command line") from None
    except yaml.YAMLError:
        value = raw  # keep as text; the field's type decides
    return parts, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        if parts[0] in ("grid", "tune") and len(parts) > 1:  # grid.model.depth=[6,8]: the rest is one key
            section = parts[0]
            if not isinstance(data.get(section) or {}, dict):
                raise RecipeError([f"override {text!r}: the recipe's {section} is not a mapping"], "command line")
            data[section] = flatten(data.get(section) or {})  # studykeys.flatten_grid
            data[section][".".join(parts[1:])] = value
            continue
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise RecipeError([f"override {text!r}: {part!r} is not a section"], "command line")
            node = child
        node[parts[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        hint = " Run `attnzoo ls` to see the bundled recipes, `attnzoo cp NAME FILE` to copy one."
        raise AttnzooError(f"recipe file {str(path)!r} not found.{hint}")
    try:
        data = load_yaml_text(path.read_text())
    except YamlTooLarge as exc:
        raise AttnzooError(f"recipe {str(path)!r} is too large to be a recipe: {exc}. Write the values out "
                           "instead of nesting aliases.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise AttnzooError(f"recipe {str(path)!r} is not valid YAML{where}: "
                           f"{getattr(exc, 'problem', exc)}. Check indentation and colons.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AttnzooError(f"recipe {str(path)!r} must be a mapping of keys (model:, train:, ...), "
                           f"not a {type(data).__name__}")
    return data
