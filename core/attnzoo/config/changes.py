"""Is this recipe change a change? The one comparison of a run's recipe.yaml with a recipe now.

``train --resume`` (attnzoo.run.rundir.prepare), continuing a run to more epochs
(attnzoo.run.extend) and planning a study (attnzoo.study.plan) all call `recipe_changes` and
read its answer by the kinds of attnzoo.config.keys, so what a study plans as "resuming" is
exactly what a resume accepts.
"""

from __future__ import annotations

from attnzoo.config.keys import Kind, flatten, kind_of
from attnzoo.config.recipe import Recipe


class Changes(dict):
    """{dotted key: (value in the run, value now)} for every key of a run whose value differs.

    Study and benchmark keys are never in it: they are no part of a run."""

    def of_kind(self, *kinds: Kind) -> dict[str, tuple]:
        return {key: values for key, values in self.items() if kind_of(key) in kinds}

    @property
    def different_run(self) -> dict[str, tuple]:
        """The changes that make the run another one: it cannot be resumed or continued."""
        return self.of_kind(Kind.RESULT)

    @property
    def continuing(self) -> dict[str, tuple]:
        """The changes of when the run stops (train.epochs, train.early_stopping_patience)."""
        return self.of_kind(Kind.CONTINUABLE)

    @property
    def that_matter(self) -> dict[str, tuple]:
        """The changes that could change the run's result: other ones, or continuing it."""
        return self.of_kind(Kind.RESULT, Kind.CONTINUABLE)


def recipe_changes(old: dict, new: dict) -> Changes:
    """Compare a run's recipe.yaml as written (`old`) with a recipe's to_dict() now (`new`).

    A key the run's recipe.yaml lacks (written before the key existed) counts as its default."""
    now = _run_values(new)
    was = {**{key: value for key, value in _run_values(Recipe().to_dict()).items() if key in now},
           **_run_values(old)}
    return Changes({key: (was.get(key), now.get(key)) for key in sorted(set(was) | set(now))
                    if was.get(key) != now.get(key)})


def _run_values(recipe: dict) -> dict:
    return {key: value for key, value in flatten(recipe).items() if kind_of(key) is not Kind.STUDY}
