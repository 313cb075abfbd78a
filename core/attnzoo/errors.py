"""User-facing errors. The CLI prints them as one paragraph and exits with status 2."""

from __future__ import annotations

import difflib


class AttnzooError(Exception):
    """Something the user can fix: a recipe, an override, a path, a checkpoint, a plugin."""


# Exit status of a run stopped by SIGTERM or Ctrl-C after saving its checkpoint: EX_TEMPFAIL
# from sysexits.h, "try again later". A scheduler can requeue on it; `--resume` continues.
EXIT_STOPPED = 75


class Stopped(Exception):
    """A run stopped by a signal after saving a checkpoint: not an error, the run can continue."""


class RecipeError(AttnzooError):
    """One or more problems in a recipe, all reported at once."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class PluginError(AttnzooError):
    """A plugin failed to load or register, or a variant name/option is wrong."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest choice, or ''."""
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
