"""`studies/quickstart_features.yaml` end to end, shrunk: the six feature methods and KD through the real
runner (Ray, the zoo's teacher, the confirm stage, Parquet rows, the report), each ending `ok` with its
connectors counted apart from the student."""

from __future__ import annotations

import json
import os
import pathlib

import pyarrow.dataset as pads
import pytest
import yaml

SPEC = pathlib.Path(__file__).resolve().parent.parent / "studies" / "quickstart_features.yaml"
FEATURE_METHODS = ("fitnet", "at", "sp", "pkt", "crd", "reviewkd")
#: the loss terms each method logs (besides CE), and whether it owns trainable connectors
TERMS = {"fitnet": ({"hint"}, True), "at": ({"at"}, False), "sp": ({"sp"}, False),
         "pkt": ({"pkt"}, False), "crd": ({"crd"}, True), "reviewkd": ({"review"}, True)}


@pytest.fixture(scope="module")
def feature_study(tmp_path_factory, data_root, ray_local):
    """The spec as shipped, made tiny: 1,000 samples, a 1-epoch teacher, 2 student epochs (ReviewKD's
    1-epoch warm-up ends, so its review loss trains in epoch 2), one confirm seed."""
    from study.runner import run_study
    from study.spec import parse_spec

    raw = yaml.safe_load(SPEC.read_text())
    raw["storage"] = str(tmp_path_factory.mktemp("qsf"))
    raw["dataset"].update(num_samples=1000, root=data_root)
    raw["teachers"]["epochs"] = 1
    raw["train"]["epochs"] = 2
    raw["confirm"]["seeds"] = 1
    raw["report"] = {"png": False}
    assert set(FEATURE_METHODS) | {"kd"} == set(raw["methods"])  # the spec as shipped runs all six beside KD
    del raw["methods"]["kd"]  # (KD runs end to end in other tests: one experiment fewer here)
    spec = parse_spec(raw)
    root, outcome = run_study(spec)
    df = pads.dataset(f"{root}/results", format="parquet").to_table().to_pandas()
    return root, outcome, df


def test_every_feature_method_ends_ok_with_rows_in_parquet(feature_study):
    _, outcome, df = feature_study
    assert not outcome.failed and not outcome.blocked
    assert (df["status"] == "ok").all(), df[df.status != "ok"][["experiment", "error"]]
    confirm = df[df.stage == "confirm"]
    assert set(confirm["method"]) == set(FEATURE_METHODS)
    for method in FEATURE_METHODS:
        terms, owns = TERMS[method]
        rows = confirm[confirm.method == method].sort_values("epoch")
        assert list(rows["epoch"]) == [1, 2], method
        last = rows.iloc[-1]
        logged = json.loads(last["loss_terms_json"])
        assert terms <= set(logged), (method, logged)
        assert all(v == v for v in logged.values())  # finite, not NaN
        # connectors are counted apart from the deployed student, in params and FLOPs
        assert (last["connector_params"] > 0) == owns and (last["connector_flops"] > 0) == owns, method
        assert last["student_params"] == confirm.iloc[0]["student_params"], method
    review = confirm[confirm.method == "reviewkd"].set_index("epoch")
    assert json.loads(review.loc[1, "loss_terms_json"])["review"] == 0.0  # warm-up: CE alone in epoch 1
    assert json.loads(review.loc[2, "loss_terms_json"])["review"] > 0.0


def test_the_report_renders_the_feature_methods(feature_study):
    from study.cli import main as cli_main

    root, _, _ = feature_study
    assert cli_main(["report", root, "--no-png"]) == 0
    html = pathlib.Path(root, "report", "report.html").read_text()
    for method in FEATURE_METHODS:
        assert method in html, method
    assert os.path.exists(os.path.join(root, "report", "students.parquet"))
