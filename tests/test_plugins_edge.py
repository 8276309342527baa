"""Plug-ins at the edge: named in a spec or installed, imported by validate/schema/plan/run/resume
before the spec is validated, never by status or report; a broken one is one line, exit 2.

Everything that imports a plug-in runs in its own process (`python -m study.cli ...`): a
plug-in registers a method and a model family for good, and this test session's registries
must stay the built-in ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from study.spec import SpecError, parse_spec
from trainables import plugins

REPO = Path(__file__).resolve().parent.parent

METHOD = '''\
"""A plug-in method: cross-entropy with label smoothing."""
import torch.nn.functional as F

from trainables.methods import HParam, Method, Step, register

print("smooth_ce plug-in imported")  # chatty on import: `kdstudy schema` output stays JSON


@register("smooth_ce")
class SmoothCE(Method):
    """`smooth_ce`: cross-entropy with label smoothing (a plug-in)."""

    hparams = {"smoothing": HParam(0.1, "float", 0.0, 0.5, help="label smoothing")}

    def __init__(self, ctx, hp):
        super().__init__(ctx, hp)
        self.student = ctx.build_model(ctx.student)

    def training_step(self, x, y):
        logits = self.student(x)
        return Step({"ce": F.cross_entropy(logits, y, label_smoothing=self.hp["smoothing"])}, logits)
'''

FAMILY_INIT = '''\
"""A plug-in package: one model family (its builder in a second file, imported relatively)."""
from trainables.models import register_family

from .builder import build


@register_family("linear_probe", options={"bias": True}, sizes_hint="unused (any positive integer)",
                 arch_name=lambda c: f"linear-{c['size']}", check=lambda c: None)
def _build(cfg, in_shape, num_classes, multi_exit):
    return build(cfg, in_shape, num_classes)
'''

FAMILY_BUILDER = '''\
import math

from torch import nn


class Linear(nn.Module):
    def __init__(self, in_features, num_classes, bias):
        super().__init__()
        self.classifier = nn.Linear(in_features, num_classes, bias=bias)
        self.embedding_dim = in_features

    def features(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


def build(cfg, in_shape, num_classes):
    return Linear(math.prod(in_shape), num_classes, bool(cfg["bias"]))
'''


def spec_doc(plugin_refs, **over) -> dict:
    doc = {"name": "plug", "storage": "results", "plugins": plugin_refs,
           "dataset": {"name": "mnist1d", "num_samples": 1000},
           "student": {"family": "linear_probe", "size": 1, "bias": False},
           "methods": {"smooth_ce": {"trials": 1, "space": {"smoothing": {"low": 0.0, "high": 0.2}}}},
           "confirm": {"seeds": 1, "top_k": 1}}
    doc.update(over)
    return doc


@pytest.fixture
def lab(tmp_path):
    """A spec folder with a file plug-in, a package plug-in and a module on a search path."""
    specs = tmp_path / "specs"
    (specs / "my_pkg").mkdir(parents=True)
    (specs / "smooth.py").write_text(METHOD)
    (specs / "my_pkg" / "__init__.py").write_text(FAMILY_INIT)
    (specs / "my_pkg" / "builder.py").write_text(FAMILY_BUILDER)
    site = tmp_path / "site"
    (site / "my_lab").mkdir(parents=True)
    (site / "my_lab" / "__init__.py").write_text("")
    (site / "my_lab" / "marker.py").write_text(f"open({str(tmp_path / 'imported-my_lab')!r}, 'a').write('x')\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    return tmp_path, specs, site, elsewhere


def cli(*args, cwd, extra_path=(), timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *map(str, extra_path)])}
    return subprocess.run([sys.executable, "-m", "study.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_spec_plugins_validate_from_any_directory_and_reach_the_schema(lab):
    tmp, specs, site, elsewhere = lab
    spec = write(specs / "spec.yaml", spec_doc(["./smooth.py", "my_pkg/", "my_lab.marker"]))
    p = cli("validate", spec, cwd=elsewhere, extra_path=[site])
    assert p.returncode == 0, p.stderr
    assert f"{spec}: ok (smooth_ce;" in p.stdout
    assert (tmp / "imported-my_lab").read_text() == "x"  # the module plug-in ran once
    s = cli("schema", spec, cwd=elsewhere, extra_path=[site])
    assert s.returncode == 0, s.stderr
    schema = json.loads(s.stdout)
    assert "Method_smooth_ce" in schema["definitions"] and "Model_linear_probe" in schema["definitions"]
    assert "smoothing" in schema["definitions"]["Space_smooth_ce"]["properties"]


def test_a_broken_plugin_is_one_line_naming_its_file_and_line_before_ray(lab):
    tmp, specs, site, elsewhere = lab
    (specs / "broken.py").write_text("import math\n\ndef f(:\n    pass\n")
    spec = write(specs / "spec.yaml", spec_doc(["./smooth.py", "./broken.py"]))
    p = cli("run", spec, "--no-report", cwd=elsewhere)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert str(specs / "broken.py") in lines[0] and "line 3" in lines[0] and "SyntaxError" in lines[0]
    assert "Traceback" not in p.stderr and not (elsewhere / "results").exists()  # nothing started

    (specs / "broken.py").write_text("import math\n\nVALUE = math.sqrt(4)\nundefined_name + 1\n")
    p = cli("validate", spec, cwd=elsewhere)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"{specs / 'broken.py'}, line 4: NameError" in lines[0]


def test_resume_imports_the_recorded_plugins_and_status_imports_none(lab):
    tmp, specs, site, elsewhere = lab
    from .synthetic import write_study

    study = write_study(tmp, "study", student_means={4: 0.70, 16: 0.78}, seeds=2)
    doc = spec_doc(["./smooth.py", "my_lab.marker"])
    (study / "spec.json").write_text(json.dumps({**doc, "kdstudy": {"spec_dir": str(specs)}}))
    # status and report read Parquet and JSON: the study's plug-ins are never imported
    code = ("import sys; from study.cli import main; a = main(['status', sys.argv[1]]); "
            "b = main(['report', sys.argv[1], '--no-png']); "
            "print('CODES', a, b, any(m.startswith('kdstudy_plugin_') or m.startswith('my_lab') for m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    p = subprocess.run([sys.executable, "-c", code, str(study)], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=180)
    assert "CODES 0 0 False" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    assert not (tmp / "imported-my_lab").exists()
    # resume imports them, relative to where the spec was (not the working directory): a plug-in
    # broken since is named in one line, before Ray starts
    (specs / "smooth.py").write_text(METHOD + "\nraise RuntimeError('edited since')\n")
    p = cli("resume", study, "--no-report", cwd=elsewhere, extra_path=[site])
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert "cannot resume" in lines[0] and str(specs / "smooth.py") in lines[0] and "edited since" in lines[0]


def test_installed_entry_points_are_loaded_by_validate(tmp_path):
    site = tmp_path / "site"
    (site / "kdplug_dist-1.0.dist-info").mkdir(parents=True)
    (site / "kdplug_dist-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: kdplug-dist\n"
                                                                  "Version: 1.0\n")
    (site / "kdplug_dist-1.0.dist-info" / "entry_points.txt").write_text(
        f"[{plugins.ENTRY_POINT_GROUP}]\nsmooth = kdplug_smooth\n")
    (site / "kdplug_smooth.py").write_text(METHOD)
    doc = spec_doc([], student={"family": "mlp", "size": 8})
    del doc["plugins"]
    spec = write(tmp_path / "spec.yaml", doc)
    p = cli("validate", spec, cwd=tmp_path, extra_path=[site])
    assert p.returncode == 0 and "ok (smooth_ce" in p.stdout, p.stderr


def test_records_name_hash_and_reimport_without_registering_twice(lab):
    """In a fresh process: records found without executing, imported once, a second load (and a
    trial-side `load_records` of the same records) is a no-op, an edited copy is refused."""
    tmp, specs, site, elsewhere = lab
    code = textwrap.dedent(f"""
        import json, sys
        from trainables import plugins
        from trainables.methods import available_methods
        refs, base = ["./smooth.py", "my_pkg/", "my_lab.marker"], {str(specs)!r}
        described = plugins.describe(refs, base, entry_points=False)
        ran_before = __import__("os").path.exists({str(tmp / 'imported-my_lab')!r})
        first = plugins.load_plugins(refs, base, entry_points=False)
        cls = available_methods()["smooth_ce"]
        again = plugins.load_plugins(["smooth.py"], base, entry_points=False)
        plugins.load_records(first, check=True)
        same = available_methods()["smooth_ce"] is cls
        try:
            plugins.load_records(first[:1], paths={{first[0]["module"]: {str(specs / 'my_pkg' / 'builder.py')!r}}},
                                 check=True)
            refused = None
        except plugins.PluginError as exc:
            refused = str(exc)
        print(json.dumps({{"described": described, "first": first, "again": again, "same": same,
                          "ran_before": ran_before, "refused": refused, "module": cls.__module__}}))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site)])}
    p = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["described"] == out["first"] and not out["ran_before"]  # describing executes nothing
    file_rec, pkg_rec, mod_rec = out["first"]
    assert file_rec["kind"] == "file" and file_rec["path"] == str(specs / "smooth.py")
    assert file_rec["module"] == plugins.module_name_for(specs / "smooth.py") == out["module"]
    assert pkg_rec["kind"] == "package" and pkg_rec["path"] == str(specs / "my_pkg")
    assert mod_rec == {"ref": "my_lab.marker", "kind": "module", "module": "my_lab.marker",
                       "path": str(site / "my_lab" / "marker.py"), "sha256": mod_rec["sha256"]}
    assert out["again"][0]["module"] == file_rec["module"] and out["same"]
    assert "is not the source the study recorded" in out["refused"]
    assert (tmp / "imported-my_lab").read_text() == "x"


def test_plugin_sources_are_hashed_without_importing(lab, tmp_path):
    tmp, specs, site, elsewhere = lab
    doc = spec_doc(["./smooth.py", "my_pkg/"])
    # parse_spec does not import plug-ins: their method is unknown here, but their sources are found
    with pytest.raises(SpecError) as info:
        parse_spec(doc, spec_dir=str(specs))
    assert any(p.startswith("methods.smooth_ce: unknown method") for p in info.value.problems)
    assert not any(p.startswith("plugins") for p in info.value.problems)
    before = plugins.source_sha256(specs / "my_pkg")
    (specs / "my_pkg" / "builder.py").write_text(FAMILY_BUILDER + "\n# edited\n")
    assert plugins.source_sha256(specs / "my_pkg") != before  # a package hashes every file in it
    assert plugins.source_sha256(specs / "smooth.py") == plugins.describe(["smooth.py"], specs, False)[0]["sha256"]
    missing = spec_doc(["./nothing.py", "no_such_module_xyz", "bad name"])
    with pytest.raises(SpecError) as info:
        parse_spec(missing, spec_dir=str(specs))
    msgs = "\n".join(info.value.problems)
    assert f"plugins[0]: no such file or folder: {specs / 'nothing.py'}" in msgs
    assert "plugins[1]: no module named 'no_such_module_xyz'" in msgs
    assert "plugins[2]: is not a module name" in msgs


EARLY_PLUGIN = '''\
from trainables.methods import register
from trainables.methods.kd import HintonKD


@register("my_early_kd")
class MyEarlyKD(HintonKD):
    early_teacher = True  # distils from an early teacher epoch, as ESKD does
'''


def test_a_plugin_method_declaring_an_early_teacher_gets_what_eskd_gets(tmp_path):
    """What the study does for ESKD it does for any method declaring `early_teacher` (no name is
    special): `teachers.export_epochs` is required and `teacher_epoch` is searched over it. (The
    refusal of an imported teacher reads the same flag; ESKD's case is in test_teachers_import.py.)"""
    (tmp_path / "early.py").write_text(EARLY_PLUGIN)
    code = textwrap.dedent(f"""
        import json
        from study.spec import SpecError, parse_spec
        from study.spaces import method_params
        from trainables.plugins import load_plugins
        load_plugins([{str(tmp_path / "early.py")!r}])  # as validate, plan and run do before parsing
        doc = {{"name": "e", "storage": {str(tmp_path / "r")!r}, "plugins": [{str(tmp_path / "early.py")!r}],
               "dataset": {{"name": "mnist1d", "num_samples": 1000}}, "student": {{"family": "mlp", "size": 8}},
               "teachers": {{"family": "mlp", "sizes": [16], "epochs": 4}},
               "methods": {{"my_early_kd": {{"trials": 2}}}}}}
        out = {{}}
        try:
            parse_spec(doc)
        except SpecError as exc:
            out["missing"] = str(exc)
        doc["teachers"]["export_epochs"] = [2, 4]
        spec = parse_spec(doc)
        m = spec.methods["my_early_kd"]
        out["searched"] = list(method_params(m, None, spec.teachers["export_epochs"])["teacher_epoch"].choices)
        print("OUT", json.dumps(out))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("OUT ")), None)
    assert line, p.stdout[-2000:] + p.stderr[-3000:]
    out = json.loads(line[4:])
    assert "teachers.export_epochs: method my_early_kd needs the teacher epochs to keep" in out["missing"]
    assert out["searched"] == [2, 4]
