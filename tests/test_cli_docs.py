"""The CLI's report/status/validate commands and the spec YAML: what a user types, what they see."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from .synthetic import write_study
from study.cli import build_parser, main
from study.spec import load_spec, load_yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
GAP = {4: 0.70, 16: 0.78, 64: 0.75}


# ---------------------------------------------------------------- spec YAML
def test_scientific_notation_reads_as_numbers():
    raw = load_yaml("lr: {low: 1e-3, high: 1e-1, log: true}\nwd: 5E-4\nepochs: 10\nname: '1e-3'\nx: .5\n")
    assert raw == {"lr": {"low": 0.001, "high": 0.1, "log": True}, "wd": 0.0005, "epochs": 10, "name": "1e-3",
                   "x": 0.5}
    assert isinstance(raw["epochs"], int)


def _readme_yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)


def _readme_inline_space_snippets() -> list[str]:
    return [m for m in re.findall(r"`([^`\n]+)`", README.read_text()) if m.startswith("space:")]


def test_readme_has_yaml_snippets():
    assert _readme_yaml_blocks() and _readme_inline_space_snippets()


@pytest.mark.parametrize("i", range(len(_readme_yaml_blocks())))
def test_every_readme_yaml_block_validates(i, tmp_path):
    """A whole spec (it has a `name`) validates as `kdstudy validate` validates it; a fragment (a few
    sections, illustrating files the reader has) replaces those sections of the quickstart and validates
    against the JSON Schema (the example plug-in's, when it names plug-ins), which reads no files."""
    import json

    import jsonschema

    text = _readme_yaml_blocks()[i]
    block = load_yaml(text)
    if "name" in block:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        assert load_spec(path).methods
        return
    schema = ROOT / ("examples/plugin" if "plugins" in block else "studies") / "kdstudy.schema.json"
    raw = {**load_yaml((ROOT / "studies" / "quickstart.yaml").read_text()), **block}
    jsonschema.validate(json.loads(json.dumps(raw)), json.loads(schema.read_text()))


@pytest.mark.parametrize("snippet", _readme_inline_space_snippets())
def test_every_readme_space_snippet_validates(snippet, tmp_path):
    """An inline `space: {...}` of the README, put into the quickstart's kd method, validates."""
    raw = load_yaml((ROOT / "studies" / "quickstart.yaml").read_text())
    raw["methods"]["kd"].update(load_yaml(snippet))
    path = tmp_path / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    assert load_spec(path).methods["kd"]


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_every_study_spec_validates_through_the_cli(path, capsys):
    assert main(["validate", str(path)]) == 0
    assert ": ok (" in capsys.readouterr().out


# ---------------------------------------------------------------- the command line itself
def test_version_and_bare_command_print_something(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and re.match(r"kdstudy \d+\.\d+", capsys.readouterr().out)
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "usage: kdstudy" in out and "report" in out and "status" in out


def test_every_argument_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = []
    for name, sp in sub.choices.items():
        for action in sp._actions:
            if action.dest != "help" and not action.help:
                missing.append(f"{name} {action.dest}")
    assert not missing, f"arguments without help: {missing}"


def test_torn_parquet_is_one_line_and_skip_bad_reports_the_rest(tmp_path, capsys):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    good = study / "results" / "search" / "a.parquet"
    torn = study / "results" / "search" / "torn.parquet"
    torn.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    for cmd in (["status", str(study)], ["report", str(study), "--no-png"]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "torn.parquet" in err and "Traceback" not in err and "--skip-bad" in err
        assert len(err.strip().splitlines()) == 1
    assert main(["status", str(study), "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 unreadable results file" in out and "torn.parquet" in out and "confirm" in out
    assert main(["report", str(study), "--no-png", "--skip-bad"]) == 0
    assert "skipped 1 unreadable results file" in (study / "report" / "report.html").read_text()


def test_status_of_a_storage_root_refuses_to_merge_studies(tmp_path, capsys):
    write_study(tmp_path, "alpha", student_means=GAP, seeds=2)
    write_study(tmp_path, "beta", student_means=GAP, seeds=2)
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "alpha" in err and "beta" in err and "2 studies" in err
    assert main(["status", str(tmp_path / "alpha")]) == 0


def test_status_accepts_a_single_parquet_file(tmp_path, capsys):
    study = write_study(tmp_path, student_means=GAP, seeds=2)
    assert main(["status", str(study / "results" / "confirm" / "part-0.parquet")]) == 0
    out = capsys.readouterr().out
    stages = {line.split()[0] for line in out.splitlines()[2:] if line.strip() and not line.startswith("wall time ")}
    assert stages == {"confirm"}
    assert main(["report", str(study / "results" / "confirm" / "part-0.parquet"), "--no-png"]) == 0
    assert (study / "report" / "part-0" / "report.html").exists()
    assert not (study / "report" / "report.html").exists()  # the study's own report is not replaced


def test_readme_duckdb_queries_give_the_students_best(tmp_path):
    """The README's two SQL recipes agree, and name the TriKD student (not its online teacher)."""
    duckdb = pytest.importorskip("duckdb")
    from analysis import write_report

    study = write_study(tmp_path, "quickstart", student_means=GAP, seeds=2, trikd=True)
    write_report(study, png=False)
    queries = re.findall(r"```sql\n(.*?)```", README.read_text(), re.S)
    assert len(queries) == 2
    con = duckdb.connect()
    results = []
    for q in queries:  # every stage (the synthetic TriKD rows live in a stage of their own)
        q = q.replace("kdstudy_results/quickstart", str(study)).replace("stage IN ('search', 'confirm') AND ", "")
        q = q.replace("AND stage IN ('search', 'confirm') ", "")
        results.append(con.sql(q).df().set_index("method")["test_acc_at_best_val"])
    assert results[0].to_dict() == pytest.approx(results[1].to_dict())
    assert results[0]["trikd"] < 0.76  # the student; the online teacher reaches ~0.79
