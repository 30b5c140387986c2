import json
import re

from lorafleet.report import render_html, render_index, render_markdown, summary_table, write_reports
from tests.report_sample import XSS, sample_report, sample_summary


def test_markdown_starts_with_the_verdict_and_names_the_failing_check():
    md = render_markdown(sample_report())
    first = md.splitlines()[0]
    assert first.startswith("# GATED") and "contracts" in first and "field amount >= 0.75" in first
    assert "schema_pass_rate >= 0.6" not in first  # only the failing checks are named
    for heading in ("## Release gate", "## Test split", "## Golden set", "### Per-field accuracy (test)", "## Sweep",
                    "## Failing examples", "## ONNX parity", "## Merge drift", "## Data manifest",
                    "<summary>Lineage</summary>"):
        assert heading in md
    assert ("| schema_pass_rate | 0.420 [0.360, 0.470] | 0.780 [0.720, 0.830] | 0.780 [0.720, 0.830] "
            "| +0.360 [0.320, 0.400] |") in md
    assert "| amount | 0.400 [0.340, 0.450] | 0.640 [0.580, 0.690] | +0.240 [0.200, 0.280] |" in md
    assert "<script>" not in md and "&lt;script>alert('x')&lt;/script>" in md
    assert md.count("```") >= 2 * 3 * 3 and "first 400 of 1197 characters" in md  # input, expected, got fenced
    assert "````" in md  # a `got` containing ``` gets a longer fence


def test_html_has_verdict_first_tables_plots_and_escapes_user_text():
    page = render_html(sample_report())
    body = page[page.index("<body>"):]
    assert body.index('class="verdict v-gated"') < body.index("<h2")
    verdict = re.search(r'id="verdict">([^<]*)<', page).group(1)
    assert verdict.startswith("GATED") and "field amount &gt;= 0.75" in verdict
    assert page.count("<svg") >= 3 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    for table in ('class="gate"', 'class="metrics metrics-test"', 'class="metrics metrics-golden"', 'class="fields"',
                  'class="trials"', 'class="drift"', 'class="data"', 'class="lineage"'):
        assert table in page
    assert '<tr class="winner">' in page and "field_regression" in page
    assert 'class="worse"' not in page and 'class="better"' in page
    assert "<details><summary>full input" in page  # the long input is cut, the full text is one click away
    assert XSS not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    assert "score by learning_rate" in page and "score by lora_rank" in page  # rule's first metric, plotted
    report = sample_report()
    report["selection"]["ranked_by"] = "eval_loss"  # the metric the rule ranks by wins over the first rule word
    assert "eval_loss by learning_rate" in render_html(report)


def test_failed_domain_without_evaluation_still_renders(tmp_path):
    report = sample_report()
    report.update(evaluation=None, gate=None, selection=None, onnx_parity=None, merge_drift=None, failing_examples=[])
    report["domain"].update(status="failed", error="every trial failed: OOM")
    for t in report["trials"]:
        t.update(history=[], metrics={}, error="OOM", winner=False)
    write_reports(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert md.startswith("# FAILED — contracts: error: every trial failed: OOM")
    assert 'class="verdict v-failed"' in page and "<svg" not in page and "No loss curves per trial to plot" in page
    assert json.loads((tmp_path / "report.json").read_text())["domain"]["status"] == "failed"
    # the barest report: only the required keys
    bare = {"run_id": "r", "domain": {"name": "d", "status": "failed", "error": "boom"}}
    assert render_markdown(bare).startswith("# FAILED") and "FAILED" in render_html(bare)


def test_loss_plot_drawn_when_only_train_loss_is_logged():
    report = sample_report()
    for t in report["trials"]:
        t["history"] = [r for r in t["history"] if "loss" in r]
    page = render_html(report)
    assert page.count("<svg") == 3 and "no eval_loss logged" in page


def test_index_links_every_report_and_names_failed_checks():
    page = render_index(sample_summary())
    assert page.count("<tr>") == 1 and page.count("<tr class") == 3  # header + a row per domain
    assert '<a href="contracts/report.html">' in page and '<a href="legal/report.html">' in page
    assert "v-gated" in page and "v-published" in page and "v-failed" in page
    assert "field amount &gt;= 0.75" in page and XSS not in page and "CUDA OOM &lt;script&gt;" in page


def test_summary_table_has_one_line_per_domain():
    text = summary_table(sample_summary())
    lines = text.splitlines()
    assert len(lines) == 2 + 3 and lines[0].split()[:2] == ["domain", "verdict"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"contracts", "legal", "broken"}
    assert "GATED" in rows["contracts"] and "field amount >= 0.75" in rows["contracts"] and "78.0" in rows["contracts"]
    assert "FAILED" in rows["broken"] and "CUDA OOM" in rows["broken"]
