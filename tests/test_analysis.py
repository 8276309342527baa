"""analysis: loading Parquet results, statistics and the capacity-gap verdict on planted data."""

from __future__ import annotations

import ast
import math
import pathlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import SCHEMA, SCHEMA_VERSION, load, status_table
from analysis import capacity_gap as cg
from analysis.load import ResultsFileError, SchemaVersionError, trial_summary
from analysis.schema import rows_to_table
from analysis.stats import bootstrap_diff, mean_ci, t_quantile
from .synthetic import write_study

GAP = {4: 0.70, 16: 0.78, 64: 0.75, 256: 0.71}
MONOTONE = {4: 0.70, 16: 0.73, 64: 0.76, 256: 0.79}


def _verdicts(study_dir):
    summary = trial_summary(load(study_dir))
    return {m: cg.verdict(cg.capacity_data(summary, m)) for m in cg.capacity_methods(summary)}


def test_t_quantile_matches_tables():
    assert t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert t_quantile(0.975, 2) == pytest.approx(4.303, abs=1e-3)
    assert t_quantile(0.975, 10) == pytest.approx(2.228, abs=1e-3)
    assert t_quantile(0.025, 30) == pytest.approx(-2.042, abs=1e-3)


def test_mean_ci_and_bootstrap():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.mean, ci.n) == (2.0, 3)
    assert ci.high - ci.mean == pytest.approx(4.303 / np.sqrt(3), abs=1e-3)
    one = mean_ci([0.5])
    assert one.n == 1 and np.isnan(one.low)
    a = bootstrap_diff([1.0, 1.1, 0.9], [0.0, 0.1, -0.1], seed=3)
    assert a == bootstrap_diff([1.0, 1.1, 0.9], [0.0, 0.1, -0.1], seed=3)  # seeded
    assert a.diff == pytest.approx(1.0) and a.excludes_zero
    assert not bootstrap_diff([1.0, 0.0], [0.5, 0.4], seed=0).excludes_zero


def test_planted_capacity_gap_is_detected(tmp_path):
    v = _verdicts(write_study(tmp_path, student_means=GAP, seeds=3))["kd"]
    assert v.status == "capacity gap" and v.gap.outcome == "shown"
    assert v.peak_teacher.startswith("size 16 ")
    assert v.ci_points[1] < 0 and v.diff_points == pytest.approx(-7.0, abs=1.5)
    assert v.text.split(": ", 1)[1].startswith("CAPACITY GAP: the student peaks (on validation) at teacher size 16")
    assert "worse by" in v.text and "CI [" in v.text and "Holm-adjusted over 3 comparisons" in v.text
    assert v.vs_baseline.outcome == "shown" and v.vs_baseline.estimate > 0
    assert "kd at teacher size 16" in v.vs_baseline.text and "no-KD student: SHOWN" in v.text
    assert "Budget mode: per_teacher_size" in v.text and "WARNING" not in v.text
    assert "no-KD student 6 epochs" in v.text


def test_monotone_trend_is_not_a_gap(tmp_path):
    v = _verdicts(write_study(tmp_path, student_means=MONOTONE, seeds=3))["kd"]
    assert v.status == "largest teacher better" and v.gap.outcome == "shown"
    assert v.peak_teacher.startswith("size 256 ") and "runner-up size 64" in v.text
    assert "capacity gap" not in v.text.lower().replace("largest teacher better", "")


def test_equal_students_are_equivalent_no_gap(tmp_path):
    flat = {4: 0.70, 16: 0.75, 64: 0.75, 256: 0.75}
    v = _verdicts(write_study(tmp_path, student_means=flat, seeds=5, noise=0.001))["kd"]
    assert v.status == "no capacity gap" and v.gap.outcome == "equivalent"
    assert "NO CAPACITY GAP (equivalent within delta)" in v.text and "EQUIVALENT within +-0.5 points" in v.text


def test_noisy_students_are_inconclusive_with_seeds_needed(tmp_path):
    flat = {16: 0.75, 256: 0.75}
    v = _verdicts(write_study(tmp_path, student_means=flat, seeds=4, noise=0.03))["kd"]
    assert v.status == "inconclusive" and v.gap.seeds_needed > 4
    assert f"about {v.gap.seeds_needed} paired seeds would resolve delta = 0.5 points" in v.text


def test_one_seed_cannot_tell(tmp_path):
    v = _verdicts(write_study(tmp_path, student_means=GAP, seeds=1))["kd"]
    assert v.status == "cannot tell"
    assert "cannot tell, 1 paired seed (at least 3 are needed)" in v.text


def test_search_fallback_and_unequal_budget_warning(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=3, search_trials={4: 2, 16: 6, 64: 4, 256: 4})
    for f in (study / "results" / "confirm").iterdir():
        f.unlink()
    summary = trial_summary(load(study))
    data = cg.capacity_data(summary, "kd")
    assert data.source == "search" and len(data.students) == 4  # best search trial per teacher size
    assert set(data.students["trial_id"]) == {f"kd_{s}_0" for s in (4, 16, 64, 256)}  # chosen on val
    v = cg.verdict(data)
    assert v.status == "cannot tell" and "WARNING: search budgets per teacher size were unequal" in v.text
    assert "(source: search)" in cg.figure(data, v).layout.title.text


def test_trial_summary_selects_on_val_not_test(tmp_path):
    rows = [{"study": "s", "stage": "search", "trial_id": "t", "method": "kd", "role": "student", "generation": 0,
             "seed": 0, "epoch": e, "status": "ok", "val_acc": v, "test_acc": t}
            for e, v, t in [(1, 0.5, 0.9), (2, 0.8, 0.6), (3, 0.7, 0.95)]]
    (tmp_path / "results" / "search").mkdir(parents=True)
    pq.write_table(rows_to_table(rows), tmp_path / "results" / "search" / "x.parquet")
    best = trial_summary(load(tmp_path)).iloc[0]
    assert (best["best_epoch"], best["test_acc"], best["n_epochs"]) == (2, 0.6, 3)


def test_load_accepts_study_dir_results_dir_and_uri(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    a = load(study)
    fixed = [n for n in SCHEMA.names if n != "hparams"]  # the map is expanded into a column per hyperparameter
    assert list(a.columns)[:len(fixed)] == fixed and (a["schema_version"] == SCHEMA_VERSION).all()
    assert set(a.columns[len(fixed):]) <= {"budget_mode"}  # every other key of hparams_json has its column
    assert len(load(study / "results")) == len(a) == len(load(study.as_uri()))
    assert set(a["stage"]) == {"teachers", "baseline", "search", "confirm"}


def test_duplicate_rows_are_dropped_keeping_last(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    n = len(load(study))
    original = pq.read_table(study / "results" / "baseline" / "part-0.parquet")
    later = original.to_pandas()
    later["val_acc"] = 0.123
    later["timestamp"] = later["timestamp"] + np.timedelta64(1, "h")
    # written under a name that sorts first: "last" means last written (timestamp), not file order
    pq.write_table(pa.Table.from_pandas(later, schema=SCHEMA, preserve_index=False),
                   study / "results" / "baseline" / "0-rewrite.parquet")
    df = load(study)
    assert len(df) == n
    assert (df[df["stage"] == "baseline"]["val_acc"] == 0.123).all()


def test_schema_version_mismatch_names_file_and_versions(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    table = pq.read_table(study / "results" / "baseline" / "part-0.parquet")
    old = table.set_column(0, "schema_version", pa.array([SCHEMA_VERSION + 1] * len(table), pa.int16()))
    bad = study / "results" / "baseline" / "old.parquet"
    pq.write_table(old, bad)  # metadata still says the current version: the column catches it
    with pytest.raises(SchemaVersionError, match=rf"old\.parquet.*\[{SCHEMA_VERSION + 1}\].*{SCHEMA_VERSION}"):
        load(study)
    meta = old.replace_schema_metadata({b"kdstudy_schema_version": str(SCHEMA_VERSION + 1).encode()})
    pq.write_table(meta, bad)
    with pytest.raises(SchemaVersionError, match=rf"old\.parquet.*version {SCHEMA_VERSION + 1}.*{SCHEMA_VERSION}"):
        load(study)


def test_corrupt_file_names_file(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    (study / "results" / "search" / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ResultsFileError, match=r"broken\.parquet"):
        load(study)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "results" / "search").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no results"):
        load(tmp_path)
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")


def test_hidden_in_progress_files_are_ignored(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    n = len(load(study))
    (study / "results" / "search" / ".part.parquet.tmp.parquet").write_bytes(b"half written")
    assert len(load(study)) == n


def test_status_table(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=3, search_trials=6)
    text = status_table(study)
    lines = text.splitlines()
    header = lines[1]
    assert "diverged" in header and "failed" in header and "stopped early" in header and "val %" in header
    search = [line.split() for line in lines if line.split()[:1] == ["search"]]
    assert [row[1:8] for row in search][0] == ["kd", "4", "6", "4", "2", "0", "0"]  # 2 of 6 stopped early
    assert len(search) == len(GAP)  # one row per teacher size, never merged


def test_analysis_never_imports_ray_or_sibling_packages():
    for path in pathlib.Path(cg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in {"ray", "trainables", "study", "torch"}, (path, name)


# --------------------------------------------------------------------------- selection on validation only

def _choices(df):
    """Every choice the analysis makes: best epochs, configurations, peaks, baseline configurations."""
    from analysis import generations, multiexit, results_table

    summary = trial_summary(df)
    keyed = summary.assign(exit=summary["exit"].fillna(-1)).set_index(["stage", "trial_id", "generation", "role", "exit"])
    out = {"best_epoch": keyed["best_epoch"].sort_index().to_dict()}
    for m in cg.capacity_methods(summary):
        data = cg.capacity_data(summary, m)
        out[m] = (data.chosen, data.peak_size, data.baseline_info["config_id"], cg.verdict(data).peak_teacher)
    out["multiexit"] = {m: sorted(r["trial_id"].unique()) for m, r in multiexit.exit_runs(summary).items()}
    out["trikd"] = sorted(generations.generation_runs(summary, "trikd")["trial_id"].unique())
    out["trikd_baselines"] = [info["config_id"] for *_, info in generations.generation_comparisons(summary)]
    table = results_table.method_table(summary)
    out["table"] = table[["method", "teacher_size", "config_id", "peak", "no_kd_config"]].to_dict("records")
    return out


def test_permuting_test_accuracies_changes_no_choice(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=5, trikd=True, multiexit=True, baseline_lrs=(1e-3, 3e-3))
    df = load(study)
    before = _choices(df)
    rng = np.random.default_rng(0)
    for _ in range(3):
        shuffled = df.copy()
        shuffled["test_acc"] = rng.permutation(df["test_acc"].to_numpy())
        shuffled["test_loss"] = rng.permutation(df["test_loss"].to_numpy())
        assert _choices(shuffled) == before
    assert before["kd"][1] == 16.0 and len(before["trikd_baselines"]) == 3


def test_stopped_failed_and_running_trials_are_never_chosen(tmp_path):
    summary = trial_summary(load(write_study(tmp_path, student_means=GAP, seeds=3, search_trials=6)))
    data = cg.capacity_data(summary, "kd")
    chosen = data.chosen[1]
    other = summary[(summary["stage"] == "confirm") & (summary["teacher_size"] == 16.0)
                    & (summary["config_id"] != chosen)]
    assert other["trial_id"].nunique() == 3
    for status in ("stopped", "failed", "running"):
        tweaked = summary.copy()
        hit = tweaked["trial_id"].isin(other["trial_id"])
        tweaked.loc[hit, "val_acc"] = 0.99
        assert cg.capacity_data(tweaked, "kd").chosen[1] != chosen  # a finished better config would win...
        tweaked.loc[hit, "status"] = status
        assert cg.capacity_data(tweaked, "kd").chosen[1] == chosen  # ...an unfinished one never does
    # without confirm rows the best *finished* search trial per size is shown
    search = summary[summary["stage"] != "confirm"].copy()
    stopped = search["status"] == "stopped"
    assert stopped.any()
    search.loc[stopped, "val_acc"] = 0.99
    fallback = cg.capacity_data(search, "kd")
    assert fallback.source == "search" and not fallback.students["trial_id"].isin(search.loc[stopped, "trial_id"]).any()


def test_baseline_is_chosen_on_validation_with_the_methods_epochs(tmp_path):
    from analysis import results_table

    study = write_study(tmp_path, student_means=GAP, seeds=3, trikd=True, baseline_lrs=(1e-3, 3e-3))
    summary = trial_summary(load(study))
    table = results_table.method_table(summary).set_index(["method", "teacher_size"])
    kd, tri = table.loc[("kd", 16.0)], table.loc[("trikd", 256.0)]
    assert (kd["no_kd_epochs"], kd["total_epochs"], kd["no_kd_configs"]) == (6.0, 6.0, 2)
    assert (tri["no_kd_epochs"], tri["total_epochs"], tri["generations"]) == (18.0, 18.0, 3.0)
    assert kd["no_kd_rule"] == "same total epochs per model"
    base = summary[(summary["stage"] == "baseline") & (summary["epochs"] == 6.0)]
    means = base.groupby("config_id")["val_acc"].mean()
    assert kd["no_kd_config"] == means.idxmax()  # on validation
    v = cg.verdicts(summary)[0]
    assert "no-KD student 6 epochs (lr=0.001" in v.text and "among 2 configuration(s)" in v.text


def test_results_tables(tmp_path):
    from analysis import results_table

    study = write_study(tmp_path, student_means=GAP, seeds=5, trikd=True, multiexit=True)
    summary = trial_summary(load(study))
    table = results_table.method_table(summary)
    kd = table[table["method"] == "kd"].set_index("teacher_size")
    assert list(kd.index) == [4.0, 16.0, 64.0, 256.0] and kd["peak"].tolist() == [False, True, False, False]
    assert kd.loc[16.0, "test_acc"] == pytest.approx(78, abs=1.5)  # percent
    assert kd.loc[16.0, "test_low"] < kd.loc[16.0, "test_acc"] < kd.loc[16.0, "test_high"]
    assert kd.loc[16.0, "outcome_vs_no_kd"] == "shown" and kd.loc[16.0, "diff_vs_no_kd"] > 5
    assert kd.loc[4.0, "largest_minus_this"] == pytest.approx(1.0, abs=1.5)
    assert kd.loc[16.0, "outcome_largest_vs_this"] == "shown" and np.isnan(kd.loc[256.0, "largest_minus_this"])
    assert kd.loc[16.0, "teacher_acc"] == pytest.approx(80, abs=2) and kd.loc[16.0, "k"] == 5
    assert (kd["search_trials"] == 4).all() and (kd["configs_confirmed"] == 2).all()
    assert kd.loc[16.0, "hyperparameters"].endswith("temperature=4, alpha=0.9")
    tri = table[table["method"] == "trikd"].iloc[0]
    assert tri["teacher_acc"] == pytest.approx(79, abs=2)  # its online teacher, not the frozen ladder's 90%

    exits = results_table.multiexit_table(summary)
    assert exits["exit"].tolist() == [0, 1, 2] and exits.loc[0, "outcome"] == "shown"
    assert exits.loc[0, "diff"] == pytest.approx(2.0, abs=0.8) and (exits["k"] == 5).all()

    gens = results_table.generations_table(summary)
    assert gens["generation"].tolist() == [0, 1, 2] and gens["no_kd_epochs"].tolist() == [6.0, 6.0, 18.0]
    assert gens["student_acc"].is_monotonic_increasing and (gens["outcome"] == "shown").all()


def test_curriculum_and_multi_exit_methods_are_told_from_rows_not_names(tmp_path):
    """A plug-in's curriculum method (an online teacher over generations) and multi-exit method get
    TriKD's and multiexit's charts, tables and comparisons: the analysis reads what the rows show
    (role, generation, exit, temperature), and the labels the study recorded, not built-in names."""
    from analysis import generations, multiexit, results_table
    from analysis import report as report_mod

    study = write_study(tmp_path, student_means=GAP, seeds=5, trikd=True, multiexit=True)
    summary = trial_summary(load(study))
    summary = summary.assign(temperature_now=np.where(summary["method"] == "multiexit", 3.0, np.nan))
    lab = summary.replace({"method": {"trikd": "lab_curriculum", "multiexit": "lab_exits"}})
    assert generations.generation_methods(summary) == ["trikd"]
    assert generations.generation_methods(lab) == ["lab_curriculum"]
    assert multiexit.distillation_methods(lab) == ["lab_exits"]
    assert multiexit.temperature_rule(lab, "lab_exits") == "adaptive"
    assert multiexit.temperature_rule(lab, "multiexit_ce") is None

    def same(a, b):  # the same numbers, the method renamed
        return a.drop(columns="method").reset_index(drop=True).equals(b.drop(columns="method").reset_index(drop=True))

    gens, lab_gens = results_table.generations_table(summary), results_table.generations_table(lab)
    assert len(gens) == 3 and set(lab_gens["method"]) == {"lab_curriculum"} and same(gens, lab_gens)
    exits, lab_exits = results_table.multiexit_table(summary), results_table.multiexit_table(lab)
    assert len(exits) == 3 and set(lab_exits["method"]) == {"lab_exits"} and same(exits, lab_exits)
    text = multiexit.section_text(lab, delta=1.0)
    assert text[0].startswith("The adaptive rule (lab_exits) raised the temperature from 1 to 3.00")

    facts = {"lab_curriculum": {"label": "Lab curriculum (us 2026)", "kind": "kd"},
             "lab_exits": {"label": "Lab exits (us 2026)", "kind": "kd"}}
    import unittest.mock as mock

    with mock.patch.object(report_mod, "trial_summary", return_value=lab):
        sections, _ = report_mod.build_sections(load(study), methods=facts)
    by_name = {s.name: s for s in sections}
    assert "trikd_generations" not in by_name and by_name["lab_curriculum_generations"].title == (
        "Generations: Lab curriculum (us 2026)")
    assert "Lab exits (us 2026)" in {t.name for t in by_name["multiexit_flops"].figure.data}


def test_all_comparisons_frame(tmp_path):
    from analysis import results_table

    summary = trial_summary(load(write_study(tmp_path, student_means=GAP, seeds=3, trikd=True, multiexit=True)))
    frame = results_table.verdict_frame(results_table.all_comparisons(summary))
    assert len(frame) == 3 + 5 + 3 + 3  # gap family, methods x sizes vs no-KD, exits, generations
    assert set(frame["outcome"]) <= {"shown", "equivalent", "inconclusive", "cannot tell"}
    assert not frame["text"].str.contains(r"^KD ", regex=True).any()  # methods are named
    one = cg.decide(np.zeros((1, 2, 3)), np.zeros((1, 2, 3)), None)
    assert one["status"] == "cannot tell" and one["gap"] is None  # one teacher size: nothing to compare


def test_verdict_settings_from_spec_json(tmp_path):
    import json

    from analysis.results_table import verdict_settings

    study = write_study(tmp_path, student_means=GAP, seeds=2)
    assert verdict_settings(study) == (0.5, 0.95)
    (study / "spec.json").write_text(json.dumps({"verdict": {"delta": 1.0, "level": 0.9}}))
    assert verdict_settings(study) == (1.0, 0.9)


def test_ladder_methods_are_told_from_rows_not_names(tmp_path):
    """A plug-in's method name counts as a built-in's would: charted when its student rows have a
    teacher size; a multi-exit student (exit index set) is not put on the ladder chart, whatever its name."""
    import pandas as pd

    summary = trial_summary(load(write_study(tmp_path, student_means=GAP, seeds=2)))
    kd = summary[summary["method"] == "kd"]
    mine = kd.assign(method="lab_kd", trial_id="lab_" + kd["trial_id"].astype(str))
    exits = pd.concat([kd.assign(method="lab_exits", trial_id="ex_" + kd["trial_id"].astype(str), exit=x)
                       for x in (0, 1)], ignore_index=True)
    both = pd.concat([summary, mine, exits], ignore_index=True)
    assert cg.capacity_methods(both) == ["kd", "lab_kd"]
    assert cg.verdict(cg.capacity_data(both, "lab_kd")).status == cg.verdict(cg.capacity_data(both, "kd")).status


def test_remedies_share_one_capacity_gap_chart(tmp_path):
    import pandas as pd

    from analysis import report as report_mod

    study = write_study(tmp_path, student_means=GAP, seeds=3)
    summary = trial_summary(load(study))
    # a remedy that keeps improving with the teacher, planted beside kd
    dkd = summary[summary["method"] == "kd"].copy()
    dkd["method"] = "dkd"
    dkd["trial_id"] = "dkd_" + dkd["trial_id"].astype(str)
    dkd["test_acc"] = dkd["teacher_size"].map(MONOTONE) + (dkd["test_acc"] - dkd["teacher_size"].map(GAP))
    both = pd.concat([summary, dkd], ignore_index=True)
    assert cg.capacity_methods(both) == ["dkd", "kd"]
    datas = [cg.capacity_data(both, m) for m in ("kd", "dkd")]
    from trainables.methods import get_method

    facts = {m: get_method(m).facts() for m in ("kd", "dkd")}  # what the runner records (methods.json)
    fig = cg.comparison_figure(datas, facts)
    names = [t.name for t in fig.data]
    assert any(n.startswith("DKD (Zhao et al. 2022)") for n in names)
    assert any(n.startswith("Hinton KD (Hinton et al. 2015)") for n in names)
    assert "teacher's own accuracy" in names
    dkd_trace = next(t for t in fig.data if t.name.startswith("DKD"))
    assert dkd_trace.line.width == 3  # a remedy, drawn bold
    # without recorded facts (a study from before they were recorded) each line goes by its name
    assert {t.name for t in cg.comparison_figure(datas).data} >= {"kd (confirm)", "dkd (confirm)"}
    assert list(dkd_trace.y) == sorted(dkd_trace.y)  # rises with the teacher, as planted
    assert cg.comparison_figure(datas[:1]) is None
    v = {m: cg.verdict(cg.capacity_data(both, m)) for m in ("kd", "dkd")}
    assert v["kd"].status == "capacity gap" and v["dkd"].status != "capacity gap"
    # the report puts the comparison first when there are several methods
    import unittest.mock as mock

    with mock.patch.object(report_mod, "trial_summary", return_value=both):
        sections, _ = report_mod.build_sections(load(study))
    assert sections[0].name == "capacity_gap_methods"


# --------------------------------------------------------------------------- results schema v3: open hyperparameters

DATA = pathlib.Path(__file__).parent / "data"  # results files written by the v1 and v2 writers (git 67922c7^, b944f7b)


@pytest.fixture(scope="module")
def plugin_method():
    """A method as a plug-in would write it, with a hyperparameter no schema column is named after
    (registered for the test only)."""
    import torch.nn.functional as F

    from trainables.methods import HParam, Method, Step, register
    from trainables.methods.base import _REGISTRY

    class MarginCE(Method):
        """Cross-entropy with a margin subtracted from the target logit (a toy plug-in)."""

        hparams = {"my_margin": HParam(0.5, "float", 0.0, 2.0)}

        def __init__(self, ctx, hp):
            super().__init__(ctx, hp)
            self.student = ctx.build_model(ctx.student)

        def training_step(self, x, y):
            logits = self.student(x)
            shifted = logits - self.hp["my_margin"] * F.one_hot(y, logits.shape[1])
            return Step(terms={"ce": F.cross_entropy(shifted, y)}, logits=logits)

    register("margin_ce_test")(MarginCE)
    yield MarginCE
    _REGISTRY.pop("margin_ce_test", None)


MARGINS = (0.1, 0.4, 0.8, 1.6)


@pytest.fixture(scope="module")
def plugin_study(tmp_path_factory, data_root, plugin_method) -> pathlib.Path:
    """A search stage of the plug-in method: four real trials (the shared loop), written as the sink writes
    them; tests that add files work on a copy (`_copy_of`)."""
    from study.results import to_schema_row
    from trainables.loop import run_trial

    study = tmp_path_factory.mktemp("plugin") / "plugin"
    (study / "results" / "search").mkdir(parents=True)
    for i, margin in enumerate(MARGINS):
        cfg = {"study": "plugin", "stage": "search", "method": "margin_ce_test", "seed": 0,
               "dataset": {"name": "mnist1d", "num_samples": 1000, "root": data_root},
               "student": {"family": "mlp", "size": 8}, "train": {"epochs": 2, "batch_size": 128, "lr": 0.01},
               "runtime": {"device": "cpu"}, "hp": {"my_margin": margin}, "config_id": f"c{i}"}
        rows = [{**to_schema_row(r), "trial_id": f"plugin-s{i}"} for r in run_trial(cfg).rows]
        pq.write_table(rows_to_table(rows), study / "results" / "search" / f"plugin-s{i}.parquet")
    return study


def _copy_of(study: pathlib.Path, tmp_path) -> pathlib.Path:
    import shutil

    return pathlib.Path(shutil.copytree(study, tmp_path / "plugin"))


def test_v3_records_and_shows_a_plugin_hyperparameter(plugin_study):
    from analysis import landscape
    from analysis.load import hparam_columns
    from analysis.select import hparams_text

    study = plugin_study
    raw = pq.read_table(study / "results" / "search" / "plugin-s1.parquet")
    assert raw.schema.names == SCHEMA.names and raw.schema.metadata == SCHEMA.metadata and SCHEMA_VERSION == 3
    assert dict(raw.column("hparams")[0].as_py())["my_margin"] == 0.4  # in the fixed schema's map
    df = load(study)
    assert "hparams" not in df and df["my_margin"].dtype == float  # expanded, as every hyperparameter
    assert sorted(df.drop_duplicates("trial_id")["my_margin"]) == [0.1, 0.4, 0.8, 1.6]
    assert "my_margin" in hparam_columns(df) and "lr" in hparam_columns(df) and "seed" not in hparam_columns(df)
    summary = trial_summary(df)
    assert "my_margin=0.4" in hparams_text(summary[summary["trial_id"] == "plugin-s1"].iloc[0])
    imp, note = landscape.importances(summary, "margin_ce_test")
    assert note is None and list(imp) == ["my_margin"]
    fig = landscape.scatter(summary, "margin_ce_test")
    assert fig is not None and "my_margin" in fig.layout.title.text


def test_a_hyperparameter_named_like_a_fixed_column_is_refused_at_registration():
    from trainables.methods import HParam, Method, register
    from trainables.methods.base import _REGISTRY

    for name in ("seed", "val_acc", "teacher_size", "hparams", "_private"):
        with pytest.raises(ValueError, match=rf"'{name}'"):
            register(f"clash_{name.strip('_')}_test")(type("Clash", (Method,), {"hparams": {name: HParam(1.0)}}))
    assert not [n for n in _REGISTRY if n.startswith("clash_")]  # refused: never registered
    # any other name is fine (and the v2 named hyperparameters are hyperparameters)
    register("fine_test")(type("Fine", (Method,), {"hparams": {"my_margin": HParam(1.0), "temperature": HParam(4.0)}}))
    assert _REGISTRY.pop("fine_test")


def test_v1_and_v2_files_still_load_beside_v3(plugin_study, tmp_path):
    from analysis.load import hparam_columns

    study = _copy_of(plugin_study, tmp_path)
    for v in (1, 2):
        (study / "results" / f"old{v}").mkdir()
        (study / "results" / f"old{v}" / f"v{v}.parquet").write_bytes((DATA / f"results_v{v}.parquet").read_bytes())
    for v in (1, 2):
        old = load(DATA / f"results_v{v}.parquet")
        assert len(old) == 4 and old["schema_version"].eq(v).all()
        assert old.drop_duplicates("trial_id")["temperature"].tolist() == [2.0, 8.0]
        assert old["teacher_size_name"].eq("16").all()  # filled from teacher_size
        assert {"temperature", "alpha", "kd_reduction"} <= set(hparam_columns(old))
        assert old["config_id"].isna().all() if v == 1 else old["config_id"].notna().all()
    # the three versions in one folder (a study resumed across upgrades)
    for v in (1, 2):
        t = pq.read_table(study / "results" / f"old{v}" / f"v{v}.parquet")
        t = t.set_column(t.schema.get_field_index("study"), "study", pa.array(["plugin"] * len(t)))
        ids = [f"{x}-v{v}" for x in t.column("trial_id").to_pylist()]
        t = t.set_column(t.schema.get_field_index("trial_id"), "trial_id", pa.array(ids))
        pq.write_table(t, study / "results" / f"old{v}" / f"v{v}.parquet")
    df = load(study)
    assert sorted(df["schema_version"].unique()) == [1, 2, 3] and len(df) == 8 + 2 * len(MARGINS)
    assert df["temperature"].notna().sum() == 8 and df["my_margin"].notna().sum() == 2 * len(MARGINS)


def test_duckdb_queries_on_v2_columns_and_their_v3_form(plugin_study, tmp_path):
    """The README's DuckDB queries are run on v3 files in test_cli_docs; here the schema notes' forms:
    a v2 query on a named column runs unchanged on v3, `hparams['name']` works for any hyperparameter,
    and a folder of v2 and v3 files reads with union_by_name."""
    duckdb = pytest.importorskip("duckdb")
    results = _copy_of(plugin_study, tmp_path) / "results" / "search"
    con = duckdb.connect()
    q = f"SELECT count(DISTINCT trial_id) FROM '{results}/*.parquet' WHERE lr > 0.005"
    assert con.execute(q).fetchall()[0][0] == len(MARGINS)
    q = f"SELECT trial_id, hparams['my_margin'] AS m, hparams['lr'] AS lr FROM '{results}/*.parquet' WHERE epoch = 1"
    one = lambda v: v[0] if isinstance(v, list) else v  # noqa: E731  (older DuckDB: a one-element list)
    got = sorted((t, one(m), one(lr)) for t, m, lr in con.execute(q).fetchall())
    assert got == [(f"plugin-s{i}", m, 0.01) for i, m in enumerate(MARGINS)]
    (results / "a-v2.parquet").write_bytes((DATA / "results_v2.parquet").read_bytes())
    q = (f"SELECT count(*) FROM read_parquet('{results}/*.parquet', union_by_name = true) "
         f"WHERE hparams['my_margin'] > 1 OR temperature > 4")
    assert con.execute(q).fetchall()[0][0] == 2 + 2  # the margin-1.6 trial and the v2 file's T = 8 trial, 2 epochs each


def test_verdict_line_summarises_the_family_and_every_shown_size(tmp_path):
    # KD worse than the no-KD student (0.70) at sizes 4 and 64, better at 16 and 256; the largest (256)
    # worse than size 16 and better than sizes 4 and 64
    means = {4: 0.66, 16: 0.78, 64: 0.66, 256: 0.72}
    v = _verdicts(write_study(tmp_path, student_means=means, seeds=5, noise=0.002))["kd"]
    assert v.status == "capacity gap"
    assert ("kd vs the no-KD student at 4 teacher sizes: SHOWN better at 2 (size 16, size 256), SHOWN worse at 2 "
            "(size 4, size 64), EQUIVALENT at 0, INCONCLUSIVE at 0.") in v.text
    head, also = v.text.split(" Also: ", 1)
    also = also.split(" kd vs the no-KD student")[0]
    # the headline is the peak (16); "Also" names every other size shown better or worse than the largest
    assert "teacher size 16" in head.split("Holm-adjusted")[0]
    assert also.count("SHOWN, kd student of the largest teacher size 256") == 2 and also.count("is better by") == 2
    assert v.text.index("SHOWN worse at 2") < v.text.index("At the peak: kd at teacher size 16")
    # one search per size, and what it resolved, next to the verdict
    assert "Search: " in v.text and "One search per teacher size" in v.text


def test_the_selection_rule_has_one_home():
    """`select.ranked` (lists: the runner's top-k, `config_means`) and `select.choose` (arrays: the
    verdicts and their simulation) choose the same configuration: best mean val over seeds, ties to
    the lowest id, never one without a finished run."""
    from analysis import capacity_gap
    from analysis.select import choose, ranked

    assert capacity_gap.choose is choose
    rng = np.random.default_rng(0)
    val = rng.integers(0, 4, size=(200, 5, 3)).astype(float)  # many ties
    val[rng.random(val.shape) < 0.2] = np.nan
    val[0, :, :] = np.nan
    val[1, 2:, :] = np.nan
    picked = choose(val, axis=-2)
    for i in range(len(val)):
        with np.errstate(all="ignore"):
            means = [float(np.nanmean(c)) if np.isfinite(c).any() else math.nan for c in val[i]]
        assert ranked(means, [f"c{j}" for j in range(5)])[0] == picked[i]
    assert ranked([0.5, None, 0.7, 0.7], ["d", "a", "c", "b"]) == [3, 2, 0, 1]
