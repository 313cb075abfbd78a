"""How long a run (and the study around it) will take, from the time of its first steps.

A 10-epoch study is minutes on a GPU and many hours on a laptop CPU: the user learns
which after a few seconds instead of waiting blind."""

from __future__ import annotations

import math
import time

import torch

WARMUP_STEPS = 2  # the first steps pay for compilation and allocation: not timed
TIMED_STEPS = 20
EVAL_STEP_COST = 1 / 3  # a forward pass without backward, relative to a training step


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunEstimate:
    """Feed it every training step of this process; it returns one line once it has measured."""

    def __init__(self, *, total_steps: int, eval_steps_per_epoch: int, test_steps: int, epochs: int,
                 device: torch.device, runs_left: int = 1):
        self.total_steps, self.epochs = total_steps, epochs
        self.eval_steps_per_epoch, self.test_steps = eval_steps_per_epoch, test_steps
        self.device, self.runs_left = device, runs_left
        self.seen, self.started = 0, None

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # twice per run: steps are asynchronous
        return time.perf_counter()

    def after_step(self, global_step: int, epochs_done: int) -> str | None:
        """Call after each step with the run's counters; a message once, after the timed steps."""
        self.seen += 1
        if self.seen == WARMUP_STEPS:
            self.started = self._now()
        if self.seen != WARMUP_STEPS + TIMED_STEPS or self.total_steps < 2 * (WARMUP_STEPS + TIMED_STEPS):
            return None
        per_step = (self._now() - self.started) / TIMED_STEPS
        left = self.seconds(per_step, self.total_steps - global_step, self.epochs - epochs_done)
        text = f"estimate: ~{duration(left)} left for this run"
        if self.runs_left > 1:
            whole_run = self.seconds(per_step, self.total_steps, self.epochs)
            text += f", ~{duration(left + (self.runs_left - 1) * whole_run)} for the {self.runs_left} runs left in the study"
        return text + f" ({per_step * 1000:.0f} ms per step of the first {TIMED_STEPS} on {self.device})"

    def seconds(self, per_step: float, train_steps: int, epochs: int) -> float:
        evals = epochs * self.eval_steps_per_epoch + self.test_steps
        return per_step * (train_steps + EVAL_STEP_COST * evals)


def eval_steps(samples: int, batch_size: int) -> int:
    return math.ceil(samples / batch_size) if samples else 0
