"""analysis.stats: paired t intervals, Holm's step-down, TOST and the seeds-needed estimate against references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.stats import (CANNOT_TELL, EQUIVALENT, INCONCLUSIVE, SHOWN, compare, holm, paired_differences,
                            paired_family, seeds_needed)


def test_single_comparison_is_the_paired_t_test():
    rng = np.random.default_rng(0)
    a, b = rng.normal(70, 2, 6), rng.normal(70.5, 2, 6)
    r = paired_family((a - b)[None, :])
    ref = sps.ttest_rel(a, b)
    assert r["p"][0] == pytest.approx(ref.pvalue, rel=1e-9)
    lo, hi = sps.t.interval(0.95, 5, loc=(a - b).mean(), scale=sps.sem(a - b))
    assert (r["low"][0], r["high"][0]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["k"][0] == 6 and r["sd"][0] == pytest.approx((a - b).std(ddof=1))


def test_holm_matches_hand_computed_values():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(holm([0.01, np.nan])[1]) and holm([0.01, np.nan])[0] == pytest.approx(0.01)


def test_holm_interval_excludes_zero_exactly_when_rejected():
    rng = np.random.default_rng(1)
    d = rng.normal(rng.normal(0, 1.5, (3000, 4, 1)), 1.0, (3000, 4, 5))
    r = paired_family(d)
    excludes = (r["low"] > 0) | (r["high"] < 0)
    assert np.array_equal(excludes, r["p_adj"] <= 0.05)
    assert np.array_equal(excludes, r["outcome"] == 1)
    inside = (r["eq_low"] > -0.5) & (r["eq_high"] < 0.5)
    assert np.array_equal(inside & (r["outcome"] != 1), r["outcome"] == 2)


def test_tost_is_two_one_sided_tests():
    d = np.array([0.1, -0.05, 0.08, 0.02, -0.01])
    r = paired_family(d[None, :], delta=0.5)
    se = d.std(ddof=1) / np.sqrt(5)
    p1 = sps.t.sf((d.mean() + 0.5) / se, 4)
    p2 = sps.t.cdf((d.mean() - 0.5) / se, 4)
    assert r["p_tost"][0] == pytest.approx(max(p1, p2))
    lo, hi = sps.t.interval(0.90, 4, loc=d.mean(), scale=se)
    assert (r["eq_low"][0], r["eq_high"][0]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["outcome"][0] == 2


def test_seeds_needed_formula():
    n = int(seeds_needed(1.0, 0.5, 0.05))
    assert n == 34  # z-approximation ((1.96 + 0.84) * 1 / 0.5)^2 = 31.4, t quantiles add a few
    t = lambda q, k: sps.t.ppf(q, k - 1)  # noqa: E731
    assert n >= ((t(0.975, n) + t(0.8, n)) * 2) ** 2 and n - 1 < ((t(0.975, n - 1) + t(0.8, n - 1)) * 2) ** 2
    assert seeds_needed(0.0, 0.5, 0.05) == 3 and np.isnan(seeds_needed(np.nan, 0.5, 0.05))
    assert seeds_needed(2.0, 0.5, 0.05) > seeds_needed(1.0, 0.5, 0.05) > seeds_needed(1.0, 1.0, 0.05)


def test_compare_pairs_by_seed_and_says_cannot_tell_below_three_pairs():
    a = pd.Series([70.0, 71.0, 72.0, 73.0], index=[1, 2, 3, 4])
    b = pd.Series([69.0, 70.2, 71.1, 99.0], index=[2, 3, 4, 9])  # seeds 2, 3, 4 in common
    assert list(paired_differences(a, b)) == pytest.approx([2.0, 1.8, 1.9])
    v, = compare([("kd at teacher size 16", "no-KD student", a, b)])
    assert v.k == 3 and v.seeds == (2, 3, 4) and v.outcome == SHOWN
    assert v.text.startswith("kd at teacher size 16 vs no-KD student: SHOWN, kd at teacher size 16 is better by 1.90")
    few, = compare([("rkd at teacher size 4", "no-KD student", a.iloc[:2], a.iloc[:2] - 1)])
    assert few.outcome == CANNOT_TELL and "cannot tell, 2 paired seeds" in few.text


def test_family_size_and_outcomes_in_compare():
    s = pd.Series(np.arange(5.0) + 70, index=range(5))
    noise = pd.Series([0.3, -0.4, 0.5, -0.2, -0.2], index=range(5))
    pairs = [("A", "base", s + 3 + noise, s), ("B", "base", s + noise * 0.05, s),
             ("C", "base", s + 5 * noise, s), ("D", "base", s.iloc[:2], s)]
    out = compare(pairs, family="f", delta=0.5)
    assert [v.outcome for v in out] == [SHOWN, EQUIVALENT, INCONCLUSIVE, CANNOT_TELL]
    assert all(v.family_size == 3 for v in out[:3])  # the untestable comparison is not in the family
    assert out[0].level == pytest.approx(1 - 0.05 / 3) and "Holm-adjusted over 3 comparisons" in out[0].text
    assert "paired seeds would resolve delta = 0.5 points" in out[2].text and out[2].seeds_needed > 5
