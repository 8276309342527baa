"""Statistics for comparing seeds: t-intervals, paired comparisons with Holm's correction, TOST.

Student's t distribution is scipy's (``scipy.special.stdtr`` / ``stdtrit``):
the scalar helpers `t_cdf` and `t_quantile`, and the paired comparisons
(`paired_family`, `compare`), which are vectorised over Monte-Carlo
replicates so that their calibration can be simulated in seconds
(tests/test_calibration.py).

How a comparison is decided (see README, "How to read a verdict"):

* d_i = a_i - b_i for the k seeds both arms have (common random numbers);
  mean(d) +- t_{1-a/2,k-1} sd(d)/sqrt(k). With k < 3: "cannot tell".
* a family of m comparisons is adjusted with Holm's step-down: the interval
  of the comparison of rank r (by p-value) is drawn at level 1 - a/(m-e+1),
  e = min(r, first rank where Holm stops), so the interval excludes 0 exactly
  when Holm rejects.
* "equivalent within delta": two one-sided tests (TOST), Holm-adjusted the
  same way over the family; the (1 - 2a_adj) interval lies inside (-delta, delta).
* seeds needed: the smallest n with n >= ((t_{1-a/(2m),n-1} + t_{power,n-1}) sd(d)/delta)^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special as _sp


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


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with `df` degrees of freedom (scipy's)."""
    return float(_sp.stdtr(df, t))


def t_quantile(p: float, df: float) -> float:
    """Inverse CDF of Student's t (scipy's)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    return float(_sp.stdtrit(df, p))


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


# ---------------------------------------------------------------------------
# Paired comparisons (per-seed differences), Holm's correction and TOST
# ---------------------------------------------------------------------------

SHOWN, EQUIVALENT, INCONCLUSIVE, CANNOT_TELL = "shown", "equivalent", "inconclusive", "cannot tell"
#: outcome codes of `paired_family` (index into this tuple)
OUTCOMES = (CANNOT_TELL, SHOWN, EQUIVALENT, INCONCLUSIVE)
#: fewest paired seeds a comparison is tested with
MIN_PAIRS = 3
#: power the "seeds needed" estimate is computed for
POWER = 0.8
#: largest seed count `seeds_needed` searches
MAX_SEEDS = 10_000


def _tq(p, df):
    """Student-t quantile, vectorised (NaN where df < 1)."""
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.where(df >= 1, _sp.stdtrit(np.maximum(df, 1), p), np.nan)


def _tcdf(t, df):
    df = np.asarray(df, dtype=float)
    return _sp.stdtr(np.maximum(df, 1), t)


def _holm_levels(p: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Holm's step-down along the last axis; NaN p-values are not in the family.

    Returns (adjusted p, rejected, alpha at which each hypothesis's interval is drawn).
    The interval level of rank r is alpha/(m-e+1) with e = min(r, first failing rank),
    so an interval at that level excludes 0 exactly when Holm rejects.
    """
    p = np.asarray(p, dtype=float)
    valid = np.isfinite(p)
    m = valid.sum(axis=-1, keepdims=True)
    order = np.argsort(np.where(valid, p, np.inf), axis=-1, kind="stable")
    ps = np.take_along_axis(np.where(valid, p, np.inf), order, axis=-1)
    rank = np.arange(1, p.shape[-1] + 1)
    steps = np.maximum(m - rank + 1, 1)  # m-r+1 (>= 1 for the padding ranks)
    adj_sorted = np.maximum.accumulate(np.minimum(1.0, steps * ps), axis=-1)
    fails = ps > alpha / steps
    first_fail = np.where(fails.any(axis=-1, keepdims=True), fails.argmax(axis=-1)[..., None] + 1, p.shape[-1] + 1)
    e = np.minimum(rank, first_fail)
    level_sorted = alpha / np.maximum(m - e + 1, 1)
    inv = np.argsort(order, axis=-1, kind="stable")
    adj = np.take_along_axis(adj_sorted, inv, axis=-1)
    lev = np.take_along_axis(level_sorted, inv, axis=-1)
    adj = np.where(valid, adj, np.nan)
    lev = np.where(valid, lev, np.nan)
    return adj, valid & (adj <= alpha), lev


def holm(pvalues, alpha: float = 0.05) -> np.ndarray:
    """Holm-adjusted p-values of a family (NaN entries are left out of the family)."""
    return _holm_levels(np.asarray(pvalues, dtype=float), alpha)[0]


def seeds_needed(sd, delta: float, alpha: float, power: float = POWER, max_seeds: int = MAX_SEEDS):
    """Smallest n (>= MIN_PAIRS) with n >= ((t_{1-alpha/2,n-1} + t_{power,n-1}) * sd / delta)^2.

    The number of paired seeds a two-sided paired t-test at level `alpha` needs
    to detect a true difference of `delta` with the given power, at paired SD `sd`.
    Vectorised over `sd`; NaN where sd is not finite, ``max_seeds + 1`` when more
    than `max_seeds` would be needed.
    """
    sd = np.asarray(sd, dtype=float)
    n = np.arange(MIN_PAIRS, max_seeds + 1, dtype=float)
    factor = (_tq(1 - alpha / 2, n - 1) + _tq(power, n - 1)) ** 2 / delta ** 2
    ratio = n / factor  # increasing in n: n >= factor(n) sd^2  <=>  ratio(n) >= sd^2
    pos = np.searchsorted(ratio, np.where(np.isfinite(sd), sd, 0.0) ** 2, side="left")
    first = np.where(pos < n.size, n[np.minimum(pos, n.size - 1)], max_seeds + 1)
    return np.where(np.isfinite(sd), first, np.nan)


def paired_family(d, delta: float = 0.5, level: float = 0.95, power: float = POWER) -> dict[str, np.ndarray]:
    """Decide a family of paired comparisons, vectorised.

    `d` has shape (..., m, k): m comparisons of the family, k paired differences
    each (NaN where a seed is missing). Every leading axis is an independent
    family (Monte-Carlo replicates). Returns arrays of shape (..., m):
    estimate, sd, k, se, p (two-sided, unadjusted), p_adj (Holm), alpha_adj
    (level of `low`/`high`: 1 - alpha_adj), low, high, p_tost, alpha_eq,
    eq_low, eq_high (the 1 - 2 alpha_eq interval), seeds_needed, outcome
    (index into OUTCOMES) and m (testable comparisons in the family).
    """
    d = np.asarray(d, dtype=float)
    alpha = 1.0 - level
    fin = np.isfinite(d)
    k = fin.sum(axis=-1)
    dz = np.where(fin, d, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        est = dz.sum(axis=-1) / k
        sd = np.sqrt(np.where(fin, (dz - est[..., None]) ** 2, 0.0).sum(axis=-1) / (k - 1))
        se = sd / np.sqrt(k)
        testable = k >= MIN_PAIRS
        df = k - 1.0
        t = np.where(se > 0, est / se, np.where(est == 0, 0.0, np.sign(est) * np.inf))
        p = np.where(testable, 2 * _tcdf(-np.abs(t), df), np.nan)
        t_lo = np.where(se > 0, (est + delta) / se, np.where(est + delta > 0, np.inf, -np.inf))
        t_hi = np.where(se > 0, (est - delta) / se, np.where(est - delta < 0, -np.inf, np.inf))
        p_tost = np.where(testable, np.maximum(1 - _tcdf(t_lo, df), _tcdf(t_hi, df)), np.nan)
    p_adj, shown, a_adj = _holm_levels(p, alpha)
    _, equiv, a_eq = _holm_levels(p_tost, alpha)
    m = np.isfinite(p).sum(axis=-1, keepdims=True) * np.ones_like(est)
    with np.errstate(invalid="ignore"):
        half = _tq(1 - a_adj / 2, df) * se
        half_eq = _tq(1 - a_eq, df) * se
        half = np.where(se == 0, 0.0, half)
        half_eq = np.where(se == 0, 0.0, half_eq)
    outcome = np.where(~testable, 0, np.where(shown, 1, np.where(equiv, 2, 3)))
    need = _seeds_needed_family(sd, k, m, delta, alpha, power)
    return {"estimate": est, "sd": sd, "k": k, "se": se, "p": p, "p_adj": p_adj, "alpha_adj": a_adj,
            "low": est - half, "high": est + half, "p_tost": p_tost, "alpha_eq": a_eq,
            "eq_low": est - half_eq, "eq_high": est + half_eq, "seeds_needed": need,
            "outcome": outcome, "m": m}


def _seeds_needed_family(sd, k, m, delta, alpha, power):
    """seeds_needed at the Bonferroni level alpha/m of the family (per distinct m)."""
    out = np.full(np.shape(sd), np.nan)
    sd = np.where(k >= 2, sd, np.nan)
    for mm in np.unique(np.maximum(m, 1)):
        sel = np.maximum(m, 1) == mm
        out[sel] = seeds_needed(sd[sel], delta, alpha / mm, power)
    return out


@dataclass(frozen=True)
class PairedVerdict:
    """The verdict of one paired comparison a - b (accuracy points, paired by seed).

    outcome: "shown" (the Holm-adjusted interval `ci` excludes 0),
    "equivalent" (the Holm-adjusted 1 - 2 alpha interval `eq_ci` lies inside
    (-delta, delta)), "inconclusive" (neither) or "cannot tell" (k < 3).
    `ci` is drawn at confidence `level` (the adjusted level of this
    comparison's Holm step); `seeds_needed` is the number of paired seeds that
    would detect `delta` with 80% power at the observed sd(d) and the family's
    Bonferroni level (None without an sd).
    """

    comparison: str
    outcome: str
    estimate: float
    ci: tuple[float, float]
    k: int
    sd: float
    seeds_needed: int | None
    text: str
    a: str = ""
    b: str = ""
    level: float = math.nan
    eq_ci: tuple[float, float] = (math.nan, math.nan)
    p: float = math.nan
    p_adj: float = math.nan
    delta: float = 0.5
    family: str = ""
    family_size: int = 0
    seeds: tuple = ()

    @property
    def within_delta(self) -> bool:
        """The equivalence interval lies inside (-delta, delta) (also possible with outcome shown)."""
        return bool(-self.delta < self.eq_ci[0] and self.eq_ci[1] < self.delta)

    def as_dict(self) -> dict:
        """Flat dict (for a DataFrame row)."""
        return {"comparison": self.comparison, "outcome": self.outcome, "estimate": self.estimate,
                "ci_low": self.ci[0], "ci_high": self.ci[1], "ci_level": self.level, "k": self.k,
                "sd": self.sd, "seeds_needed": self.seeds_needed, "eq_low": self.eq_ci[0],
                "eq_high": self.eq_ci[1], "p": self.p, "p_holm": self.p_adj, "delta": self.delta,
                "family": self.family, "family_size": self.family_size, "text": self.text}


def paired_differences(a: pd.Series, b: pd.Series) -> pd.Series:
    """a - b over the seeds both have a finite value for (Series indexed by seed), sorted by seed."""
    a = a[np.isfinite(a.astype(float))].astype(float)
    b = b[np.isfinite(b.astype(float))].astype(float)
    a = a[~a.index.duplicated()]
    b = b[~b.index.duplicated()]
    common = a.index.intersection(b.index)
    return (a.loc[common] - b.loc[common]).sort_index()


def _fmt_ci(lo: float, hi: float) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]"


def verdict_text(a: str, b: str, outcome: str, est: float, ci, eq_ci, level: float, k: int, sd: float,
                 need, delta: float, m: int, eq_level: float = math.nan) -> str:
    """One sentence naming both arms, the outcome and its numbers (points of accuracy)."""
    head = f"{a} vs {b}:"
    if outcome == CANNOT_TELL:
        return f"{head} cannot tell, {k} paired seed{'s' if k != 1 else ''} (at least {MIN_PAIRS} are needed)."
    adj = f", Holm-adjusted over {m} comparisons" if m > 1 else ""
    stats_txt = f"k = {k} paired seeds, sd(d) = {sd:.2f}"
    need_txt = ("more than %d" % MAX_SEEDS) if need is not None and need > MAX_SEEDS else f"about {need}"
    if outcome == SHOWN:
        word = "better" if est > 0 else "worse"
        text = (f"{head} SHOWN, {a} is {word} by {abs(est):.2f} points "
                f"({100 * level:.1f}% CI {_fmt_ci(*ci)}{adj}; {stats_txt}).")
        if -delta < eq_ci[0] and eq_ci[1] < delta:
            text += f" The difference is smaller than delta = {delta:g} points."
        return text
    if outcome == EQUIVALENT:
        return (f"{head} EQUIVALENT within +-{delta:g} points ({est:+.2f} points, {100 * eq_level:.1f}% CI "
                f"{_fmt_ci(*eq_ci)} inside (-{delta:g}, +{delta:g}), two one-sided tests{adj}; {stats_txt}).")
    return (f"{head} INCONCLUSIVE ({est:+.2f} points, {100 * level:.1f}% CI {_fmt_ci(*ci)}{adj}; {stats_txt}); "
            f"{need_txt} paired seeds would resolve delta = {delta:g} points with 80% power at this sd(d).")


def compare(pairs, family: str = "", delta: float = 0.5, level: float = 0.95) -> list[PairedVerdict]:
    """Decide a family of paired comparisons (Holm-adjusted together).

    `pairs`: list of (a_label, b_label, a, b) where a and b are Series of
    accuracy in percent indexed by seed; the comparison is a - b on their
    common seeds. Returns one PairedVerdict per pair, in order.
    """
    if not pairs:
        return []
    diffs = [paired_differences(a, b) for _, _, a, b in pairs]
    kmax = max(1, max(len(d) for d in diffs))
    mat = np.full((len(pairs), kmax), np.nan)
    for i, d in enumerate(diffs):
        mat[i, :len(d)] = d.to_numpy()
    r = paired_family(mat, delta=delta, level=level)
    out = []
    for i, (la, lb, _, _) in enumerate(pairs):
        k = int(r["k"][i])
        outcome = OUTCOMES[int(r["outcome"][i])]
        est = float(r["estimate"][i]) if k else math.nan
        sd = float(r["sd"][i]) if k >= 2 else math.nan
        need = r["seeds_needed"][i]
        need = None if not np.isfinite(need) else int(need)
        testable = outcome != CANNOT_TELL
        ci = (float(r["low"][i]), float(r["high"][i])) if testable else (math.nan, math.nan)
        eq_ci = (float(r["eq_low"][i]), float(r["eq_high"][i])) if testable else (math.nan, math.nan)
        lev = 1.0 - float(r["alpha_adj"][i]) if testable else math.nan
        m = int(r["m"][i])
        eq_lev = 1.0 - 2 * float(r["alpha_eq"][i]) if testable else math.nan
        text = verdict_text(la, lb, outcome, est, ci, eq_ci, lev, k, sd, need, delta, m, eq_lev)
        out.append(PairedVerdict(
            comparison=f"{la} - {lb}", outcome=outcome, estimate=est, ci=ci, k=k, sd=sd, seeds_needed=need,
            text=text, a=la, b=lb, level=lev, eq_ci=eq_ci, p=float(r["p"][i]), p_adj=float(r["p_adj"][i]),
            delta=delta, family=family, family_size=m, seeds=tuple(int(s) for s in diffs[i].index)))
    return out
