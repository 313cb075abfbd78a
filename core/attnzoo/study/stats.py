"""Statistics over seeds: mean and spread, and the paired comparison of two arms (mean difference
and a Student-t confidence interval).

Seeds pair the runs: the same seed gives both arms the same initialisation stream and data
order, so the per-seed differences remove much of the seed-to-seed noise. The t quantile
comes from the regularised incomplete beta function (no SciPy needed).
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


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz method)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < eps:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_continued_fraction(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on the CDF (monotone), to ~1e-12."""
    if not 0 < p < 1 or df <= 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


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


def paired_difference(values: dict[int, float], baseline: dict[int, float],
                      confidence: float = 0.95) -> PairedDifference | None:
    """Mean of per-seed differences over the seeds both have, with a t-interval (n - 1 df)."""
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(1, mean, None, None, "one seed")
    spread = statistics.stdev(diffs)
    if spread == 0:
        # Every seed gave the same difference (common with few test images, where accuracy moves in
        # coarse steps): a zero-width interval would claim a certainty the seeds do not give.
        return PairedDifference(len(diffs), mean, None, None, "identical differences over seeds")
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * spread / math.sqrt(len(diffs))
    return PairedDifference(len(diffs), mean, mean - half, mean + half)
