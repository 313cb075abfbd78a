"""The report's sections on accuracy against cost and on robustness, from runs' cost.json and corruptions.json."""

from __future__ import annotations

from pathlib import Path

import pytest
from attnzoo.study.runs import RunResult
from attnzoo.study.tradeoffs import (
    cost_section,
    pareto_front,
    robustness_section,
    sections,
)


def run(arm: str, seed: int, top1: float, cost: dict | None = None, corruptions: dict | None = None) -> RunResult:
    return RunResult(Path(f"{arm}-seed{seed}"), arm, seed, {"top1": top1}, [], None, {}, {},
                     {"arm": arm, "seed": seed}, cost=cost, corruptions=corruptions)


def cost(flops: float, attention: float, seconds: float, path: str = "forward") -> dict:
    return {"parameters": 1000, "flops_per_image": flops, "attention_flops_per_image": attention,
            "attention_path": path, "train_seconds": seconds, "peak_memory_mib": None}


def corrupted(clean: float, noise: list[float], blur: list[float]) -> dict:
    mean = (sum(noise) + sum(blur)) / 10
    return {"clean_top1": clean, "mean_corruption_top1": mean, "relative_corruption_top1": mean / clean,
            "corruptions": {"gaussian_noise": {"top1": noise}, "gaussian_blur": {"top1": blur}}}


def test_pareto_front_keeps_the_runs_nothing_beats():
    points = [(3.0, 0.70), (1.0, 0.50), (2.0, 0.40), (2.0, 0.60), (4.0, 0.65), (5.0, 0.90)]
    assert pareto_front(points) == [(1.0, 0.50), (2.0, 0.60), (3.0, 0.70), (5.0, 0.90)]


def test_the_cost_section_averages_each_arm_over_the_seeds_with_cost_json():
    arms = {"softmax": [run("softmax", 0, 0.5, cost(2e9, 5e8, 10.0)), run("softmax", 1, 0.7, cost(2e9, 5e8, 14.0))],
            "cosine": [run("cosine", 0, 0.6, cost(1e9, 1e8, 8.0, "explicit")), run("cosine", 1, 0.9)]}
    section = cost_section(arms)
    assert section.title == "Accuracy against cost"
    table = section.lines[0].splitlines()
    assert table[2] == ("| softmax | 2 | 60.00 ± 14.14 | 1,000 | 2 | 25.0 | forward | 12.0 ± 2.8 | n/a |")
    assert table[3] == "| cosine | 1 | 60.00 | 1,000 | 1 | 10.0 | explicit | 8.0 | n/a |"  # the seed with cost.json
    assert section.columns == {
        "softmax": {"attention_share_mean": 0.25, "attention_share_std": 0.0, "flops_per_image_mean": 2e9,
                    "flops_per_image_std": 0.0},
        "cosine": {"attention_share_mean": 0.1, "attention_share_std": None, "flops_per_image_mean": 1e9,
                   "flops_per_image_std": None}}
    assert [p.name for p in section.figures] == ["accuracy_vs_cost.png"]
    assert section.lines[-1] == "![Accuracy against cost](figures/accuracy_vs_cost.png)"


def test_the_robustness_section_has_a_column_per_corruption():
    arms = {"softmax": [run("softmax", 0, 0.8, corruptions=corrupted(0.8, [0.6] * 5, [0.4] * 5)),
                        run("softmax", 1, 0.6, corruptions=corrupted(0.6, [0.4] * 5, [0.2] * 5))]}
    section = robustness_section(arms)
    header, _, row = section.lines[0].splitlines()
    assert header.endswith("| gaussian noise (%) | gaussian blur (%) |")
    # mean corrupted 0.5 and 0.3 -> 40 ± 14.14; ratio 0.625 and 0.5 -> 56.2 ± 8.8
    assert row == "| softmax | 2 | 70.00 ± 14.14 | 40.00 ± 14.14 | 56.2 ± 8.8 | 50.00 ± 14.14 | 30.00 ± 14.14 |"
    assert section.columns["softmax"]["mean_corruption_top1_mean"] == pytest.approx(0.4)
    assert section.columns["softmax"]["relative_mean"] == pytest.approx(0.5625)
    assert [p.name for p in section.figures] == ["robustness.png"]


def test_the_released_cifar_c_arrays_get_a_section_of_their_own():
    """cifar_c.json (attnzoo eval --cifar-c) shares corruptions.json's schema and is reported apart from it."""
    arms = {"softmax": [run("softmax", 0, 0.8, corruptions=corrupted(0.8, [0.6] * 5, [0.4] * 5)),
                        run("softmax", 1, 0.6)]}
    arms["softmax"][0].cifar_c = {**corrupted(0.8, [0.5] * 5, [0.3] * 5), "source": "data/CIFAR-10-C"}
    arms["softmax"][1].cifar_c = {**corrupted(0.6, [0.3] * 5, [0.1] * 5), "source": "data/CIFAR-10-C"}
    found = {s.title: s for s in sections(arms)}
    assert list(found) == ["Robustness", "Robustness on CIFAR-C"]
    section = found["Robustness on CIFAR-C"]
    header, _, row = section.lines[0].splitlines()
    # mean corrupted 0.4 and 0.2 -> 30 ± 14.14; ratio 0.5 and 0.333 -> 41.7 ± 11.8
    assert row == "| softmax | 2 | 70.00 ± 14.14 | 30.00 ± 14.14 | 41.7 ± 11.8 | 40.00 ± 14.14 | 20.00 ± 14.14 |"
    assert "`data/CIFAR-10-C`" in section.lines[2]
    assert section.columns["softmax"]["cifar_c_mean_corruption_top1_mean"] == pytest.approx(0.3)
    assert [p.name for p in section.figures] == ["cifar_c.png"]
    # corruptions.json's section still reads only corruptions.json (one run has it)
    assert found["Robustness"].lines[0].splitlines()[2].startswith("| softmax | 1 |")


def test_runs_without_either_file_give_no_section():
    arms = {"softmax": [run("softmax", 0, 0.5)], "cosine": [run("cosine", 0, 0.6)]}
    assert cost_section(arms) is None and robustness_section(arms) is None and sections(arms) == []
    arms["cosine"][0].cost = cost(1e6, 1e5, 3.0)
    assert [s.title for s in sections(arms)] == ["Accuracy against cost"]
