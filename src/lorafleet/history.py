"""Each domain's runs across nights: after every run, an entry per domain in ``<storage>/domains/<domain>/history.json``
(published, gated, failed or unchanged), rendered to ``history.html`` (the key metrics over time with their 95 %
intervals as bands, and the runs, newest first) and, by ``lorafleet history DOMAIN``, to a terminal table."""
from __future__ import annotations

import html
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

from lorafleet import publish
from lorafleet.metrics import KEY_METRICS, Metric
from lorafleet.report import TRIAL_COLOURS, Raw, _axes, _cell, _page, _svg, _table_html, _verdict, text_table
from lorafleet.results import DomainResult, DomainStatus
from lorafleet.train import HParams

log = logging.getLogger(__name__)

MEASURED = ("published", "gated")  # verdicts of runs that evaluated the domain (unchanged ones repeat a measurement)
GATED_COLOUR = "#bc4c00"


class HistoryEntry(BaseModel):
    """One run of one domain, as history.json keeps it."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    date: str  # when the run ended: UTC, ISO 8601 to the second
    verdict: DomainStatus
    matches_run: str | None = None  # unchanged: the published run whose model stays (and whose numbers these are)
    metrics: dict[str, Metric] = {}  # the tuned model's key metrics on the test split, with 95 % intervals
    score_gain: Metric | None = None  # tuned - base score, with its paired-bootstrap interval
    winner: HParams | None = None
    dataset_version: str | None = None
    report: str | None = None  # the report of the run that evaluated the model
    error: str | None = None

    @classmethod
    def of(cls, run_id: str, result: DomainResult, date: str) -> HistoryEntry:
        test = result.test
        return cls(run_id=run_id, date=date, verdict=result.status, matches_run=result.matches_run,
                   metrics={k: test.tuned.metrics[k] for k in KEY_METRICS if k in test.tuned.metrics} if test else {},
                   score_gain=test.delta.metrics.get("score") if test else None, winner=result.winner,
                   dataset_version=result.dataset_version,
                   report=result.artifacts.report if result.artifacts else None, error=result.error)

    @property
    def when(self) -> datetime:
        return datetime.fromisoformat(self.date)

    @property
    def shown_date(self) -> str:
        return self.when.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def record_run(storage: publish.Storage, run_id: str, results: dict[str, DomainResult],
               now: datetime | None = None) -> None:
    """Add the run to each of its domains' history (again on a rerun of the run id: its entry is replaced). A history
    that cannot be written is logged, not fatal: the run's models are published by then."""
    date = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    for name, result in results.items():
        entry = HistoryEntry.of(run_id, result, date)
        try:
            publish.record_history(storage, name, entry.model_dump(mode="json"),
                                   lambda runs, name=name: render_html(name, entries(runs)))
        except publish.PublishError as exc:
            log.error("[%s] history not recorded: %s", name, exc)


def entries(runs: list[dict[str, Any]]) -> list[HistoryEntry]:
    return [HistoryEntry.model_validate(r) for r in runs]


def _metric_names(runs: list[HistoryEntry]) -> list[str]:
    return [k for k in KEY_METRICS if any(k in e.metrics for e in runs)]


# ---------- the page ----------
def _series(ax, name: str, points: list[tuple[datetime, Metric]], colour: str) -> None:
    """One metric over time: its line (an SVG group with id ``series-<name>``) and its 95 % interval as a band, with
    a bar at each run (a band has no width at a single run)."""
    if not points:
        return
    when, values = zip(*points)
    if all(m.ci for m in values):
        lo, hi = [m.ci[0] for m in values], [m.ci[1] for m in values]
        ax.fill_between(when, lo, hi, color=colour, alpha=0.18, lw=0)
        ax.vlines(when, lo, hi, color=colour, alpha=0.5, lw=1)
    (line,) = ax.plot(when, [m.value for m in values], marker="o", ms=4, color=colour, label=name)
    line.set_gid(f"series-{name.replace(' ', '_')}")


def _plot(runs: list[HistoryEntry]) -> str | None:
    """Rates (0-1) on the left, score and score gain (points) on the right, over the runs that evaluated the domain."""
    runs = [e for e in runs if e.verdict in MEASURED and e.metrics]
    if not runs:
        return None
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    fig, (rates, points) = _axes(2)
    for i, name in enumerate(n for n in _metric_names(runs) if n != "score"):
        _series(rates, name, [(e.when, e.metrics[name]) for e in runs if name in e.metrics], TRIAL_COLOURS[i])
    _series(points, "score", [(e.when, e.metrics["score"]) for e in runs if "score" in e.metrics], TRIAL_COLOURS[3])
    _series(points, "score gain", [(e.when, e.score_gain) for e in runs if e.score_gain], TRIAL_COLOURS[4])
    if gated := [e for e in runs if e.verdict == "gated" and "score" in e.metrics]:
        points.scatter([e.when for e in gated], [e.metrics["score"].value for e in gated], marker="x", s=60,
                       color=GATED_COLOUR, label="gated run", zorder=4)
    rates.set(title="test split, tuned model", ylim=(-0.05, 1.05))
    points.set(title="score (points)", ylabel="points")
    first, last = runs[0].when, runs[-1].when
    pad = max((last - first) / 20, timedelta(hours=12))  # a single run would get a span of years
    for ax in (rates, points):
        locator = AutoDateLocator(minticks=3, maxticks=6)
        ax.xaxis.set(major_locator=locator, major_formatter=ConciseDateFormatter(locator))
        ax.set_xlim(first - pad, last + pad)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _svg(fig)


def _link(domain: str, e: HistoryEntry) -> Raw:
    """Relative to domains/<domain>/history.html: the report of the run that evaluated the model, else (failed) the run's
    index."""
    esc = html.escape
    if e.verdict != "failed":
        run = e.matches_run or e.run_id
        return Raw(f'<a href="../../runs/{esc(run)}/{esc(domain)}/report.html">report ({esc(run)})</a>')
    return Raw(f'<a href="../../runs/{esc(e.run_id)}/index.html">run</a>')


def _note(e: HistoryEntry) -> str:
    return f"same inputs as run {e.matches_run}" if e.matches_run else (e.error or "")


def render_html(domain: str, runs: list[HistoryEntry]) -> str:
    names = _metric_names(runs)
    rows = [[e.run_id, e.shown_date, Raw(f'<span class="verdict v-{e.verdict}">{html.escape(_verdict(e.verdict))}</span>'),
             *(_cell(e.metrics.get(k)) for k in names), _cell(e.score_gain, signed=True, metric="score"),
             e.winner.label if e.winner else "—", (e.dataset_version or "—")[:12], _link(domain, e), _note(e)]
            for e in reversed(runs)]
    plot = _plot(runs) or '<p class="note">No run has evaluated this domain yet: nothing to plot.</p>'
    header = ["run", "date (UTC)", "verdict", *names, "score gain", "winner", "dataset", "report", "notes"]
    body = (f"<h1>{html.escape(domain)}: {len(runs)} run{'s' * (len(runs) != 1)}</h1>"
            "<p>The tuned model on the test split after each run that trained and evaluated the domain, with 95 % "
            "bootstrap intervals (bands); unchanged runs kept an earlier run's model and are listed below only.</p>"
            f'<div class="plots">{plot}</div>'
            + _table_html("history index", header, rows))  # "index": the small verdict badges of the run index
    return _page(f"{domain}: history", body)


def table(runs: list[HistoryEntry]) -> str:
    """The runs, newest first, as a plain-text table for a terminal."""
    def text(metric: Metric | None, signed: bool = False) -> str:
        cell = _cell(metric, signed)
        return f"{cell.value} {cell.ci}".strip()

    names = _metric_names(runs)
    rows = [[e.run_id, e.shown_date, _verdict(e.verdict), *(text(e.metrics.get(k)) for k in names),
             text(e.score_gain, signed=True), e.winner.label if e.winner else "—", (e.dataset_version or "—")[:12],
             _note(e).replace("\n", " ")[:60]] for e in reversed(runs)]
    return text_table(["run", "date (UTC)", "verdict", *names, "score gain", "winner", "dataset", "notes"], rows)
