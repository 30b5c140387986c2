"""A domain's history: one entry per run in domains/<domain>/history.json (a rerun of a run id replaces its entry, runs
in date order, concurrent runs lose nothing), history.html (plot with interval bands, runs newest first) and
``lorafleet history``."""
import re
import threading
from datetime import timedelta

from lorafleet import history, publish
from lorafleet.cli import main
from lorafleet.history import HistoryEntry
from tests.report_sample import NIGHT, XSS, record_nights, sample_summary


def _results():
    """contracts gated, legal published, broken failed (a made-up run's results)."""
    return sample_summary().domains


def test_each_domain_of_a_run_gets_an_entry_with_its_verdict_metrics_and_winner(tmp_path):
    storage = publish.Storage(str(tmp_path))
    results = _results()
    history.record_run(storage, "20261120-020000", results, now=NIGHT)
    for name, result in results.items():
        (entry,) = history.entries(publish.read_history(storage, name))
        assert entry.run_id == "20261120-020000" and entry.date == "2026-11-20T02:00:00+00:00"
        assert entry.verdict == result.status and entry.winner == result.winner
        assert (tmp_path / "domains" / name / "history.html").is_file()
    contracts = history.entries(publish.read_history(storage, "contracts"))[0]
    test = results["contracts"].test
    assert contracts.metrics == {k: test.tuned.metrics[k] for k in ("json_valid_rate", "schema_pass_rate",
                                                                     "field_accuracy", "score")}
    assert contracts.score_gain == test.delta.metrics["score"] and contracts.metrics["score"].ci is not None
    broken = history.entries(publish.read_history(storage, "broken"))[0]
    assert broken.metrics == {} and broken.error.startswith("every trial failed")


def test_rerunning_a_run_id_replaces_its_entry(tmp_path):
    storage = publish.Storage(str(tmp_path))
    record_nights(storage, "legal", ["gated", "published"])
    failed = _results()["broken"].model_copy(update={"name": "legal"})
    history.record_run(storage, "night-1", {"legal": failed}, now=NIGHT + timedelta(days=1, hours=1))
    runs = history.entries(publish.read_history(storage, "legal"))
    assert [(e.run_id, e.verdict) for e in runs] == [("night-0", "gated"), ("night-1", "failed")]


def test_runs_are_kept_in_date_order_whatever_order_they_are_recorded_in(tmp_path):
    storage = publish.Storage(str(tmp_path))
    result = _results()["legal"]
    for run_id, day in [("b", 3), ("a", 1), ("c", 2), ("a2", 1)]:
        history.record_run(storage, run_id, {"legal": result}, now=NIGHT + timedelta(days=day))
    assert [e["run_id"] for e in publish.read_history(storage, "legal")] == ["a", "a2", "c", "b"]


def test_runs_appending_at_once_lose_nothing(tmp_path):
    storage = publish.Storage(str(tmp_path))
    result, start = _results()["legal"], threading.Barrier(6)

    def run(i: int) -> None:
        start.wait()
        history.record_run(storage, f"run-{i}", {"legal": result}, now=NIGHT + timedelta(minutes=i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e["run_id"] for e in publish.read_history(storage, "legal")] == [f"run-{i}" for i in range(6)]
    page = (tmp_path / "domains" / "legal" / "history.html").read_text()
    assert all(f"<td>run-{i}</td>" in page for i in range(6))  # the last page written shows every run


def test_page_plots_each_key_metric_over_the_evaluated_runs_and_lists_runs_newest_first(tmp_path):
    storage = publish.Storage(str(tmp_path))
    record_nights(storage, "legal", ["published", "gated", "unchanged", "failed", "published"])
    page = (tmp_path / "domains" / "legal" / "history.html").read_text()
    svg = re.search(r"<svg\b.*?</svg>", page, flags=re.DOTALL).group(0)
    for series in ("json_valid_rate", "schema_pass_rate", "field_accuracy", "score", "score_gain"):
        group = re.search(rf'<g id="series-{series}">(.*?)</g>', svg, flags=re.DOTALL)
        assert group, series
        assert len(re.findall(r"[ML] ?-?[\d.]+ -?[\d.]+", group.group(1))) >= 3  # published, gated, published
    assert svg.count("<path") > 10  # bands and markers too
    rows = re.findall(r"<tr class=\"\"><td>(night-\d)</td>", page)
    assert rows == ["night-4", "night-3", "night-2", "night-1", "night-0"]
    assert "v-unchanged" in page and "same inputs as run night-0" in page
    assert '<a href="../../runs/night-0/legal/report.html">report (night-0)</a>' in page  # unchanged: the run it kept
    assert '<a href="../../runs/night-3/index.html">run</a>' in page  # failed: no report, the run's index
    assert XSS not in page and "<script" not in page


def test_page_without_an_evaluated_run_says_there_is_nothing_to_plot():
    failed = HistoryEntry(run_id="r1", date=NIGHT.isoformat(), verdict="failed", error=f"no data {XSS}")
    page = history.render_html("legal", [failed])
    assert "<svg" not in page and "nothing to plot" in page and "no data &lt;script&gt;" in page


def test_lorafleet_history_prints_the_runs_newest_first(tmp_path, capsys):
    storage = publish.Storage(str(tmp_path))
    record_nights(storage, "legal", ["published", "unchanged"])
    assert main(["history", "legal", "--storage", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "legal: 2 runs, newest first"
    assert lines[1].split()[:3] == ["run", "date", "(UTC)"] and "2026-11-21 02:00" in lines[3] and "score gain" in lines[1]
    score = _results()["legal"].test.tuned.metrics["score"]
    assert lines[3].startswith("night-1") and "UNCHANGED" in lines[3] and "same inputs as run night-0" in lines[3]
    assert lines[4].startswith("night-0") and "PUBLISHED" in lines[4]
    assert f"{score.value:.1f} [{score.ci[0]:.1f}, {score.ci[1]:.1f}]" in lines[4] and "r16 lr0.001 e3" in lines[4]
    assert lines[-1] == f"page: {tmp_path}/domains/legal/history.html"


def test_lorafleet_history_of_a_domain_without_runs_exits_2(tmp_path, capsys):
    assert main(["history", "legal", "--storage", str(tmp_path)]) == 2
    assert "no history for domain legal" in capsys.readouterr().err
