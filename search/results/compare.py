"""The statistics behind a comparison of run groups: Welch's t interval of a difference of means, and McNemar's
exact test on two classifiers' per-image results.

Pure functions of numbers: no matplotlib, no optuna, no file. scipy (installed with scikit-learn) is imported
only where a t quantile is needed.

Why Welch's t interval: a group is a handful of seeds (the MedMNIST benchmark asks for three), so the spread is
estimated from few values and the t distribution, not the normal, sets the width; and two configurations need
not vary alike from seed to seed (a searched learning rate can be steadier or shakier than the default), so the
variances are not pooled. With one run in a group its spread is unknown and no interval exists.

Why the exact McNemar test: it compares two classifiers on the same test images through the images only one of
them gets right (b: only the first, c: only the second). Under "no difference" b is Binomial(b + c, 1/2); the
two-sided p is 2 P(X <= min(b, c)), capped at 1. Integer arithmetic makes it exact at any count, so the
chi-square approximation (and its continuity correction) is never needed.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """``mean(group) - mean(baseline)`` and, where it can be computed, its Welch t interval at ``LEVEL``.

    >>> d = welch([0.85, 0.87, 0.89], [0.80, 0.82, 0.84])
    >>> round(d.estimate, 4), round(d.low, 4), round(d.high, 4), round(d.df, 6)   # t(0.975, 4) = 2.7764
    (0.05, 0.0047, 0.0953, 4.0)
    """

    estimate: float
    n: int  # the group's runs with a finite value
    n_baseline: int
    low: float | None = None
    high: float | None = None
    df: float | None = None  # Welch-Satterthwaite degrees of freedom
    why_none: str = ""  # why there is no interval

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def includes_zero(self) -> bool:
        return self.has_interval and self.low <= 0.0 <= self.high  # type: ignore[operator]

    def verdict(self) -> str:
        """The plain reading: a difference shown at 95%, none shown, or no interval at all (and why)."""
        if not self.has_interval:
            return f"no interval: {self.why_none}"
        if self.includes_zero:
            return f"no difference shown at {LEVEL:.0%} (the interval includes 0)"
        side = "higher" if self.estimate > 0 else "lower"
        return f"{side} than the baseline at {LEVEL:.0%} (the interval excludes 0)"


def welch(group: Sequence[float], baseline: Sequence[float], level: float = LEVEL) -> Difference:
    """Welch's t interval for mean(group) - mean(baseline); values that are not finite (an undefined AUC) are left
    out of both the mean and the count.

    d = m1 - m2, se = sqrt(s1^2 / n1 + s2^2 / n2), df = se^4 / ((s1^2 / n1)^2 / (n1 - 1) + (s2^2 / n2)^2 / (n2 - 1)),
    interval d ± t(1 - (1 - level) / 2, df) se, with s the sample standard deviations (n - 1).
    """
    a = [float(v) for v in group if v is not None and math.isfinite(v)]
    b = [float(v) for v in baseline if v is not None and math.isfinite(v)]
    if not a or not b:
        return Difference(math.nan, len(a), len(b), why_none="a group has no finite value")
    estimate = statistics.fmean(a) - statistics.fmean(b)
    single = [name for name, values in (("the group", a), ("the baseline", b)) if len(values) < 2]
    if single:
        return Difference(estimate, len(a), len(b),
                          why_none=f"{' and '.join(single)} {'has' if len(single) == 1 else 'have'} a single run "
                                   f"(n = 1), whose spread is unknown")
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Difference(estimate, len(a), len(b), why_none="every run of both groups has the same value, so "
                                                             "there is no spread to build an interval from")
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(1 - (1 - level) / 2, df) * se
    return Difference(estimate, len(a), len(b), estimate - half, estimate + half, df)


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile for a non-integer ``df`` (Welch's), from scipy."""
    from scipy import stats  # ~0.3 s, and only a comparison needs it

    return float(stats.t.ppf(p, df))


@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test of two classifiers on the same images.

    >>> m = mcnemar([True, True, False, False, True], [True, False, True, True, True])
    >>> m.only_first, m.only_second, m.p
    (1, 2, 1.0)
    """

    only_first: int  # b: images the first gets right and the second wrong
    only_second: int  # c: the reverse
    n: int  # images
    p: float  # two-sided exact p-value


def mcnemar(first: Sequence[bool], second: Sequence[bool]) -> McNemar:
    """Exact two-sided McNemar test on per-image correctness (same images, same order)."""
    if len(first) != len(second):
        raise ValueError(f"per-image results of different lengths ({len(first)} and {len(second)})")
    b = sum(1 for x, y in zip(first, second) if x and not y)
    c = sum(1 for x, y in zip(first, second) if y and not x)
    return McNemar(b, c, len(first), exact_binomial_p(b, c))


def exact_binomial_p(b: int, c: int) -> float:
    """2 P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1; 1 when there is no discordant image."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))  # exact integers, whatever n
    return min(1.0, 2 * tail / 2 ** n)
