"""Bad input never crashes: malformed specs give SpecError naming the field, or a clean exit code.

Property-based (hypothesis): whole random documents, a valid micro spec with
one part replaced by junk, unknown fields added or required ones removed,
inverted or malformed ranges, and random YAML text through the CLI.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study.cli import main
from study.spec import Spec, SpecError, parse_spec

from .conftest import micro_spec

SETTINGS = settings(max_examples=int(os.environ.get("KDSTUDY_FUZZ_EXAMPLES", "60")), deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.text(min_size=300, max_size=400))  # a value longer than a line
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)


def base() -> dict:
    spec = micro_spec(Path("/nonexistent/results"), "/nonexistent/data")
    spec["methods"] = {"kd": {"trials": 2, "space": {"temperature": {"low": 1.0, "high": 8.0, "log": True}}}}
    return spec


def paths(d, prefix=()):
    """Every path to a value inside a nested dict/list spec."""
    if isinstance(d, dict):
        for k, v in d.items():
            yield prefix + (k,)
            yield from paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield prefix + (i,)
            yield from paths(v, prefix + (i,))


BASE_PATHS = sorted(paths(base()), key=str)


def set_at(spec, path, value):
    node = spec
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value


def parse_or_problems(raw):
    """The parsed Spec, or SpecError's problems; any other exception fails the test."""
    try:
        return parse_spec(raw), None
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        assert all("\n" not in p and len(p) < 500 for p in exc.problems), exc.problems  # one line each
        assert "Traceback" not in str(exc)
        return None, exc.problems


def names_field(problems, path) -> bool:
    """Some problem names the changed field or one of its enclosing sections."""
    dotted = ".".join(str(p) for p in path)
    prefixes = {".".join(str(p) for p in path[:i]) for i in range(1, len(path) + 1)}
    return any(p.split(":", 1)[0] in prefixes or dotted in p or p.split(":", 1)[0].startswith(path[0] + ".")
               or p.startswith(f"{path[0]}:") for p in problems)


def test_the_base_spec_is_valid():
    assert isinstance(parse_spec(base()), Spec)


@SETTINGS
@given(junk)
def test_any_document_gives_a_spec_or_a_spec_error(raw):
    spec, problems = parse_or_problems(raw)
    if not isinstance(raw, dict):
        assert problems and problems[0].startswith("spec:")


@SETTINGS
@given(st.sampled_from(BASE_PATHS), junk)
def test_junk_anywhere_is_named(path, value):
    raw = base()
    set_at(raw, path, value)
    spec, problems = parse_or_problems(raw)
    if problems:
        assert names_field(problems, path), (path, value, problems)
    else:  # nothing that validates holds NaN or an infinity, wherever it was put
        assert not _nonfinite(spec.raw), (path, value)


def _nonfinite(node) -> bool:
    if isinstance(node, float):
        return not math.isfinite(node)
    if isinstance(node, dict):
        return any(_nonfinite(k) or _nonfinite(v) for k, v in node.items())
    if isinstance(node, list):
        return any(_nonfinite(v) for v in node)
    return False


@SETTINGS
@given(st.sampled_from([p for p in BASE_PATHS if isinstance(p[-1], str)]),
       st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=10), junk)
def test_unknown_fields_are_named(path, key, value):
    raw = base()
    node = raw
    for p in path:
        node = node[p]
    if not isinstance(node, dict) or key in node or key == "description":
        return
    node[key] = value
    spec, problems = parse_or_problems(raw)
    # methods.<name> with an unknown method name, or an unknown field: named either way
    assert problems and any(key in p for p in problems), (path, key, problems)


@SETTINGS
@given(st.sampled_from(["name", "dataset", "student", "methods", ("dataset", "name"), ("student", "family"),
                        ("student", "size"), ("teachers", "sizes")]))
def test_missing_required_fields_are_named(path):
    path = path if isinstance(path, tuple) else (path,)
    raw = base()
    node = raw
    for p in path[:-1]:
        node = node[p]
    del node[path[-1]]
    _, problems = parse_or_problems(raw)
    assert problems and any(".".join(path) in p for p in problems), problems


@SETTINGS
@given(st.sampled_from(["temperature", "alpha", "lr", "weight_decay"]),
       st.one_of(st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.booleans()),
       st.one_of(st.floats(allow_nan=True), st.text(max_size=4), st.none(), st.booleans()),
       st.one_of(st.booleans(), st.text(max_size=3), st.none()))
def test_bad_ranges_are_named(param, low, high, log):
    raw = base()
    raw["methods"]["kd"]["space"] = {param: {"low": low, "high": high, "log": log}}
    spec, problems = parse_or_problems(raw)
    if spec is not None:  # a valid range: ordered, finite, positive if log
        r = spec.methods["kd"].search[param]
        assert r.low < r.high and math.isfinite(r.low) and math.isfinite(r.high)
        assert not r.log or r.low > 0
    else:
        assert any(f"methods.kd.space.{param}" in p for p in problems), problems


def _cli(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(args)
    return code, err.getvalue()


@SETTINGS
@given(st.one_of(st.text(max_size=200),
                 junk.map(lambda v: yaml.safe_dump(v)),
                 st.tuples(st.sampled_from(BASE_PATHS), junk).map(
                     lambda pv: yaml.safe_dump(_mutated(*pv), sort_keys=False))))
def test_cli_never_shows_a_traceback(text):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        path.write_text(text)
        try:
            parse_spec(yaml.safe_load(text))
            valid = True
        except (SpecError, yaml.YAMLError):
            valid = False
        if valid:
            return  # a valid spec would start a study; covered elsewhere
        code, err = _cli(["validate", str(path)])
        assert code == 2 and str(path) in err and "Traceback" not in err, err
        code, err = _cli(["run", str(path), "--no-report"])  # stops before Ray starts
        assert code == 2 and f"{path}: " in err and "Traceback" not in err, err


def _mutated(path, value):
    raw = copy.deepcopy(base())
    set_at(raw, path, value)
    return raw
