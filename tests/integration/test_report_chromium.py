"""The HTML report as a real browser sees it: headless Chromium loads report.html, dumps the DOM, takes a screenshot.
Chromium is required, not optional: without it this test fails (``make test`` installs it)."""
import re
import shutil
import subprocess

import pytest

from lorafleet import publish
from lorafleet.report import write_reports
from tests.report_sample import context_report, record_nights, sample_report

pytestmark = pytest.mark.integration

FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-extensions", "--allow-file-access-from-files"]


def _chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if not binary:
        pytest.fail("headless Chromium is needed for this test and was not found on PATH (chromium or "
                    "chromium-browser). Install it: apt-get install -y chromium  (make test does this)")
    return binary


def _browse(tmp_path, *args: str) -> subprocess.CompletedProcess:
    # a private profile so parallel runs and the user's profile do not interfere
    cmd = [_chromium(), *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


@pytest.fixture
def report_html(tmp_path):
    write_reports(sample_report(), tmp_path / "contracts")
    return tmp_path / "contracts" / "report.html"


def test_chromium_renders_plots_tables_and_verdict_first(report_html, tmp_path):
    report = sample_report()
    done = _browse(tmp_path, "--dump-dom", report_html.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    body = dom[dom.index("<body"):]
    # the verdict is the first thing in the page, and names the failing check
    first = re.search(r"<body[^>]*>\s*<(\w+)([^>]*)>([^<]*)<", body)
    assert first and 'class="verdict v-gated"' in first.group(2), body[:500]
    assert first.group(3).startswith("GATED") and "score gain &gt;= 25" in first.group(3)
    # the plots parsed as SVG with drawn paths
    svgs = re.findall(r"<svg\b.*?</svg>", body, flags=re.DOTALL)
    assert len(svgs) >= 3 and all(svg.count("<path") >= 5 for svg in svgs)
    # the gate and metric tables, with their rows
    gate = re.search(r'<table class="gate">.*?</table>', body, flags=re.DOTALL).group(0)
    assert gate.count("<tr") == 1 + len(report.result.gate.checks) and "FAIL" in gate and "field_regression" in gate
    metrics = re.search(r'<table class="metrics metrics-test">.*?</table>', body, flags=re.DOTALL).group(0)
    gain = report.result.test.delta.metrics["schema_pass_rate"].value
    assert "schema_pass_rate" in metrics and f"{gain:+.3f}" in metrics and "onnx" in metrics
    # the ONNX variants, one row each, the int4 row naming its failed check
    variants = re.search(r'<table class="variants">.*?</table>', body, flags=re.DOTALL).group(0)
    assert variants.count("<tr") == 1 + len(report.result.variants) and "onnx-int4" in variants
    assert re.search(r'<span class="fail">FAIL: int4 schema_pass_rate at most 0.02 below fp32</span>', variants)
    assert "<script" not in body  # the user's <script> text stayed text


def test_chromium_screenshot(report_html, tmp_path):
    shot = tmp_path / "report.png"
    done = _browse(tmp_path, "--window-size=1200,3000", f"--screenshot={shot}", report_html.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 50_000, f"screenshot only {shot.stat().st_size} bytes: a blank page?"


def test_chromium_renders_the_history_plot_with_every_series(tmp_path):
    storage = publish.Storage(str(tmp_path / "store"))
    record_nights(storage, "legal", ["published", "gated", "unchanged", "published"])
    page = tmp_path / "store" / "domains" / "legal" / "history.html"
    done = _browse(tmp_path, "--dump-dom", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    body = done.stdout[done.stdout.index("<body"):]
    (svg,) = re.findall(r"<svg\b.*?</svg>", body, flags=re.DOTALL)
    for series in ("json_valid_rate", "schema_pass_rate", "field_accuracy", "score", "score_gain"):
        line = re.search(rf'<g id="series-{series}">.*?<path [^>]*d="([^"]+)"', svg, flags=re.DOTALL)
        assert line, series
        assert len(re.findall(r"[ML]", line.group(1))) == 3, (series, line.group(1))  # the three evaluated runs
    rows = re.findall(r"<tr[^>]*><td>(night-\d)</td>", body)
    assert rows == ["night-3", "night-2", "night-1", "night-0"]  # newest first


def test_chromium_renders_the_context_comparison_of_a_domain_with_context(tmp_path):
    report = context_report()
    write_reports(report, tmp_path / "brand_captions")
    done = _browse(tmp_path, "--dump-dom", (tmp_path / "brand_captions" / "report.html").as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    body = done.stdout[done.stdout.index("<body"):]
    table = re.search(r'<table class="metrics metrics-context">.*?</table>', body, flags=re.DOTALL).group(0)
    context = report.result.test.context
    assert table.count("<tr") == 1 + len([m for m in context.without.metrics if m in report.result.test.tuned.metrics]) + 1
    gain = context.gain.metrics["context_grounding"]
    assert "context_grounding" in table and f"{gain.value:+.3f}" in table and "gain (with − without)" in table
    assert "context_grounding gain with context" in re.search(r'<table class="gate">.*?</table>', body,
                                                                flags=re.DOTALL).group(0)
    assert "<script" not in body
