"""The study report, built from run files alone: written once, read once, the same content as before."""

from __future__ import annotations

import builtins
import csv
import json
import statistics
from pathlib import Path

import pytest
import yaml
from attnzoo.errors import AttnzooError
from attnzoo.study import report, tradeoffs
from attnzoo.study.report import build_report

CORRUPTIONS = ["gaussian_noise", "contrast"]
# (arm, variant, baseline, seed, test top-1); softmax is the baseline of cosine
RUNS = [("softmax", "softmax", "softmax", 0, 0.50), ("softmax", "softmax", "softmax", 1, 0.60),
        ("cosine", "cosine", "softmax", 0, 0.55), ("cosine", "cosine", "softmax", 1, 0.75)]
FLOPS = {"softmax": 2_000_000, "cosine": 1_500_000}


def write_run(study: Path, arm: str, variant: str, baseline: str, seed: int, top1: float, *, started: int,
              cost: bool = True, corruptions: bool = True) -> Path:
    """The files a finished study run leaves, with made-up numbers (no training, no dataset)."""
    run = study / f"{arm}-seed{seed}"
    run.mkdir(parents=True)
    classes = ["a", "b", "c"]
    test = {"top1": top1, "top5": 1.0, "loss": 1.0 - top1, "precision_macro": top1, "recall_macro": top1,
            "f1_macro": top1, "ece": 0.05, "best_epoch": 2, "parameters": 1000, "train_seconds": 10.0 + seed,
            "mean_epoch_seconds": 5.0, "images_per_sec": 100.0, "peak_memory_mib": None, "variant": variant,
            "attention_options": {}, "seed": seed, "samples": 30, "classes": classes,
            "confusion_matrix": [[8, 1, 1], [1, 8, 1], [2, 2, 6]]}
    (run / "test_metrics.json").write_text(json.dumps(test))
    rows = [{"epoch": e, "train_loss": 2.0 / e, "val_loss": 2.1 / e, "val_top1": top1 * e / 2,
             "val_top5": 1.0, "lr": 1e-3} for e in (1, 2)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "attention.json").write_text(json.dumps({
        "entropy": [[0.9, 0.8], [0.7, 0.6]], "image_indices": [0, 1],
        "cls_maps": [[[0.1, 0.9], [0.5, 1.0]], [[1.0, 0.2], [0.3, 0.4]]]}))
    recipe = {"name": "synthetic study", "attention": {"name": variant}, "model": {"dim": 32, "depth": 1},
              "data": {"dataset": "synthetic"}, "optim": {"lr": 1e-3}, "train": {"epochs": 2, "seed": seed}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "arm.json").write_text(json.dumps({"arm": arm, "variant": variant, "grid": {}, "baseline": baseline,
                                              "seed": seed}))
    (run / "environment.json").write_text(json.dumps({"time": f"2024-01-01T00:00:{started:02d}",
                                                      "device": "cpu", "device_name": "cpu"}))
    if cost:
        (run / "cost.json").write_text(json.dumps({
            "parameters": 1000, "flops_per_image": FLOPS[variant] + seed, "attention_flops_per_image": 500_000,
            "attention_path": "forward", "train_seconds": 10.0 + seed, "peak_memory_mib": None}))
    if corruptions:
        per_name = {n: {"top1": [top1 - 0.1 * s for s in (0.1, 0.2, 0.3, 0.4, 0.5)]} for n in CORRUPTIONS}
        mean = statistics.fmean(v for r in per_name.values() for v in r["top1"])
        (run / "corruptions.json").write_text(json.dumps({
            "clean_top1": top1, "mean_corruption_top1": mean, "relative_corruption_top1": mean / top1,
            "corruptions": per_name}))
    return run


def make_study(folder: Path, **files) -> Path:
    study = folder / "study"
    for started, (arm, variant, baseline, seed, top1) in enumerate(RUNS):
        write_run(study, arm, variant, baseline, seed, top1, started=started, **files)
    return study


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def headings(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("## ")]


@pytest.fixture
def writes(monkeypatch) -> list[Path]:
    """Every file written through Path.write_text, open(..., 'w'/'a') or a matplotlib savefig."""
    from matplotlib.figure import Figure

    written: list[Path] = []
    saving: list[bool] = []  # inside savefig, whose own open() is that one write
    write_text, open_, savefig = Path.write_text, builtins.open, Figure.savefig

    def recording_write_text(self, *args, **kwargs):
        written.append(Path(self))
        return write_text(self, *args, **kwargs)

    def recording_open(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax+") and not saving:
            written.append(Path(file))
        return open_(file, mode, *args, **kwargs)

    def recording_savefig(self, fname, *args, **kwargs):
        written.append(Path(fname))
        saving.append(True)
        try:
            return savefig(self, fname, *args, **kwargs)
        finally:
            saving.pop()

    monkeypatch.setattr(Path, "write_text", recording_write_text)
    monkeypatch.setattr(builtins, "open", recording_open)
    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    return written


def test_every_report_file_is_written_once_and_nothing_else(tmp_path, writes):
    study = make_study(tmp_path)
    writes.clear()  # count from here: the run files above are the study's, not the report's
    build_report(study)
    assert sorted(p.relative_to(study).as_posix() for p in writes) == sorted(
        ["results.md", "results.csv"] + [f"figures/{p.name}" for p in (study / "figures").iterdir()])
    assert {"accuracy_vs_cost.png", "robustness.png", "loss.png"} <= {p.name for p in writes}
    assert not hasattr(tradeoffs, "add_to_report")  # the report is assembled once, not patched afterwards


def test_each_run_file_is_read_once(tmp_path, monkeypatch):
    study = make_study(tmp_path)
    reads: list[Path] = []
    read_text = Path.read_text

    def recording_read_text(self, *args, **kwargs):
        reads.append(Path(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", recording_read_text)
    build_report(study)
    for name in ("cost.json", "corruptions.json", "test_metrics.json", "attention.json"):
        counted = sorted(p.parent.name for p in reads if p.name == name)
        assert counted == sorted(f"{arm}-seed{seed}" for arm, _, _, seed, _ in RUNS), name


def test_results_md_has_every_section_in_order(tmp_path):
    study = make_study(tmp_path)
    build_report(study)
    markdown = (study / "results.md").read_text()
    assert markdown.startswith("# Results: synthetic study\n")
    assert headings(markdown) == ["## What this study can conclude", "## Leaderboard", "## Omnibus test",
                                  "## Paired comparison with the baseline", "## Rank uncertainty",
                                  "## Recipe of these runs", "## Accuracy and calibration", "## Cost",
                                  "## Figures", "## Accuracy against cost", "## Robustness", "## Runs"]
    assert "![Accuracy against cost](figures/accuracy_vs_cost.png)" in markdown
    assert "![Accuracy under corruption](figures/robustness.png)" in markdown
    assert "### Training and validation loss per epoch\n\n![Training and validation loss per epoch](figures/loss.png)" \
        in markdown
    # cosine: 0.55 and 0.75 -> 65.00 ± 14.14; softmax 0.50 and 0.60 -> 55.00 ± 7.07
    assert "| 1 | cosine | 2 | 65.00 ± 14.14 |" in markdown and "| 2 | softmax | 2 | 55.00 ± 7.07 |" in markdown
    assert "| cosine | softmax | 2 | +10.00 |" in markdown  # paired: differences 0.05 and 0.15
    assert markdown.endswith("| `cosine-seed1` | cosine | `{}` | 1 | 75.00 | 100.00 | 2 |\n")


def test_results_csv_keeps_its_columns_then_cost_and_robustness(tmp_path):
    study = make_study(tmp_path)
    build_report(study)
    rows = read_csv(study / "results.csv")
    columns = list(rows[0])
    assert columns[:6] == ["arm", "variant", "options", "grid", "n_seeds", "seeds"]
    assert columns[-13:] == ["baseline", "top1_diff_mean", "top1_diff_low", "top1_diff_high", "top1_diff_n",
                             "attention_share_mean", "attention_share_std", "flops_per_image_mean",
                             "flops_per_image_std", "mean_corruption_top1_mean", "mean_corruption_top1_std",
                             "relative_mean", "relative_std"]
    by_arm = {r["arm"]: r for r in rows}
    assert [r["arm"] for r in rows] == ["softmax", "cosine"]  # the order the study started them
    assert float(by_arm["cosine"]["top1_mean"]) == pytest.approx(0.65)
    assert float(by_arm["cosine"]["top1_diff_mean"]) == pytest.approx(0.10)
    assert float(by_arm["softmax"]["flops_per_image_mean"]) == pytest.approx(2_000_000.5)
    assert float(by_arm["cosine"]["attention_share_mean"]) == pytest.approx(
        statistics.fmean([500_000 / 1_500_000, 500_000 / 1_500_001]))
    clean = [0.55, 0.75]
    expected = statistics.fmean(statistics.fmean(c - 0.1 * s for s in (0.1, 0.2, 0.3, 0.4, 0.5)) for c in clean)
    assert float(by_arm["cosine"]["mean_corruption_top1_mean"]) == pytest.approx(expected)


def test_a_study_of_the_previous_version_builds_without_cost_or_corruptions(tmp_path):
    study = make_study(tmp_path, cost=False, corruptions=False)
    build_report(study)
    markdown = (study / "results.md").read_text()
    assert "## Accuracy against cost" not in markdown and "## Robustness" not in markdown
    assert headings(markdown)[-1] == "## Runs"
    assert list(read_csv(study / "results.csv")[0])[-1] == "top1_diff_n"
    assert not (study / "figures" / "accuracy_vs_cost.png").exists()


def test_an_arm_without_cost_json_has_empty_cost_columns(tmp_path):
    study = make_study(tmp_path)
    for seed in (0, 1):
        (study / f"cosine-seed{seed}" / "cost.json").unlink()
    build_report(study)
    by_arm = {r["arm"]: r for r in read_csv(study / "results.csv")}
    assert by_arm["cosine"]["flops_per_image_mean"] == "" and by_arm["softmax"]["flops_per_image_mean"] != ""
    assert by_arm["cosine"]["mean_corruption_top1_mean"] != ""
    cost_table = (study / "results.md").read_text().split("## Accuracy against cost")[1].split("## ")[0]
    assert "| softmax |" in cost_table and "| cosine |" not in cost_table


@pytest.mark.parametrize("name", ["cost.json", "corruptions.json", "attention.json"])
def test_a_damaged_run_file_is_a_clear_error_and_leaves_the_old_report(tmp_path, name):
    study = make_study(tmp_path)
    build_report(study)
    before = {p: p.read_bytes() for p in (study / "results.md", study / "results.csv")}
    damaged = study / "cosine-seed1" / name
    damaged.write_text('{"flops_per_image": 12')  # cut off mid-write
    with pytest.raises(AttnzooError) as info:
        build_report(study)
    message = str(info.value)
    assert str(damaged) in message and "is not valid JSON" in message and "run the study again" in message
    assert {p: p.read_bytes() for p in before} == before


def test_the_report_draws_attention_maps_over_the_images_when_the_run_saved_them(tmp_path):
    """A run of an earlier version has no attention_images.safetensors: its maps are drawn alone."""
    import torch
    from attnzoo.run.analysis import write_map_images

    study = make_study(tmp_path)
    build_report(study)
    without = (study / "figures" / "attention_maps.png").stat().st_size
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    for path in study.glob("*-seed*"):
        write_map_images(path / "attention_images.safetensors", images, [0, 1])
    build_report(study)
    assert (study / "figures" / "attention_maps.png").stat().st_size > without


def test_the_old_module_names_still_import():
    for name in ("build_report", "load_run", "finished_runs", "group_by_arm", "RunResult", "mean_std"):
        assert callable(getattr(report, name)), name


def write_study(folder: Path, top1: dict[str, list[float]], study_yaml: str | None = None) -> Path:
    """A study of the arms in `top1` (arm -> test top-1 by seed), softmax the baseline of every arm."""
    study = folder / "study"
    started = 0
    for arm, values in top1.items():
        for seed, value in enumerate(values):
            write_run(study, arm, "softmax" if arm == "softmax" else "cosine", "softmax", seed, value,
                      started=started, cost=False, corruptions=False)
            started += 1
    if study_yaml is not None:
        (study / "study.yaml").write_text(study_yaml)
    return study


def section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n")[1].split("\n## ")[0]


def test_the_report_tests_two_arms_and_says_it_cannot_rank_them(tmp_path):
    import math

    study = make_study(tmp_path, cost=False, corruptions=False)
    build_report(study)
    markdown = (study / "results.md").read_text()
    # cosine - softmax by seed: 0.05, 0.15 -> t = 0.10 / (0.0707 / sqrt 2) = 2 with 1 df: p = 1 - 2 atan(2) / pi
    p = 1 - 2 * math.atan(2) / math.pi
    assert f"| cosine | softmax | 2 | +10.00 | [-53.53, +73.53] | +1.41 | {p:.3f} | {p:.3f} | no |" in markdown
    assert section(markdown, "Omnibus test").strip() == \
        "Friedman's test over the arms cannot be run: it needs 3 arms or more, the study has 2."
    # s = 7.07 pp; (t(0.975, 1) + t(0.8, 1)) * 7.07 / sqrt 2 = (12.706 + 1.376) * 5 = 70.4
    assert section(markdown, "What this study can conclude").strip() == (
        "With 2 seeds and a spread of 7.1 pp (observed, per-seed differences to the baseline) the study can detect "
        "differences of about 70.4 pp at 80 % power; no arm differs from softmax after Holm correction: it cannot "
        "rank these arms (its simultaneous interval rules out a difference of more than 73.5 pp).")
    # |Δ| 10 pp + t(0.975, 1) * 7.07 / sqrt 2 = 10 + 63.5: the largest difference the interval still allows
    rows = {r["arm"]: r for r in read_csv(study / "results.csv")}
    assert float(rows["cosine"]["top1_diff_p_holm"]) == pytest.approx(p)
    assert float(rows["cosine"]["top1_diff_d_z"]) == pytest.approx(0.10 / math.sqrt(0.005))
    assert rows["softmax"]["top1_diff_p"] == "" and float(rows["cosine"]["p_best"]) == 1.0


def test_only_a_difference_that_survives_holm_is_starred(tmp_path):
    import scipy.stats

    base = [0.50, 0.52, 0.48, 0.51]
    top1 = {"softmax": base, "clear": [b + d for b, d in zip(base, [0.04, 0.05, 0.03, 0.045])],
            "lucky": [b + d for b, d in zip(base, [0.02, 0.05, 0.01, 0.04])],
            "same": [b + d for b, d in zip(base, [0.01, -0.01, 0.02, -0.02])]}
    study = write_study(tmp_path, top1, "name: s\npower:\n  target_delta: 1.0\n")
    build_report(study)
    markdown = (study / "results.md").read_text()
    p = {arm: scipy.stats.ttest_rel(top1[arm], base).pvalue for arm in ("clear", "lucky", "same")}
    assert p["lucky"] < 0.05 < 2 * p["lucky"]  # significant alone, not after correcting for 3 comparisons
    leaderboard = section(markdown, "Leaderboard")
    row = {line.split(" | ")[1]: line for line in leaderboard.splitlines() if line.startswith("| ")}
    assert row["clear"].endswith("\\* vs softmax |") and "**" in row["clear"]
    assert "*" not in row["lucky"] and "*" not in row["same"]
    paired = section(markdown, "Paired comparison with the baseline")
    assert f"| {p['lucky']:.3f} | {2 * p['lucky']:.3f} | no |" in paired
    assert f"| {3 * p['clear']:.3f} | **yes** |" in paired
    friedman = scipy.stats.friedmanchisquare(*top1.values())
    assert f"χ² = {friedman.statistic:.2f}, p = {friedman.pvalue:.3f}: some arm differs" in markdown
    conclusion = section(markdown, "What this study can conclude").strip()
    assert conclusion.startswith("With 4 seeds and a spread of ")
    assert conclusion.endswith("would detect 1 pp, so it cannot separate arms that differ by 1 pp; clear (+4.1 pp) "
                               "differs from softmax after Holm correction, and lucky, same cannot be told from it (their "
                               "simultaneous intervals rule out differences of more than 7.4 pp for lucky, 4.4 pp for "
                               "same).")
    ranks = section(markdown, "Rank uncertainty")
    assert ranks.strip().splitlines()[2].startswith("| clear | ")  # the most likely best first


def test_fixed_epochs_and_a_budget_are_each_ranked_on_their_own():
    """A grid over train.budget: one arm leads at equal epochs, the other at equal cost; both rankings shown."""
    from attnzoo.study.runs import RunResult
    from attnzoo.study.sections import budget_rankings_section, summarize

    def arm(variant, budget, top1s):
        label = variant + ("" if budget is None else "-budget=flops=2e+15")
        grid = {"train.budget": "none" if budget is None else "flops=2e+15"}
        return label, [RunResult(Path(f"{label}-seed{s}"), label, s, {"top1": t, "top5": 1.0}, [], None,
                                 {"train": {"epochs": 10, "budget": budget}}, {},
                                 {"arm": label, "variant": variant, "grid": grid, "seed": s})
                       for s, t in enumerate(top1s)]

    arms = dict([arm("softmax", None, [0.60, 0.62]), arm("sparsemax", None, [0.63, 0.65]),
                 arm("softmax", {"flops": 2e15}, [0.58, 0.60]), arm("sparsemax", {"flops": 2e15}, [0.50, 0.52])])
    section = budget_rankings_section(arms, summarize(arms))
    assert section.title == "Rankings by training length"
    table = section.lines[2:]
    assert table[0] == "| arm | fixed epochs (10): rank | top-1 (%) | flops=2e+15: rank | top-1 (%) |"
    assert table[2:] == ["| sparsemax | 1 | 64.00 | 2 | 51.00 |",  # in the first ranking's order
                         "| softmax | 2 | 61.00 | 1 | 59.00 |"]
    one_kind = {label: runs for label, runs in arms.items() if "budget" not in label}
    assert budget_rankings_section(one_kind, summarize(one_kind)) is None


def test_the_conclusion_quotes_only_intervals_that_rule_something_out():
    from attnzoo.study.sections import _bounds_text
    from attnzoo.study.stats import Comparison

    def c(arm, low, high):
        return Comparison(arm, "softmax", 2, (low + high) / 2, 0.01, 1.0, 0.5, 1.0, low, high, 15)

    assert _bounds_text([c("a", -0.02, 0.011)]) == " (its simultaneous interval rules out a difference of more than 2.0 pp)"
    many = [c("a", -0.1, 0.05), c("b", -0.2, 0.3), c("d", -0.05, 0.02), c("e", -0.01, 0.2), c("wide", -4.9, 4.8)]
    assert _bounds_text(many) == (" (the simultaneous intervals of 4 of them rule out differences of more than "
                                  "5.0-30.0 pp; 1 interval(s) span more than ±100 pp and rule out nothing)")
    assert _bounds_text([c("wide", -4.9, 4.8)]) == " (1 interval(s) span more than ±100 pp and rule out nothing)"
    assert _bounds_text([]) == ""
