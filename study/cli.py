"""The `kdstudy` command line.

  kdstudy run [SPEC] [--storage URI] [--address ADDR]   run a study (default: the quickstart)
  kdstudy validate SPEC...                              check specs, print every problem
  kdstudy schema [SPEC]                                 the spec's JSON Schema (with SPEC's plug-ins)
  kdstudy resume PATH [--address ADDR]                  continue an interrupted study
  kdstudy plan [SPEC] [--slots N] [--epoch-seconds S]   experiment graph and predicted makespan
  kdstudy report PATH [--out DIR] [--no-png] [--skip-bad]  write report.html, PNGs and students.parquet
  kdstudy status PATH [--skip-bad]                      table of stages, trial outcomes, results, errors
  kdstudy dashboard PATH [--port N] [--host H]          optuna-dashboard on all of a study's searches (read-only)
  kdstudy --version                                     the installed version
  kdstudy bench [...]                                   training speed on synthetic data (no Ray)
  kdstudy bench --first-run [--quick]                   on a GPU: PASS/FAIL of the GPU path, in a minute

Exit codes: 0 done; 1 the study could not finish (an experiment failed, another driver
holds the study, the spec differs from the study's, the disk is full); 2 bad input,
found before anything ran (the spec, a plug-in, dataset files, zoo entries, storage);
130 interrupted (Ctrl-C). `validate` exits 2 when any spec has a problem.

Plug-ins (the spec's `plugins` and installed `kdstudy.plugins` entry points) are imported
by validate, schema, plan, run and resume, before the spec is validated; never by status
or report, which read only Parquet and JSON.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUICKSTART = Path(__file__).resolve().parent.parent / "studies" / "quickstart.yaml"


def _quickstart_path() -> Path:
    if QUICKSTART.exists():
        return QUICKSTART
    from importlib.resources import files

    return Path(str(files("studies") / "quickstart.yaml"))


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("kdstudy")
    except (ImportError, PackageNotFoundError):  # run from a checkout without installing
        import re

        text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
        match = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        return match[1] if match else "unknown"


RESULTS_PATH_HELP = ("a study folder (<storage>/<name>), its results/ folder, a single results .parquet file, "
                     "or a URI (s3://, gs://, file://)")
SKIP_BAD_HELP = "skip results files that cannot be read (torn or of another schema version) and say how many"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kdstudy", description="Knowledge-distillation studies on Ray.")
    p.add_argument("--version", action="version", version=f"kdstudy {_version()}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    r = sub.add_parser("run", help="run a study spec (default: the quickstart on embedded data)")
    r.add_argument("spec", nargs="?", help="study spec YAML (default: studies/quickstart.yaml)")
    r.add_argument("--storage", help="override the spec's storage (local path or URI)")
    r.add_argument("--name", help="override the study name")
    r.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: a local Ray")
    r.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    r.add_argument("--extend", action="store_true",
                   help="accept a spec that adds confirm seeds or search trials to an existing study")
    v = sub.add_parser("validate", help="check specs and print every problem")
    v.add_argument("specs", nargs="+", metavar="SPEC", help="study spec YAML file(s) to check")
    sc = sub.add_parser("schema", help="print the spec's JSON Schema (for editors; studies/kdstudy.schema.json)")
    sc.add_argument("spec", nargs="?", help="a spec whose plug-ins to include (default: what is installed)")
    rs = sub.add_parser("resume", help="continue an interrupted study from its folder")
    rs.add_argument("path", help="the study folder (<storage>/<name>), wherever it was copied or moved")
    rs.add_argument("--address", help="Ray cluster address (auto, ray://host:10001); default: a local Ray")
    rs.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    rp = sub.add_parser("report", help="write report.html (a PNG per figure, students.parquet) for a study")
    rp.add_argument("path", help=RESULTS_PATH_HELP)
    rp.add_argument("--out", help="output folder (default: <study>/report)")
    rp.add_argument("--no-png", action="store_true",
                    help="write only the HTML (PNG export needs Chrome or Chromium for kaleido)")
    rp.add_argument("--skip-bad", action="store_true", help=SKIP_BAD_HELP)
    st = sub.add_parser("status", help="print per stage and method how trials ended, the results and the errors")
    st.add_argument("path", help=RESULTS_PATH_HELP)
    st.add_argument("--skip-bad", action="store_true", help=SKIP_BAD_HELP)
    db = sub.add_parser("dashboard", help="open optuna-dashboard on all of a study's searches at once (read-only)")
    db.add_argument("path", help="the study folder (<storage>/<name>), local or a URI")
    db.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080; 0: any free port)")
    db.add_argument("--host", default="127.0.0.1",
                    help="address to bind (default 127.0.0.1: this machine only; the dashboard has no login)")
    db.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS",
                    help="read the journals again at most this often while the page is open (0: never; default 5)")
    sub.add_parser("bench", help="training throughput on synthetic data, without Ray (kdstudy bench --help); "
                   "--first-run checks the GPU path on a GPU machine")
    pl = sub.add_parser("plan", help="print the experiment graph and the predicted makespan (no Ray)")
    pl.add_argument("spec", nargs="?", help="study spec YAML (default: studies/quickstart.yaml)")
    pl.add_argument("--slots", type=int, action="append",
                    help="concurrent trial slots to predict for (repeatable; default: this machine's cores)")
    pl.add_argument("--epoch-seconds", action="append", default=[], metavar="[ROLE=]SECONDS",
                    help="seconds per training epoch: a number for every model, or student=..., teacher=..., "
                         "<method>=... (default: a rough estimate from FLOPs)")
    pl.add_argument("--trial-overhead", type=float, default=None,
                    help="seconds a trial spends outside training epochs (start-up, evaluation)")
    pl.add_argument("--from-results", metavar="STUDY_DIR",
                    help="calibrate epoch seconds and overheads from a study's results (e.g. a short real run)")
    pl.add_argument("--node", metavar="CPUS[:GPUS]",
                    help="a cluster node's shape, e.g. 8:1: trials it packs, a warning when its CPUs leave GPUs "
                         "idle, and the default slots (default: this machine)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"] and "--first-run" in argv[1:]:  # the GPU path checked for real (Ray included)
        from .firstrun import main as first_run

        return first_run([a for a in argv[1:] if a != "--first-run"])
    if argv[:1] == ["bench"]:  # the bench has its own options (and runs without Ray)
        from trainables.bench import main as bench_main

        return bench_main(argv[1:])
    args = p.parse_args(argv)
    if args.cmd is None:  # bare `kdstudy`
        p.print_help()
        return 0
    try:
        return COMMANDS[args.cmd](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _load(path, overrides=None):
    from .spec import SpecError, load_spec

    try:
        return load_spec(path, overrides)
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return None


def cmd_validate(args) -> int:
    from .preflight import imported_problems

    bad = 0
    for path in args.specs:
        spec = _load(path)
        weights = imported_problems(spec, None) if spec is not None and spec.trains_teachers else []
        for line in weights:  # an imported teacher's file: read, unpacked and fitted to its architecture
            print(f"{path}: {line}", file=sys.stderr)
        if spec is None or weights:
            bad += 1
        else:
            print(f"{path}: ok ({', '.join(spec.methods) or 'no methods'}; storage {spec.storage})")
    return 2 if bad else 0


def cmd_schema(args) -> int:
    import contextlib

    from .spec import SpecError, load_spec_plugins, schema_text
    from .spec.loading import SpecYAMLError, load_yaml, read_spec_text

    out = sys.stdout
    try:
        # a plug-in that prints while it is imported must not end up in the schema
        with contextlib.redirect_stdout(sys.stderr):
            if args.spec:
                path = Path(args.spec)
                try:
                    raw = load_yaml(read_spec_text(path))
                except SpecYAMLError as exc:
                    raise SpecError([str(exc)], str(path)) from None
                except (OSError, UnicodeDecodeError) as exc:
                    raise SpecError([f"cannot read the spec file: {exc}"], str(path)) from None
                load_spec_plugins(raw, str(path.resolve().parent), str(path))
            else:
                load_spec_plugins({}, None)  # the installed entry points
    except SpecError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    out.write(schema_text())
    return 0


def cmd_run(args) -> int:
    spec = _load(args.spec or _quickstart_path(), {"storage": args.storage, "name": args.name})
    if spec is None:
        return 2
    return _run(spec, spec.study_uri, args.address, report=not args.no_report, extend=args.extend)


def cmd_resume(args) -> int:
    from .folder import SpecMismatch, StudyFolder
    from .spec import SpecError

    folder = StudyFolder(args.path)
    try:
        _resume_plugins(folder)
        spec = folder.saved_spec()
    except SpecError as exc:
        print(f"kdstudy: cannot resume: {exc}", file=sys.stderr)
        return 2
    except SpecMismatch as exc:  # an edited spec file: refused as an edited spec is (exit 1)
        print(f"kdstudy: {exc}", file=sys.stderr)
        return 1
    if spec is None:
        print(f"kdstudy: {args.path} is not a kdstudy study folder (no spec.json)", file=sys.stderr)
        return 2
    # the study folder is authoritative: the study continues where it was found
    return _run(spec, folder.root, args.address, report=not args.no_report)


def _resume_plugins(folder) -> None:
    """Import the plug-ins the study recorded (its spec's `plugins`, relative to where that spec was)."""
    import json

    from trainables import storage

    from .spec import SpecError, load_spec_plugins

    files = folder.spec_files()
    if not files:
        return
    try:
        raw = json.loads(storage.read_bytes(files[-1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError([f"cannot read {files[-1]}: {exc}"], files[-1]) from None
    meta = raw.get("kdstudy") if isinstance(raw, dict) else None
    spec_dir = meta.get("spec_dir") if isinstance(meta, dict) else None
    load_spec_plugins(raw, spec_dir if isinstance(spec_dir, str) else None, files[-1])


def _run(spec, root, address, report: bool, extend: bool = False) -> int:
    import signal

    from trainables.plugins import PluginError
    from trainables.storage import CorruptCheckpointError

    from .folder import SpecMismatch, StudyFolder
    from .lock import StudyLocked
    from .preflight import preflight, preflight_warnings

    root = StudyFolder(root).root
    problems = preflight(spec, root, local=address is None)
    if problems:
        for p in problems:
            print(f"kdstudy: {p}", file=sys.stderr)
        return 2
    for w in preflight_warnings(spec, local=address is None):
        print(f"kdstudy: warning: {w}", file=sys.stderr)
    from .runner import StudyLockLost, run_study

    try:
        root, outcome = run_study(spec, root=root, address=address, extend=extend)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while stopping changes nothing
        print(f"interrupted; continue with `kdstudy resume {root}`", file=sys.stderr)
        _shutdown_ray()
        return 130
    except (SpecMismatch, StudyLocked, StudyLockLost) as exc:
        print(f"kdstudy: {exc}", file=sys.stderr)
        return 1
    except PluginError as exc:  # a plug-in that changed while the study started (before Ray did)
        print(f"kdstudy: {exc}", file=sys.stderr)
        return 2
    except (CorruptCheckpointError, FileNotFoundError) as exc:  # a damaged or missing file, named
        print(f"kdstudy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"kdstudy: {_os_error(exc)}; rows already written are intact, and `kdstudy resume {root}` "
              f"continues once this is fixed", file=sys.stderr)
        return 1
    report_failed = False
    if report:
        try:
            _report(root, None, spec.report_png)
        except _results_errors() as exc:  # a results file that cannot be read: named in one line
            print(f"kdstudy: the report could not be written: {exc}; `kdstudy report {root} --skip-bad` "
                  f"reports on the other files", file=sys.stderr)
            report_failed = True
        except OSError as exc:
            print(f"kdstudy: the report could not be written: {_os_error(exc)}", file=sys.stderr)
            report_failed = True
    print(f"results: {root}/results (Parquet)")
    if outcome.failed or outcome.blocked:
        for name, reason in outcome.failed.items():
            print(f"kdstudy: experiment {name} failed: {reason}", file=sys.stderr)
        for name, dep in outcome.blocked.items():
            print(f"kdstudy: experiment {name} not run: it needs {dep}", file=sys.stderr)
        print(f"kdstudy: fix the cause and run `kdstudy resume {root}` to retry what failed", file=sys.stderr)
        return 1
    return 1 if report_failed else 0


def _os_error(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return f"the disk is full{where}"
    return str(exc)


def _shutdown_ray() -> None:
    try:
        from .localray import stop_local_ray

        stop_local_ray()
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:
        pass


def _report(path, out, png: bool, skip_bad: bool = False) -> None:
    from analysis import load, write_report
    from analysis.status import format_status

    df = load(path, skip_bad=skip_bad)
    html = write_report(path, out_dir=out, png=png, df=df)
    print(format_status(df))
    print(f"report: {html}")


def _results_errors():
    from analysis.load import MultipleStudiesError, ResultsFileError, SchemaVersionError

    return FileNotFoundError, MultipleStudiesError, ResultsFileError, SchemaVersionError


def _results_error(exc: Exception) -> int:
    """One line naming the problem (and the file); never a traceback."""
    from analysis.load import ResultsFileError, SchemaVersionError

    hint = "; pass --skip-bad to report on the other files" if isinstance(
        exc, (ResultsFileError, SchemaVersionError)) else ""
    print(f"kdstudy: {exc}{hint}", file=sys.stderr)
    return 2


def cmd_report(args) -> int:
    try:
        _report(args.path, args.out, not args.no_png, args.skip_bad)
    except _results_errors() as exc:
        return _results_error(exc)
    return 0


def cmd_status(args) -> int:
    from analysis import status_table

    try:
        print(status_table(args.path, skip_bad=args.skip_bad))
    except _results_errors() as exc:
        return _results_error(exc)
    return 0


def cmd_plan(args) -> int:
    from trainables.imported import WeightsError

    from .plan import main as plan_main

    spec = _load(args.spec or _quickstart_path())
    if spec is None:
        return 2
    try:
        return plan_main(spec, args.slots, args.epoch_seconds, args.trial_overhead, from_results=args.from_results,
                         node=args.node)
    except WeightsError as exc:  # an imported teacher's file, whose sha256 names its experiments
        print(f"kdstudy: teachers.weights: {exc}", file=sys.stderr)
        return 2


def cmd_dashboard(args) -> int:
    from .dashboard import main as dashboard_main

    return dashboard_main(args.path, host=args.host, port=args.port, refresh=args.refresh)


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "schema": cmd_schema, "resume": cmd_resume,
            "report": cmd_report, "status": cmd_status, "plan": cmd_plan, "dashboard": cmd_dashboard}

if __name__ == "__main__":
    sys.exit(main())
