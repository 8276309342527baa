"""Small statistics for comparing seeds: t-intervals and a seeded bootstrap.

Only numpy and the standard library: the Student-t quantile is computed from
the regularised incomplete beta function (continued fraction, Numerical
Recipes 6.4) and inverted by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class MeanCI:
    """Mean of `n` values with a two-sided t-interval [low, high] (NaN when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


@dataclass(frozen=True)
class DiffCI:
    """Difference of means mean(a) - mean(b) with a bootstrap percentile interval."""

    diff: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (bisection; accurate to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


def mean_ci(values, level: float = 0.95) -> MeanCI:
    """Mean and two-sided t-interval over seeds; NaNs are ignored."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = int(x.size)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    m = float(x.mean())
    if n < 2:
        return MeanCI(m, math.nan, math.nan, n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return MeanCI(m, m - half, m + half, n)


def bootstrap_diff(a, b, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> DiffCI:
    """Percentile bootstrap for mean(a) - mean(b), resampling each group independently.

    Uses ``numpy.random.default_rng(seed)`` so the interval is reproducible.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        raise ValueError("bootstrap_diff needs at least one value in each group")
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, a.size, size=(n_boot, a.size))].mean(axis=1)
    mb = b[rng.integers(0, b.size, size=(n_boot, b.size))].mean(axis=1)
    lo, hi = np.quantile(ma - mb, [(1 - level) / 2, (1 + level) / 2])
    return DiffCI(float(a.mean() - b.mean()), float(lo), float(hi))


def summarize(df: pd.DataFrame, by: list[str], value: str, level: float = 0.95) -> pd.DataFrame:
    """Per group of `by`: columns mean, low, high, n of `value` (t-interval over rows)."""
    out = []
    for key, grp in df.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        ci = mean_ci(grp[value], level)
        out.append({**dict(zip(by, key)), "mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n})
    return pd.DataFrame(out, columns=[*by, "mean", "low", "high", "n"])


def accuracy_range(fig) -> list[float]:
    """A y range for an accuracy (%) figure: around the plotted means, within [0, 100]."""
    ys = [y for tr in fig.data for y in (tr.y if tr.y is not None else ()) if y is not None and y == y]
    if not ys:
        return [0.0, 100.0]
    lo, hi = min(ys), max(ys)
    pad = max(5.0, 0.25 * (hi - lo))
    return [max(0.0, lo - pad), min(100.5, hi + pad)]
