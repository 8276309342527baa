"""A micro study end to end on a real local Ray: spec -> Tune + Optuna -> Parquet."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as pads

from analysis.schema import ROW_KEY, SCHEMA
from study.runner import run_study
from study.spec import parse_spec

from .conftest import micro_spec


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_micro_study_end_to_end(tmp_path, data_root, ray_local, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative storage path, as in the README
    spec = parse_spec(micro_spec(tmp_path, data_root, confirm={"seeds": 2}, storage="./results"))
    root = Path(run_study(spec))
    out = capsys.readouterr().out
    assert "teachers ladder: 2 trial(s)" in out and "search kd" in out

    # the Parquet dataset opens with plain pyarrow and has exactly the documented schema
    dataset = pads.dataset(root / "results", format="parquet")
    assert dataset.schema.remove_metadata().equals(SCHEMA.remove_metadata())
    df = dataset.to_table().to_pandas()
    assert set(df["stage"]) == {"teachers", "baseline", "search", "confirm"}
    # each trial's rows appear exactly once, one per epoch
    assert not df.duplicated(subset=ROW_KEY).any()
    for _, trial in df.groupby("trial_id"):
        assert sorted(trial["epoch"]) == list(range(1, len(trial) + 1))
    teachers = df[df.stage == "teachers"]
    assert teachers["role"].eq("teacher").all() and teachers["teacher_params"].nunique() == 2
    search = df[df.stage == "search"]
    assert search["trial_id"].nunique() == 2
    assert search["temperature"].notna().all() and search["alpha"].notna().all()
    assert search["teacher_acc"].notna().all() and search["student_arch"].eq("mlp-2x16").all()
    assert df[df.stage == "confirm"]["seed"].nunique() == 2
    assert df["code_version"].notna().all() and df["node"].notna().all()
    # Optuna's study is persisted beside the results
    assert list((root / "optuna").glob("search-kd-*.journal"))

    # running again redoes nothing: no teacher retrained, no trial rerun
    before = _files(root / "zoo") | _files(root / "results")
    run_study(spec)
    assert "finished earlier" in capsys.readouterr().out
    assert (_files(root / "zoo") | _files(root / "results")) == before


def test_teachers_come_from_the_zoo_across_studies(tmp_path, data_root, ray_local, capsys):
    """A changed search over the same teachers trains no teacher again: the zoo holds them."""
    spec = parse_spec(micro_spec(tmp_path, data_root, methods={"kd": {"trials": 2}}, baseline={"seeds": 0}))
    root = Path(run_study(spec))
    zoo_before = _files(root / "zoo")
    assert len([f for f in zoo_before if f.endswith("meta.json")]) == 2
    # a new search over the same teachers (more trials) reuses them
    spec2 = parse_spec(micro_spec(tmp_path, data_root, methods={"kd": {"trials": 3}}, baseline={"seeds": 0}))
    run_study(spec2)
    out = capsys.readouterr().out
    assert "all 2 in the zoo, none retrained" in out
    assert _files(root / "zoo") == zoo_before
    assert os.path.exists(root / "spec.json")
