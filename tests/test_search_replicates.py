"""Two real studies of one question with different search seeds, each with two search replicates
(real Ray, real tiny training): their verdicts never contradict each other."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import capacity_gap as cg
from analysis.load import load, trial_summary
from analysis.stats import SHOWN
from study.graph import plan
from study.runner import run_study
from study.spec import parse_spec


def _spec(tmp_path, data_root, seed: int, replicates: int = 2) -> dict:
    return {
        "name": f"twice-{seed}", "storage": str(tmp_path / "results"),
        "dataset": {"name": "mnist1d", "num_samples": 1500, "root": data_root},
        "student": {"family": "mlp", "size": 32},
        "teachers": {"family": "cnn1d", "sizes": [4, 16], "seeds": 1, "epochs": 4},
        "train": {"epochs": 4, "batch_size": 64, "lr": 0.03},
        # one joint search a replicate (Sobol spreads its 2 trials over the 2 teacher sizes), confirmed per size;
        # one trial at a time per experiment: one reused actor each, the least start-up
        "search": {"budget": "joint", "scheduler": "none", "max_concurrent": 1, "seed": seed,
                   "replicates": replicates, "sampler": "qmc"},
        "methods": {"kd": {"trials": 2}},
        "confirm": {"seeds": 3, "top_k": 1},
        "verdict": {"delta": 2.0},
        "report": {"png": False},
    }


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory, data_root, ray_local):
    tmp = tmp_path_factory.mktemp("twice")
    out = []
    for seed in (0, 1):
        spec = parse_spec(_spec(tmp, data_root, seed))
        root = Path(spec.study_uri)
        if out:  # the teachers are the same content: the second study finds them in its zoo
            shutil.copytree(Path(out[0][1]) / "zoo", root / "zoo")
        root_, outcome = run_study(spec)
        assert not outcome.failed and not outcome.blocked, outcome.failed
        out.append((spec, root_))
    return out


def test_each_study_runs_its_replicates_under_names_that_do_not_move(two_studies, tmp_path, data_root):
    firsts = []
    for spec, root in two_studies:
        names = {e.name for e in plan(spec)}
        one = {e.name for e in plan(parse_spec(_spec(tmp_path, data_root, spec.search_seed, replicates=1)))}
        assert one < names and {n.split("-rep")[0] for n in names - one} == {"search-kd", "confirm-kd"}
        df = load(root)
        search = df[df.stage == "search"]
        assert search["experiment"].nunique() == 2 and (search["status"] == "ok").all()
        assert search.groupby("experiment")["teacher_size"].nunique().eq(2).all()  # Sobol covers both sizes
        firsts.append(search[search["trial_id"].str.endswith("-s0")].drop_duplicates("experiment"))
        # replicates confirm on the shared paired seeds
        confirm = df[df.stage == "confirm"]
        assert confirm["experiment"].nunique() == 2 and confirm.groupby("experiment")["seed"].nunique().eq(3).all()
    # every search (of either study, either replicate) starts from its own configuration
    assert pd.concat(firsts)["temperature"].nunique() == 4


def _claims(v: cg.Verdict) -> dict:
    """Every claim a verdict makes: comparison -> (+1 / -1 SHOWN better / worse, or 0 equivalent, its verdict)."""
    out = {}
    for pv in tuple(v.sizes) + tuple(v.vs_baseline_sizes):
        if pv.outcome == SHOWN:
            out[pv.comparison] = (int(np.sign(pv.estimate)), pv)
        elif pv.outcome == "equivalent":
            out[pv.comparison] = (0, pv)
    return out


def test_the_two_studies_verdicts_never_contradict(two_studies):
    verdicts = []
    for spec, root in two_studies:
        v, = cg.verdicts(trial_summary(load(root)), delta=spec.delta)
        assert len(v.replicates) == 2 and "2 search replicates" in v.text
        assert "Search" in v.text and "vs the no-KD student at 2 teacher sizes" in v.text
        verdicts.append(v)
    a, b = verdicts
    gap_words = {cg.GAP: 1, cg.LARGEST_BETTER: -1, cg.NO_GAP: 0}
    if a.status in gap_words and b.status in gap_words:
        assert a.status == b.status, (a.text, b.text)
    ca, cb = _claims(a), _claims(b)
    for comparison in set(ca) & set(cb):
        # a difference shown in one study is never shown the other way, nor equivalent in the other when it
        # was shown to exceed delta
        (x, pa), (y, pb) = ca[comparison], cb[comparison]
        assert x * y != -1, (comparison, a.text, b.text)
        for sign, pv in ((x, pa), (y, pb)):
            if sign and 0 in (x, y):
                assert pv.ci[0] < spec.delta and pv.ci[1] > -spec.delta, (comparison, a.text, b.text)
    print("\n".join(v.text for v in verdicts))
