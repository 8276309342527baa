"""What the searches decided: did each resolve its winner, and what holds across search replicates.

**Resolution.** A search chooses the configuration with the best validation
accuracy. It *resolved* its candidates when the winner's lead over the
runner-up is at least `RESOLVED_Z` (2) standard errors of that lead:

* one seed per search trial: the binomial SE of two accuracies measured on the
  validation split, sqrt(p1 (1 - p1) / n + p2 (1 - p2) / n) (n, the validation
  split's size, is read from the accuracies themselves: every one is a count
  over n, see `split_size`). It covers the validation sample only: with one seed
  per trial the seed-to-seed noise is not measured at all.
* several seeds per trial (`search.seeds_per_trial: k`, the same search seeds for
  every configuration): the SE of the mean of the k paired differences,
  sd(d) / sqrt(k). It covers the seeds and, through them, the split.

When a search did not resolve, `Resolution.text` names the budget that would: the
validation samples (at one seed per trial) or the seeds per search trial that
shrink the SE to half the observed lead; more trials add candidates, they do not
separate the two best.

**Replicates.** With `search.replicates: R` a study runs R independent searches
per method x teacher size (`study.graph`, experiments ``...-rep<r>``), confirms
each replicate's choice on the shared confirm seeds, and decides every replicate
as a study of its own. `across` combines one comparison's R verdicts by the
intersection-union rule: a difference is SHOWN only if every replicate shows it
with the same sign, EQUIVALENT only if every replicate's equivalence interval
lies inside (-delta, delta); otherwise INCONCLUSIVE (the replicates disagree,
and the line says so). The printed interval is the union of the replicates'
intervals, so it excludes 0 exactly when the claim is made. Each replicate's
test has level alpha, so the combined claim has level alpha for the chosen
configurations whatever the search luck (an intersection-union test needs no
adjustment), and in simulation with search luck (tests/test_calibration.py) it
keeps false claims about the methods and teacher sizes themselves near alpha
where one search does not; see README, "What SHOWN guarantees".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from .select import config_ids, finished, reported_rows
from .stats import CANNOT_TELL, EQUIVALENT, INCONCLUSIVE, SHOWN, PairedVerdict

#: a winner's lead must be at least this many standard errors for the search to have resolved it
RESOLVED_Z = 2.0
#: the label suffix of search replicate r >= 1 (study.graph.replicate_label)
_REPLICATE = re.compile(r"-rep(\d+)$")
#: the trial-key suffix of seed j of a search trial with several seeds (study.experiment.sub_keys)
_SUB_RUN = re.compile(r"-k\d+$")


def search_trial_of(trial_id) -> str:
    """The search trial a run belongs to (a trial of k seeds is k runs `<key>-k<j>`)."""
    return _SUB_RUN.sub("", trial_id) if isinstance(trial_id, str) else trial_id
#: the largest split size `split_size` infers
MAX_SPLIT = 10_000_000
#: the largest search-luck SD (points, estimated by the study from its replicates) at which R
#: replicates still make claims: beyond it every claim is INCONCLUSIVE (tests/test_calibration.py:
#: with this gate false claims stay at or below 5% at every luck simulated; R >= 3 use the last)
CALIBRATED_LUCK_SD = {2: 0.5, 3: 1.0}


# --------------------------------------------------------------------------- replicates

def replicate_of(experiment) -> int:
    """The search replicate of an experiment, from its name ``<stage>-<label>-<hash>``
    (replicate r >= 1 has a label ending in ``-rep<r>``; every other experiment is replicate 0)."""
    if not isinstance(experiment, str) or "-" not in experiment:
        return 0
    m = _REPLICATE.search(experiment.rsplit("-", 1)[0])
    return int(m.group(1)) if m else 0


def with_replicates(summary: pd.DataFrame) -> pd.DataFrame:
    """`summary` with a ``replicate`` column (from each row's experiment)."""
    if "replicate" in summary:
        return summary
    exp = summary["experiment"] if "experiment" in summary else pd.Series(None, index=summary.index, dtype=object)
    return summary.assign(replicate=[replicate_of(e) for e in exp])


def replicates(summary: pd.DataFrame) -> list[int]:
    """The search replicates a study's search and confirm rows hold (``[0]`` without replicates)."""
    rows = with_replicates(summary)
    rows = rows[rows["stage"].isin(["search", "confirm"])]
    return sorted({int(r) for r in rows["replicate"]}) or [0]


def of_replicate(summary: pd.DataFrame, replicate: int) -> pd.DataFrame:
    """The rows a study of replicate `replicate` alone would have: its own searches and their
    confirms, its baseline (replicate 0's when the baseline was not searched), the confirms of
    methods that were not searched (no search, no search luck: shared by every replicate), and
    everything else (teachers)."""
    rows = with_replicates(summary)
    stage, rep = rows["stage"], rows["replicate"]
    searched = set(rows.loc[stage == "search", "method"].dropna())
    has_own_baseline = ((stage == "baseline") & (rep == replicate)).any()
    base_rep = replicate if has_own_baseline else 0
    confirm_ok = (rep == replicate) | (~rows["method"].isin(searched) & (rep == 0))
    keep = np.select([stage == "search", stage == "confirm", stage == "baseline"],
                     [rep == replicate, confirm_ok, rep == base_rep], default=True)
    return rows[keep.astype(bool)]


# --------------------------------------------------------------------------- combining replicates

def across(members: list[PairedVerdict], replicate_ids: list[int] | None = None,
           luck: float | None = None) -> PairedVerdict:
    """One comparison decided in every search replicate, combined (intersection-union, see the module
    docstring): SHOWN if every replicate shows it with one sign, EQUIVALENT if every replicate's
    equivalence interval lies inside (-delta, delta), else INCONCLUSIVE (cannot tell if any replicate
    cannot tell). The interval is the union of the replicates' intervals. `luck`: the study's
    estimated search-luck SD; above `calibrated_luck(R)` no claim is made (INCONCLUSIVE, saying why)."""
    if len(members) == 1:
        return members[0]
    ids = replicate_ids if replicate_ids is not None else list(range(len(members)))
    first = members[0]
    outcomes = [v.outcome for v in members]
    delta = first.delta
    testable = CANNOT_TELL not in outcomes
    lo = min(v.ci[0] for v in members) if testable else math.nan
    hi = max(v.ci[1] for v in members) if testable else math.nan
    eq_lo = min(v.eq_ci[0] for v in members) if testable else math.nan
    eq_hi = max(v.eq_ci[1] for v in members) if testable else math.nan
    signs = {np.sign(v.estimate) for v in members if v.outcome == SHOWN}
    if not testable:
        outcome = CANNOT_TELL
    elif all(o == SHOWN for o in outcomes) and len(signs) == 1:
        outcome = SHOWN
    elif -delta < eq_lo and eq_hi < delta:
        outcome = EQUIVALENT
    else:
        outcome = INCONCLUSIVE
    limit = calibrated_luck(len(members))
    too_lucky = luck is not None and np.isfinite(luck) and luck > limit and outcome in (SHOWN, EQUIVALENT)
    claimed = outcome
    if too_lucky:
        outcome = INCONCLUSIVE
    est = float(np.mean([v.estimate for v in members]))
    need = [v.seeds_needed for v in members if v.seeds_needed is not None]
    per = "; ".join(f"replicate {r}: {_short(v)}" for r, v in zip(ids, members))
    head = f"{first.a} vs {first.b}:"
    n = len(members)
    if outcome == SHOWN:
        word = "better" if est > 0 else "worse"
        text = (f"{head} SHOWN in every one of {n} search replicates, {first.a} is {word} "
                f"(union of their intervals {_ci(lo, hi)}; {per}).")
    elif outcome == EQUIVALENT:
        text = (f"{head} EQUIVALENT within +-{delta:g} points in every one of {n} search replicates "
                f"(union of their equivalence intervals {_ci(eq_lo, eq_hi)}; {per}).")
    elif outcome == CANNOT_TELL:
        text = f"{head} cannot tell ({per})."
    elif too_lucky:
        text = (f"{head} INCONCLUSIVE across {n} search replicates (every replicate finds it "
                f"{'SHOWN' if claimed == SHOWN else 'EQUIVALENT'}, but the study's search luck, an estimated SD of "
                f"{luck:.2f} points, is more than the {limit:g} that {n} replicates absorb; {per}).")
    else:
        shown = [o == SHOWN for o in outcomes]
        why = ("the replicates contradict each other: the answer depends on the search" if len(signs) > 1 else
               f"only {sum(shown)} of {n} replicates show it: the answer depends on the search" if any(shown)
               else "no replicate shows it")
        text = f"{head} INCONCLUSIVE across {n} search replicates ({why}; {per})."
    return PairedVerdict(
        comparison=first.comparison, outcome=outcome, estimate=est, ci=(lo, hi), k=min(v.k for v in members),
        sd=max((v.sd for v in members), default=math.nan), seeds_needed=max(need) if need else None, text=text,
        a=first.a, b=first.b, level=min(v.level for v in members) if testable else math.nan,
        eq_ci=(eq_lo, eq_hi), p=max(v.p for v in members), p_adj=max(v.p_adj for v in members), delta=delta,
        family=first.family, family_size=first.family_size, seeds=first.seeds)


def _ci(lo: float, hi: float) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _short(v: PairedVerdict) -> str:
    if v.outcome == CANNOT_TELL:
        return f"cannot tell ({v.k} paired seeds)"
    word = {SHOWN: "SHOWN", EQUIVALENT: "EQUIVALENT", INCONCLUSIVE: "INCONCLUSIVE"}[v.outcome]
    return f"{word} {v.estimate:+.2f} {_ci(*v.ci)}"


def across_arrays(outcome: np.ndarray, estimate: np.ndarray, eq_low: np.ndarray, eq_high: np.ndarray,
                  delta: float, axis: int = 0, luck_ok=True) -> np.ndarray:
    """`across` on arrays (outcome codes of `stats.OUTCOMES`), replicates along `axis`: the combined code.
    `luck_ok` (broadcast against the result): False where the study's search luck forbids claims."""
    outcome = np.asarray(outcome)
    shown_pos = ((outcome == 1) & (estimate > 0)).all(axis=axis)
    shown_neg = ((outcome == 1) & (estimate < 0)).all(axis=axis)
    untestable = (outcome == 0).any(axis=axis)
    equiv = ((eq_low > -delta) & (eq_high < delta)).all(axis=axis)
    code = np.where(untestable, 0, np.where(shown_pos | shown_neg, 1, np.where(equiv, 2, 3)))
    return np.where(np.isin(code, (1, 2)) & ~np.asarray(luck_ok, dtype=bool), 3, code)


def agree(statuses: list[str]) -> str | None:
    """The status every replicate reached, or None."""
    return statuses[0] if statuses and all(s == statuses[0] for s in statuses) else None


# --------------------------------------------------------------------------- resolution

def split_size(values, max_n: int = MAX_SPLIT) -> int | None:
    """The size n of the split accuracies were measured on: each accuracy is a count over n (exact in
    floating point), so n is the least common multiple of their reduced denominators. None when some
    value is not such a count. With few values whose counts share a factor with n it is a divisor of
    n (an SE from it errs large); `resolutions` therefore reads it from every accuracy of the study."""
    n = 1
    for v in values:
        if v is None or not np.isfinite(v):
            continue
        frac = Fraction(float(v)).limit_denominator(max_n)
        if float(frac) != float(v):  # correct / n is exact in floating point; anything else is not a count
            return None
        n = n * frac.denominator // math.gcd(n, frac.denominator)
        if n > max_n:
            return None
    return n if n > 1 else None


@dataclass(frozen=True)
class Resolution:
    """Whether one search resolved its winner (accuracies in points)."""

    experiment: str
    method: str
    teacher_size: float | None
    replicate: int
    configs: int              # finished configurations it compared
    seeds_per_trial: int
    lead: float               # winner minus runner-up, validation accuracy, points
    se: float                 # standard error of that lead, points
    source: str               # how the SE was obtained
    resolved: bool
    text: str


def _label(method: str, size, replicate: int) -> str:
    where = f"{method} at teacher size {size:g}" if size is not None and np.isfinite(size) else method
    return where + (f", replicate {replicate}" if replicate else "")


def resolution(rows: pd.DataFrame, val_size: int | None = None) -> Resolution | None:
    """The resolution of one search from its trials (one experiment's reported rows at their best
    validation epoch, finished trials only); None without rows."""
    if rows.empty:
        return None
    first = rows.iloc[0]
    exp, method = str(first.get("experiment")), str(first.get("method"))
    size = first.get("teacher_size")
    size = float(size) if size is not None and pd.notna(size) else None
    rep = replicate_of(exp)
    per: dict = {}
    for cid, seed, v in zip(config_ids(rows), rows["seed"], rows["val_acc"].astype(float)):
        if np.isfinite(v):
            per.setdefault(cid, {}).setdefault(int(seed), []).append(v)
    per = {c: {s: float(np.mean(v)) for s, v in by_seed.items()} for c, by_seed in per.items()}
    k = max((len(v) for v in per.values()), default=0)
    means = pd.Series({c: float(np.mean(list(v.values()))) for c, v in per.items()}, dtype=float)
    means = means.sort_values(ascending=False, kind="stable")
    where = _label(method, size, rep)
    if len(means) < 2:
        text = (f"Search {where}: {len(means)} finished configuration(s), nothing to resolve "
                f"(give it at least 2 trials).")
        return Resolution(exp, method, size, rep, len(means), k, math.nan, math.nan, "", False, text)
    win, run = means.index[0], means.index[1]
    lead = 100 * float(means.iloc[0] - means.iloc[1])
    d = pd.Series([per[win][s] - per[run][s] for s in sorted(set(per[win]) & set(per[run]))], dtype=float)
    if k >= 2 and len(d) >= 2:
        se = 100 * float(d.std(ddof=1)) / math.sqrt(len(d))
        source = f"{len(d)} paired search seeds"
    else:
        n = val_size or split_size(rows["val_acc"].to_numpy(dtype=float))
        if not n:
            text = f"Search {where}: lead {lead:.2f} points; the validation split's size is unknown, so its SE too."
            return Resolution(exp, method, size, rep, len(means), k, lead, math.nan, "", False, text)
        p1, p2 = float(means.iloc[0]), float(means.iloc[1])
        se = 100 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / n)
        source = f"binomial, {n} validation samples"
    resolved = lead > 0 and lead >= RESOLVED_Z * se
    head = (f"Search {where}: the winner leads the runner-up by {lead:.2f} points "
            f"(SE {se:.2f}, {source}; {len(means)} configurations)")
    if resolved:
        return Resolution(exp, method, size, rep, len(means), k, lead, se, source, True, f"{head}: resolved.")
    factor = (RESOLVED_Z * se / lead) ** 2 if lead > 0 else math.inf
    if k >= 2 and len(d) >= 2:
        budget = (f"about {_count(len(d) * factor)} seeds per search trial (search.seeds_per_trial) would resolve "
                  f"a lead this size" if math.isfinite(factor) else "the two best tie")
    else:
        budget = (f"about {_count(n * factor)} validation samples would resolve a lead this size, and one seed "
                  f"per trial does not measure seed noise at all: search.seeds_per_trial >= 2 does"
                  if math.isfinite(factor) else "the two best tie; search.seeds_per_trial >= 2 would separate them "
                  "if anything does")
    return Resolution(exp, method, size, rep, len(means), k, lead, se, source, False,
                      f"{head}: NOT resolved ({budget}).")


def _count(x: float) -> str:
    return f"{int(math.ceil(x)):,}" if x < 1e9 else "more than 10^9"


def resolutions(summary: pd.DataFrame, method: str | None = None, val_size: int | None = None) -> list[Resolution]:
    """The resolution of every search of the study (of `method`), in experiment order."""
    rows = reported_rows(summary)
    rows = finished(rows[rows["stage"] == "search"])
    rows = rows[rows["status"] == "ok"]  # stopped trials were not measured at the full budget
    if method is not None:
        rows = rows[rows["method"] == method]
    if val_size is None and not rows.empty:  # every trial of a study is measured on the same split
        val_size = split_size(summary["val_acc"].to_numpy(dtype=float))
    # one search per experiment and teacher size (a joint search confirms its best per size; rows
    # written without an experiment: per method and teacher size)
    fallback = "search-" + rows["method"].astype(str) + "-t" + rows["teacher_size"].astype(str)
    rows = rows.assign(experiment=rows["experiment"].where(rows["experiment"].notna(), fallback))
    out = []
    for _, grp in rows.groupby(["experiment", rows["teacher_size"].fillna(-1.0)], sort=True):
        r = resolution(grp, val_size)
        if r is not None:
            out.append(r)
    return sorted(out, key=lambda r: (r.method, r.teacher_size if r.teacher_size is not None else -1, r.replicate))


def resolution_note(res: list[Resolution]) -> str:
    """One sentence for a verdict: which of its searches did not resolve their winner, and what would."""
    if not res:
        return ""
    unknown = [r for r in res if r.configs >= 2 and not np.isfinite(r.se)]
    alone = [r for r in res if r.configs < 2]
    bad = [r for r in res if not r.resolved and r not in unknown and r not in alone]
    parts = []
    if alone:
        parts.append(f"Search: {len(alone)} of {len(res)} searches compared nothing (one finished configuration "
                     f"per teacher size; give them at least 2 trials each).")
    if bad:
        parts.append(f"Search: {len(bad)} of {len(res)} searches did NOT resolve their winner, so which of their "
                     f"best configurations was confirmed is close to a coin flip: " + " ".join(r.text for r in bad))
    elif not unknown and not alone:
        parts.append(f"Search: all {len(res)} searches resolved their winner (lead >= {RESOLVED_Z:g} SE).")
    if unknown:
        parts.append(f"Search: whether {len(unknown)} search(es) resolved their winner is not known (the "
                     f"validation split's size cannot be read from these results).")
    return " ".join(parts)


def luck_variance(x) -> np.ndarray:
    """Search-luck variance of one arm (a method at one teacher size) from its replicates, vectorised:
    x (..., R, k) holds each replicate's chosen configuration's confirm accuracies (points) on the k
    shared confirm seeds. The variance of the replicates' mean accuracies beyond what the confirm
    seeds' run noise explains (method of moments, at least 0); seed effects cancel (paired)."""
    x = np.asarray(x, dtype=float)
    r, k = x.shape[-2], x.shape[-1]
    xc = x - x.mean(axis=-2, keepdims=True)  # remove each seed's shared effect
    means = xc.mean(axis=-1)  # per replicate
    between = means.var(axis=-1, ddof=1)
    # one replicate's run variance (centring on the seed means shrank it by (R - 1) / R), over k seeds
    noise = (xc - means[..., None]).var(axis=-1, ddof=1).mean(axis=-1) * r / (r - 1) / k
    return np.maximum(0.0, between - noise)


def pooled_luck(x) -> np.ndarray:
    """The search-luck SD of a method, pooled over its teacher sizes: x (..., R, S, k) -> (...,)."""
    x = np.moveaxis(np.asarray(x, dtype=float), -3, -2)  # (..., S, R, k)
    return np.sqrt(luck_variance(x).mean(axis=-1))


def luck_sd(series_by_replicate: list[pd.Series]) -> tuple[float, int]:
    """`luck_variance` of one arm from Series (one per replicate, confirm accuracies in points indexed by
    seed; only the seeds every replicate has count) as an SD; (NaN, n) with fewer than 2 replicates or
    2 common seeds. Returns (SD, seeds used)."""
    frame = pd.concat(series_by_replicate, axis=1).dropna() if len(series_by_replicate) >= 2 else pd.DataFrame()
    if frame.shape[0] < 2:
        return math.nan, int(frame.shape[0])
    return math.sqrt(float(luck_variance(frame.to_numpy(dtype=float).T))), int(frame.shape[0])


def calibrated_luck(replicates: int) -> float:
    """The luck SD up to which `replicates` replicates were shown calibrated (0 for one search)."""
    if replicates < 2:
        return 0.0
    return CALIBRATED_LUCK_SD.get(replicates, max(CALIBRATED_LUCK_SD.values()))
