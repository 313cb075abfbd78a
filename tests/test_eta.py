"""The time estimate printed after the first steps of a run: closed-form numbers on a fake clock."""

import pytest
import torch
from attnzoo.run import eta


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(eta.time, "perf_counter", lambda: now[0])
    return now


def feed(estimate, clock, steps, seconds_per_step, epochs_done=0):
    lines = []
    for step in range(1, steps + 1):
        clock[0] += seconds_per_step
        lines.append(estimate.after_step(step, epochs_done))
    return lines


@pytest.mark.parametrize("runs_left, expected", [
    # 0.5 s a step; left: 1000 - 22 train steps + (10 epochs x 4 + 8 test) / 3 eval steps = 994 steps
    (1, "estimate: ~8 min left for this run (500 ms per step of the first 20 on cpu)"),
    # a whole run: 1000 + 48/3 = 1016 steps; 994 + 11 x 1016 = 12,170 steps x 0.5 s = 1.7 h
    (12, "estimate: ~8 min left for this run, ~1.7 h for the 12 runs left in the study "
         "(500 ms per step of the first 20 on cpu)"),
])
def test_estimate_after_the_timed_steps(clock, runs_left, expected):
    estimate = eta.RunEstimate(total_steps=1000, eval_steps_per_epoch=4, test_steps=8, epochs=10,
                               device=torch.device("cpu"), runs_left=runs_left)
    lines = feed(estimate, clock, 40, 0.5)
    assert [i for i, line in enumerate(lines, 1) if line] == [eta.WARMUP_STEPS + eta.TIMED_STEPS]
    assert lines[eta.WARMUP_STEPS + eta.TIMED_STEPS - 1] == expected


def test_warmup_steps_are_not_timed(clock):
    estimate = eta.RunEstimate(total_steps=1000, eval_steps_per_epoch=0, test_steps=0, epochs=1,
                               device=torch.device("cpu"))
    clock[0] += 100.0  # a slow first step (compilation) is left out
    line = [x for x in feed(estimate, clock, 30, 0.1) if x][0]
    assert "(100 ms per step" in line


def test_no_estimate_for_a_run_shorter_than_twice_the_measurement(clock):
    estimate = eta.RunEstimate(total_steps=43, eval_steps_per_epoch=1, test_steps=1, epochs=1,
                               device=torch.device("cpu"))
    assert not any(feed(estimate, clock, 43, 0.1))


@pytest.mark.parametrize("seconds, text", [(42, "42 s"), (89.4, "89 s"), (600, "10 min"), (5400, "1.5 h")])
def test_duration(seconds, text):
    assert eta.duration(seconds) == text
