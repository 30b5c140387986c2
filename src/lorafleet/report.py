"""Reports people read. One dict per domain (saved as report.json) renders to report.md and to a self-contained
report.html (inline CSS, plots as inline SVG, no external resources); a run's summary renders to index.html and
to a terminal table. Optional parts of the dict may be None or missing.

Both formats come from one list of blocks (``_blocks``), so they carry the same sections in the same order:
("h", level, text) · ("p", text) · ("table", css_class, header, rows, row_classes) · ("kv", css_class, dict)
· ("plots", report) · ("examples", groups) · ("details", title, blocks). Table cells are plain text, or
Cell(value, ci, css_class). All text is escaped by the renderers, never before (Raw: HTML built from escaped parts)."""
from __future__ import annotations

import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

METRIC_ORDER = ("json_valid_rate", "schema_pass_rate", "field_accuracy", "score", "grounding", "chrf", "rouge_l",
                "eval_loss", "perplexity")
LOWER_IS_BETTER = {"eval_loss", "perplexity", "loss"}
VERDICTS = {"published": "PUBLISHED", "gated": "GATED", "failed": "FAILED"}
INPUT_PREVIEW = 400
WINNER_COLOUR, TRIAL_COLOURS = "#d4a72c", ("#0969da", "#8250df", "#1f883d", "#57606a", "#bf3989", "#0a3069")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#1b1f24}
table{border-collapse:collapse;margin:8px 0 16px}th{background:#f6f8fa}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
.ci{color:#656d76;font-size:85%}.verdict{font-size:28px;font-weight:700;padding:14px 18px;border-radius:8px;color:#fff}
.v-published{background:#1a7f37}.v-gated{background:#bc4c00}.v-failed{background:#cf222e}.v-other{background:#57606a}
.pass,.better{color:#1a7f37}.fail,.worse{color:#cf222e}.pass,.fail{font-weight:600}tr.winner{background:#fff8c5}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:12px}table.examples td:nth-child(2){width:55%}
.note{color:#656d76;font-style:italic}.plots svg{max-width:100%;height:auto}summary{cursor:pointer}
.index .verdict{font-size:13px;padding:2px 8px}"""


class Raw(str):
    """A table cell that is already-safe HTML (built here from escaped parts); Markdown never sees one."""


class Cell(NamedTuple):
    value: str
    ci: str = ""
    cls: str = ""


# ---------- formatting ----------
def _num(v: Any, signed: bool = False) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return str(v)
    if isinstance(v, int):
        return f"{v:+d}" if signed else str(v)
    spec = ".3g" if 0 < abs(v) < 1e-3 else (".3f" if abs(v) < 10 else ".1f")
    return format(v, ("+" if signed else "") + spec)


def _hp(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else _num(v)


def _cell(entry: dict | None, signed: bool = False, metric: str | None = None) -> Cell:
    """An {"value", "ci"} entry as 'value [lo, hi]'; with ``metric``, coloured when the ci excludes zero."""
    if not entry:
        return Cell("—")
    ci = entry.get("ci")
    ok = bool(ci) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci)
    cls = ""
    if ok and metric:
        sign = (1 if ci[0] > 0 else -1 if ci[1] < 0 else 0) * (-1 if metric in LOWER_IS_BETTER else 1)
        cls = {1: "better", -1: "worse"}.get(sign, "")
    return Cell(_num(entry.get("value"), signed), f"[{_num(ci[0])}, {_num(ci[1])}]" if ok else "", cls)


def _generic(value: Any, limit: int = 10) -> str:
    """One manifest/lineage value as text (long lists shortened)."""
    if isinstance(value, dict) and not any(isinstance(v, (dict, list)) for v in value.values()):
        return ", ".join(f"{k}: {_num(v)}" for k, v in value.items())
    if isinstance(value, list) and len(value) > limit:
        return f"{len(value)} items, first {limit}: " + json.dumps(value[:limit], ensure_ascii=False, default=str)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return _num(value)


def _failed_checks(gate: dict | None) -> list[str]:
    return [str(c.get("name")) for c in (gate or {}).get("checks") or [] if not c.get("passed")]


def _verdict(status: str | None) -> str:
    return VERDICTS.get(status or "failed", str(status).upper())


def _verdict_line(report: dict) -> str:
    d, gate = report.get("domain") or {}, report.get("gate") or {}
    failed, checks = _failed_checks(gate), gate.get("checks") or []
    if (d.get("status") or "failed") == "failed":
        tail = f"error: {d.get('error') or 'unknown'}"
    elif failed:
        tail = "not promoted; failed gate checks: " + ", ".join(failed)
    else:
        tail = f"all {len(checks)} gate checks passed" if checks else "no gate checks"
    return f"{_verdict(d.get('status'))} — {d.get('name', '?')}: {tail}"


# ---------- the sections ----------
def _eval_blocks(split: dict, key: str, title: str) -> list[tuple]:
    models = [m for m in ("base", "tuned", "onnx") if split.get(m)]
    delta = split.get("delta") or {}
    seen = [m for e in models for m in split[e].get("metrics") or {}]
    names = [m for m in METRIC_ORDER if m in seen] + sorted({m for m in seen if m not in METRIC_ORDER})
    rows = [[metric, *(_cell((split[m].get("metrics") or {}).get(metric)) for m in models),
             _cell(delta.get(metric), signed=True, metric=metric)] for metric in names]
    rows.append(["n", *(_num(split[m].get("n")) for m in models), ""])
    blocks = [("h", 2, title), ("table", f"metrics metrics-{key}", ["metric", *models, "delta (tuned − base)"], rows)]
    base, tuned = ((split.get(m) or {}).get("fields") or {} for m in ("base", "tuned"))
    if fields := list(dict.fromkeys([*tuned, *base])):
        dfields = delta.get("fields") or {}
        rows = [[f, _cell(base.get(f)), _cell(tuned.get(f)), _cell(dfields.get(f), True, "field")] for f in fields]
        blocks += [("h", 3, f"Per-field accuracy ({key})"),
                   ("table", "fields", ["field", "base", "tuned", "delta"], rows)]
    return blocks


def _trial_blocks(report: dict) -> list[tuple]:
    trials = report.get("trials") or []
    hkeys = list(dict.fromkeys(k for t in trials for k in t.get("hparams") or {}))
    mkeys = list(dict.fromkeys(k for t in trials for k in t.get("metrics") or {}))
    rows = [[str(i), *(_hp((t.get("hparams") or {}).get(k)) for k in hkeys),
             *(_num((t.get("metrics") or {}).get(k)) for k in mkeys), "★" if t.get("winner") else "",
             str(t.get("error") or "")] for i, t in enumerate(trials)]
    blocks = [("h", 2, "Sweep"), ("table", "trials", ["#", *hkeys, *mkeys, "winner", "error"], rows,
                                 ["winner" if t.get("winner") else "" for t in trials])]
    if sel := report.get("selection"):
        blocks.append(("p", f"Selection rule: {', '.join(sel.get('rule') or [])}. {sel.get('explanation') or ''}"))
    return [*blocks, ("plots", report)]


def _drift_blocks(drift: dict) -> list[tuple]:
    comps = [(k.replace("_vs_", " vs ").replace("_", " "), v) for k, v in drift.items() if isinstance(v, dict)]
    keys = list(dict.fromkeys(k for _, v in comps for k in v))
    rows = [[label, *(_num(v.get(k)) for k in keys)] for label, v in comps]
    return [("h", 2, "Merge drift"),
            ("p", f"Adapter applied on the {drift.get('adapter_base', '?')} base, as trained."),
            ("table", "drift", ["comparison", *keys], rows)]


def _blocks(report: dict) -> list[tuple]:
    d = report.get("domain") or {}
    blocks = [("p", d.get("description") or ""),
              ("p", f"Run {report.get('run_id')} · base model {d.get('base_model')}")]
    if gate := report.get("gate"):
        rows = [[str(c.get("name", "")), str(c.get("kind", "")), _num(c.get("value")), _num(c.get("threshold")),
                 Cell("pass", cls="pass") if c.get("passed") else Cell("FAIL", cls="fail"), str(c.get("detail", ""))]
                for c in gate.get("checks") or []]
        blocks += [("h", 2, "Release gate"),
                   ("table", "gate", ["check", "kind", "value", "threshold", "verdict", "detail"], rows)]
    ev = report.get("evaluation") or {}
    for key, title in (("test", "Test split: base vs tuned vs ONNX"), ("golden", "Golden set")):
        blocks += _eval_blocks(ev[key], key, title) if ev.get(key) else []
    blocks += _trial_blocks(report) if report.get("trials") else []
    if groups := report.get("failing_examples"):
        blocks += [("h", 2, "Failing examples (tuned model)"), ("examples", groups)]
    if parity := report.get("onnx_parity"):
        blocks += [("h", 2, "ONNX parity (PyTorch vs onnxruntime)"), ("kv", "parity", parity)]
    blocks += _drift_blocks(report["merge_drift"]) if report.get("merge_drift") else []
    if data := report.get("data"):
        blocks += [("h", 2, "Data manifest"), ("kv", "data", data)]
    if lineage := report.get("lineage"):
        blocks.append(("details", "Lineage", [("kv", "lineage", lineage)]))
    return blocks


def _examples(groups: list[dict]):
    """(field, [(id, input, expected, got)]); tolerates a flat list of examples (no grouping by field)."""
    for g in groups:
        keys = ("id", "input", "expected", "got")
        yield str(g.get("field", "schema")), [tuple(str(ex.get(k, "")) for k in keys) for ex in g.get("examples", [g])]


# ---------- plots: inline SVG through matplotlib's object API (no pyplot state, no GUI backend) ----------
def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "lorafleet"}):  # stable element ids: same report, same bytes
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE


def _axes(ncols: int):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * ncols, 3.4))
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _loss_plot(trials: list[dict]) -> str | None:
    if not any(t.get("history") for t in trials):
        return None
    fig, axes = _axes(2)
    for ax, key in zip(axes, ("loss", "eval_loss")):
        for i, t in enumerate(trials):
            pts = [(r["step"], r[key]) for r in t.get("history") or []
                   if isinstance(r.get("step"), (int, float)) and isinstance(r.get(key), (int, float))]
            if not pts:
                continue
            h = t.get("hparams") or {}
            label = f"r={_hp(h.get('lora_rank'))} lr={_hp(h.get('learning_rate'))} ep={_hp(h.get('epochs'))}"
            style = ({"lw": 2.8, "color": WINNER_COLOUR, "zorder": 3} if t.get("winner")
                     else {"lw": 1.0, "alpha": 0.75, "color": TRIAL_COLOURS[i % len(TRIAL_COLOURS)]})
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None,
                    label=label + (" ★" if t.get("winner") else ""), **style)
        ax.set(title="train loss" if key == "loss" else "eval_loss", xlabel="step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", transform=ax.transAxes)
    return _svg(fig)


def _scatter_plot(trials: list[dict], metric: str, hparam: str) -> str | None:
    pts = [(t["hparams"][hparam], t["metrics"][metric], bool(t.get("winner"))) for t in trials
           if isinstance((t.get("hparams") or {}).get(hparam), (int, float))
           and isinstance((t.get("metrics") or {}).get(metric), (int, float))]
    if not pts:
        return None
    fig, (ax,) = _axes(1)
    for win in (False, True):
        if sel := [(x, y) for x, y, w in pts if w == win]:
            ax.scatter(*zip(*sel), s=90 if win else 40, color=WINNER_COLOUR if win else TRIAL_COLOURS[0],
                       edgecolor="black" if win else "none", label="winner" if win else "trial", zorder=3)
    if hparam == "learning_rate":
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # decade labels only
    ax.set(title=f"{metric} by {hparam}", xlabel=hparam, ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _svg(fig)


def _plot_metric(report: dict) -> str | None:
    """The metric plotted against the hparams: the one the rule ranks by, else the first rule metric the trials
    report, else score, else eval_loss."""
    have = {k for t in report.get("trials") or [] for k, v in (t.get("metrics") or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
    selection = report.get("selection") or {}
    words = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", " ".join(selection.get("rule") or []))
    return next((w for w in [selection.get("ranked_by"), *words, "score", "eval_loss"] if w in have), None)


def _plots_html(report: dict) -> str:
    trials, metric = report.get("trials") or [], _plot_metric(report)
    parts = [("loss curves per trial", _loss_plot(trials))]
    parts += [(f"{metric} by {h}", _scatter_plot(trials, metric, h) if metric else None)
              for h in ("learning_rate", "lora_rank")]
    notes = (svg or f'<p class="note">No {html.escape(title)} to plot (nothing logged).</p>' for title, svg in parts)
    return f'<div class="plots">{"".join(notes)}</div>'


# ---------- Markdown ----------
def _md(text: Any) -> str:
    """Safe in a Markdown line or table cell: no raw HTML, no cell break (``>`` kept: readable in a terminal)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", " ")


def _md_cell(c: Any) -> str:
    return _md(f"{c.value} {c.ci}".strip() if isinstance(c, Cell) else c)


def _fence(text: str) -> list[str]:
    ticks = "`" * max(3, 1 + max(map(len, re.findall(r"`+", text)), default=0))
    return [ticks, text, ticks]


def _md_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(map(_md, header)) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(map(_md_cell, r)) + " |" for r in rows), ""]


def _md_blocks(blocks: list[tuple]) -> list[str]:
    out: list[str] = []
    for kind, *a in blocks:
        if kind == "h":
            out += ["#" * a[0] + " " + _md(a[1]), ""]
        elif kind == "p":
            out += [_md(a[0]), ""] if a[0] else []
        elif kind == "table":
            out += _md_table(a[1], a[2])
        elif kind == "kv":
            out += _md_table(["key", "value"], [[k, _generic(v)] for k, v in a[1].items()])
        elif kind == "plots":
            out += ["Plots: loss curves per trial, selection metric by learning rate and by rank (report.html).", ""]
        elif kind == "examples":
            for field, examples in _examples(a[0]):
                out += [f"### {_md(field)}", ""]
                for ex_id, text, expected, got in examples:
                    cut = f" (first {INPUT_PREVIEW} of {len(text)} characters)" if len(text) > INPUT_PREVIEW else ""
                    out += [f"**{_md(ex_id)}** input{cut}:", *_fence(text[:INPUT_PREVIEW]),
                            "expected:", *_fence(expected), "got:", *_fence(got), ""]
        elif kind == "details":
            out += [f"<details><summary>{_md(a[0])}</summary>", "", *_md_blocks(a[1]), "</details>", ""]
    return out


def render_markdown(report: dict[str, Any]) -> str:
    lines = [f"# {_md(_verdict_line(report))}", "", *_md_blocks(_blocks(report))]
    return "\n".join(lines).rstrip() + "\n"


# ---------- HTML ----------
def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n")


def _html_cell(c: Any) -> str:
    if not isinstance(c, Cell):
        return html.escape(str(c))
    text = html.escape(c.value) + (f' <span class="ci">{html.escape(c.ci)}</span>' if c.ci else "")
    return f'<span class="{c.cls}">{text}</span>' if c.cls else text


def _table_html(cls: str, header: list[str], rows: list[list[Any]], row_classes: list[str] | None = None) -> str:
    cells = lambda r: "".join(f"<td>{c if isinstance(c, Raw) else _html_cell(c)}</td>" for c in r)
    body = "".join(f'<tr class="{(row_classes or [""] * len(rows))[i]}">{cells(r)}</tr>' for i, r in enumerate(rows))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _kv_value_html(value: Any) -> str:
    full = json.dumps(value, indent=2, ensure_ascii=False, default=str) if isinstance(value, (dict, list)) else ""
    if len(full) > 160:
        n = f"{len(value)} {'items' if isinstance(value, list) else 'keys'}"
        return f"<details><summary>{n}</summary><pre>{html.escape(full)}</pre></details>"
    return html.escape(_generic(value))


def _examples_html(groups: list[dict]) -> str:
    def pre(text: str) -> str:
        return f"<pre>{html.escape(text)}</pre>"

    out = []
    for field, examples in _examples(groups):
        rows = []
        for ex_id, text, expected, got in examples:
            cell = pre(text[:INPUT_PREVIEW] + ("…" if len(text) > INPUT_PREVIEW else ""))
            if len(text) > INPUT_PREVIEW:
                cell += f"<details><summary>full input ({len(text)} characters)</summary>{pre(text)}</details>"
            rows.append([ex_id, Raw(cell), Raw(pre(expected)), Raw(pre(got))])
        out.append(f"<h3>{html.escape(field)}</h3>" + _table_html("examples", ["id", "input", "expected", "got"], rows))
    return "".join(out)


def _html_blocks(blocks: list[tuple]) -> list[str]:
    out = []
    for kind, *a in blocks:
        if kind == "h":
            out.append(f"<h{a[0]}>{html.escape(a[1])}</h{a[0]}>")
        elif kind == "p" and a[0]:
            out.append(f"<p>{html.escape(a[0])}</p>")
        elif kind == "table":
            out.append(_table_html(*a))
        elif kind == "kv":
            out.append(_table_html(a[0], ["key", "value"], [[k, Raw(_kv_value_html(v))] for k, v in a[1].items()]))
        elif kind == "plots":
            out.append(_plots_html(a[0]))
        elif kind == "examples":
            out.append(_examples_html(a[0]))
        elif kind == "details":
            out.append(f"<details><summary><h2 style='display:inline'>{html.escape(a[0])}</h2></summary>"
                       + "".join(_html_blocks(a[1])) + "</details>")
    return out


def render_html(report: dict[str, Any]) -> str:
    d = report.get("domain") or {}
    status = d.get("status") or "failed"
    verdict = (f'<div class="verdict v-{status if status in VERDICTS else "other"}" id="verdict">'
               f"{html.escape(_verdict_line(report))}</div>")
    return _page(f"{d.get('name', '?')}: {_verdict(status)}", "\n".join([verdict, *_html_blocks(_blocks(report))]))


def write_reports(report: dict[str, Any], out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str),
                                         encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")


# ---------- per-run summary ----------
def _summary_rows(summary: dict) -> tuple[list[str], list[list[str]], list[dict]]:
    """Header and text rows (domain, verdict, key metrics..., failed checks or error) and the domain entries."""
    domains = list((summary.get("domains") or {}).items())
    metrics = list(dict.fromkeys(m for _, d in domains for m in d.get("key_metrics") or {}))
    rows = [[name, _verdict(d.get("status")), *(_num((d.get("key_metrics") or {}).get(m)) for m in metrics),
             ", ".join(_failed_checks(d.get("gate"))) or str(d.get("error") or "")] for name, d in domains]
    return ["domain", "verdict", *metrics, "failed checks / error"], rows, [d for _, d in domains]


def render_index(summary: dict[str, Any]) -> str:
    esc = html.escape
    header, rows, entries = _summary_rows(summary)
    cells = []
    for row, d in zip(rows, entries):
        status = d.get("status") or "failed"
        badge = f'<span class="verdict v-{status if status in VERDICTS else "other"}">{esc(row[1])}</span>'
        link = f'<a href="{esc(d["report_href"])}">report</a>' if d.get("report_href") else "—"
        cells.append([row[0], Raw(badge), *row[2:], Raw(link)])
    head = (f"<h1>Run {esc(str(summary.get('run_id')))}: {esc(str(summary.get('status', '')))}</h1>"
            f"<p>{esc(_num(summary.get('seconds')))} s · storage "
            f"<code>{esc(str(summary.get('storage', '')))}</code></p>")
    return _page(f"lorafleet run {summary.get('run_id')}", head + _table_html("index", [*header, "report"], cells))


def summary_table(summary: dict[str, Any]) -> str:
    """The same per-domain information as index.html, as a plain-text table for a terminal."""
    header, rows, _ = _summary_rows(summary)
    rows = [[*r[:-1], r[-1].replace("\n", " ")[:80]] for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)]) + "\n"
