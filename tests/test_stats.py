"""Statistics over seeds: mean and sample std, Student-t quantiles, and the paired comparison of two arms."""

import math

import pytest
from attnzoo.study.stats import mean_std, paired_difference, t_quantile


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
