"""The spec is validated at the edge: every problem named with its field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
    assert main(["validate", str(good), str(bad)]) == 2  # bad input: the same code as `run`
    err = capsys.readouterr().err
    assert "methods.kd.trials: must be at least 0" in err
    assert "teachers: is required" in err
    assert main(["run", str(bad)]) == 2
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2


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


# --------------------------------------------------------------------------- hostile or absurd input

REPO = Path(__file__).resolve().parent.parent


def alias_bomb(levels: int = 9) -> str:
    """'Billion laughs': each level lists the previous one nine times (9**9 values, a few hundred bytes)."""
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    prev = "a"
    for name in "bcdefghijklmnop"[: levels - 1]:
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
        prev = name
    return text


def kdstudy(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "study.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_alias_bomb_is_refused_in_one_line_by_a_real_process(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    assert len(bomb.read_bytes()) < 1024
    p = kdstudy("run", bomb, "--no-report", cwd=tmp_path)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr[:2000]
    assert "alias" in p.stderr and str(bomb) in p.stderr and len(p.stderr) < 300


def test_a_spec_over_the_size_limit_is_refused_before_it_is_parsed(tmp_path, capsys, monkeypatch):
    big = tmp_path / "big.yaml"
    big.write_text("name: big\n" + "# padding\n" * 120_000)  # 1.2 MB
    monkeypatch.setattr("yaml.load", lambda *a, **k: pytest.fail("a spec over the limit was parsed"))
    assert main(["validate", str(big)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "the spec file is 1.1 MiB; a spec is at most 1 MiB" in err


def test_nan_is_refused_by_validate_with_the_exit_code_of_run(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    raw["train"] = {**raw["train"], "lr": ".nan"}
    text = yaml.safe_dump(raw).replace("'.nan'", ".nan")
    assert ": .nan" in text
    path = tmp_path / "nan.yaml"
    path.write_text(text)
    p = kdstudy("validate", path, cwd=tmp_path)
    assert p.returncode == 2 and "train.lr: must be a finite number, got nan" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_yaml_limits_in_process(tmp_path):
    from study.spec import load_yaml
    from study.spec.loading import SpecYAMLError

    for text, words in [("a: &a [*a]\n", "refers to the node that contains it"),
                        ("a: " + "[" * 200 + "]" * 200, "nested deeper than 64"),
                        ("a: " + "1" * 5000, "not valid YAML"),
                        ("a: [1, 2\nb: 3", "not valid YAML at line 2, column 2"),
                        ("a: !!python/object:os.system x", "not valid YAML"),
                        ("x" * (1 << 20) + "x", "at most 1 MiB")]:
        with pytest.raises(SpecYAMLError) as info:
            load_yaml(text)
        assert words in str(info.value) and "\n" not in str(info.value), str(info.value)[:300]
    assert load_yaml("a: &x {low: 1e-3}\nb: *x\n") == {"a": {"low": 0.001}, "b": {"low": 0.001}}  # aliases are fine


def test_nan_and_infinity_are_refused_wherever_a_number_goes(tmp_path):
    nan, inf = float("nan"), float("inf")
    cases = {
        ("train", "lr"): nan, ("train", "momentum"): -inf, ("train", "grad_clip"): inf,
        ("verdict", "delta"): nan, ("resources", "cpu"): nan, ("resources", "gpu"): nan,
        ("runtime", "checkpoint_every_s"): inf, ("dataset", "val_fraction"): nan,
        ("confirm", "seeds"): inf, ("train", "epochs"): nan, ("teachers", "epochs"): inf,
    }
    for (section, key), value in cases.items():
        raw = micro_spec(tmp_path, str(tmp_path))
        raw[section] = {**(raw.get(section) or {}), key: value}
        msgs = problems(raw)
        assert any(m.startswith(f"{section}.{key}:") for m in msgs), (section, key, msgs)
    spaces = [{"lr": nan}, {"lr": {"low": nan, "high": 0.1}}, {"alpha": {"low": 0.1, "high": inf}},
              {"temperature": {"choices": [2.0, nan]}}, {"weight_decay": -inf}]
    for space in spaces:
        raw = micro_spec(tmp_path, str(tmp_path))
        raw["methods"] = {"kd": {"trials": 2, "space": space}}
        msgs = problems(raw)
        name = next(iter(space))
        assert any(m.startswith(f"methods.kd.space.{name}:") and ("finite" in m or "minimum" in m) for m in msgs), msgs
    raw = micro_spec(tmp_path, str(tmp_path))
    raw["teachers"] = {**raw["teachers"], "sizes": [8, nan]}
    assert any(m.startswith("teachers.sizes:") for m in problems(raw))


def test_confirm_seeds_at_least_one_and_gpu_at_most_one(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path), confirm={"seeds": 0, "top_k": 1})
    assert problems(raw) == ["confirm.seeds: must be at least 1, got 0"]
    raw = micro_spec(tmp_path, str(tmp_path), resources={"gpu": 2})
    assert problems(raw)[0].startswith("resources.gpu: a fraction of one GPU, at most 1")


def test_no_problem_prints_a_value_longer_than_a_line(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    huge = "x" * 100_000
    raw["name"] = huge
    raw["train"] = {"optimizer": huge, "lr": [huge] * 100}
    raw["methods"] = {huge: {}, "kd": {"space": {"alpha": huge, huge: 1}}}
    raw[huge] = {huge: huge}
    msgs = problems(raw)
    assert len(msgs) >= 6
    assert all(len(m) < 400 and "\n" not in m for m in msgs), [m[:120] for m in msgs]


def test_new_fields_validate_and_never_enter_an_identity(tmp_path):
    from study.graph import plan
    from study.zoo import teacher_jobs

    raw = micro_spec(tmp_path, str(tmp_path))
    base = parse_spec(raw)
    names = [e.name for e in plan(base)], [j["key"] for j in teacher_jobs(base)]
    assert (base.sampler, base.replicates, base.seeds_per_trial, base.tracking, base.plugins) == ("auto", 1, 1, {}, [])
    assert base.runtime["precision"] == "auto" and "weights" not in base.teachers
    spelled = {**raw, "search": {**raw["search"], "sampler": "auto", "replicates": 1, "seeds_per_trial": 1},
               "tracking": {"mlflow": {"uri": "file:///tmp/mlruns"}, "wandb": {"project": "p", "mode": "offline"},
                            "tensorboard": True},
               "runtime": {"precision": "tf32"}}
    spec = parse_spec(spelled)
    assert ([e.name for e in plan(spec)], [j["key"] for j in teacher_jobs(spec)]) == names
    assert spec.tracking == {"mlflow": {"uri": "file:///tmp/mlruns", "experiment": None},
                             "wandb": {"project": "p", "entity": None, "mode": "offline", "group": None},
                             "tensorboard": {"dir": None}}
    assert spec.runtime["precision"] == "tf32"
    from study.folder import content

    assert content(spec) == content(parse_spec({**raw, "search": spelled["search"]}))  # tracking is not content
    weights = {**raw["teachers"], "weights": {8: "w/t8.pt", 32: {"path": "/abs/t32.pt", "format": "state_dict"}}}
    spec = parse_spec({**raw, "teachers": weights}, spec_dir=str(tmp_path))
    assert spec.teachers["weights"] == {8: {"path": str(tmp_path / "w" / "t8.pt"), "format": "auto"},
                                        32: {"path": "/abs/t32.pt", "format": "state_dict"}}
    # (what an imported teacher's key hashes, and that the other sizes keep theirs: tests/test_teachers_import.py)
    bad = {**raw, "search": {"sampler": "cmaes", "replicates": 0, "seeds_per_trial": 1.5},
           "runtime": {"precision": "fp16"}, "tracking": {"mlflow": {}, "wandb": {"project": "p", "mode": "on"},
                                                          "tensorboard": {"dri": "x"}, "neptune": {}},
           "teachers": {**raw["teachers"], "weights": {8: {"path": "y.pt", "format": "onnx"}}}}
    msgs = "\n".join(problems(bad))
    for field in ("search.sampler: must be one of auto, tpe, qmc, gp, random", "search.replicates: must be at least 1",
                  "search.seeds_per_trial: must be an integer", "runtime.precision: must be one of auto, fp32, tf32",
                  "tracking.mlflow.uri: is required", "tracking.wandb.mode: must be one of online, offline",
                  "tracking.tensorboard.dri: unknown field", "tracking.neptune: unknown field",
                  "teachers.weights.8.format: must be one of"):
        assert field in msgs, f"{field} missing from\n{msgs}"
    off_ladder = {**raw, "teachers": {**raw["teachers"], "weights": {16: "x.pt"}}}
    assert problems(off_ladder) == ["teachers.weights.16: is not a size of the ladder ([8, 32])"]


def test_takd_assistant_sizes_are_a_method_declared_option(tmp_path):
    from trainables.methods import get_method

    assert "assistant_sizes" in get_method("takd").spec_options
    raw = micro_spec(tmp_path, str(tmp_path), search={"budget": "stratified"})
    raw["methods"] = {"takd": {"trials": 1, "teacher_sizes": [32]}}
    assert any(m.startswith("methods.takd.assistant_sizes: is required") for m in problems(raw))
    raw["methods"] = {"takd": {"trials": 1, "teacher_sizes": [32], "assistant_sizes": []}}
    assert any(m.startswith("methods.takd.assistant_sizes: must be a non-empty list") for m in problems(raw))
    raw["methods"] = {"kd": {"trials": 1, "assistant_sizes": [16]}, "scratch": {"teacher_sizes": [8]}}
    msgs = "\n".join(problems(raw))
    assert "methods.kd.assistant_sizes: unknown field; allowed: confirm_seeds, space, teacher_sizes, trials" in msgs
    assert "methods.scratch.teacher_sizes: method scratch uses no teacher" in msgs
    raw["methods"] = {"takd": {"trials": 1, "teacher_sizes": [32], "assistant_sizes": [16, 24]}}
    m = parse_spec(raw).methods["takd"]
    assert m.assistant_sizes == [16, 24] and m.options == {"assistant_sizes": [16, 24]}


def test_the_raw_spec_is_kept_as_written(tmp_path):
    raw = micro_spec(tmp_path, str(tmp_path))
    import copy

    before = copy.deepcopy(raw)
    assert parse_spec(raw).raw == before and raw == before  # spec.json records what the user wrote


# --------------------------------------------------------------------------- the JSON Schema

SCHEMA_FILE = REPO / "studies" / "kdstudy.schema.json"
HEADER = "# yaml-language-server: $schema=./kdstudy.schema.json"


def test_the_committed_schema_is_what_kdstudy_schema_prints(capsys):
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == SCHEMA_FILE.read_text(), (
        "studies/kdstudy.schema.json is stale: regenerate it with `kdstudy schema > studies/kdstudy.schema.json`")


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_ready_spec_names_the_schema_and_satisfies_it(path):
    import jsonschema

    from study.spec import load_yaml

    assert path.read_text().splitlines()[0] == HEADER
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(load_yaml(path.read_text())))
    assert not errors, [e.message[:200] for e in errors]


def test_the_schema_rejects_misspelled_fields():
    import jsonschema

    from study.spec import load_yaml

    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    good = load_yaml((REPO / "studies" / "quickstart.yaml").read_text())
    assert validator.is_valid(good)
    for where, key in [((), "trian"), (("train",), "epoch"), (("student",), "widht"), (("methods", "kd"), "trails"),
                       (("methods", "kd", "space"), "temprature"), (("methods", "kd", "space", "alpha"), "hihg"),
                       (("methods",), "kdd"), (("search",), "sampler_"), (("dataset",), "num_sample")]:
        bad = json.loads(json.dumps(good))
        node = bad
        for k in where:
            node = node[k]
        node[key] = 1
        assert not validator.is_valid(bad), (where, key)
    for path, value in [(("confirm", "seeds"), 0), (("resources", "gpu"), 2), (("runtime", "precision"), "fp16"),
                        (("search", "sampler"), "cmaes"), (("dataset", "val_fraction"), 0.001)]:
        bad = json.loads(json.dumps(good))
        bad.setdefault(path[0], {})[path[1]] = value
        assert not validator.is_valid(bad), path


def test_validating_a_spec_imports_no_library_just_to_list_its_names():
    """The schema lists torchvision's models by name, read only when a JSON Schema is written:
    validating (and so running) a spec of other families never imports torchvision, and a
    model on the meta device draws nothing (torch's slow reference kernels stay unloaded)."""
    code = ("import sys; from study.spec import load_spec; load_spec(sys.argv[1]); "
            "print('IMPORTED', [m for m in ('torchvision', 'torch._dynamo') if m in sys.modules])")
    for spec in ("quickstart.yaml", "cifar100_resnet_ladder.yaml"):
        p = subprocess.run([sys.executable, "-c", code, str(REPO / "studies" / spec)], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert "IMPORTED []" in p.stdout, (spec, p.stdout[-1000:], p.stderr[-2000:])
    text = SCHEMA_FILE.read_text()  # (equal to what `kdstudy schema` prints: the test above)
    assert '"resnet18"' in text and '"vit_b_16"' in text  # the torchvision family's sizes are still an enum
