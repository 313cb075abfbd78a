"""Training budgets: `train.budget: {steps: N}`, `{flops: F}` or `{seconds: S}` instead of fixed epochs.

Arms of a study that train for the same number of epochs do not cost the same: a slow
normalization takes longer for the same steps. A budget gives every arm the same cost instead.

- ``steps``: optimizer steps. Deterministic: a resumed run stops at the same step.
- ``flops``: training FLOPs, turned into steps once, when the run starts, from the model's
  training FLOPs per image (:func:`attnzoo.model.flops.model_flops`) times the global batch.
  The steps it comes to are recorded with the run (test_metrics.json's ``budget``).
- ``seconds``: the wall time of the training steps (not evaluation, not start-up). It depends
  on the machine and on what else runs there, so a seconds run is not reproducible; a resumed
  one counts the seconds its checkpoint recorded.

The learning-rate schedule the recipe writes for ``train.epochs`` (warm-up, milestones, cosine)
is fitted onto the budget: each part keeps its fraction of the run, so every run, however many
steps its budget buys, ends with its last step at the schedule's final value. ``train.epochs``
itself then only sets the schedule's shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attnzoo.config.recipe import Recipe

KINDS = ("steps", "flops", "seconds")


@dataclass
class Budget:
    kind: str  # one of KINDS
    value: float  # as the recipe gives it
    total_steps: int | None  # the steps the run takes; None for a seconds budget (not known ahead)
    flops_per_step: int | None = None  # a flops budget: training FLOPs of one optimizer step

    def planned_epochs(self, steps_per_epoch: int) -> int | None:
        """The epochs the run enters (its last one may be partial); None when not known ahead."""
        if self.total_steps is None:
            return None
        return math.ceil(self.total_steps / steps_per_epoch)

    def record(self) -> dict:
        """What test_metrics.json keeps of the budget and what it came to."""
        out = {"kind": self.kind, "value": self.value}
        if self.total_steps is not None:
            out["steps"] = self.total_steps
        if self.flops_per_step is not None:
            out["flops_per_step"] = self.flops_per_step
        return out

    def describe(self) -> str:
        if self.kind == "steps":
            return f"a budget of {self.total_steps} optimizer steps"
        if self.kind == "flops":
            return (f"a budget of {self.value:.3g} training FLOPs = {self.total_steps} steps of "
                    f"{self.flops_per_step:.3g} FLOPs")
        return f"a budget of {self.value:g} seconds of training steps (machine-dependent)"


def plan(recipe: Recipe, model: torch.nn.Module) -> Budget | None:
    """The run's budget, its steps worked out (None: the recipe trains for train.epochs)."""
    given = recipe.train.budget
    if given is None:
        return None
    ((kind, value),) = given.items()  # the recipe checks exactly one key
    if kind == "steps":
        return Budget(kind, value, int(value))
    if kind == "flops":
        per_step = flops_per_step(recipe, model)
        # At least one step; a budget below one step's cost is refused by no check, so it trains one.
        return Budget(kind, value, max(1, int(value // per_step)), per_step)
    return Budget(kind, value, None)


def flops_per_step(recipe: Recipe, model: torch.nn.Module) -> int:
    """Training FLOPs of one optimizer step: per image, times the global batch."""
    from attnzoo.model.flops import model_flops

    # The count draws random images: it must not move the RNG the run's training draws from.
    with torch.random.fork_rng(devices=[]):
        per_image = model_flops(model, recipe.model.image_size)["flops_per_image"]
    return int(per_image) * recipe.train.batch_size


def learning_rate(recipe: Recipe, start: float, end: float) -> float:
    """The learning rate of a step that covers the fraction [start, end] of the budget.

    The recipe's schedule is read in epochs of a train.epochs-long run; the budget is mapped onto
    it, and the step is scheduled at its end, so the last step (end = 1) is at the final value."""
    o, epochs = recipe.optim, recipe.train.epochs
    begun, done = start * epochs, min(end, 1.0) * epochs
    if o.warmup_epochs > 0 and begun < o.warmup_epochs:
        return o.lr * min(done / o.warmup_epochs, 1.0)
    if o.schedule == "step":
        return o.lr * o.gamma ** sum(done >= m for m in o.milestones)
    if o.schedule == "cosine":
        total = max(epochs - o.warmup_epochs, 1e-9)
        progress = min(max(done - o.warmup_epochs, 0.0) / total, 1.0)
        return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return o.lr


def final_learning_rate(recipe: Recipe) -> float:
    """The schedule's value at the end of the run: where every budget run's last step is."""
    return learning_rate(recipe, 1.0, 1.0)


class SecondsClock:
    """Where a seconds budget stands: the seconds of training steps so far, and whether the next
    step fits. A step is predicted to take as long as the last one."""

    def __init__(self, seconds: float):
        self.seconds, self.last_step = seconds, 0.0

    def fractions(self, elapsed: float) -> tuple[float, float, bool]:
        """(start, end, last) of the step about to run after `elapsed` seconds: `last` when a
        step after it would end past the budget, so this one is scheduled at the final value."""
        end = elapsed + self.last_step
        last = end + self.last_step >= self.seconds
        return elapsed / self.seconds, 1.0 if last else end / self.seconds, last
