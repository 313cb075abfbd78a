"""One conversion of scalar values for recipe keys and variant options alike.

Values come from YAML, from ``key=value`` on the command line (read as YAML) or from
Python, so the same number may arrive as ``2``, ``2.0`` or ``"2.0"``, and PyYAML reads
``1e-3`` as a string. Each converter returns the value as its type or raises ValueError
with the phrase the error message uses ("expected an integer, got 2.5").
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on"), ("false", "no", "off")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise ValueError(f"expected true or false, got {value!r}")


def to_int(value: Any) -> int:
    """Integers, integral floats (2.0) and their spellings ("2", "2.0", "1e3")."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, str):
            value = float(value) if any(c in value for c in ".eE") else int(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        if not isinstance(value, (int, float)):
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"expected an integer, got {value!r}") from None


def to_float(value: Any) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        return float(value)
    except ValueError:
        raise ValueError(f"expected a number, got {value!r}") from None


def to_str(value: Any) -> str:
    """Any scalar as text (a label written as 5 is "5"); lists and mappings are not text."""
    if isinstance(value, (dict, list, tuple)) or value is None:
        raise ValueError(f"expected a string, got {value!r}")
    return str(value)


CONVERTERS = {bool: to_bool, int: to_int, float: to_float, str: to_str}


def convert(value: Any, kind: type) -> Any:
    return CONVERTERS[kind](value)


def yaml_word(value: Any, choices) -> Any:
    """YAML reads `no` / `off` / `yes` / `on` as booleans: map one back to the word a choice expects."""
    if isinstance(value, bool):
        words = TRUE_WORDS if value else FALSE_WORDS
        return next((w for w in words if w in choices), value)
    return value
