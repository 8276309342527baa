"""analysis: loading Parquet results, statistics and the capacity-gap verdict on planted data."""

from __future__ import annotations

import ast
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
from analysis.synthetic import write_study

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
    assert v.status == "capacity gap" and v.largest_worse
    assert v.peak_teacher.startswith("size 16 ")
    assert v.ci_points[1] < 0 and v.diff_points == pytest.approx(-7.0, abs=1.5)
    assert v.text.split(": ", 1)[1].startswith("capacity gap: student peaks at teacher size 16")
    assert "worse by" in v.text and "95% CI [" in v.text
    assert v.beats_baseline is True and "kd beat the no-KD baseline" in v.text
    assert "Budget mode: per_teacher_size" in v.text and "WARNING" not in v.text


def test_monotone_trend_is_no_gap(tmp_path):
    v = _verdicts(write_study(tmp_path, student_means=MONOTONE, seeds=3))["kd"]
    assert v.status == "no capacity gap" and v.largest_worse is False
    assert "no capacity gap" in v.text and "not significantly worse" in v.text
    assert v.peak_teacher.startswith("size 256 ")


def test_one_seed_cannot_tell(tmp_path):
    v = _verdicts(write_study(tmp_path, student_means=GAP, seeds=1))["kd"]
    assert v.status == "cannot tell"
    assert "cannot tell: needs at least 2 seeds per teacher size" in v.text


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
    assert list(a.columns) == SCHEMA.names and (a["schema_version"] == SCHEMA_VERSION).all()
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
    assert "diverged" in lines[0] and "best val_acc" in lines[0]
    search = next(line for line in lines if line.split()[0] == "search").split()
    assert search[1:6] == ["kd", "24", "16", "8", "0"]  # 2 of every 6 trials were stopped early


def test_analysis_never_imports_ray_or_sibling_packages():
    for path in pathlib.Path(cg.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in {"ray", "trainables", "study", "torch"}, (path, name)


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
    fig = cg.comparison_figure(datas)
    names = [t.name for t in fig.data]
    assert any(n.startswith("DKD (Zhao et al. 2022)") for n in names) and any(n.startswith("kd") for n in names)
    assert "teacher's own accuracy" in names
    dkd_trace = next(t for t in fig.data if t.name.startswith("DKD"))
    assert list(dkd_trace.y) == sorted(dkd_trace.y)  # rises with the teacher, as planted
    assert cg.comparison_figure(datas[:1]) is None
    v = {m: cg.verdict(cg.capacity_data(both, m)) for m in ("kd", "dkd")}
    assert v["kd"].status == "capacity gap" and v["dkd"].status == "no capacity gap"
    # the report puts the comparison first when there are several methods
    import unittest.mock as mock

    with mock.patch.object(report_mod, "trial_summary", return_value=both):
        sections, _ = report_mod.build_sections(load(study))
    assert sections[0].name == "capacity_gap_methods"
