"""Searches that can resolve what they compare: samplers and their seeds, search replicates, several
seeds per search trial, and what the analysis says about each search (no Ray here; see
tests/test_search_replicates.py for two real studies)."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pandas as pd
import pytest

from analysis import search as srch
from analysis.stats import CANNOT_TELL, EQUIVALENT, INCONCLUSIVE, SHOWN, compare
from study import samplers
from study.experiment import Journal, Launch, make_searcher
from study.graph import CONFIRM_SEED0, plan
from study.ranges import Range
from study.spaces import define_space
from study.spec import parse_spec

from .conftest import micro_spec

SPACE = {"temperature": Range("float", 1.0, 16.0, log=True), "alpha": Range("float", 0.1, 0.95)}


def _spec(tmp_path, data_root, **search):
    return parse_spec(micro_spec(tmp_path, data_root, confirm={"seeds": 3, "top_k": 1},
                                 search={"budget": "stratified", "scheduler": "none", **search},
                                 methods={"kd": {"trials": 2}, "rkd": {"trials": 0, "teacher_sizes": [8]}}))


# --------------------------------------------------------------------------- graph


def test_defaults_name_the_same_experiments(tmp_path, data_root):
    plain = {e.name for e in plan(_spec(tmp_path, data_root))}
    explicit = {e.name for e in plan(_spec(tmp_path, data_root, sampler="auto", replicates=1, seeds_per_trial=1))}
    other_sampler = {e.name for e in plan(_spec(tmp_path, data_root, sampler="random"))}
    assert plain == explicit == other_sampler  # the sampler decides which configurations, not what a trial is


def test_replicates_are_independent_searches_with_their_own_confirms(tmp_path, data_root):
    one = {e.name: e for e in plan(_spec(tmp_path, data_root))}
    exps = plan(_spec(tmp_path, data_root, replicates=3, seeds_per_trial=2))
    by_label = {(e.stage, e.label): e for e in exps}
    # replicate 0 is the study without replicates, renamed only by what seeds_per_trial changes (its trials)
    assert {e.name for e in exps if e.stage in ("teachers", "baseline")} <= set(one)
    for r in (1, 2):
        for size in (8, 32):
            s, c = by_label[("search", f"kd-t{size}-rep{r}")], by_label[("confirm", f"kd-t{size}-rep{r}")]
            assert c.from_search == s.name and s.name in c.deps and s.replicate == r == c.replicate
            assert s.search_seeds == [2 * r, 2 * r + 1]  # seed 0 + replicate x seeds_per_trial + j
    # every size of a replicate trains on the same search seeds (paired), replicates on disjoint ones
    assert {tuple(e.search_seeds) for e in exps if e.stage == "search"} == {(0, 1), (2, 3), (4, 5)}
    assert max(x for e in exps for x in e.search_seeds) < CONFIRM_SEED0
    # no search, no search luck: a fixed configuration, the teachers and the unsearched baseline run once
    assert [e.label for e in exps if e.method == "rkd"] == ["rkd-t8"]
    assert sum(e.stage == "teachers" for e in exps) == 2 and sum(e.stage == "baseline" for e in exps) == 1
    confirms = [e for e in exps if e.stage == "confirm" and e.method == "kd"]
    assert len({tuple(e.seeds) for e in confirms}) == 1  # every replicate confirms on the shared paired seeds


def test_a_searched_baseline_is_replicated_with_its_search(tmp_path, data_root):
    spec = parse_spec(micro_spec(tmp_path, data_root, confirm={"seeds": 3, "top_k": 1},
                                 search={"budget": "joint", "scheduler": "none", "replicates": 2},
                                 methods={"kd": {"trials": 2, "space": {"lr": {"low": 0.001, "high": 0.1}}}}))
    labels = sorted((e.stage, e.label) for e in plan(spec))
    assert ("search", "baseline-rep1") in labels and ("baseline", "scratch-rep1") in labels
    assert ("search", "kd-rep1") in labels and ("confirm", "kd-rep1") in labels


def test_search_seeds_must_stay_below_the_confirm_seeds(tmp_path, data_root):
    from study.spec import SpecError

    with pytest.raises(SpecError, match="replicates x seeds_per_trial"):
        _spec(tmp_path, data_root, seed=9990, replicates=4, seeds_per_trial=3)


# --------------------------------------------------------------------------- samplers


def test_sampler_seeds_differ_per_experiment_and_are_reproducible():
    seeds = {samplers.sampler_seed(0, label) for label in ("kd-t4", "kd-t16", "kd-t4-rep1", "rkd-t4")}
    assert len(seeds) == 4
    assert samplers.sampler_seed(0, "kd-t4") == samplers.sampler_seed(0, "kd-t4") != samplers.sampler_seed(1, "kd-t4")
    assert samplers.resolve("auto") == samplers.DEFAULT in samplers.SAMPLERS


def _ask(sampler, n, value=lambda p: -abs(math.log(p["temperature"]) - 1) - abs(p["alpha"] - 0.5)):
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(n):
        t = study.ask()
        define_space(t, tuple(sorted(SPACE.items())), {})
        study.tell(t, value(t.params))
    return study.trials


@pytest.mark.parametrize("name", samplers.SAMPLERS + ("qmc+tpe",))
def test_every_sampler_proposes_points_of_the_space(name):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials = _ask(samplers.make_sampler(name, 3, 6, SPACE), 4)
    for t in trials:
        assert 1.0 <= t.params["temperature"] <= 16.0 and 0.1 <= t.params["alpha"] <= 0.95
    assert len({(t.params["temperature"], t.params["alpha"]) for t in trials}) == 4
    if name in ("gp", "qmc+tpe"):  # a Sobol initial design (a third of the 6 trials), then the model
        assert [t.system_attrs[samplers.STAGE_KEY] for t in trials] == ["initial"] * 2 + ["model"] * 2
    # the same seed proposes the same configurations: a search is reproducible
    again = _ask(samplers.make_sampler(name, 3, 6, SPACE), 4)
    assert [t.params for t in again] == [t.params for t in trials]


def test_sobol_covers_the_space_from_the_first_trial():
    trials = _ask(samplers.make_sampler("qmc", 11, 4, SPACE), 4)
    # four scrambled Sobol points: one in each quarter of every axis (alpha linear, temperature in log)
    alpha = sorted(int((t.params["alpha"] - 0.1) / 0.85 * 4) for t in trials)
    temp = sorted(int(math.log(t.params["temperature"]) / math.log(16.0) * 4) for t in trials)
    assert alpha == [0, 1, 2, 3] and temp == [0, 1, 2, 3]


def test_unknown_sampler_is_refused():
    with pytest.raises(ValueError, match="unknown sampler"):
        samplers.make_sampler("annealing", 0, 3, SPACE)


# --------------------------------------------------------------------------- the searcher


def _launch(tmp_path, **kw):
    base = dict(name="search-kd-t8-abc", stage="search", method="kd", kind="search", base={}, root=str(tmp_path),
                space=SPACE, constants={"teacher_size": 8}, trials=3, sampler="qmc", sampler_seed=5)
    return Launch(**{**base, **kw})


def test_a_search_records_its_sampler_and_keeps_it_on_resume(tmp_path):
    launch = _launch(tmp_path)
    journal = Journal(launch.root, launch.name)
    make_searcher(launch, journal)
    from study.experiment import load_study

    study = load_study(journal, launch.name)
    assert study.user_attrs[samplers.RECORD_KEY] == {"name": "qmc", "seed": 5, "initial": 2}
    # a rerun with another spec-level sampler (or seed) keeps what the search started with
    _, rec = __import__("study.experiment", fromlist=["search_sampler"]).search_sampler(
        _launch(tmp_path, sampler="random", sampler_seed=9, trials=9), journal)
    assert rec == {"name": "qmc", "seed": 5, "initial": 2}
    journal.close()


def test_a_journal_from_before_samplers_were_recorded_resumes_with_its_tpe(tmp_path):
    from study.experiment import load_study, search_sampler

    launch = _launch(tmp_path, search_seed=7)
    journal = Journal(launch.root, launch.name)
    study = load_study(journal, launch.name)
    study.enqueue_trial({"temperature": 2.0, "alpha": 0.5})  # a trial of an older kdstudy, no record
    sampler, rec = search_sampler(launch, journal)
    assert rec == {"name": "tpe", "seed": 7, "initial": 2} and isinstance(sampler, optuna.samplers.TPESampler)
    journal.close()


def test_seeds_per_trial_groups_tune_trials_under_one_optuna_trial(tmp_path):
    from optuna.trial import TrialState

    from study.experiment import load_study

    launch = _launch(tmp_path, search_seeds=[4, 5])
    journal = Journal(launch.root, launch.name)
    searcher = make_searcher(launch, journal)
    a, b, c = searcher.suggest("t1"), searcher.suggest("t2"), searcher.suggest("t3")
    params = lambda cfg: {k: v for k, v in cfg.items() if k in SPACE}  # noqa: E731
    assert params(a) == params(b) != params(c)  # one configuration, trained on both search seeds
    assert (a["seed"], b["seed"], c["seed"]) == (4, 5, 4)
    assert a["_trial_key"] == "search-kd-t8-abc-s0-k0" and b["_trial_key"] == "search-kd-t8-abc-s0-k1"
    assert c["_trial_key"] == "search-kd-t8-abc-s1-k0"
    d = searcher.suggest("t4")
    searcher.on_trial_complete("t1", {"best_val_acc": 0.8})
    study = load_study(journal, launch.name)
    assert study.trials[0].state == TrialState.RUNNING  # told only when every seed has ended
    searcher.on_trial_complete("t2", {"best_val_acc": 0.6})
    searcher.on_trial_complete("t3", {"best_val_acc": 0.9, "progress": 1, "progress_total": 3})  # stopped early
    searcher.on_trial_complete("t4", {"best_val_acc": 0.9})
    study = load_study(journal, launch.name)
    assert study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == pytest.approx(0.7)
    assert study.trials[1].state == TrialState.PRUNED and params(d) == params(c)
    e, f = searcher.suggest("t5"), searcher.suggest("t6")
    searcher.on_trial_complete("t5", None, error=True)
    searcher.on_trial_complete("t6", {"best_val_acc": 0.5})
    assert load_study(journal, launch.name).trials[2].state == TrialState.FAIL
    journal.close()


def test_one_seed_per_trial_keeps_the_plain_trial_keys(tmp_path):
    launch = _launch(tmp_path)
    journal = Journal(launch.root, launch.name)
    searcher = make_searcher(launch, journal)
    cfg = searcher.suggest("t1")
    assert cfg["_trial_key"] == "search-kd-t8-abc-s0" and "seed" not in cfg
    journal.close()


# --------------------------------------------------------------------------- analysis.search


def test_replicate_of_reads_the_experiment_label():
    assert srch.replicate_of("confirm-kd-t16-rep2-0a1b2c3d") == 2
    assert srch.replicate_of("confirm-kd-t16-0a1b2c3d") == 0 and srch.replicate_of(None) == 0
    assert srch.replicate_of("search-baseline-rep1-00000000") == 1
    assert srch.search_trial_of("search-kd-t8-abc-s3-k1") == "search-kd-t8-abc-s3"


def test_split_size_is_read_from_the_accuracies():
    rng = np.random.default_rng(0)
    counts = rng.integers(500, 790, 6)
    assert srch.split_size(counts / 800) == 800
    assert srch.split_size([0.5, np.nan]) == 2 and srch.split_size([]) is None
    assert srch.split_size([0.123456789123]) is None  # not a count over any plausible split


def _search_rows(vals: dict, seeds=(0,), n=800, exp="search-kd-t16-0000"):
    rows = []
    for cid, per_seed in vals.items():
        for seed, v in zip(seeds, per_seed):
            rows.append({"experiment": exp, "method": "kd", "teacher_size": 16.0, "config_id": cid, "seed": seed,
                         "val_acc": round(v * n) / n, "trial_id": f"{cid}-{seed}"})
    return pd.DataFrame(rows)


def test_a_one_seed_search_is_resolved_against_the_binomial_se():
    res = srch.resolution(_search_rows({"a": [721 / 800], "b": [641 / 800], "c": [0.7]}))
    assert res.resolved and res.source == "binomial, 800 validation samples"
    p1, p2 = 721 / 800, 641 / 800
    assert res.lead == pytest.approx(10.0) and res.se == pytest.approx(100 * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 800))
    assert srch.resolution(_search_rows({"a": [0.9], "b": [0.8]}), val_size=800).resolved  # size given
    close = srch.resolution(_search_rows({"a": [0.63], "b": [0.62]}), val_size=800)
    assert not close.resolved and "NOT resolved" in close.text
    # lead 1 point, SE 2.42: (2 x 2.42 / 1)^2 x 800 validation samples would resolve it
    need = math.ceil(800 * (2 * close.se / close.lead) ** 2)
    assert f"about {need:,} validation samples" in close.text and "seeds_per_trial >= 2" in close.text


def test_a_several_seed_search_is_resolved_against_its_paired_seeds():
    res = srch.resolution(_search_rows({"a": [0.90, 0.92, 0.91], "b": [0.85, 0.88, 0.86]}, seeds=(0, 1, 2)))
    d = np.array([0.90 - 0.85, 0.92 - 0.88, 0.91 - 0.86]) * 100
    assert res.seeds_per_trial == 3 and res.source == "3 paired search seeds"
    assert res.lead == pytest.approx(d.mean(), abs=0.2) and res.resolved
    noisy = srch.resolution(_search_rows({"a": [0.90, 0.80], "b": [0.84, 0.85]}, seeds=(0, 1)))
    assert not noisy.resolved and "seeds per search trial (search.seeds_per_trial)" in noisy.text
    lone = srch.resolution(_search_rows({"a": [0.9]}))
    assert not lone.resolved and "at least 2 trials" in lone.text


def _pv(est, sd, k=5, delta=0.5):
    rng = np.random.default_rng(int(1000 * abs(est) + 10 * sd))
    d = rng.normal(0, 1, k)
    d = (d - d.mean()) / d.std(ddof=1) * sd + est
    base = pd.Series(np.full(k, 70.0), index=range(k))
    return compare([("kd", "no-KD student", base + d, base)], delta=delta)[0]


def test_across_claims_only_what_every_replicate_shows():
    both = srch.across([_pv(2.0, 0.5), _pv(1.5, 0.5)])
    assert both.outcome == SHOWN and "SHOWN in every one of 2 search replicates" in both.text
    assert both.ci == (min(v.ci[0] for v in (_pv(2.0, 0.5), _pv(1.5, 0.5))),
                       max(v.ci[1] for v in (_pv(2.0, 0.5), _pv(1.5, 0.5))))
    one = srch.across([_pv(2.0, 0.5), _pv(0.2, 1.0)])
    assert one.outcome == INCONCLUSIVE and "only 1 of 2 replicates show it" in one.text
    contra = srch.across([_pv(2.0, 0.5), _pv(-2.0, 0.5)])
    assert contra.outcome == INCONCLUSIVE and "contradict" in contra.text
    assert contra.ci[0] < 0 < contra.ci[1]  # the union of the intervals covers both answers
    eq = srch.across([_pv(0.02, 0.05), _pv(-0.03, 0.05)])
    assert eq.outcome == EQUIVALENT
    few = srch.across([_pv(2.0, 0.5), _pv(2.0, 0.5, k=2)])
    assert few.outcome == CANNOT_TELL
    assert srch.across([_pv(2.0, 0.5)]).text == _pv(2.0, 0.5).text  # one replicate: its own verdict


def test_across_arrays_matches_across():
    cases = [[_pv(2.0, 0.5), _pv(1.5, 0.5)], [_pv(2.0, 0.5), _pv(0.2, 1.0)], [_pv(2.0, 0.5), _pv(-2.0, 0.5)],
             [_pv(0.02, 0.05), _pv(-0.03, 0.05)], [_pv(2.0, 0.5), _pv(2.0, 0.5, k=2)]]
    codes = {CANNOT_TELL: 0, SHOWN: 1, EQUIVALENT: 2, INCONCLUSIVE: 3}
    for members in cases:
        arr = lambda f: np.array([f(v) for v in members])  # noqa: E731
        code = srch.across_arrays(arr(lambda v: codes[v.outcome]), arr(lambda v: v.estimate),
                                  arr(lambda v: v.eq_ci[0]), arr(lambda v: v.eq_ci[1]), 0.5)
        assert int(code) == codes[srch.across(members).outcome]


def test_luck_is_estimated_beyond_the_seed_noise():
    rng = np.random.default_rng(3)
    seed = rng.normal(0, 2, 200)
    no_luck = [pd.Series(70 + seed + rng.normal(0, 1, 200)) for _ in range(2)]
    luck = [pd.Series(70 + off + seed + rng.normal(0, 1, 200)) for off in (0.0, 1.5)]
    assert srch.luck_sd(no_luck)[0] < 0.2
    assert srch.luck_sd(luck)[0] == pytest.approx(1.5 / math.sqrt(2), abs=0.25)
    assert math.isnan(srch.luck_sd(luck[:1])[0])


def test_results_table_says_which_replicate_its_numbers_are_and_shows_each():
    """With two search replicates the table's configuration and test % are replicate 0's, each replicate's own
    test % stands beside them, the differences are the combined ones, and the caption says so."""
    from analysis import capacity_gap as cg
    from analysis import results_table as rt

    from .synthetic import summary_from_arrays

    sizes = [4, 16]
    planted = {0: np.array([[76.0, 77, 78, 79], [80, 81, 82, 83]]), 1: np.array([[70.0, 71, 72, 73], [74, 75, 76, 77]])}
    base = np.array([60.0, 61, 62, 63])
    parts = [summary_from_arrays(planted[r][:, None, :], planted[r][:, None, :], sizes, base, base, replicate=r)
             for r in (0, 1)]
    summary = pd.concat([parts[0], parts[1][parts[1]["stage"] != "baseline"]], ignore_index=True)
    mt = rt.method_table(summary)
    assert list(mt["search_replicates"]) == [2, 2]
    for i in range(len(sizes)):
        assert mt["test_acc_by_replicate"].iloc[i] == pytest.approx([planted[0][i].mean(), planted[1][i].mean()])
        assert mt["test_acc"].iloc[i] == pytest.approx(planted[0][i].mean())  # replicate 0's
    v, = cg.verdicts(summary)
    combined = [p.estimate for p in v.vs_baseline_sizes]
    assert list(mt["diff_vs_no_kd"]) == pytest.approx(combined)  # the mean of the two replicates' estimates
    assert combined == pytest.approx([(planted[0][i] + planted[1][i]).mean() / 2 - base.mean() for i in range(2)])
    _, frame, caption, *_ = next(t for t in rt.tables(summary) if t[3] == "results")
    assert list(frame["test % per search replicate"]) == ["r0 77.50 · r1 71.50", "r0 81.50 · r1 75.50"]
    assert "search replicate 0's" in caption and "union of their intervals" in caption
    one = rt.tables(parts[0])  # one replicate: no such column, no such sentence
    _, frame1, caption1, *_ = next(t for t in one if t[3] == "results")
    assert "test % per search replicate" not in frame1.columns and "replicate" not in caption1
