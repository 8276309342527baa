"""Plug-ins past the edge: the worked example (examples/plugin) run for real, from a working
directory whose own study.py, analysis.py and trainables.py would break any worker that imported
them; the plug-in imported in every trial from the copy the job shipped; its hyperparameters in
Parquet, the results table and the importance chart; status and report importing no plug-in;
an edited plug-in refused on resume and re-run; the Python API.

The example's study runs once, on test_cluster.py's loopback cluster (two worker nodes), and the
tests that read it live there beside the cluster: one run serves both. Everything that imports a
plug-in runs in a process of its own: a plug-in registers for good, and this session's registries
stay the built-in ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from study import jobenv

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "plugin"

#: the user's own modules in the working directory (a package study/, files analysis.py and
#: trainables.py); importing any of them leaves a mark and raises
SHADOWS = ("study", "analysis", "trainables")


def kdstudy_command() -> list[str]:
    """`kdstudy` as a user runs it (the console script: the working directory is not on its path)."""
    script = Path(sys.executable).with_name("kdstudy")
    return [str(script)] if script.exists() else [sys.executable, "-P", "-m", "study.cli"]


def env_with_repo(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep), **extra}


def kdstudy(*args, cwd, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*kdstudy_command(), *map(str, args)], cwd=cwd, env=env or env_with_repo(),
                          capture_output=True, text=True, timeout=timeout)


def shadowing_dir(path: Path) -> Path:
    """A working directory holding the user's own package study/ and files analysis.py and trainables.py."""
    path.mkdir(parents=True, exist_ok=True)
    for name in SHADOWS:
        target = path / name / "__init__.py" if name == "study" else path / f"{name}.py"
        target.parent.mkdir(exist_ok=True)
        target.write_text(f"open({str(path / ('IMPORTED-' + name))!r}, 'a').write('x')\n"
                          f"raise RuntimeError('the user\\'s own {name} ran')\n")
    return path


def shadow_marks(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("IMPORTED-*"))


def copy_example(dest: Path, record_imports: Path | None = None) -> Path:
    """The example's plug-in package beside a spec folder; with `record_imports`, each process that
    imports it appends its pid and where it imported it from to that file."""
    shutil.copytree(EXAMPLE / "lab", dest / "lab", ignore=shutil.ignore_patterns("__pycache__"))
    if record_imports is not None:
        init = dest / "lab" / "__init__.py"
        init.write_text(init.read_text() + f"\nimport os as _os\nopen({str(record_imports)!r}, 'a').write("
                        f"f'{{_os.getpid()}} {{__file__}}\\n')\n")
    return dest / "lab"


def example_doc(storage: Path, **over) -> dict:
    """The example's spec, smaller: one teacher, four searched TTM trials, one confirm seed."""
    doc = yaml.safe_load((EXAMPLE / "spec.yaml").read_text())
    doc.update({"storage": str(storage), "name": "plugin_test",
                "dataset": {"name": "waveform", "num_samples": 1000, "test_samples": 500},
                "student": {"family": "residual_mlp", "size": 8, "blocks": 1},
                "teachers": {"family": "residual_mlp", "sizes": [32], "blocks": 2, "seeds": 1, "epochs": 4},
                "train": {**doc["train"], "epochs": 4},
                "methods": {"ttm": {"trials": 4, "space": doc["methods"]["ttm"]["space"]}},
                "confirm": {"seeds": 1, "top_k": 1}})
    doc.update(over)
    return doc


def test_example_import_error_is_one_line_before_ray(tmp_path):
    lab = copy_example(tmp_path / "specs")
    (lab / "ttm.py").write_text((lab / "ttm.py").read_text().replace("import torch.nn.functional as F",
                                                                      "import torch.nn.functionl as F"))
    spec = tmp_path / "specs" / "spec.yaml"
    spec.write_text(yaml.safe_dump(example_doc(tmp_path / "results"), sort_keys=False))
    p = kdstudy("run", spec, "--no-report", cwd=shadowing_dir(tmp_path / "cwd"))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert f"{lab / 'ttm.py'}, line 13: ModuleNotFoundError" in lines[0] and "torch.nn.functionl" in lines[0]
    assert not (tmp_path / "results").exists()


# --------------------------------------------------------------------------- the pieces, without Ray


def test_example_plugin_pieces_are_what_their_docstrings_say(tmp_path):
    """TTM's loss against the authors' formula (power transform, renormalised), the waveform
    generator's base waves and classes, the residual MLP's parameters and taps, the example's
    JSON Schema up to date."""
    copy_example(tmp_path)
    code = textwrap.dedent(f"""
        import json, math, torch
        from trainables import plugins
        from trainables.data import dataset_facts, load_dataset
        from trainables.models import build_model, count_params, tap_shapes
        plugins.load_plugins(["./lab/"], {str(tmp_path)!r}, entry_points=False)
        lab = __import__(plugins.module_name_for({str(tmp_path / 'lab')!r}), fromlist=["ttm"])
        s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
        t = torch.tensor([[3.0, 0.0, 1.0], [2.0, 2.0, -2.0]])
        g = 0.3
        p_t = torch.softmax(t, 1) ** g
        p_t = p_t / p_t.sum(1, keepdim=True)
        by_hand = (p_t * (p_t.log() - torch.log_softmax(s, 1))).sum(1).mean()
        h = lab.waveform.base_waves()
        x, y = lab.waveform.generate(30000, 1.0, 0)
        means = [x[y == c, 0].mean(0) for c in range(3)]
        want = [(h[a] + h[b]) / 2 for a, b in lab.waveform.PAIRS.tolist()]
        cfg = {{"family": "residual_mlp", "size": 16, "blocks": 2}}
        model = build_model(cfg, (1, 21), 3)
        w = 16
        expected = 21 * w + w + 2 * (2 * w + 2 * w * w + 2 * w + 2 * w * w + w) + 2 * w + w * 3 + 3
        facts = dataset_facts({{"name": "waveform", "num_samples": 300, "test_samples": 100}})
        splits = load_dataset({{"name": "waveform", "num_samples": 300, "test_samples": 100}})
        from study.spec import schema_text
        fresh = schema_text() == open({str(EXAMPLE / "kdstudy.schema.json")!r}).read()
        print(json.dumps({{
            "schema_fresh": fresh,
            "ttm": lab.ttm.ttm_loss(s, t, g).item(), "by_hand": by_hand.item(),
            "peaks": [int(v.argmax()) + 1 for v in h], "mean_err": max(float((m - w_).abs().max()) for m, w_ in zip(means, want)),
            "balance": [float((y == c).float().mean()) for c in range(3)],
            "params": count_params(model), "expected": expected,
            "taps": {{k: [list(v) for v in vs] if isinstance(vs, list) else list(vs)
                     for k, vs in tap_shapes(model, ["penultimate", "stages"], (1, 21)).items()}},
            "shape": list(facts.input_shape), "classes": facts.num_classes,
            "train": int(len(splits.train[1])), "val": int(len(splits.val[1])), "test": int(len(splits.test[1])),
        }}))
    """)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env_with_repo(), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["ttm"] == pytest.approx(out["by_hand"], rel=1e-5)
    assert out["peaks"] == [11, 15, 7]  # h1 at i = 11, h2(i) = h1(i - 4), h3(i) = h1(i + 4)
    assert out["mean_err"] < 0.05 and all(abs(b - 1 / 3) < 0.01 for b in out["balance"])
    assert out["params"] == out["expected"]
    assert out["taps"] == {"penultimate": [16], "stages": [[16], [16]]}
    assert out["shape"] == [1, 21] and out["classes"] == 3
    assert (out["train"], out["val"], out["test"]) == (270, 30, 100)
    # the example spec's yaml-language-server header points at its schema, plug-in included
    assert out["schema_fresh"], ("examples/plugin/kdstudy.schema.json is stale: regenerate it with "
                                 "`kdstudy schema examples/plugin/spec.yaml > examples/plugin/kdstudy.schema.json`")


def test_shipped_copies_are_imported_and_checked_in_a_trial_process(tmp_path):
    """A trial imports each plug-in from the copy on its sys.path (the recorded file gone, as on another
    node), refuses a copy or an installed module that is not the recorded source, and names one that
    did not reach it."""
    src = tmp_path / "driver"
    copy_example(src)
    (src / "one.py").write_text("VALUE = 1\n")
    site = tmp_path / "site"
    (site / "my_lab").mkdir(parents=True)
    (site / "my_lab" / "__init__.py").write_text("VERSION = 1\n")
    stage = tmp_path / "stage"
    driver = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(site)!r})
        from trainables import plugins
        recs = plugins.describe(["./lab/", "./one.py", "my_lab"], {str(src)!r}, entry_points=False)
        copies = plugins.stage(recs, {str(stage)!r})
        print(json.dumps({{"records": recs, "copies": copies, "roots": plugins.shipped_roots(recs)}}))
    """)
    p = subprocess.run([sys.executable, "-c", driver], env=env_with_repo(), capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    records, copies = out["records"], out["copies"]
    assert sorted(Path(c).name for c in copies) == sorted([records[0]["module"], records[1]["module"] + ".py"])
    assert out["roots"] == [str(site / "my_lab")]  # on PYTHONPATH, not installed: it travels too
    shutil.rmtree(src)  # as on another node: the driver's files are not there

    # one trial process goes through the cases in turn: each sets sys.path as Ray's py_modules would
    # (`path`), writes what the case changes on the node (`write`), and calls load_in_trial
    trial = textwrap.dedent("""
        import importlib, json, sys
        from trainables import plugins
        from trainables.models import available_families
        records, cases = json.loads(sys.argv[1]), json.loads(sys.argv[2])
        base = list(sys.path)
        for case in cases:
            for path, text in case["write"].items():
                open(path, "w").write(text)
            sys.path[:] = case["path"] + base
            importlib.invalidate_caches()
            try:
                plugins.load_in_trial(records)
                print("OK", "residual_mlp" in available_families(), sys.modules["my_lab"].__file__)
            except plugins.PluginError as exc:
                print("REFUSED", exc)
    """)

    # each copy in a folder of its own on PYTHONPATH, as Ray's py_modules put them
    shipped = []
    for c in copies:
        folder = tmp_path / "node" / Path(c).name.replace(".py", "")
        folder.mkdir(parents=True)
        (shutil.copytree if Path(c).is_dir() else shutil.copy)(c, folder / Path(c).name)
        shipped.append(folder)
    node_site = tmp_path / "node" / "site"
    shutil.copytree(site, node_site)
    one_copy, my_lab = str(shipped[1] / Path(copies[1]).name), str(node_site / "my_lab" / "__init__.py")
    on_node = [*map(str, shipped), str(node_site)]
    cases = [
        {"path": on_node, "write": {}},
        {"path": on_node, "write": {one_copy: "VALUE = 2\n"}},  # a copy that is not what was recorded
        {"path": on_node, "write": {one_copy: "VALUE = 1\n", my_lab: "VERSION = 2\n"}},  # another version here
        {"path": [str(shipped[1]), str(site)], "write": {}},  # the package's copy missing, its folder gone
    ]
    r = subprocess.run([sys.executable, "-c", trial, json.dumps(records), json.dumps(cases)], env=env_with_repo(),
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    got = r.stdout.strip().splitlines()[-4:]
    assert got[0].startswith("OK True") and str(node_site / "my_lab") in got[0], got
    assert "is not the source the study recorded" in got[1], got
    assert got[2].startswith("REFUSED plug-in my_lab:") and "install the same version on every node" in got[2], got
    assert got[3].startswith("REFUSED plug-in ./lab/: did not reach node"), got


def test_job_env_ships_kdstudys_packages_and_merges_a_submitted_jobs_env():
    env = jobenv.job_env([])
    assert env["py_modules"][:3] == [str(REPO / p) for p in jobenv.PACKAGES]
    assert sorted(os.listdir(env["working_dir"])) == ["README.txt"]  # nothing of the user's
    assert "__pycache__" in env["excludes"]
    assert jobenv.merged(env, None) == (env, False)
    kept, override = jobenv.merged(env, {"working_dir": "gcs://_ray_pkg_abc.zip", "pip": ["x"]})
    assert "working_dir" not in kept and kept["py_modules"] == env["py_modules"] and not override
    both, override = jobenv.merged(env, {"py_modules": ["gcs://_ray_pkg_def.zip"]})
    assert both["py_modules"] == env["py_modules"] + ["gcs://_ray_pkg_def.zip"] and override


#: the public extension API (README, "Extending kdstudy"): a package's `__all__`, a module's names
#: without a leading underscore
PUBLIC = ("trainables.methods", "trainables.models", "trainables.data", "trainables.losses",
          "trainables.feature_losses", "trainables.connectors", "trainables.crd", "trainables.options")
#: imports of the built-ins that are not public yet, each with its reason (drop an entry when it is)
PENDING: dict[tuple[str, str], str] = {}


def _public_names(module: str) -> set[str]:
    import importlib

    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    return set(names) if names is not None else {n for n in vars(mod) if not n.startswith("_")}


def test_builtins_import_only_the_public_extension_api():
    """Every built-in method, model family and dataset imports from kdstudy only what a plug-in may:
    names of the public modules (a sub-module's name counts when its package exports it), or a
    built-in method's own module (to extend a built-in, as TAKD extends KD)."""
    import ast
    import importlib.util
    import re

    from trainables.methods import available_methods, get_method

    files = [Path(sys.modules[get_method(m).__module__].__file__) for m in available_methods()]
    files += [f for pkg in ("models", "data") for f in (REPO / "trainables" / pkg).glob("*.py")
              if re.search(r"^@register_(family|dataset)\(", f.read_text(), re.M)]
    files = sorted({f for f in files if f.name not in ("registry.py", "base.py")})
    method_modules = {get_method(m).__module__ for m in available_methods()}
    assert len(files) >= 20, files
    bad = []
    for f in files:
        package = ".".join(f.relative_to(REPO).with_suffix("").parts[:-1])
        for node in ast.walk(ast.parse(f.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            if not module.startswith("trainables"):
                continue
            for alias in node.names:
                name = alias.name
                if f"{module}.{name}" in PUBLIC:  # a public module itself (`from trainables import models`)
                    ok = True
                elif module in PUBLIC or module in method_modules:
                    ok = name in _public_names(module)
                else:
                    owner = next((p for p in PUBLIC if module.startswith(p + ".")), None)
                    ok = owner is not None and name in _public_names(owner)
                if not ok and (module, name) not in PENDING:
                    bad.append(f"{f.relative_to(REPO)}: from {module} import {name}")
    assert not bad, "built-ins importing what a plug-in cannot:\n" + "\n".join(bad)
