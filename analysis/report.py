"""One self-contained HTML report (plotly.js inline, works offline), a PNG per figure, and students.parquet.

The page, top to bottom: a header (study, dataset, student, recipe,
budgets, code version, dates, wall time and compute), the verdicts (one per
method and comparison), the results tables (`analysis.results_table`), how every trial ended (with the
errors of failed trials), then the figures the data support: capacity gap
per distillation method, TriKD generations, multi-exit accuracy vs FLOPs,
the search landscape and parameter importance per method, and the learning
curves. PNGs use kaleido; when it cannot find a browser the report is still
written and one line says so.

``students.parquet`` beside the report holds one row per student trial (the
reported model: role student, last generation, final exit) at its best-val
epoch, so ``SELECT method, max(test_acc) FROM 'students.parquet' GROUP BY
method`` needs no knowledge of roles, generations or exits.
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
import pathlib
import posixpath
import tempfile
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import capacity_gap, curves, generations, landscape, multiexit, results_table
from .figstyle import HEIGHT, PNG_WIDTH
from .labels import method_label
from .load import final_models, load, locate, trial_outcomes, trial_summary
from .schema import SCHEMA, numeric_hparams
from .status import WALL_TIME_MEANS, duration_text, failures, status_frame, wall_time

log = logging.getLogger(__name__)


@dataclass
class Section:
    """One figure of the report with the text shown above it."""

    name: str  # file stem of its PNG
    title: str
    figure: go.Figure
    text: list[str]


@dataclass
class ResultTable:
    """A table of the report: any DataFrame with a title and a caption."""

    title: str
    frame: pd.DataFrame
    caption: str = ""
    name: str = ""
    header: str = ""  # shown above the table (what is the same in every row)


# ------------------------------------------------------------------ figures
def build_sections(df: pd.DataFrame, delta: float = 0.5, level: float = 0.95,
                   methods: dict | None = None) -> tuple[list[Section], list]:
    """Every figure the data support, in report order, and the capacity-gap verdicts (one Holm
    family of every method x teacher size against the no-KD student). `methods`: the facts the
    study recorded of its methods (`read_method_facts`), which name and group them."""
    summary = trial_summary(df)
    sections = []
    datas = [capacity_gap.capacity_data(summary, m) for m in capacity_gap.capacity_methods(summary)]
    datas = [d for d in datas if not d.students.empty]
    verdicts = capacity_gap.verdicts_of(datas, delta, level) if datas else []
    for data, result in zip(datas, verdicts):  # each verdict is printed once, at the top (`render_verdicts`)
        sections.append(Section(f"capacity_gap_{data.method}", f"Capacity gap: {method_label(methods, data.method)}",
                                capacity_gap.figure(data, result), []))
    fig = capacity_gap.comparison_figure(datas, methods)
    if fig is not None:  # KD and the remedies side by side
        sections.insert(0, Section("capacity_gap_methods", "Capacity gap: every method", fig, []))
    for method in generations.generation_methods(summary):  # TriKD's curriculum, or a plug-in's
        label = method_label(methods, method)
        fig = generations.figure(summary, method, label)
        if fig is not None:
            sections.append(Section(f"{method}_generations", f"Generations: {label}", fig, []))
    fig = multiexit.figure(summary, methods)
    if fig is not None:
        sections.append(Section("multiexit_flops", "Multi-exit: accuracy vs FLOPs", fig,
                                multiexit.section_text(summary, delta, level)))
    searched = sorted(landscape.search_trials(summary)["method"].dropna().unique()) if not summary.empty else []
    for method in searched:
        fig = landscape.scatter(summary, method)
        if fig is not None:
            sections.append(Section(f"landscape_{method}", f"Search landscape: {method}", fig,
                                    ["Each point is one search trial at its best validation epoch. Open circles "
                                     "were stopped early by the scheduler (their accuracy is of a shorter budget); "
                                     "grey crosses failed."]))
    for method in searched:
        fig, notes = landscape.importance_figure(summary, method)
        if fig is not None:
            sections.append(Section(f"param_importance_{method}", f"Hyperparameter importance: {method}", fig,
                                    notes))
        elif notes:
            log.info("parameter importance skipped: %s", "; ".join(notes))
    fig = curves.figure(df)
    if fig is not None:
        sections.append(Section("learning_curves", "Learning curves", fig, []))
    return sections, verdicts


# ------------------------------------------------------------------ header
def read_spec(loc) -> dict | None:
    """The study's raw spec (``<study>/spec.json``), or None when absent or unreadable."""
    path = posixpath.join(loc.study_dir, "spec.json")
    try:
        if loc.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with loc.fs.open_input_stream(path) as f:
            spec = json.loads(f.read().decode("utf-8"))
        return spec if isinstance(spec, dict) else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def read_dataset_facts(loc) -> dict | None:
    """The dataset facts the study recorded (``<study>/dataset.json``, written by the runner
    from the dataset's registry entry), or None for a study that predates them."""
    return _read_description(loc, "dataset.json")


def read_method_facts(loc) -> dict | None:
    """The facts the study recorded of its methods (``<study>/methods.json``, written by the
    runner from each method's registry entry: {method: {label, kind, ...}}), or None for a
    study that predates them (its methods are then named by their registered names)."""
    facts = _read_description(loc, "methods.json")
    return {k: v for k, v in facts.items() if isinstance(v, dict)} if facts is not None else None


def _read_description(loc, name: str) -> dict | None:
    """A JSON object the study recorded beside its spec (read as data, never executed)."""
    path = posixpath.join(loc.study_dir, name)
    try:
        if loc.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with loc.fs.open_input_stream(path) as f:
            facts = json.loads(f.read().decode("utf-8"))
        return facts if isinstance(facts, dict) else None
    except (OSError, ValueError, pa.ArrowException):
        return None


def _kv(d) -> str:
    if not isinstance(d, dict):
        return "" if d is None else str(d)
    return ", ".join(f"{k}={_kv(v) if isinstance(v, dict) else v}" for k, v in d.items())


_duration = duration_text


#: studies without dataset.json (written before the dataset registry): the train / test sizes of
#: the datasets they could use, before the validation carve (mnist1d: 80% / 20%)
def _mnist1d_splits(ds: dict) -> tuple[int, int]:
    n = int(ds.get("num_samples", 10_000))
    return int(0.8 * n), n - int(0.8 * n)


_BASE_SPLITS = {"cifar10": lambda ds: (50_000, 10_000), "cifar100": lambda ds: (50_000, 10_000),
                "mnist1d": _mnist1d_splits}


def recorded_split_sizes(facts: dict) -> str | None:
    """"train N / val N / test N (where validation and test come from)" from recorded dataset facts."""
    try:
        sp = facts["splits"]
        text = f"train {int(sp['train']):,} / val {int(sp['val']):,} / test {int(sp['test']):,}"
    except (KeyError, TypeError, ValueError):
        return None
    where = [f"validation: {facts['validation']}" if facts.get("validation") else "",
             f"test: {facts['test']}" if facts.get("test") else ""]
    where = "; ".join(w for w in where if w)
    return f"{text} ({where}; validation alone selects)" if where else text


def _input_fact(facts: dict) -> str | None:
    try:
        shape = "x".join(str(int(d)) for d in facts["input_shape"])
        text = f"{facts['kind']} {shape}, {int(facts['num_classes'])} classes"
    except (KeyError, TypeError, ValueError):
        return None
    norm = facts.get("normalization")
    if isinstance(norm, dict) and "mean" in norm:
        text += f"; normalised with fixed per-channel mean {norm['mean']} and std {norm.get('std')}"
    elif isinstance(norm, dict):
        text += "; normalised with the training split's per-channel mean and std"
    aug = facts.get("augmentation")
    if isinstance(aug, dict):
        parts = ([f"random crop (padding {aug.get('crop_padding')})"] if aug.get("crop_padding") else []) + (
            ["horizontal flip"] if aug.get("flip") else [])
        text += f"; training augmentation: {' + '.join(parts) or 'none'}"
    if facts.get("resident") is False:
        text += "; streamed from disk"
    return text


def split_sizes(ds: dict) -> str | None:
    """"train N / val N / test N" from the spec's dataset section (val carved from train), if known:
    the fallback for studies that did not record their dataset facts."""
    base = _BASE_SPLITS.get(str(ds.get("name")))
    if base is None:
        return None
    try:
        n_train, n_test = base(ds)
        n_val = int(round(n_train * float(ds.get("val_fraction", 0.1))))
        train = n_train - n_val
        if ds.get("train_subset") is not None:
            train = min(train, int(ds["train_subset"]))
    except (TypeError, ValueError):
        return None
    return f"train {train:,} / val {n_val:,} / test {n_test:,}"


def header_facts(df: pd.DataFrame, spec: dict | None, dataset: dict | None = None) -> list[tuple[str, str]]:
    """(label, value) pairs for the report's header, from spec.json, dataset.json and the rows."""
    spec = spec or {}
    facts = []
    studies = sorted(df["study"].dropna().unique())
    facts.append(("study", ", ".join(studies) or str(spec.get("name", "-"))))
    ds = spec.get("dataset") if isinstance(spec.get("dataset"), dict) else {}
    datasets = ", ".join(sorted(df["dataset"].dropna().unique()))
    facts.append(("dataset", f"{datasets or ds.get('name', '-')}" + (f" ({_kv(ds)})" if ds else "")))
    recorded = recorded_split_sizes(dataset) if dataset else None
    if recorded:
        inputs = _input_fact(dataset)
        if inputs:
            facts.append(("input", inputs))
        facts.append(("splits", recorded))
    else:
        splits = split_sizes(ds) if ds else None
        if splits:
            facts.append(("splits", f"{splits} (validation carved from the training split; it alone selects)"))
    students = df[df["role"] == "student"].dropna(subset=["student_arch"]).drop_duplicates("student_arch")
    student_txt = ", ".join(f"{r.student_arch} ({_params(r.student_params)} params)" for r in students.itertuples())
    if isinstance(spec.get("student"), dict):
        student_txt = f"{student_txt or '-'} — spec: {_kv(spec['student'])}"
    facts.append(("student", student_txt or "-"))
    teachers = df.dropna(subset=["teacher_size"]).drop_duplicates("teacher_size").sort_values("teacher_size")
    if not teachers.empty:
        facts.append(("teachers", ", ".join(
            f"{r.teacher_arch or ''} size {r.teacher_size:g} ({_params(r.teacher_params)})"
            + (", imported" if getattr(r, "teacher_origin", None) == "imported" else "")
            for r in teachers.itertuples())
            + (f" — spec: {_kv(spec['teachers'])}" if isinstance(spec.get("teachers"), dict) else "")))
    if isinstance(spec.get("train"), dict):
        facts.append(("recipe", _kv(spec["train"])))
    budget = []
    for key in ("search", "baseline", "confirm"):
        if isinstance(spec.get(key), dict):
            budget.append(f"{key}: {_kv(spec[key])}")
    if isinstance(spec.get("methods"), dict):
        budget.append("trials per method: " + ", ".join(
            f"{m} {v.get('trials', '-') if isinstance(v, dict) else '-'}" for m, v in spec["methods"].items()))
    if budget:
        facts.append(("budgets", "; ".join(budget)))
    versions = sorted(df["code_version"].dropna().unique())
    facts.append(("code version", ", ".join(versions) or "not recorded"))
    ts = df["timestamp"].dropna()
    if not ts.empty:
        first, last = ts.min(), ts.max()
        facts.append(("dates", f"{first:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC"))
        facts.append(("wall time", f"{_duration(wall_time(df))} {WALL_TIME_MEANS}"))
    epochs = df.drop_duplicates(["stage", "trial_id", "generation", "epoch"])
    compute = epochs["epoch_time_s"].sum(min_count=1)
    for extra in ("eval_time_s",):  # schema columns added later: counted when present
        if extra in epochs and epochs[extra].notna().any():
            compute = (0 if compute != compute else compute) + epochs[extra].sum()
    if "setup_time_s" in df and df["setup_time_s"].notna().any():
        compute = (0 if compute != compute else compute) + df.groupby(["stage", "trial_id"])["setup_time_s"].max().sum()
    devices = ", ".join(sorted(df["device"].dropna().unique())) or "-"
    nodes = df["node"].dropna().nunique()
    facts.append(("compute", f"{_duration(compute) if compute == compute else '-'} of trial time "
                             "(sum of the recorded epoch, evaluation and set-up times over "
                             f"{df.groupby(['stage', 'trial_id']).ngroups} trials) "
                             f"on {devices}, {nodes} node(s)"))
    facts.append(("report written", pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")))
    return facts


def _params(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "?"
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if p >= div:
            return f"{p / div:.3g}{unit}"
    return f"{p:.0f}"


# ------------------------------------------------------------------ results tables
def results_tables(df: pd.DataFrame, delta: float | None = None, level: float | None = None) -> list[ResultTable]:
    """The results tables of `analysis.results_table.tables` (its Holm families and paired verdicts)."""
    kw = {k: v for k, v in (("delta", delta), ("level", level)) if v is not None}
    return as_tables(results_table.tables(df, **kw))


def as_tables(made) -> list[ResultTable]:
    """Normalise what a table builder returns: a DataFrame (title/caption in ``.attrs``), a (title, frame[,
    caption[, name]]) tuple, a ResultTable, or a dict of title -> DataFrame, or a list of any of these."""
    if made is None:
        return []
    if isinstance(made, dict):
        made = [(k, v) for k, v in made.items()]
    if isinstance(made, (pd.DataFrame, ResultTable)) or (isinstance(made, tuple) and made
                                                         and isinstance(made[0], str)):
        made = [made]
    out = []
    for item in made:
        if isinstance(item, ResultTable):
            out.append(item)
        elif isinstance(item, pd.DataFrame):
            out.append(ResultTable(str(item.attrs.get("title", "Results")), item, str(item.attrs.get("caption", ""))))
        elif isinstance(item, tuple):
            out.append(ResultTable(str(item[0]), item[1], *(str(x) for x in item[2:5])))
    return out


# ------------------------------------------------------------------ HTML
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0 .3em;font-size:14px}
td,th{border:1px solid #d0d7de;padding:4px 9px;text-align:right;vertical-align:top}
th{background:#f3f5f7;font-weight:600}tr:nth-child(even) td{background:#fafbfc}
td.text,th.text{text-align:left}
table.facts td{text-align:left;border:none;padding:2px 10px 2px 0}
table.facts td:first-child{color:#555;white-space:nowrap}
table.facts tr:nth-child(even) td{background:none}
.caption{color:#555;font-size:13px;max-width:1100px;margin:.2em 0 1.2em}
.scroll{overflow-x:auto;max-width:100%}
.verdict{background:#f6f8fa;border-left:4px solid #4c78a8;padding:.5em 1em;margin:.5em 0}
.verdict b{color:#1f4e79}.verdict p{margin:.15em 0}.verdict .headline{font-size:17px}
.verdict .second{color:#333}.verdict details{color:#555;font-size:13px;margin-top:.3em}
.verdict summary{cursor:pointer;color:#4c78a8}.warn{background:#fff4e5;border-left:4px solid #e67e22;padding:.5em 1em}
.note{color:#555}.fixed{margin:.2em 0;font-size:14px}section{margin:2.5em 0}td.error{color:#b00020;text-align:left;font-family:monospace}
table.status td,table.status th{white-space:nowrap}
"""


def render_table(table: ResultTable, css_class: str = "results") -> str:
    """A DataFrame as a styled HTML table with its title and caption; numbers right-aligned, text left."""
    frame = table.frame.copy()
    col_class = {c: "num" if pd.api.types.is_numeric_dtype(frame[c]) else "text" for c in frame.columns}
    head = "".join(f"<th class='{col_class[c]}'>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = row[c]
            numeric = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            if v is None or (numeric and v != v):
                txt = "-"
            elif isinstance(v, (float, np.floating)):
                txt = f"{v:.2f}" if abs(v) < 1e5 else f"{v:.3g}"
            else:
                txt = str(v)
            missing = v is None or (numeric and v != v)
            cls = "error" if c in ("error", "last error") and not missing else (
                col_class[c] if missing else ("num" if numeric else "text"))
            cells.append(f"<td class='{cls}'>{html.escape(txt)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    ident = f" id='{html.escape(table.name)}'" if table.name else ""
    parts = [f"<h3>{html.escape(table.title)}</h3>" if table.title else "",
             f"<p class='fixed'>{html.escape(table.header)}</p>" if table.header else "",
             f"<div class='scroll'><table class='{css_class}'{ident}><thead><tr>{head}</tr></thead>"
             f"<tbody>{''.join(body)}</tbody></table></div>"]
    if table.caption:
        parts.append(f"<p class='caption'>{html.escape(table.caption)}</p>")
    return "\n".join(parts)


def render_verdicts(verdicts) -> list[str]:
    """One block per verdict: its headline (outcome, the number that matters, its interval, the
    paired seeds) and the method against the no-KD student, then, folded (`<details>`, still in
    the page's text), the full sentence with the budgets, the searches' resolution and the seeds
    that would resolve delta."""
    out, seen = [], set()
    for v in verdicts:
        method = str(getattr(v, "method", "") or "")
        if (method, v.text) in seen:
            continue
        seen.add((method, v.text))
        if isinstance(v, capacity_gap.Verdict):
            head, second = capacity_gap.headline(v)
        else:
            head, second = f"{method}: {v.text}", ""
        name, _, rest = head.partition(": ")
        parts = [f"<p class='headline'><b>{html.escape(name)}</b>: {html.escape(rest)}</p>"]
        if second:
            parts.append(f"<p class='second'>{html.escape(second)}</p>")
        if v.text and isinstance(v, capacity_gap.Verdict):
            parts.append("<details><summary>the full verdict: every comparison, the searches' resolution, "
                         f"budgets, seeds needed</summary><p>{html.escape(v.text)}</p></details>")
        ident = f" id='verdict-{html.escape(method)}'" if method else ""
        out.append(f"<div class='verdict'{ident}>" + "".join(parts) + "</div>")
    return out


def render_html(title: str, df: pd.DataFrame, sections: list[Section], verdicts,
                spec: dict | None = None, tables: list[ResultTable] | None = None,
                dataset: dict | None = None) -> str:
    """The whole page; plotly.js is embedded once, with the first figure."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    facts = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in header_facts(df, spec, dataset))
    parts.append(f"<table class='facts' id='header'>{facts}</table>")
    skipped = df.attrs.get("skipped_files") or []
    if skipped:
        parts.append(f"<p class='warn'>skipped {len(skipped)} unreadable results file(s); the report covers the "
                     "rest: " + "; ".join(html.escape(reason) for _, reason in skipped) + "</p>")
    if verdicts:
        parts.append("<h2 id='verdicts'>Verdicts</h2>")
        parts += render_verdicts(verdicts)
    tables = tables if tables is not None else results_tables(df)
    if tables:
        parts.append("<h2 id='results-tables'>Results</h2>")
        parts += [render_table(t) for t in tables]
    parts.append("<h2 id='trials'>Trials per stage and method</h2>")
    parts.append(render_table(ResultTable("", status_frame(df).dropna(axis=1, how="all"),
                                          "Outcomes: ok = trained every epoch; stopped early = cut by the search "
                                          "scheduler (ASHA); failed = raised an error; running = unfinished. "
                                          "Accuracies in %: the best search trial, or the configuration with the "
                                          "best mean validation accuracy averaged over its seeds; each trial at "
                                          "its epoch of best validation accuracy (test accuracy never selects)."),
                              "status"))
    failed = failures(df)
    if not failed.empty:
        parts.append(render_table(ResultTable(f"Failed trials ({len(failed)})", failed,
                                              "The last line of each failed trial's error."), "failures"))
    for i, sec in enumerate(sections):
        parts.append(f"<section id='{html.escape(sec.name)}'><h2>{html.escape(sec.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(t)}</p>" for t in sec.text]
        parts.append(pio.to_html(sec.figure, full_html=False, include_plotlyjs=(i == 0),
                                 div_id=f"fig-{sec.name}", config={"displaylogo": False, "responsive": True}))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------ files
def _browser_missing(exc: BaseException) -> bool:
    """Whether a kaleido error means it found no Chrome/Chromium to render with."""
    seen = exc
    while seen is not None:
        name, text = type(seen).__name__, str(seen)
        if ("NotFound" in name and ("Chrome" in name or "Browser" in name)) or "requires Google Chrome" in text \
                or "Could not find" in text and "hrom" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def write_pngs(sections: list[Section], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """A PNG per figure with kaleido; logs one line and returns [] if export fails."""
    paths = [out_dir / f"{sec.name}.png" for sec in sections]
    if not sections:
        return []
    widths = [PNG_WIDTH] * len(sections)
    heights = [int(sec.figure.layout.height or HEIGHT) for sec in sections]
    try:
        if hasattr(pio, "write_images"):  # plotly >= 6.1: one browser session for all figures
            pio.write_images([sec.figure for sec in sections], paths, width=widths, height=heights)
        else:
            for sec, path, w, h in zip(sections, paths, widths, heights):
                sec.figure.write_image(path, width=w, height=h)
    except Exception as exc:  # noqa: BLE001 - PNGs are optional, the report is not
        if _browser_missing(exc):
            log.warning("PNG export skipped (%d figures): kaleido found no Chrome/Chromium; install one "
                        "(e.g. `apt-get install chromium`, or `plotly_get_chrome`) or pass --no-png to silence "
                        "this; the HTML report is complete", len(sections))
        else:
            first = (str(exc).strip().splitlines() or [""])[0]
            log.warning("PNG export failed, writing the report without PNGs: %s: %s", type(exc).__name__, first)
        return []
    return paths


STUDENT_EXTRA = ["best_epoch", "n_epochs", "outcome"]


def students_frame(df: pd.DataFrame) -> pd.DataFrame:
    """One row per student trial (role student, last generation, final exit) at its best-val epoch.

    Columns: those of the results SCHEMA plus ``best_epoch``, ``n_epochs`` and
    ``outcome`` (the trial's status, see `analysis.load.trial_outcomes`).
    Stage ``teachers`` is left out (its models are teachers).
    """
    models = final_models(trial_summary(df))
    models = models[models["stage"] != "teachers"]
    outcomes = trial_outcomes(df)[["stage", "trial_id", "outcome"]]
    models = models.merge(outcomes, on=["stage", "trial_id"], how="left")
    models = models.assign(hparams=models["hparams_json"].map(_hparams_map))  # `load` expanded the map
    return models[list(SCHEMA.names) + STUDENT_EXTRA].reset_index(drop=True)


def _hparams_map(text) -> dict | None:
    """The schema's `hparams` map of a row, from its hparams_json."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return numeric_hparams(value) if isinstance(value, dict) else None


def write_students(df: pd.DataFrame, path) -> None:
    frame = students_frame(df)
    fields = list(SCHEMA) + [pa.field("best_epoch", pa.int32()), pa.field("n_epochs", pa.int32()),
                             pa.field("outcome", pa.string())]
    # not a results file: no kdstudy_schema_version, so `load` refuses it loudly if it is ever given one
    meta = {b"kdstudy_students_of_schema_version": SCHEMA.metadata[b"kdstudy_schema_version"]}
    table = pa.Table.from_pandas(frame, schema=pa.schema(fields, metadata=meta), preserve_index=False)
    pq.write_table(table, path)


def _atomic(target: pathlib.Path, write) -> None:
    """Write through a temporary name, then move; a failed write (a full disk) leaves no temporary
    file and the previous file intact."""
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_report(path, out_dir=None, png: bool = True, df: pd.DataFrame | None = None,
                 skip_bad: bool = False) -> pathlib.Path:
    """Write ``report.html`` (PNGs, ``students.parquet``) for the study at `path`; return the HTML's path.

    `out_dir` defaults to ``<study>/report`` (``<study>/report/<file stem>``
    when `path` is a single Parquet file). For a remote study URI the files
    are built locally and copied to ``<study>/report`` on that filesystem; the
    returned path is then the path within that filesystem. `df` reuses rows
    already loaded from `path`.
    """
    loc = locate(path)
    df = load(path, skip_bad=skip_bad) if df is None else df
    if out_dir is None and loc.file is not None:  # one file's report never replaces the study's own
        out_dir = posixpath.join(loc.study_dir, "report", posixpath.basename(loc.file).rsplit(".", 1)[0])
        if not loc.is_local:
            raise ValueError(f"give --out for the report of the single remote file {loc.file}")
    delta, level = results_table.verdict_settings(path)
    sections, verdicts = build_sections(df, delta, level, methods=read_method_facts(loc))
    studies = sorted(df["study"].dropna().unique())
    title = f"kdstudy report: {', '.join(studies) or posixpath.basename(loc.study_dir)}"
    page = render_html(title, df, sections, verdicts, spec=read_spec(loc),
                       tables=results_tables(df, delta, level), dataset=read_dataset_facts(loc))
    if out_dir is None and not loc.is_local:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = pathlib.Path(tmp)
            (tmp_path / "report.html").write_text(page, encoding="utf-8")
            write_students(df, tmp_path / "students.parquet")
            if png:
                write_pngs(sections, tmp_path)
            dest = posixpath.join(loc.study_dir, "report")
            loc.fs.create_dir(dest, recursive=True)
            pafs.copy_files(tmp, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=loc.fs)
        return pathlib.Path(posixpath.join(dest, "report.html"))
    out = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path(loc.study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "report.html"
    _atomic(target, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    _atomic(out / "students.parquet", lambda tmp: write_students(df, tmp))
    if png:
        write_pngs(sections, out)
    return target
