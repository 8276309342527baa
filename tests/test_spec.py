"""The spec is validated at the edge: every problem named with its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.cli import main
from study.spec import SpecError, load_spec, parse_spec

from .conftest import micro_spec

STUDIES = sorted((Path(__file__).resolve().parent.parent / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_ready_specs_validate(path):
    spec = load_spec(path)
    assert spec.methods


def test_micro_spec_defaults(tmp_path):
    spec = parse_spec(micro_spec(tmp_path, str(tmp_path)))
    assert spec.train["optimizer"] == "adamw"
    kd = spec.methods["kd"]
    # unmentioned method parameters are searched over their declared ranges
    assert set(kd.search) == {"temperature", "alpha"}
    assert kd.search["temperature"].log


def problems(raw) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value.problems


def test_every_problem_is_reported_with_its_field(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    raw["name"] = "bad name"
    raw["dataset"] = {"name": "imagenet"}
    raw["student"] = {"family": "cifar_resnet", "size": 21}
    raw["train"] = {"epochs": 0, "optimizer": "lamb", "lr": "fast"}
    raw["methods"] = {"kd": {"trials": 2, "space": {"temperature": {"low": 0.5, "high": 4}, "gamma": 1}},
                      "magic": {}}
    raw["colour"] = "blue"
    msgs = "\n".join(problems(raw))
    for field in ("name:", "dataset.name:", "student.size:", "train.epochs:", "train.optimizer:", "train.lr:",
                  "methods.kd.space.temperature:", "methods.kd.space.gamma:", "methods.magic:", "colour:"):
        assert field in msgs, f"{field} missing from\n{msgs}"
    assert "cifar10" in msgs and "mnist1d" in msgs      # allowed values are listed
    assert "6n+2" in msgs                               # the size rule is explained


def test_kd_needs_teachers_and_range_order(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    del raw["teachers"]
    raw["methods"] = {"kd": {"space": {"alpha": {"low": 0.9, "high": 0.1}}}}
    msgs = "\n".join(problems(raw))
    assert "teachers: is required by the methods kd" in msgs
    assert "low (0.9) must be below high (0.1)" in msgs


def test_not_a_mapping():
    assert problems([1, 2]) == ["spec: must be a YAML mapping of fields, got list"]


def test_cli_validate(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(micro_spec(tmp_path, str(tmp_path))))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: {name: mnist1d}\nstudent: {family: mlp, size: 8}\nmethods: {kd: {trials: -1}}\n")
    assert main(["validate", str(good)]) == 0
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err
    assert "methods.kd.trials: must be at least 0" in err
    assert "teachers: is required" in err
    assert main(["run", str(bad)]) == 2
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 1


def test_relative_storage_becomes_absolute(tmp_path, monkeypatch):
    """Trials run in their own working directory, so the study root must not be relative."""
    monkeypatch.chdir(tmp_path)
    raw = micro_spec(tmp_path, str(tmp_path))
    raw["storage"] = "./out"
    assert parse_spec(raw).storage == str(tmp_path / "out")
    raw["storage"] = "s3://bucket/prefix"
    assert parse_spec(raw).storage == "s3://bucket/prefix"


def test_scratch_only_study_no_validation_split_and_new_options(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    raw["methods"] = {}
    raw["dataset"] = {**raw["dataset"], "val_fraction": 0}
    raw["train"] = {**raw.get("train", {}), "augment": False}
    raw["teachers"] = {**raw["teachers"], "family": "cnn1d", "sizes": [25], "kernel": [5, 3, 3], "stride": 2,
                       "padding": 1}
    spec = parse_spec(raw)
    assert spec.methods == {} and spec.trains_teachers
    assert spec.dataset["val_fraction"] == 0.0 and spec.train["augment"] is False
    assert spec.teachers["kernel"] == [5, 3, 3]
    del raw["teachers"]
    assert not parse_spec(raw).trains_teachers  # baseline only
    raw["dataset"]["val_fraction"] = 0.001
    assert any("val_fraction" in p for p in problems(raw))


def test_augment_is_recorded_only_when_off(tmp_path):
    spec = parse_spec(micro_spec(tmp_path, str(tmp_path)))
    assert "augment" not in spec.train  # teacher-zoo keys of existing studies unchanged


def test_remedy_weights_beyond_one_and_takd_reduction(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    raw["methods"] = {"lskd": {"space": {"kd_weight": {"low": 1.0, "high": 12.0}}},
                      "kd": {"space": {"kd_reduction": "mean"}},
                      "dkd": {"space": {"kd_warmup_epochs": 2}}, "dist": None}
    spec = parse_spec(raw)
    assert spec.methods["lskd"].search["kd_weight"].high == 12.0
    assert set(spec.methods["lskd"].search) == {"kd_weight", "temperature"}
    assert spec.methods["kd"].fixed == {"kd_reduction": "mean"}
    assert spec.methods["dkd"].fixed == {"kd_warmup_epochs": 2}
    assert set(spec.methods["dist"].search) == {"temperature", "dist_beta", "dist_gamma"}
    raw["methods"] = {"kd": {"space": {"alpha": 9.0, "kd_reduction": "sum"}}}
    msgs = "\n".join(problems(raw))
    assert "methods.kd.space.alpha" in msgs and "methods.kd.space.kd_reduction" in msgs
