"""Statistics over seeds: mean and spread, the paired comparison of two arms (mean difference and a
Student-t confidence interval), the omnibus test over arms, Holm-corrected comparisons with the
baseline, rank uncertainty by a bootstrap over seeds, and the power of a study.

Seeds pair the runs: the same seed gives both arms the same initialisation stream and data
order, so the per-seed differences remove much of the seed-to-seed noise. The numerics are
scipy's (t quantiles, the paired t-test, Friedman's test); what is written here is which seeds
take part, the multiple-comparison correction, the bootstrap over seeds and the power formula.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass


def mean_std(values) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (None with fewer than two values); None entries skipped,
    so a run that lacks a value (an older run, a metric measured on CUDA only) leaves the others' mean."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _scipy_stats():
    """scipy.stats, imported when a statistic is computed: it takes a second or more to import, and most
    commands (train, eval, bench) never need it."""
    import scipy.stats

    return scipy.stats


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p for Student's t with df degrees of freedom."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    return float(_scipy_stats().t.ppf(p, df))


# A spread of per-seed differences below this is rounding, not spread: accuracies are counts over the
# test images, so equal differences can differ by ~1e-17 after subtraction.
NO_SPREAD = 1e-12


@dataclass
class PairedDifference:
    n: int  # seeds both arms finished
    mean: float  # mean of (arm - baseline) over those seeds
    low: float | None  # 95 % interval; None when it cannot be given (see `why_no_interval`)
    high: float | None
    why_no_interval: str = ""

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def per_seed_differences(values: dict[int, float], baseline: dict[int, float]) -> list[float]:
    """value - baseline for each seed both have, in seed order: the pairing every comparison uses."""
    return [values[s] - baseline[s] for s in sorted(set(values) & set(baseline))]


def paired_difference(values: dict[int, float], baseline: dict[int, float],
                      confidence: float = 0.95) -> PairedDifference | None:
    """Mean of per-seed differences over the seeds both have, with a t-interval (n - 1 df)."""
    diffs = per_seed_differences(values, baseline)
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(1, mean, None, None, "one seed")
    spread = statistics.stdev(diffs)
    if spread < NO_SPREAD:
        # Every seed gave the same difference (common with few test images, where accuracy moves in
        # coarse steps): a zero-width interval would claim a certainty the seeds do not give.
        return PairedDifference(len(diffs), mean, None, None, "identical differences over seeds")
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * spread / math.sqrt(len(diffs))
    return PairedDifference(len(diffs), mean, mean - half, mean + half)


# ---------------------------------------------------------------- the omnibus test over arms

# Scores of a study: arm -> {seed: value}, e.g. each run's test top-1.
Scores = dict[str, dict[int, float]]


def common_seeds(scores: Scores) -> list[int]:
    """The seeds every arm finished: a test over seeds compares arms on the same seeds only."""
    seeds = [set(by_seed) for by_seed in scores.values()]
    return sorted(set.intersection(*seeds)) if seeds else []


@dataclass
class Omnibus:
    """Friedman's test that every arm has the same distribution over seeds (seeds are the blocks)."""

    arms: list[str]
    seeds: list[int]  # the seeds every arm has: the only ones the test uses
    statistic: float | None = None
    p_value: float | None = None
    why_not: str = ""  # why the test could not run; empty when it did


def friedman(scores: Scores) -> Omnibus:
    """Friedman's chi-square test over the seeds every arm has (arms x seeds, ranked within each seed).
    It needs 3 arms or more (scipy's rule; 2 arms are the paired comparison) and 2 common seeds or more,
    and some seed whose arms do not all tie."""
    arms, seeds = list(scores), common_seeds(scores)
    if len(arms) < 3:
        return Omnibus(arms, seeds, why_not=f"it needs 3 arms or more, the study has {len(arms)}")
    if len(seeds) < 2:
        return Omnibus(arms, seeds, why_not=f"it needs 2 seeds or more that every arm finished, there are "
                                            f"{len(seeds)}")
    if all(len({scores[arm][seed] for arm in arms}) == 1 for seed in seeds):
        return Omnibus(arms, seeds, why_not="every arm scored the same on every seed")
    result = _scipy_stats().friedmanchisquare(*[[scores[arm][seed] for seed in seeds] for arm in arms])
    return Omnibus(arms, seeds, float(result.statistic), float(result.pvalue))


# ---------------------------------------------------------------- Holm-corrected comparisons with the baseline


def holm_adjust(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given: the k-th smallest p is multiplied by
    (m - k + 1), and the adjusted values are made non-decreasing in that order and capped at 1."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for k, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Comparison:
    """One arm against its baseline over the seeds both finished, corrected for the study's comparisons."""

    arm: str
    baseline: str
    n: int  # seeds paired
    mean: float  # mean of (arm - baseline)
    sd: float | None  # standard deviation of the per-seed differences (None with one seed)
    d_z: float | None  # effect size: mean / sd (None without spread)
    p_value: float | None  # paired t-test, two-sided, uncorrected (None where no test can be made)
    p_holm: float | None = None  # Holm-adjusted over the study's comparisons
    low: float | None = None  # simultaneous interval over the m comparisons (Bonferroni, alpha / m)
    high: float | None = None
    m: int = 1  # comparisons the correction is over
    why_no_test: str = ""

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_holm is not None and self.p_holm < alpha


def _paired_test(arm: str, base: str, values: dict[int, float], baseline: dict[int, float]) -> Comparison | None:
    diffs = per_seed_differences(values, baseline)
    if not diffs:
        return None
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return Comparison(arm, base, 1, mean, None, None, None, why_no_test="one seed")
    sd = statistics.stdev(diffs)
    if sd < NO_SPREAD:
        # Identical differences on every seed (coarse accuracies on few test images): the t statistic is
        # infinite or undefined, and a zero-width interval would claim a certainty the seeds do not give.
        return Comparison(arm, base, len(diffs), mean, 0.0, None, None,
                          why_no_test="identical differences over seeds")
    p = float(_scipy_stats().ttest_1samp(diffs, 0.0).pvalue)  # the paired t-test: a one-sample test of the differences
    return Comparison(arm, base, len(diffs), mean, sd, mean / sd, p)


def holm_comparisons(scores: Scores, baselines: dict[str, str], alpha: float = 0.05) -> list[Comparison]:
    """Each arm's paired comparison with its baseline (`baselines`: arm -> baseline arm), Holm-corrected
    over all of them. A comparison that cannot be tested (one seed, no spread) still counts in m, with
    p = 1: leaving it out would make the others' correction weaker than the study's design. The interval
    is Δ ± t(1 - alpha / (2m), n - 1)·s/√n: all m intervals cover their true differences together with
    probability 1 - alpha or more. Holm's test rejects at least what these intervals exclude, so an
    interval may touch 0 where the Holm p-value is below alpha; the p-value decides."""
    found = [_paired_test(arm, base, scores[arm], scores[base]) for arm, base in baselines.items()
             if arm != base and arm in scores and base in scores]
    found = [c for c in found if c is not None]
    m = len(found)
    adjusted = holm_adjust([1.0 if c.p_value is None else c.p_value for c in found])
    for comparison, p_holm in zip(found, adjusted):
        comparison.m = m
        if comparison.p_value is None:
            continue
        comparison.p_holm = p_holm
        half = t_quantile(1 - alpha / (2 * m), comparison.n - 1) * comparison.sd / math.sqrt(comparison.n)
        comparison.low, comparison.high = comparison.mean - half, comparison.mean + half
    return found


# ---------------------------------------------------------------- rank uncertainty


@dataclass
class RankUncertainty:
    arm: str
    p_best: float  # share of bootstrap resamples in which the arm has the highest mean (ties share it)
    rank_low: int  # 95 % interval of its rank (1 = best) over the resamples
    rank_high: int


def bootstrap_ranks(scores: Scores, resamples: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[list[RankUncertainty], list[int]]:
    """Resample the seeds every arm has, with replacement, and rank the arms by their mean on each
    resample. The seeds are resampled together for every arm, so the pairing by seed is kept. Seeded:
    the same scores give the same answer. Returns the arms' results (in the order given) and the seeds
    used; no results with fewer than 2 arms or 2 common seeds."""
    import numpy as np

    arms, seeds = list(scores), common_seeds(scores)
    if len(arms) < 2 or len(seeds) < 2:
        return [], seeds
    table = np.array([[scores[arm][s] for s in seeds] for arm in arms])  # arms x seeds
    picks = np.random.default_rng(seed).integers(0, len(seeds), size=(resamples, len(seeds)))
    means = table[:, picks].mean(axis=2).T  # resamples x arms
    # Rank 1 is the best; tied arms share the better rank (scipy's "min"), and a tie for best splits it.
    ranks = _scipy_stats().rankdata(-means, method="min", axis=1)
    best = means == means.max(axis=1, keepdims=True)
    p_best = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
    tail = (1 - confidence) / 2
    low = np.quantile(ranks, tail, axis=0, method="lower")
    high = np.quantile(ranks, 1 - tail, axis=0, method="higher")
    return [RankUncertainty(arm, float(p_best[i]), int(low[i]), int(high[i])) for i, arm in enumerate(arms)], seeds


# ---------------------------------------------------------------- power


def detectable_difference(sd: float, n: int, comparisons: int = 1, alpha: float = 0.05,
                          power: float = 0.8) -> float | None:
    """The smallest true mean difference a paired t-test over n seeds finds with this power, for
    per-seed differences of standard deviation sd: (t(1 - alpha/(2m), n-1) + t(power, n-1))·sd/√n,
    with the two-sided alpha split over m comparisons (Bonferroni, which Holm's first step is). The
    usual normal-approximation with t quantiles; None with fewer than 2 seeds (no test at all)."""
    if n < 2:
        return None
    df = n - 1
    return (t_quantile(1 - alpha / (2 * comparisons), df) + t_quantile(power, df)) * sd / math.sqrt(n)


def seeds_needed(sd: float, target: float, comparisons: int = 1, alpha: float = 0.05, power: float = 0.8,
                 most: int = 10_000) -> int | None:
    """The fewest seeds whose detectable difference is at most `target`; None if even `most` are not enough."""
    if target <= 0:
        raise ValueError(f"a target difference must be positive, got {target}")
    enough = lambda n: detectable_difference(sd, n, comparisons, alpha, power) <= target  # noqa: E731
    # The detectable difference falls as n grows: double until enough, then bisect.
    high = 2
    while not enough(high):
        if high >= most:
            return None
        high = min(2 * high, most)
    low = max(2, high // 2)
    if enough(low):
        return low
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def pooled_sd(comparisons: list[Comparison]) -> float | None:
    """The per-seed differences' standard deviation pooled over comparisons (root of the df-weighted mean
    variance): the spread a study's power is computed from."""
    usable = [c for c in comparisons if c.sd is not None and c.n > 1]
    if not usable:
        return None
    df = sum(c.n - 1 for c in usable)
    return math.sqrt(sum((c.n - 1) * c.sd ** 2 for c in usable) / df)
