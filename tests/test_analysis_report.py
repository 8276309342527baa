"""analysis.report: the HTML report holds exactly the figures the data support, and renders in a browser."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import capacity_gap, curves, landscape, write_report
from analysis import report as report_mod
from analysis.load import load, trial_summary
from analysis.schema import SCHEMA
from analysis.status import format_status, status_frame
from .synthetic import write_study

GAP = {4: 0.70, 16: 0.78, 64: 0.75, 256: 0.71}
FULL = {"capacity_gap_methods", "capacity_gap_kd", "capacity_gap_trikd", "trikd_generations", "multiexit_flops", "landscape_kd", "param_importance_kd",
        "learning_curves"}


def _figure_ids(html: str) -> set[str]:
    return set(re.findall(r"<section id='([^']+)'>", html))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    study = write_study(tmp_path_factory.mktemp("full"), student_means=GAP, seeds=3, trikd=True, multiexit=True)
    (study / "spec.json").write_text(json.dumps({
        "name": "synthetic", "dataset": {"name": "mnist1d", "num_samples": 4000},
        "student": {"family": "mlp", "size": 16},
        "train": {"epochs": 6, "lr": 0.001}, "search": {"budget": "stratified"}, "confirm": {"seeds": 3},
        "methods": {"kd": {"trials": 4}}}))
    _mark_outcomes(study)
    return study, write_report(study, png=False)


def _rewrite(path, change):
    """Rewrite one results file after `change(frame)` (a test's way to plant outcomes)."""
    frame = pq.read_table(path).to_pandas()
    frame = change(frame)
    pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False), path)


def _mark_outcomes(study):
    """Search trials cut short become `stopped`; kd_16_3 fails with an error, kd_4_3 is still running."""
    def change(frame):
        short = frame.groupby("trial_id")["epoch"].transform("max") < frame["epochs"]
        frame.loc[short, "status"] = "stopped"
        failed = frame["trial_id"] == "kd_16_3"
        frame.loc[failed, "status"] = "failed"
        frame.loc[failed, "error"] = "RuntimeError: CUDA out of memory"
        frame.loc[frame["trial_id"] == "kd_4_3", "status"] = "running"
        return frame

    for name in ("a.parquet", "b.parquet"):
        _rewrite(study / "results" / "search" / name, change)


def test_report_has_every_figure_the_data_support(full_report):
    study, path = full_report
    assert path == study / "report" / "report.html"
    html = path.read_text()
    assert _figure_ids(html) == FULL
    assert html.count("plotly.js v") <= 2 and len(re.findall(r"Plotly\.newPlot", html)) == len(FULL)
    assert "<script src=" not in html  # self-contained: plotly.js inline, nothing fetched
    assert "CAPACITY GAP: the student peaks (on validation) at teacher size 16" in html
    assert "kd at teacher size 16 (256k params) vs no-KD student: SHOWN" in html
    assert "teachers" in html and "confirm" in html
    # one verdict per method, each naming its method
    assert html.count("class='verdict'") == 2 and "<b>kd</b>" in html and "<b>trikd</b>" in html


def test_report_header_names_the_study_and_its_budgets(full_report):
    _, path = full_report
    header = path.read_text().split("id='header'>", 1)[1].split("</table>", 1)[0]
    for fact in ("study", "synthetic", "dataset", "num_samples=4000", "student", "mlp-16", "recipe", "epochs=6",
                 "budgets", "stratified", "code version", "wall time", "compute", "dates",
                 "train 2,880 / val 320 / test 800"):
        assert fact in header, fact


def test_report_results_table_is_per_teacher_size_with_paired_difference(full_report):
    _, path = full_report
    html = path.read_text()
    table = html.split("id='results'>", 1)[1].split("</table>", 1)[0]
    for col in ("chosen hyperparameters", "test % (mean ± 95% CI)", "vs no-KD, paired by seed",
                "teacher&#x27;s own test %", "seeds", "search trials"):
        assert col in table, col
    kd_rows = re.findall(r"<tr><td class='text'>kd</td><td class='text'>(\d+)</td>", table)
    assert kd_rows == ["4", "16", "64", "256"]  # the four teacher sizes are never merged into one row
    assert "temperature=4" in table and "(n=3)" in table
    assert "id='results_trikd'" in html and "id='results_multiexit'" in html


def test_report_and_status_count_failed_stopped_and_running_trials(full_report):
    study, path = full_report
    html = path.read_text()
    assert "RuntimeError: CUDA out of memory" in html and "Failed trials (1)" in html
    frame = status_frame(load(study))
    row = frame[(frame["stage"] == "search") & (frame["teacher size"] == "16")].iloc[0]
    assert (row["failed"], row["last error"]) == (1, "RuntimeError: CUDA out of memory")
    assert row["stopped early"] == 1 and row["running"] == 0 and row["ok"] == 2
    row4 = frame[(frame["stage"] == "search") & (frame["teacher size"] == "4")].iloc[0]
    assert row4["running"] == 1 and row4["stopped early"] == 1
    text = format_status(load(study))
    assert "1 failed trial(s):" in text and "kd_16_3: RuntimeError: CUDA out of memory" in text


def test_status_reports_the_trikd_student_not_its_online_teacher(full_report):
    study, _ = full_report
    df = load(study)
    frame = status_frame(df)
    trikd = frame[frame["method"] == "trikd"].iloc[0]
    summary = trial_summary(df)
    rows = summary[(summary["method"] == "trikd") & (summary["generation"] == 2)]
    students = rows[rows["role"] == "student"].groupby("anchor_weight")["val_acc"].mean()
    teachers = rows[rows["role"] == "teacher"]["val_acc"]
    assert trikd["val %"] == pytest.approx(100 * students.max(), abs=0.01)
    assert trikd["val %"] < 100 * teachers.min()  # the online teacher is better; it must not be shown


def test_students_parquet_is_one_row_per_student_trial(full_report):
    study, path = full_report
    students = pd.read_parquet(path.parent / "students.parquet")
    assert (students["role"] == "student").all() and "teachers" not in set(students["stage"])
    assert not students.duplicated(["stage", "trial_id"]).any()
    trikd = students[students["method"] == "trikd"]
    assert (trikd["generation"] == 2).all()
    me = students[students["method"].str.startswith("multiexit")]
    assert (me["exit"] == 2).all()
    assert {"best_epoch", "outcome"} <= set(students.columns)
    assert set(students[students["trial_id"] == "kd_16_3"]["outcome"]) == {"failed"}
    # the naive "best per method" query is right on this table
    best = students.groupby("method")["test_acc"].max()
    assert best["trikd"] < 0.76  # students only: the online teacher reaches ~0.79


def test_capacity_gap_ticks_name_sizes_and_keep_error_bars_whole(tmp_path):
    study = write_study(tmp_path, student_means={4: 0.70, 16: 0.78}, seeds=2, noise=0.08)
    summary = trial_summary(load(study))
    data = capacity_gap.capacity_data(summary, "kd")
    fig = capacity_gap.figure(data, capacity_gap.verdict(data))
    assert list(fig.layout.xaxis.ticktext) == ["size 4<br>16k params", "size 16<br>256k params"]
    lo, hi = fig.layout.yaxis.range
    for tr in fig.data:
        if tr.error_y is None or tr.error_y.array is None:
            continue
        for y, p, m in zip(tr.y, tr.error_y.array, tr.error_y.arrayminus):
            assert lo <= y - m and y + p <= hi  # two noisy seeds: wide intervals, still drawn whole
    student = next(tr for tr in fig.data if tr.name.startswith("kd student"))
    assert list(student.text) == ["size 4, 16k params", "size 16, 256k params"]


def test_landscape_marks_stopped_and_failed_trials(full_report):
    study, _ = full_report
    fig = landscape.scatter(trial_summary(load(study)), "kd")
    names = {tr.name for tr in fig.data}
    assert {"trained fully", "stopped early by the scheduler (open)", "failed (no accuracy)", "unfinished"} <= names
    assert "failed" in fig.layout.title.subtitle.text and "stopped early" in fig.layout.title.subtitle.text
    assert all(tr.type == "scatter" for tr in fig.data)  # points, not binned heatmap cells


def test_importance_names_the_method_and_leaves_out_stopped_trials(full_report):
    study, _ = full_report
    summary = trial_summary(load(study))
    fig, notes = landscape.importance_figure(summary, "kd")
    assert fig is not None and "kd" in fig.layout.title.text
    assert all("teacher_size" not in tr.y for tr in fig.data)  # stratified: not a hyperparameter
    assert any("left out" in n for n in notes)


def test_importance_treats_teacher_size_as_a_parameter_only_in_a_joint_search(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=2, search_trials=6, budget_mode="joint")
    imp, note = landscape.importances(trial_summary(load(study)), "kd")
    assert note is None and "teacher_size" in imp


def test_learning_curves_are_small_multiples_with_generation_segments(full_report):
    study, _ = full_report
    df = load(study)
    fig = curves.figure(df)
    titles = {a.text for a in fig.layout.annotations}
    assert {"kd", "trikd", "teachers (scratch)", "scratch (no-KD student)"} <= titles
    colours = {}
    for tr in fig.data:
        colours.setdefault(tr.line.color, set()).add(tr.legendgroup)
    assert all(len(groups) == 1 for groups in colours.values())  # no colour means two things
    trikd = [tr for tr in fig.data if "trikd_" in (tr.hovertemplate or "") and "val_acc" in tr.hovertemplate]
    assert trikd and all(list(tr.y).count(None) == 2 for tr in trikd)  # 3 generations: 2 breaks


def test_png_without_a_browser_is_one_line(tmp_path, monkeypatch, caplog):
    study = write_study(tmp_path, student_means=GAP, seeds=2)

    def no_chrome(*args, **kwargs):
        raise RuntimeError("\n\nKaleido requires Google Chrome to be installed.\n\nEither download and install "
                           "Chrome yourself ...\n\n    $ plotly_get_chrome\n\n")

    monkeypatch.setattr(report_mod.pio, "write_images", no_chrome, raising=False)
    monkeypatch.setattr(report_mod.go.Figure, "write_image", no_chrome)
    with caplog.at_level(logging.WARNING, logger="analysis.report"):
        write_report(study, png=True)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "PNG export skipped" in messages[0] and "chromium" in messages[0] and "--no-png" in messages[0]


def test_results_tables_render_any_dataframe_with_title_and_caption():
    frame = pd.DataFrame({"method": ["kd"], "mean": [71.234], "n": [3]})
    frame.attrs.update(title="Custom", caption="A caption")
    tables = report_mod.as_tables([frame, ("Second", frame, "its caption")]) + report_mod.as_tables({"Third": frame})
    assert [t.title for t in tables] == ["Custom", "Second", "Third"]
    assert tables[1].caption == "its caption"
    html = report_mod.render_table(tables[0])
    assert "<h3>Custom</h3>" in html and "A caption" in html and "71.23" in html


def test_report_omits_figures_without_data(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=3)
    out = tmp_path / "elsewhere"
    html = write_report(study, out_dir=out, png=False).read_text()
    assert _figure_ids(html) == FULL - {"trikd_generations", "multiexit_flops", "capacity_gap_trikd", "capacity_gap_methods"}
    assert not (study / "report").exists()


def test_report_skips_importance_with_too_few_trials(tmp_path):
    study = write_study(tmp_path, student_means={4: 0.7, 16: 0.75}, seeds=2, search_trials=1)
    sections, _ = report_mod.build_sections(load(study))
    names = {s.name for s in sections}
    assert "param_importance" not in names and "capacity_gap_kd" in names


def test_png_failure_is_one_warning_not_an_error(tmp_path, monkeypatch, caplog):
    study = write_study(tmp_path, student_means=GAP, seeds=2)

    def broken(*args, **kwargs):
        raise RuntimeError("no browser here")

    monkeypatch.setattr(report_mod.pio, "write_images", broken, raising=False)
    monkeypatch.setattr(report_mod.go.Figure, "write_image", broken)
    with caplog.at_level(logging.WARNING, logger="analysis.report"):
        path = write_report(study, png=True)
    assert path.exists() and not list(path.parent.glob("*.png"))
    assert len([r for r in caplog.records if "PNG export failed" in r.getMessage()]) == 1


CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"),
                              shutil.which("google-chrome")) if p), None)

_PROBE = """<script>
window.__kdErrors = [];
window.addEventListener('error', function (e) { window.__kdErrors.push(String(e.message)); });
function kdClipped(div, tag) {
  // every title, legend, axis title and subplot title must lie inside the figure's svg
  var svg = div.querySelector('svg.main-svg').getBoundingClientRect();
  var bad = [];
  var sel = '.gtitle, .legend, .g-xtitle, .g-ytitle, .annotation, .xtick text, .ytick text';
  div.querySelectorAll(sel).forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width === 0 && r.height === 0) { return; }
    if (r.left < svg.left - 1 || r.right > svg.right + 1 || r.top < svg.top - 1 || r.bottom > svg.bottom + 1) {
      bad.push(tag + ':' + div.id + ':' + (el.getAttribute('class') || el.tagName));
    }
  });
  return bad;
}
window.addEventListener('load', function () {
  setTimeout(function () {
    var divs = document.querySelectorAll('.plotly-graph-div');
    var ok = 0, clipped = [], pending = [];
    divs.forEach(function (d) {
      if (d.querySelector('svg.main-svg')) { ok += 1; clipped = clipped.concat(kdClipped(d, 'html')); }
      // the PNG is rendered at PNG_WIDTH x the figure's height: check that size too
      pending.push(Plotly.relayout(d, {width: PNG_WIDTH, height: d.layout.height || 560}).then(function () {
        clipped = clipped.concat(kdClipped(d, 'png'));
      }));
    });
    Promise.all(pending).then(function () {
      var marker = document.createElement('div');
      marker.id = 'kd-probe';
      marker.textContent = 'KDPROBE rendered=' + ok + ' total=' + divs.length +
                           ' results=' + document.querySelectorAll('table.results#results tbody tr').length +
                           ' clipped=' + JSON.stringify(clipped) +
                           ' errors=' + JSON.stringify(window.__kdErrors) + ' END';
      document.body.appendChild(marker);
      document.title = 'KDPROBE-DONE';
    });
  }, 500);
});
</script>""".replace("PNG_WIDTH", str(report_mod.PNG_WIDTH))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    _, path = full_report
    html = path.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + _PROBE, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000", "--dump-dom",
           probe.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    match = re.search(r"KDPROBE rendered=(\d+) total=(\d+) results=(\d+) clipped=(.*?) errors=(.*?) END",
                      done.stdout)
    assert match, f"probe did not run; chromium stderr:\n{done.stderr[-2000:]}"
    rendered, total, results, clipped, errors = int(match[1]), int(match[2]), int(match[3]), match[4], match[5]
    assert total == len(FULL)
    assert rendered == total, f"only {rendered} of {total} figures rendered"
    assert results >= 5, "the results table is missing"  # baseline + 4 teacher sizes
    assert clipped == "[]", f"cut off (outside the figure): {clipped}"
    assert errors == "[]", f"JavaScript errors: {errors}"


def test_report_reads_at_a_glance(full_report):
    """Each verdict is a headline (outcome, the number, its interval and level, the paired seeds), the
    method against the no-KD student under it, the full sentence folded below; every verdict is in
    the page once; the results table shows what varies and says what is fixed once."""
    from html import escape

    study, path = full_report
    html = path.read_text()
    top = html.split("<h2 id='verdicts'>Verdicts</h2>", 1)[1].split("<h2", 1)[0]
    first = re.search(r"<p class='headline'>(.*?)</p>", top)[1]
    assert re.fullmatch(r"<b>kd</b>: CAPACITY GAP, largest teacher \(size 256\) minus size 16: -\d+\.\d\d points "
                        r"\[-\d+\.\d\d, -\d+\.\d\d\] \(\d+\.\d% CI, Holm\), 3 paired seeds", first), first
    assert re.search(r"<p class='second'>vs the no-KD student at size 16: SHOWN better, \+\d+\.\d\d points", top)
    assert top.count("<details>") == 2 and top.index("class='headline'") < top.index("<details>")
    _, verdicts = report_mod.build_sections(load(study))
    for v in verdicts:  # the full sentence (budgets, resolution, seeds needed) is in the page, once
        assert html.count(escape(v.text)) == 1 and "Budgets:" in v.text
    table = html.split("id='results'>", 1)[1].split("</table>", 1)[0]
    assert "lr=0.001" not in table and "Same in every row: lr=0.001, weight_decay=0.0005" in html
    cells = re.findall(r"<td class='text'>([+-]\d+\.\d\d \[[^<]*)</td>", table)
    assert cells and all(re.search(r"\] \d+(\.\d+)?% \(n=", c) for c in cells)  # each interval's Holm level


def test_comparison_chart_ticks_are_the_teacher_sizes(full_report):
    study, _ = full_report
    sections, _ = report_mod.build_sections(load(study))
    fig = next(s.figure for s in sections if s.name == "capacity_gap_methods")
    assert list(fig.layout.xaxis.ticktext) == ["size 4<br>16k params", "size 16<br>256k params",
                                               "size 64<br>4.1M params", "size 256<br>65.5M params"]
