"""One self-contained HTML report (plotly.js inline, works offline) plus a PNG per figure.

Only figures with data are built: the capacity-gap chart per distillation
method (with its verdict), TriKD generations, multi-exit accuracy vs FLOPs,
the temperature x alpha landscape per method, parameter importances and the
learning curves. PNGs use kaleido; if exporting fails the report is still
written and one warning is logged.
"""

from __future__ import annotations

import html
import logging
import os
import pathlib
import posixpath
import tempfile
from dataclasses import dataclass

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pyarrow.fs as pafs

from . import capacity_gap, curves, generations, landscape, multiexit
from .load import load, locate, trial_summary
from .status import status_frame

log = logging.getLogger(__name__)


@dataclass
class Section:
    """One figure of the report with the text shown above it."""

    name: str  # file stem of its PNG
    title: str
    figure: go.Figure
    text: list[str]


def build_sections(df: pd.DataFrame) -> tuple[list[Section], list[capacity_gap.Verdict]]:
    """Every figure the data support, in report order, and the capacity-gap verdicts."""
    summary = trial_summary(df)
    sections, verdicts, gathered = [], [], []
    for method in capacity_gap.capacity_methods(summary):
        data = capacity_gap.capacity_data(summary, method)
        if data.students.empty:
            continue
        gathered.append(data)
        result = capacity_gap.verdict(data)
        verdicts.append(result)
        sections.append(Section(f"capacity_gap_{method}", f"Capacity gap: {method}",
                                capacity_gap.figure(data, result), [result.text]))
    fig = capacity_gap.comparison_figure(gathered)
    if fig is not None:  # KD and the remedies side by side
        sections.insert(0, Section("capacity_gap_methods", "Capacity gap: every method", fig,
                                   [v.text for v in verdicts]))
    fig = generations.figure(summary)
    if fig is not None:
        sections.append(Section("trikd_generations", "TriKD generations", fig, []))
    fig = multiexit.figure(summary)
    if fig is not None:
        sections.append(Section("multiexit_flops", "Multi-exit: accuracy vs FLOPs", fig, []))
    searched = sorted(landscape.search_trials(summary)["method"].dropna().unique()) if not summary.empty else []
    for method in searched:
        fig = landscape.heatmap(summary, method)
        if fig is not None:
            sections.append(Section(f"landscape_{method}", f"Temperature × alpha: {method}", fig, []))
    fig, notes = landscape.importance_figure(summary, searched)
    if fig is not None:
        sections.append(Section("param_importance", "Hyperparameter importance", fig, notes))
    elif notes:
        log.info("parameter importance skipped: %s", "; ".join(notes))
    fig = curves.figure(df)
    if fig is not None:
        sections.append(Section("learning_curves", "Learning curves", fig, []))
    return sections, verdicts


def stage_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per stage: methods, trials, rows and the longest run in epochs."""
    grouped = df.groupby("stage", sort=True)
    return pd.DataFrame({
        "methods": grouped["method"].agg(lambda s: ", ".join(sorted(s.dropna().unique()))),
        "trials": grouped["trial_id"].nunique(),
        "rows": grouped.size(),
        "max epoch": grouped["epoch"].max(),
    }).reset_index()


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}.verdict{background:#f6f8fa;border-left:4px solid #4c78a8;padding:.6em 1em}
.note{color:#555}section{margin:2.5em 0}
"""


def render_html(title: str, df: pd.DataFrame, sections: list[Section], verdicts) -> str:
    """The whole page; plotly.js is embedded once, with the first figure."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if verdicts:
        parts.append("<h2>Verdicts</h2>")
        parts += [f"<p class='verdict'>{html.escape(v.text)}</p>" for v in verdicts]
    parts.append("<h2>Stages</h2>" + stage_table(df).to_html(index=False, border=0))
    parts.append("<h2>Trials per method</h2>" + status_frame(df).to_html(index=False, border=0, na_rep="-"))
    parts.append("<p class='note'>Each trial is reported at its epoch of best validation accuracy; "
                 "test accuracy is never used to select. Accuracies in %.</p>")
    for i, sec in enumerate(sections):
        parts.append(f"<section id='{html.escape(sec.name)}'><h2>{html.escape(sec.title)}</h2>")
        parts += [f"<p class='note'>{html.escape(t)}</p>" for t in sec.text]
        parts.append(pio.to_html(sec.figure, full_html=False, include_plotlyjs=(i == 0),
                                 div_id=f"fig-{sec.name}", config={"displaylogo": False}))
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_pngs(sections: list[Section], out_dir: pathlib.Path) -> list[pathlib.Path]:
    """A PNG per figure with kaleido; logs one warning and returns [] if export fails."""
    paths = [out_dir / f"{sec.name}.png" for sec in sections]
    if not sections:
        return []
    try:
        if hasattr(pio, "write_images"):  # plotly >= 6.1: one browser session for all figures
            pio.write_images([sec.figure for sec in sections], paths)
        else:
            for sec, path in zip(sections, paths):
                sec.figure.write_image(path)
    except Exception as exc:  # noqa: BLE001 - PNGs are optional, the report is not
        log.warning("PNG export failed, writing the report without PNGs: %s: %s", type(exc).__name__, exc)
        return []
    return paths


def write_report(path, out_dir=None, png: bool = True) -> pathlib.Path:
    """Write ``report.html`` (and PNGs) for the study at `path`; return the HTML's path.

    `out_dir` defaults to ``<study>/report``. For a remote study URI the files
    are built locally and copied to ``<study>/report`` on that filesystem; the
    returned path is then the path within that filesystem.
    """
    loc = locate(path)
    df = load(path)
    sections, verdicts = build_sections(df)
    studies = sorted(df["study"].dropna().unique())
    title = f"kdstudy report: {', '.join(studies) or posixpath.basename(loc.study_dir)}"
    page = render_html(title, df, sections, verdicts)
    if out_dir is None and not loc.is_local:
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = pathlib.Path(tmp)
            (tmp_path / "report.html").write_text(page, encoding="utf-8")
            if png:
                write_pngs(sections, tmp_path)
            dest = posixpath.join(loc.study_dir, "report")
            loc.fs.create_dir(dest, recursive=True)
            pafs.copy_files(tmp, dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=loc.fs)
        return pathlib.Path(posixpath.join(dest, "report.html"))
    out = pathlib.Path(out_dir) if out_dir is not None else pathlib.Path(loc.study_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    target = out / "report.html"
    tmp_target = out / f".report.html.{os.getpid()}.tmp"
    tmp_target.write_text(page, encoding="utf-8")
    os.replace(tmp_target, target)
    if png:
        write_pngs(sections, out)
    return target
