"""A micro study end to end on a real local Ray: spec -> experiment graph -> Tune + Optuna -> Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads

from analysis.schema import ROW_KEY, SCHEMA
from study.graph import CONFIRM_SEED0, plan
from study.runner import run_study
from study.spec import parse_spec

from .conftest import micro_spec


def _files(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_micro_study_end_to_end(finished_micro, capsys):
    """The session's finished micro study (conftest: two teachers, baseline, a joint KD search of two
    trials, both confirmed on two seeds, through a file:// URI) has every record the design promises."""
    root, spec = finished_micro.folder, parse_spec(finished_micro.raw)
    out = finished_micro.output
    assert "teachers t8: started" in out and "search kd: finished" in out

    # the Parquet dataset opens with plain pyarrow and has exactly the documented schema
    dataset = pads.dataset(root / "results", format="parquet")
    assert dataset.schema.remove_metadata().equals(SCHEMA.remove_metadata())
    df = dataset.to_table().to_pandas()
    assert set(df["stage"]) == {"teachers", "baseline", "search", "confirm"}
    assert (df["status"] == "ok").all()  # every trial trained to the end, and says so
    # experiments ran at the same time yet never mixed their constants: every file's rows belong to
    # its stage folder and to the experiment its trial key names
    for f in (root / "results").rglob("*.parquet"):
        rows = pads.dataset(str(f)).to_table().to_pandas()
        assert (rows["stage"] == f.parent.name).all(), f
        assert all(t.startswith(e) for t, e in zip(rows["trial_id"], rows["experiment"])), f
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
    # paired design: the baseline and every confirm run use the same fresh seeds, disjoint from search
    confirm, baseline = df[df.stage == "confirm"], df[df.stage == "baseline"]
    seeds = {CONFIRM_SEED0, CONFIRM_SEED0 + 1}
    assert set(confirm["seed"]) == seeds and set(baseline["seed"]) == seeds
    assert not set(search["seed"]) & seeds
    # top-2 configurations confirmed, each on both seeds; a configuration keeps its config_id across seeds
    assert confirm.groupby("config_id")["seed"].nunique().eq(2).all() and confirm["config_id"].nunique() == 2
    # the test split is read only at reportable epochs: each new best-val epoch and the last one
    last = df.groupby("trial_id")["epoch"].transform("max") == df["epoch"]
    assert df.loc[last, "test_acc"].notna().all()
    assert df["setup_time_s"].notna().all() and df["experiment"].notna().all()
    assert df["code_version"].notna().all() and df["node"].notna().all()
    # Optuna's study is persisted beside the results, and the markers list every experiment
    assert list((root / "optuna").glob("search-kd-*.journal"))
    names = {e.name for e in plan(spec)}
    assert {p.stem for p in (root / "stages").glob("*.json")} == names
    # spec.json keeps the spec, and no absolute path leaks into an experiment's identity
    assert json.loads((root / "spec.json").read_text())["name"] == "micro"
    # the dataset's facts, recorded for the report (which never imports trainables)
    recorded = json.loads((root / "dataset.json").read_text())
    assert recorded["splits"] == {"train": 720, "val": 80, "test": 200} and recorded["input_shape"] == [1, 40]
    # and its methods' facts (label, kind, flags), by which the report names and groups them
    methods = json.loads((root / "methods.json").read_text())
    assert set(methods) == {"scratch", *spec.methods}
    assert methods["kd"]["label"] == "Hinton KD (Hinton et al. 2015)" and methods["kd"]["needs_teacher"] is True

    # running again redoes nothing: no teacher retrained, no trial rerun
    before = _files(root / "zoo") | _files(root / "results")
    capsys.readouterr()
    run_study(spec)
    assert "finished earlier" in capsys.readouterr().out
    assert (_files(root / "zoo") | _files(root / "results")) == before


def test_experiment_identity_does_not_depend_on_storage(tmp_path, data_root):
    a = parse_spec(micro_spec(tmp_path, data_root, storage=str(tmp_path / "a"), confirm={"seeds": 2}))
    b = parse_spec(micro_spec(tmp_path, data_root, storage=str(tmp_path / "b" / ".." / "c"), confirm={"seeds": 2}))
    c = parse_spec(micro_spec(tmp_path, "/elsewhere/data", storage="file:///x//y", confirm={"seeds": 2}))
    assert [e.name for e in plan(a)] == [e.name for e in plan(b)] == [e.name for e in plan(c)]


def test_graph_dependencies(tmp_path, data_root):
    """Frozen-teacher searches wait for their own teacher size only; the rest waits for nothing."""
    spec = parse_spec(micro_spec(tmp_path, data_root, search={"budget": "stratified", "scheduler": "none"},
                                 methods={"kd": {"trials": 2}, "dml": {"trials": 1, "teacher_sizes": [8]}},
                                 confirm={"seeds": 2}))
    exps = {(e.stage, e.label): e for e in plan(spec)}
    names = {k: e.name for k, e in exps.items()}
    assert exps[("search", "kd-t8")].deps == [names[("teachers", "t8")]]
    assert exps[("search", "kd-t32")].deps == [names[("teachers", "t32")]]
    assert exps[("search", "dml-t8")].deps == [] and exps[("baseline", "scratch")].deps == []
    assert names[("search", "kd-t8")] in exps[("confirm", "kd-t8")].deps


def test_a_method_without_search_is_confirmed_at_its_fixed_configuration(tmp_path, data_root):
    from study.spec import SpecError

    fixed = {"trials": 0, "space": {"temperature": 4.0, "alpha": 0.5}}
    spec = parse_spec(micro_spec(tmp_path, data_root, search={"budget": "stratified", "scheduler": "none"},
                                 methods={"kd": fixed}, confirm={"seeds": 3}))
    exps = plan(spec)
    assert not [e for e in exps if e.stage == "search"]
    confirms = [e for e in exps if e.stage == "confirm"]
    assert [c.extra_jobs for c in confirms] == [[{"teacher_size": 8}], [{"teacher_size": 32}]]
    assert all(c.from_search is None and len(c.seeds) == 3 for c in confirms)
    try:
        parse_spec(micro_spec(tmp_path, data_root, methods={"kd": {"trials": 0, "space": {
            "temperature": {"low": 1.0, "high": 4.0}}}}))
    except SpecError as exc:
        assert "0 runs no search" in str(exc)
    else:
        raise AssertionError("trials: 0 with a searched parameter must be refused")
