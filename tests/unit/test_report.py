import json
import re

from lorafleet.report import render_html, render_index, render_markdown, summary_table, write_reports
from lorafleet.results import DomainResult
from tests.report_sample import XSS, sample_report, sample_summary


def test_markdown_starts_with_the_verdict_and_names_the_failing_check():
    report = sample_report()
    md = render_markdown(report)
    first = md.splitlines()[0]
    assert first.startswith("# GATED") and "contracts" in first and "score gain >= 25" in first
    assert "json_valid_rate >= 0.8" not in first  # only the failing checks are named
    for heading in ("## Release gate", "## Test split", "## Golden set", "### Per-field accuracy (test)", "## Sweep",
                    "## Failing examples", "## ONNX parity", "## Merge drift", "## Data manifest",
                    "### Drops by reason", "### Token lengths", "### Labels: answer.clause_type", "### Near-duplicates",
                    "### Near other domains' evaluation records", "<summary>Lineage</summary>"):
        assert heading in md
    # the data section: drops by reason code, the histograms as tables with max_seq_length placed, the pairs
    assert "| exact_duplicate | 3 | the same prompt and answer as an earlier record |" in md
    assert "**prompt + answer tokens** (max_seq_length 384: past every record)" in md
    assert "| test line 40 (group C-40) | val line 12 (group C-&lt;script>" in md and "| legal |" in md
    test = report.result.test
    tuned = test.tuned.metrics["schema_pass_rate"]
    assert f"| {tuned.value:.3f} [{tuned.ci[0]:.3f}, {tuned.ci[1]:.3f}] |" in md
    amount = test.delta.fields["amount"]
    assert f"| {amount.value:+.3f} [{amount.ci[0]:.3f}, {amount.ci[1]:.3f}] |" in md
    assert "<script>" not in md and "&lt;script>alert('x')&lt;/script>" in md
    long_input = max(len(a.input) for g in report.failing_examples for a in g.examples)
    assert f"first 400 of {long_input} characters" in md
    assert "````" in md  # a `got` containing ``` gets a longer fence


def test_html_has_verdict_first_tables_plots_and_escapes_user_text():
    page = render_html(sample_report())
    body = page[page.index("<body>"):]
    assert body.index('class="verdict v-gated"') < body.index("<h2")
    verdict = re.search(r'id="verdict">([^<]*)<', page).group(1)
    assert verdict.startswith("GATED") and "score gain &gt;= 25" in verdict
    assert page.count("<svg") >= 3 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    for table in ('class="gate"', 'class="metrics metrics-test"', 'class="metrics metrics-golden"', 'class="fields"',
                  'class="trials"', 'class="drift"', 'class="data"', 'class="lineage"', 'class="drops"',
                  'class="lengths"', 'class="labels"', 'class="leaks"', 'class="cross-domain"'):
        assert table in page
    assert page.count("<svg") == 3 + 1  # the sweep's plots and the data's token-length histograms
    assert '<tr class="winner">' in page and "min_improvement" in page
    assert 'class="better"' in page
    assert "<details><summary>full input" in page  # the long input is cut, the full text is one click away
    assert XSS not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page) and "<script" not in page
    assert "score by learning_rate" in page and "score by lora_rank" in page  # the metric the rule ranks by


def test_failed_domain_without_evaluation_still_renders(tmp_path):
    report = sample_report()
    failed = DomainResult.failed("contracts", "every trial failed: OOM",
                                 [t.model_copy(update={"metrics": {}, "history": [], "error": "OOM"})
                                  for t in report.result.trials])
    report = report.model_copy(update={"result": failed, "selection": None, "failing_examples": []})
    write_reports(report, tmp_path)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert md.startswith("# FAILED — contracts: error: every trial failed: OOM")
    # no trial plot; the data section's token-length histograms are the only figure
    assert 'class="verdict v-failed"' in page and page.count("<svg") == 1 and "No loss curves per trial to plot" in page
    assert json.loads((tmp_path / "report.json").read_text())["result"]["status"] == "failed"


def test_report_json_round_trips_into_the_same_report(tmp_path):
    report = sample_report()
    write_reports(report, tmp_path)
    assert type(report).model_validate(json.loads((tmp_path / "report.json").read_text())) == report


def test_loss_plot_drawn_when_only_train_loss_is_logged():
    report = sample_report()
    trials = [t.model_copy(update={"history": [r for r in t.history if "loss" in r]}) for t in report.result.trials]
    report = report.model_copy(update={"result": report.result.model_copy(update={"trials": trials})})
    page = render_html(report)
    assert page.count("<svg") == 3 + 1 and "no eval_loss logged" in page  # + the data section's token lengths


def test_index_links_every_report_and_names_failed_checks():
    page = render_index(sample_summary())
    assert page.count("<tr>") == 1 and page.count("<tr class") == 3  # header + a row per domain
    assert '<a href="contracts/report.html">' in page and '<a href="legal/report.html">' in page
    assert "v-gated" in page and "v-published" in page and "v-failed" in page
    assert "score gain &gt;= 25" in page and XSS not in page and "CUDA OOM &lt;script&gt;" in page


def test_summary_table_has_one_line_per_domain():
    summary = sample_summary()
    lines = summary_table(summary).splitlines()
    assert len(lines) == 2 + 3 and lines[0].split()[:2] == ["domain", "verdict"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == {"contracts", "legal", "broken"}
    score = summary.domains["contracts"].key_metrics["score"]
    assert "GATED" in rows["contracts"] and "score gain >= 25" in rows["contracts"] and f"{score:.1f}" in rows["contracts"]
    assert "FAILED" in rows["broken"] and "CUDA OOM" in rows["broken"]


def test_run_summary_json_round_trips(tmp_path):
    summary = sample_summary()
    assert type(summary).from_json(json.loads(json.dumps(summary.to_json()))) == summary


def test_onnx_parity_says_what_was_compared_and_which_onnxruntime_provider_ran():
    report = sample_report()
    parity = report.result.drift.merged_vs_onnx
    page = render_html(report)
    table = re.search(r'<table class="parity">.*?</table>', page).group(0)
    assert "<td>onnxruntime provider</td><td>CPUExecutionProvider</td>" in table
    assert f"<td>prompts</td><td>{parity.prompts}</td>" in table and f"<td>new_tokens</td><td>{parity.new_tokens}</td>" in table
    assert f"greedy answers to the {parity.prompts} evaluated test records" in page
    assert "| onnxruntime provider | CPUExecutionProvider |" in render_markdown(report)


def test_finishing_time_is_one_row_of_the_phases_recorded():
    report = sample_report()
    timings = report.result.timings
    table = re.search(r'<table class="timings">.*?</table>', render_html(report)).group(0)
    assert table.count("<tr") == 2  # the phases, then their seconds
    assert "<th>merge</th>" in table and f"<td>{timings.onnx_export:.1f}</td>" in table
    assert "<th>onnx parity eval</th>" in table and "<th>publish</th>" not in table  # publish had not ended
    assert "## Finishing time" in render_markdown(report)


def test_restarts_column_shows_only_when_a_trial_restarted():
    report = sample_report()
    assert "restarts" not in render_markdown(report)
    trials = list(report.result.trials)
    trials[0] = trials[0].model_copy(update={"restarts": 2, "resumed_from": [6, 12]})
    report = report.model_copy(update={"result": report.result.model_copy(update={"trials": trials})})
    md = render_markdown(report)
    assert "| restarts |" in md and "| 2 (from step 6, 12) |" in md and "| 0 |" in md


def _with_unchanged_legal():
    summary = sample_summary()
    legal = summary.domains["legal"].model_copy(update={"status": "unchanged", "matches_run": "20261124-020000",
                                                        "trials": [], "timings": None})
    return summary.model_copy(update={"domains": {**summary.domains, "legal": legal}})


def test_index_and_table_show_an_unchanged_domain_with_the_run_it_matches():
    summary = _with_unchanged_legal()
    page = render_index(summary)
    assert '<span class="verdict v-unchanged">UNCHANGED</span>' in page
    assert '<a href="../20261124-020000/legal/report.html">report (20261124-020000)</a>' in page
    assert '<a href="../../domains/legal/history.html">history</a>' in page
    row = next(line for line in summary_table(summary).splitlines() if line.startswith("legal"))
    score = summary.domains["legal"].key_metrics["score"]
    assert "UNCHANGED" in row and "same inputs as run 20261124-020000" in row and f"{score:.1f}" in row


def test_a_run_of_unchanged_and_published_domains_succeeded():
    summary = _with_unchanged_legal()
    domains = {n: d for n, d in summary.domains.items() if n != "broken"}
    assert type(summary).of("r", "store", 3.0, domains).status == "succeeded"
    assert type(summary).from_json(json.loads(json.dumps(summary.to_json()))) == summary
