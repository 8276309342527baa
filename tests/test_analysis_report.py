"""analysis.report: the HTML report holds exactly the figures the data support, and renders in a browser."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess

import pytest

from analysis import write_report
from analysis import report as report_mod
from analysis.load import load
from analysis.synthetic import write_study

GAP = {4: 0.70, 16: 0.78, 64: 0.75, 256: 0.71}
FULL = {"capacity_gap_kd", "capacity_gap_trikd", "trikd_generations", "multiexit_flops", "landscape_kd", "param_importance",
        "learning_curves"}


def _figure_ids(html: str) -> set[str]:
    return set(re.findall(r"<section id='([^']+)'>", html))


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    study = write_study(tmp_path_factory.mktemp("full"), student_means=GAP, seeds=3, trikd=True, multiexit=True)
    return study, write_report(study, png=False)


def test_report_has_every_figure_the_data_support(full_report):
    study, path = full_report
    assert path == study / "report" / "report.html"
    html = path.read_text()
    assert _figure_ids(html) == FULL
    assert html.count("plotly.js v") <= 2 and len(re.findall(r"Plotly\.newPlot", html)) == len(FULL)
    assert "<script src=" not in html  # self-contained: plotly.js inline, nothing fetched
    assert "CAPACITY GAP: the student peaks (on validation) at teacher size 16" in html
    assert "kd at teacher size 16 (256k params) vs no-KD student: SHOWN" in html and "teachers" in html and "confirm" in html


def test_report_omits_figures_without_data(tmp_path):
    study = write_study(tmp_path, student_means=GAP, seeds=3)
    out = tmp_path / "elsewhere"
    html = write_report(study, out_dir=out, png=False).read_text()
    assert _figure_ids(html) == FULL - {"trikd_generations", "multiexit_flops", "capacity_gap_trikd"}
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
window.addEventListener('load', function () {
  setTimeout(function () {
    var divs = document.querySelectorAll('.plotly-graph-div');
    var ok = 0;
    divs.forEach(function (d) { if (d.querySelector('svg.main-svg')) { ok += 1; } });
    var marker = document.createElement('div');
    marker.id = 'kd-probe';
    marker.textContent = 'KDPROBE rendered=' + ok + ' total=' + divs.length +
                         ' errors=' + JSON.stringify(window.__kdErrors) + ' END';
    document.body.appendChild(marker);
    document.title = 'KDPROBE-DONE';
  }, 500);
});
</script>"""


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
    match = re.search(r"KDPROBE rendered=(\d+) total=(\d+) errors=(.*?) END", done.stdout)
    assert match, f"probe did not run; chromium stderr:\n{done.stderr[-2000:]}"
    rendered, total, errors = int(match[1]), int(match[2]), match[3]
    assert total == len(FULL)
    assert rendered == total, f"only {rendered} of {total} figures rendered"
    assert errors == "[]", f"JavaScript errors: {errors}"
