"""A study's plan says, before anything is trained, what its seeds can detect: from power.sd or from the spread a
previous study observed (power.reference), in `attnzoo validate` and the study's plan line alike."""

from __future__ import annotations

from pathlib import Path

import pytest
from attnzoo import cli
from attnzoo.config import recipe as recipes
from attnzoo.errors import AttnzooError
from attnzoo.study.plan import plan_runs, power_line
from attnzoo.study.stats import detectable_difference, seeds_needed
from test_report import make_study


def write_recipe(folder: Path, power: str, variants: str = "[softmax, cosine, standardized]") -> Path:
    path = folder / "study.yaml"
    path.write_text(f"name: pw\noutput_dir: {folder / 'out'}\nvariants: {variants}\nseeds: [0, 1, 2]\n{power}")
    return path


def validate(capsys, path: Path) -> tuple[int, str]:
    code = cli.main(["validate", str(path)])
    return code, capsys.readouterr().err


def test_validate_prints_the_detectable_difference_from_power_sd(tmp_path, capsys):
    code, err = validate(capsys, write_recipe(tmp_path, "power: {sd: 4.0, target_delta: 2.0}\n"))
    # 3 seeds, spread 4 pp: (t(0.975, 2) + t(0.8, 2)) * 4 / sqrt 3 = 12.4 pp; 2 comparisons with softmax
    assert code == 0 and detectable_difference(4.0, 3) == pytest.approx(12.39, abs=0.01)
    corrected, needed = detectable_difference(4.0, 3, 2), seeds_needed(4.0, 2.0, 2)
    assert (round(corrected, 1), needed) == (16.8, 41)
    assert ("# power: With 3 seeds and a spread of 4 pp (power.sd) the study can detect differences of about 12.4 pp "
            "at 80 % power (16.8 pp after correcting for 2 comparisons); 41 seeds would detect 2 pp, so it cannot "
            "separate arms that differ by 2 pp.") in err


def test_the_plan_uses_the_spread_a_reference_study_observed(tmp_path, capsys):
    reference = make_study(tmp_path, cost=False, corruptions=False)  # cosine - softmax: 0.05, 0.15 -> s = 7.07 pp
    recipe = recipes.load(write_recipe(tmp_path, f"power: {{reference: {reference}, target_delta: 30}}\n",
                                       "[softmax, cosine]"))
    line = power_line(recipe, plan_runs(recipe))
    expected = detectable_difference(7.0711, 3)
    assert line == (f"power: With 3 seeds and a spread of 7.1 pp (observed in {reference}) the study can detect "
                    f"differences of about {expected:.1f} pp at 80 % power; {seeds_needed(7.0711, 30)} seeds would "
                    "detect 30 pp.")
    code, err = validate(capsys, write_recipe(tmp_path, "power: {reference: nowhere/at/all}\n"))
    assert code != 0 and "power.reference: study folder 'nowhere/at/all' not found" in err


def test_a_study_without_a_spread_says_how_to_give_one_and_one_without_a_baseline_says_nothing(tmp_path, capsys):
    _, err = validate(capsys, write_recipe(tmp_path, ""))
    assert "# power: unknown; set power.sd" in err and "to see what 3 seed(s) can detect" in err
    recipe = recipes.load(write_recipe(tmp_path, "power: {sd: 3.0}\n", "[cosine, standardized]"))
    assert power_line(recipe, plan_runs(recipe)) is None  # no softmax arm, no `baseline:`: nothing is compared


def test_a_power_key_that_cannot_be_used_is_refused_with_every_problem(tmp_path):
    with pytest.raises(AttnzooError) as info:
        recipes.load(write_recipe(tmp_path, "power: {sd: -1, reference: runs/old, target_delta: 0}\n"))
    message = str(info.value)
    assert "power.sd: must be a positive number of percentage points of top-1 (e.g. 3.0), got -1" in message
    assert "power.target_delta: must be a positive number" in message
    assert "give either power.sd or power.reference" in message


def test_the_study_plan_line_ends_with_the_power_statement(tmp_path):
    from types import SimpleNamespace

    from attnzoo.study.plan import _plan_line

    recipe = recipes.load(write_recipe(tmp_path, "power: {sd: 4.0}\n"))
    runs = plan_runs(recipe)
    text = _plan_line(recipe, runs, len(runs), SimpleNamespace(device="cpu", num_processes=1))
    first, second = text.split("\n")
    assert first.startswith(f"study {recipe.run_dir}: 9 runs (3 arm(s) x 3 seed(s))")
    assert second == power_line(recipe, runs) and second.startswith("power: With 3 seeds and a spread of 4 pp")
