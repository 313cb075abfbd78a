"""Statistics over seeds: mean and sample std, Student-t quantiles, the paired comparison of two arms, Friedman's
omnibus test, Holm-corrected comparisons, bootstrap ranks and power, against scipy or hand-computed values."""

import math

import pytest
import scipy.stats
from attnzoo.study.stats import (
    bootstrap_ranks,
    common_seeds,
    detectable_difference,
    friedman,
    holm_adjust,
    holm_comparisons,
    mean_std,
    paired_difference,
    pooled_sd,
    seeds_needed,
    t_quantile,
)


def test_mean_std_skips_missing_values_and_gives_no_std_for_one():
    assert mean_std([0.5, None, 0.7]) == (pytest.approx(0.6), pytest.approx(math.sqrt(0.02)))
    assert mean_std([3, None]) == (3.0, None)  # one value: no spread to speak of
    assert mean_std([None, None]) == (None, None) and mean_std([]) == (None, None)
    assert mean_std(v for v in (1, 2, 3)) == (2.0, 1.0)  # any iterable, read once


def test_t_quantiles_match_the_tables():
    for df, expected in [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (29, 2.045)]:
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=1e-3)
    assert t_quantile(0.025, 2) == pytest.approx(-4.303, abs=1e-3)


def test_paired_interval_matches_a_hand_computation():
    # differences by seed: 0.10, 0.15, 0.05 -> mean 0.10, s = 0.05, n = 3
    # half width = t(0.975, 2) * 0.05 / sqrt(3) = 4.3027 * 0.028868 = 0.12421
    d = paired_difference({0: 0.50, 1: 0.60, 2: 0.55, 7: 0.9}, {0: 0.40, 1: 0.45, 2: 0.50})
    assert d.n == 3 and d.mean == pytest.approx(0.10)
    assert (d.low, d.high) == (pytest.approx(0.10 - 0.12421, abs=1e-5), pytest.approx(0.10 + 0.12421, abs=1e-5))
    assert not d.excludes_zero
    d = paired_difference({0: 0.50, 1: 0.52, 2: 0.51}, {0: 0.40, 1: 0.41, 2: 0.42})  # 0.10, 0.11, 0.09
    assert d.low == pytest.approx(0.10 - 4.3027 * 0.01 / math.sqrt(3), abs=1e-5) and d.excludes_zero
    one = paired_difference({0: 0.5}, {0: 0.4})
    assert one.n == 1 and one.low is None and not one.excludes_zero and one.why_no_interval == "one seed"
    same = paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})  # no spread: no zero-width "certainty"
    assert same.mean == pytest.approx(0.1) and same.low is None and not same.excludes_zero


def test_friedman_matches_the_hand_computation_over_common_seeds_only():
    # A beats B beats C on every one of 4 seeds: rank sums 12, 8, 4 (k = 3, n = 4), so
    # chi2 = 12 / (n k (k+1)) * sum(R^2) - 3 n (k+1) = 0.25 * 224 - 48 = 8, and with 2 df p = exp(-8/2).
    scores = {"A": {0: 0.9, 1: 0.8, 2: 0.7, 3: 0.95, 9: 0.1}, "B": {0: 0.5, 1: 0.6, 2: 0.4, 3: 0.5},
              "C": {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.2, 8: 0.9}}
    result = friedman(scores)
    assert result.seeds == [0, 1, 2, 3] == common_seeds(scores)  # seeds 8 and 9 are not every arm's
    assert result.statistic == pytest.approx(8.0) and result.p_value == pytest.approx(math.exp(-4))


def test_friedman_agrees_with_scipy_and_says_when_it_cannot_run():
    scores = {"a": {0: 0.51, 1: 0.55, 2: 0.49}, "b": {0: 0.52, 1: 0.53, 2: 0.50}, "c": {0: 0.50, 1: 0.56, 2: 0.47},
              "d": {0: 0.48, 1: 0.57, 2: 0.51}}
    expected = scipy.stats.friedmanchisquare(*[list(v.values()) for v in scores.values()])
    assert friedman(scores).p_value == pytest.approx(expected.pvalue, rel=1e-12)
    two = friedman({"a": {0: 0.5, 1: 0.6}, "b": {0: 0.4, 1: 0.5}})
    assert two.p_value is None and two.why_not == "it needs 3 arms or more, the study has 2"
    few = friedman({"a": {0: 0.5, 1: 0.6}, "b": {0: 0.4}, "c": {1: 0.5, 0: 0.3}})
    assert few.p_value is None and few.why_not == "it needs 2 seeds or more that every arm finished, there are 1"
    ties = friedman({"a": {0: 0.5, 1: 0.6}, "b": {0: 0.5, 1: 0.6}, "c": {0: 0.5, 1: 0.6}})
    assert ties.p_value is None and ties.why_not == "every arm scored the same on every seed"


def test_holm_adjusted_p_values_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04): step-down keeps them non-decreasing
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5, 0.2]) == pytest.approx([0.5, 0.4])
    assert holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjust([]) == []


def test_holm_comparisons_give_paired_p_values_effect_sizes_and_simultaneous_intervals():
    base = {0: 0.40, 1: 0.45, 2: 0.50}
    scores = {"softmax": base, "x": {0: 0.50, 1: 0.60, 2: 0.55},  # differences 0.10, 0.15, 0.05
              "y": {0: 0.41, 1: 0.46, 2: 0.51}, "z": {0: 0.9}}  # y: identical differences; z: one seed
    found = {c.arm: c for c in holm_comparisons(scores, {"softmax": "softmax", "x": "softmax", "y": "softmax",
                                                         "z": "softmax"})}
    assert sorted(found) == ["x", "y", "z"]  # the baseline is not compared with itself
    x = found["x"]
    # t = 0.10 / (0.05 / sqrt 3) = sqrt 12 with 2 df, whose CDF is 1/2 + t / (2 sqrt(2 + t^2)) in closed form
    t = math.sqrt(12)
    assert x.p_value == pytest.approx(2 * (0.5 - t / (2 * math.sqrt(14))), rel=1e-9)
    assert x.p_value == pytest.approx(scipy.stats.ttest_rel(list(scores["x"].values()), list(base.values())).pvalue)
    assert x.d_z == pytest.approx(2.0) and x.sd == pytest.approx(0.05) and x.n == 3 and x.m == 3
    # the untestable comparisons still count in m = 3 (with p = 1), so x's p is tripled
    assert x.p_holm == pytest.approx(3 * x.p_value) and not x.significant()
    half = scipy.stats.t.ppf(1 - 0.05 / 6, 2) * 0.05 / math.sqrt(3)
    assert (x.low, x.high) == (pytest.approx(0.10 - half), pytest.approx(0.10 + half))
    assert found["y"].p_value is None and found["y"].why_no_test == "identical differences over seeds"
    assert found["y"].low is None and not found["y"].significant()
    assert found["z"].n == 1 and found["z"].why_no_test == "one seed" and found["z"].d_z is None


def test_a_clear_difference_survives_the_correction():
    base = {s: 0.5 + 0.01 * s for s in range(5)}
    scores = {"softmax": base, "good": {s: v + 0.10 + 0.001 * (-1) ** s for s, v in base.items()},
              "same": {s: v + 0.01 * (-1) ** s for s, v in base.items()}}
    found = {c.arm: c for c in holm_comparisons(scores, {"good": "softmax", "same": "softmax"})}
    raw = sorted([found["good"].p_value, found["same"].p_value])
    assert found["good"].p_holm == pytest.approx(2 * raw[0]) and found["good"].significant()
    assert found["good"].low > 0 and not found["same"].significant() and found["same"].low < 0 < found["same"].high


def test_bootstrap_gives_the_probability_of_being_best_and_rank_intervals():
    # Two seeds: a resample is (0, 0), (0, 1), (1, 0) or (1, 1). a's mean is 0.6, 0.525, 0.525 or 0.45 against
    # b's 0.5: a is best in 3 of 4 resamples. c is always last.
    scores = {"a": {0: 0.60, 1: 0.45}, "b": {0: 0.50, 1: 0.50}, "c": {0: 0.10, 1: 0.20}}
    ranks, seeds = bootstrap_ranks(scores, resamples=4000, seed=1)
    by_arm = {r.arm: r for r in ranks}
    assert seeds == [0, 1]
    assert by_arm["a"].p_best == pytest.approx(0.75, abs=0.03) and by_arm["b"].p_best == pytest.approx(0.25, abs=0.03)
    assert by_arm["c"].p_best == 0 and (by_arm["c"].rank_low, by_arm["c"].rank_high) == (3, 3)
    assert (by_arm["a"].rank_low, by_arm["a"].rank_high) == (1, 2) == (by_arm["b"].rank_low, by_arm["b"].rank_high)
    assert bootstrap_ranks(scores, resamples=4000, seed=1) == (ranks, seeds)  # seeded: the same answer again
    tied, _ = bootstrap_ranks({"a": {0: 0.5, 1: 0.5}, "b": {0: 0.5, 1: 0.5}})
    assert [r.p_best for r in tied] == [0.5, 0.5] and [(r.rank_low, r.rank_high) for r in tied] == [(1, 1), (1, 1)]
    assert bootstrap_ranks({"a": {0: 0.5}, "b": {0: 0.4, 1: 0.3}}) == ([], [0])  # one common seed: no ranks


def test_detectable_difference_is_the_t_formula_and_has_about_80_percent_power():
    # (t(0.975, 2) + t(0.8, 2)) * 4 / sqrt 3 = (4.3027 + 1.0607) * 2.3094
    assert detectable_difference(4.0, 3) == pytest.approx((4.30265 + 1.06066) * 4 / math.sqrt(3), rel=1e-5)
    assert detectable_difference(4.0, 10) == pytest.approx(3.98, abs=0.01)
    assert detectable_difference(4.0, 3, comparisons=15) == pytest.approx(
        (scipy.stats.t.ppf(1 - 0.05 / 30, 2) + scipy.stats.t.ppf(0.8, 2)) * 4 / math.sqrt(3))
    assert detectable_difference(4.0, 1) is None
    for n, tolerance in [(3, 0.04), (10, 0.005), (20, 0.005)]:  # the exact power, from the noncentral t
        delta, df = detectable_difference(1.0, n), n - 1
        critical = scipy.stats.t.ppf(0.975, df)
        power = scipy.stats.nct.sf(critical, df, delta * math.sqrt(n)) + scipy.stats.nct.cdf(
            -critical, df, delta * math.sqrt(n))
        assert power == pytest.approx(0.8, abs=tolerance), n


def test_seeds_needed_is_the_fewest_that_reach_the_target():
    n = seeds_needed(4.0, 4.0)
    assert n == 10 and detectable_difference(4.0, 10) <= 4.0 < detectable_difference(4.0, 9)
    n = seeds_needed(3.0, 1.0, comparisons=3)
    assert detectable_difference(3.0, n, 3) <= 1.0 < detectable_difference(3.0, n - 1, 3)
    assert seeds_needed(4.0, 100.0) == 2 and seeds_needed(4.0, 1e-4) is None
    with pytest.raises(ValueError, match="must be positive"):
        seeds_needed(4.0, 0)


def test_pooled_sd_weights_each_comparison_by_its_degrees_of_freedom():
    scores = {"b": {0: 0.0, 1: 0.0, 2: 0.0}, "x": {0: 0.1, 1: 0.3, 2: 0.2}, "y": {0: 0.0, 1: 0.4}}
    found = holm_comparisons(scores, {"x": "b", "y": "b"})
    # x: sd 0.1 with 2 df; y: sd sqrt(0.08) with 1 df -> sqrt((2 * 0.01 + 0.08) / 3)
    assert pooled_sd(found) == pytest.approx(math.sqrt(0.1 / 3))
    assert pooled_sd([]) is None
