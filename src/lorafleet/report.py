"""Reports people read. One ``DomainReport`` per domain (saved as report.json) renders to report.md and to a self-contained
report.html (inline CSS, plots as inline SVG, no external resources); a run's summary renders to index.html and
to a terminal table. Everything renders from the pipeline's typed records (``DomainReport``, ``RunSummary``).

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
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from lorafleet.data import DatasetManifest, Histogram, LengthSummary
from lorafleet.evaluate import ScoredAnswer
from lorafleet.export import Drift
from lorafleet.gate import GateVerdict
from lorafleet.governance import REASONS, RecordRef
from lorafleet.lineage import Lineage
from lorafleet.metrics import (
    FIELD_PREFIX,
    REGISTRY,
    Evaluation,
    HumanRatings,
    Metric,
    SplitEvaluation,
    better_direction,
    worst_fields,
)
from lorafleet.results import DomainResult, DomainStatus, FinishTimings, RunSummary, SearchStory, TrialOutcome
from lorafleet.select import Selection

METRIC_ORDER = tuple(REGISTRY)
VERDICTS = {"published": "PUBLISHED", "gated": "GATED", "failed": "FAILED", "unchanged": "UNCHANGED"}
INPUT_PREVIEW = 400
EXAMPLES_PER_FIELD = 3
WINNER_COLOUR, TRIAL_COLOURS = "#d4a72c", ("#0969da", "#8250df", "#1f883d", "#57606a", "#bf3989", "#0a3069")
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#1b1f24}
table{border-collapse:collapse;margin:8px 0 16px}th{background:#f6f8fa}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
.ci{color:#656d76;font-size:85%}.verdict{font-size:28px;font-weight:700;padding:14px 18px;border-radius:8px;color:#fff}
.v-published{background:#1a7f37}.v-gated{background:#bc4c00}.v-failed{background:#cf222e}.v-unchanged{background:#0969da}
.v-other{background:#57606a}
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


class FailingExamples(BaseModel):
    """Test answers the tuned model got wrong on one of its worst fields."""

    model_config = ConfigDict(frozen=True)
    field: str
    examples: list[ScoredAnswer]


class DomainReport(BaseModel):
    """Everything a domain's report shows: its result, how its winner was chosen, where it fails, its data
    and lineage. Saved as report.json; rendered to report.md and report.html."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    description: str = ""
    base_model: str
    result: DomainResult
    selection: Selection | None = None
    failing_examples: list[FailingExamples] = []
    data: DatasetManifest | None = None
    lineage: Lineage | None = None

    @property
    def winner(self) -> int | None:
        return self.selection.winner if self.selection else None


def failing_examples(answers: list[ScoredAnswer]) -> list[FailingExamples]:
    """For the tuned model's worst fields, a few test examples it got wrong."""
    return [FailingExamples(field=f, examples=[a for a in answers if a.score.fields.get(f, 0.0) < 1.0][:EXAMPLES_PER_FIELD])
            for f in worst_fields([a.score for a in answers])]


def _cell(entry: Metric | None, signed: bool = False, metric: str | None = None) -> Cell:
    """A metric as 'value [lo, hi]'; with ``metric``, coloured when the interval excludes zero."""
    if entry is None:
        return Cell("—")
    ci = entry.ci
    cls = ""
    if ci and metric:
        sign = (1 if ci[0] > 0 else -1 if ci[1] < 0 else 0) * better_direction(metric)
        cls = {1: "better", -1: "worse"}.get(sign, "")
    return Cell(_num(entry.value, signed), f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "", cls)


def _generic(value: Any, limit: int = 10) -> str:
    """One manifest/lineage value as text (long lists shortened)."""
    if isinstance(value, dict) and not any(isinstance(v, (dict, list)) for v in value.values()):
        return ", ".join(f"{k}: {_num(v)}" for k, v in value.items())
    if isinstance(value, list) and len(value) > limit:
        return f"{len(value)} items, first {limit}: " + json.dumps(value[:limit], ensure_ascii=False, default=str)
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return _num(value)


def _verdict(status: str) -> str:
    return VERDICTS.get(status, status.upper())


def _verdict_line(result: DomainResult) -> str:
    if result.status == "failed":
        tail = f"error: {result.error or 'unknown'}"
    elif result.gate and result.gate.failed:
        tail = "not promoted; failed gate checks: " + ", ".join(result.gate.failed)
    else:
        checks = result.gate.checks if result.gate else []
        tail = f"all {len(checks)} gate checks passed" if checks else "no gate checks"
    return f"{_verdict(result.status)} — {result.name}: {tail}"


# ---------- the sections ----------
def _eval_blocks(split: SplitEvaluation, key: str, title: str) -> list[tuple]:
    models: list[tuple[str, Evaluation]] = [(m, e) for m, e in (("base", split.base), ("tuned", split.tuned),
                                                                ("onnx", split.onnx)) if e is not None]
    seen = [m for _, e in models for m in e.metrics]
    names = [m for m in METRIC_ORDER if m in seen] + sorted({m for m in seen if m not in METRIC_ORDER})
    rows = [[metric, *(_cell(e.metrics.get(metric)) for _, e in models),
             _cell(split.delta.metrics.get(metric), signed=True, metric=metric)] for metric in names]
    rows.append(["n", *(_num(e.n) for _, e in models), ""])
    blocks = [("h", 2, title), ("table", f"metrics metrics-{key}", ["metric", *(m for m, _ in models),
                                                                     "delta (tuned − base)"], rows)]
    if fields := list(dict.fromkeys([*split.tuned.fields, *split.base.fields])):
        rows = [[f, _cell(split.base.fields.get(f)), _cell(split.tuned.fields.get(f)),
                 _cell(split.delta.fields.get(f), True, "field")] for f in fields]
        blocks += [("h", 3, f"Per-field accuracy ({key})"),
                   ("table", "fields", ["field", "base", "tuned", "delta"], rows)]
    return blocks


def _context_blocks(split: SplitEvaluation) -> list[tuple]:
    """A domain with context: the tuned model with each record's context vs the same model with it removed, on the
    same test records, and the gain with its paired interval (base: the table above)."""
    ctx = split.context
    if ctx is None:
        return []
    names = [m for m in METRIC_ORDER if m in ctx.without.metrics or m in split.tuned.metrics]
    rows = [[metric, _cell(split.tuned.metrics.get(metric)), _cell(ctx.without.metrics.get(metric)),
             _cell(ctx.gain.metrics.get(metric), signed=True, metric=metric)] for metric in names]
    rows.append(["n", _num(split.tuned.n), _num(ctx.without.n), ""])
    unseen = (f"{len(ctx.unseen)} of its {len(ctx.entities)} {ctx.key} values never appear in training "
              f"({', '.join(ctx.unseen) or 'none'})")
    return [("h", 2, "Context: tuned with vs without"),
            ("p", f"The test records asked again of the same tuned model with their {ctx.key}'s context taken out of the "
                  f"system prompt; {unseen}. context_grounding: the share of the {ctx.key}'s grounding items found in "
                  f"the answer, 0 when another {ctx.key}'s are."),
            ("table", "metrics metrics-context", ["metric", "tuned with context", "tuned without context",
                                                  "gain (with − without)"], rows)]


def _trial_blocks(report: DomainReport) -> list[tuple]:
    trials = report.result.trials
    # hyperparameters some trial has (a round's own steps and sequence length); metrics but the per-field ones
    hkeys = [k for k in asdict(trials[0].hparams) if any(getattr(t.hparams, k) is not None for t in trials)]
    mkeys = list(dict.fromkeys(k for t in trials for k in t.metrics if not k.startswith(FIELD_PREFIX)))
    restarted = any(t.restarts for t in trials)  # the column only when a worker, node or driver was lost
    staged = any(t.round is not None for t in trials)
    rows = [[str(i), *([str(t.round)] if staged else []), *(_hp(getattr(t.hparams, k)) for k in hkeys),
             t.backend or "—", *(_num(t.metrics.get(k)) for k in mkeys), *([_restarts(t)] if restarted else []),
             "★" if i == report.winner else "", t.ended_how]
            for i, t in enumerate(trials)]
    header = ["#", *(["round"] if staged else []), *hkeys, "backend", *mkeys, *(["restarts"] if restarted else []),
              "winner", "error"]
    blocks = [("h", 2, "Sweep"), *_search_blocks(report.result.search),
              ("table", "trials", header, rows, ["winner" if i == report.winner else "" for i in range(len(trials))])]
    if sel := report.selection:
        blocks.append(("p", f"Selection rule: {', '.join(sel.rule)}. {'; '.join(sel.notes)}"))
    return [*blocks, ("plots", report)]


def _search_blocks(story: SearchStory | None) -> list[tuple]:
    """The staged search, round by round: what produced each round's configs, and why the search stopped."""
    if story is None:
        return []
    rows = [[str(n.round), n.why, ", ".join(n.trials), "; ".join(n.flags)] for n in story.rounds]
    blocks = [("table", "rounds", ["round", "why these configs", "configs", "flags"], rows)]
    if story.stopped:
        fix = " The prompt or the output constraints need fixing, not the hyperparameters." if story.fix_prompt else ""
        flags = f" Flags: {'; '.join(story.flags)}." if story.flags else ""
        blocks.append(("p", f"The search stopped: {story.stopped}.{fix}{flags}"))
    return blocks


def _restarts(trial: TrialOutcome) -> str:
    """``1 (from step 6)``: how often a trial started again, and the checkpoint step each restart went on from."""
    if not trial.restarts:
        return "0"
    return f"{trial.restarts} (from step {', '.join(str(s) for s in trial.resumed_from)})"


def _onnx_parity_blocks(drift: Drift) -> list[tuple]:
    parity = drift.merged_vs_onnx
    return [("h", 2, "ONNX parity (PyTorch vs onnxruntime)"),
            ("p", f"The merged PyTorch model's and the ONNX model's greedy answers to the {parity.prompts} evaluated test "
                  f"records, compared token by token over each prompt's longer answer ({parity.new_tokens} positions); "
                  "logits from one forward pass per prompt."),
            ("kv", "parity", {**parity.model_dump(), "onnxruntime provider": drift.onnx_provider})]


def _variant_blocks(result: DomainResult) -> list[tuple]:
    """One row per ONNX variant, the export first: its weights, size, CPU speed, test metrics with their intervals,
    agreement with the merged model, and its gate checks."""
    variants = result.variants
    checks = [c for c in (result.gate.checks if result.gate else []) if c.kind == "variant"]

    def gate_cell(variant: str) -> Cell | str:
        mine = [c for c in checks if c.name.startswith(f"{variant} ")]
        if not mine:
            return "—"
        failed = [c.name for c in mine if not c.passed]
        return Cell("FAIL: " + ", ".join(failed), cls="fail") if failed else Cell(f"pass ({len(mine)})", cls="pass")

    rows = [[name, v.folder, v.weights, f"{v.bytes / 1e6:.2f}", f"{v.speed.tokens_per_s:.1f}",
             _cell(v.evaluation.metrics.get("score")), _cell(v.evaluation.metrics.get("schema_pass_rate")),
             _num(v.parity.greedy_match_rate), _num(v.parity.max_abs_logit_diff), gate_cell(name)]
            for name, v in variants.items()]
    speed = next(iter(variants.values())).speed
    threads = (f"{speed.threads} thread{'s' if speed.threads > 1 else ''}" if speed.threads else
               "onnxruntime's default threads")
    return [("h", 2, "ONNX variants"),
            ("p", f"Each variant answered the same {next(iter(variants.values())).evaluation.n} test records; its "
                  "greedy agreement and largest logit difference are against the merged PyTorch model. Size: the graph "
                  "and its external data, in MB (10^6 bytes). tokens/s: onnxruntime on the CPU, batch 1, greedy, "
                  f"{speed.new_tokens} new tokens after a {speed.prompt_tokens}-token prompt (prefill included), the "
                  f"median of {speed.runs} runs, {threads}, in the finishing task (other domains' trials may share "
                  "the cores)."),
            ("table", "variants", ["variant", "folder", "weights", "size (MB)", "tokens/s (CPU)", "score",
                                   "schema_pass_rate", "greedy agreement", "max logit diff", "gate"], rows)]


def _drift_blocks(drift: Drift) -> list[tuple]:
    comps = [(label, p) for label, p in (("adapter vs merged", drift.adapter_vs_merged),
                                         ("merged vs onnx", drift.merged_vs_onnx)) if p is not None]
    keys = list(type(drift.adapter_vs_merged).model_fields)
    rows = [[label, *(_num(getattr(p, k)) for k in keys)] for label, p in comps]
    return [("h", 2, "Merge drift"), ("p", f"Adapter applied on the {drift.adapter_base} base, as trained."),
            ("table", "drift", ["comparison", *keys], rows)]


def _timing_blocks(timings: FinishTimings) -> list[tuple]:
    seconds = {phase.replace("_", " "): s for phase, s in timings.model_dump().items() if s is not None}
    return [("h", 2, "Finishing time"),
            ("p", "Seconds per phase of this domain's finishing task (report and publish end after this report is "
                  "written: the run's summary.json has them)."),
            ("table", "timings", list(seconds), [[f"{s:.1f}" for s in seconds.values()]])]


def _gate_blocks(gate: GateVerdict) -> list[tuple]:
    rows = [[c.name, c.kind, _num(c.value), _num(c.threshold),
             Cell("pass", cls="pass") if c.passed else Cell("FAIL", cls="fail"), c.detail] for c in gate.checks]
    return [("h", 2, "Release gate"), ("table", "gate", ["check", "kind", "value", "threshold", "verdict", "detail"], rows)]


LISTED_PAIRS = 50  # near-duplicate pairs listed in the report; the manifest has them all


def _ref(r: RecordRef) -> str:
    return f"{r.split} line {r.line} (group {r.group})"


def _data_blocks(m: DatasetManifest) -> list[tuple]:
    """The data section: the manifest's numbers, drops by reason, token lengths per split (histograms with the
    truncation point), label distributions, near-duplicate pairs across groups and other domains."""
    summary = {k: getattr(m, k) for k in ("domain", "source", "format", "seed", "dataset_version", "records_read",
                                           "counts", "groups")}
    blocks: list[tuple] = [("h", 2, "Data manifest"), ("kv", "data", {**summary, "dropped": len(m.drops)})]
    blocks.append(("h", 3, "Drops by reason"))
    if m.drops_by_reason:
        rows = [[code, str(n), REASONS.get(code, "")] for code, n in m.drops_by_reason.items()]
        blocks += [("table", "drops", ["reason", "records", "meaning"], rows),
                   ("p", "Every dropped record (id, source line, group, reason, detail) is in data/drops.jsonl.")]
    else:
        blocks.append(("p", "No record was dropped."))
    if m.lengths:
        blocks += _length_blocks(m.lengths, m.drops_by_reason.get("truncated", 0))
    for key, by_split in m.labels.items():
        labels = list(dict.fromkeys(label for counts in by_split.values() for label in counts))
        rows = [[label, *(str(by_split[s].get(label, 0)) for s in by_split)] for label in labels]
        blocks += [("h", 3, f"Labels: {key}"), ("table", "labels", ["label", *by_split], rows)]
    blocks += _near_duplicate_blocks(m)
    return blocks


def _length_blocks(lengths: LengthSummary, dropped: int) -> list[tuple]:
    limit = lengths.max_seq_length
    truncated = ", ".join(f"{n} of {split}" for split, n in lengths.truncated.items())
    rows = [[split, *(str(st[f"{part}_{q}"]) for part in ("prompt", "answer", "total") for q in ("p50", "p95", "max")),
             str(lengths.truncated[split])] for split, st in lengths.stats.items()]
    header = ["split", *(f"{part} {q}" for part in ("prompt", "answer", "total") for q in ("p50", "p95", "max")),
              "truncated"]
    return [("h", 3, "Token lengths"),
            ("p", f"Prompt (system and user turns in the chat template) and answer (with its end token) in {lengths.tokenizer}'s "
                  f"tokens. Training truncates a record past train.max_seq_length ({limit} tokens): kept records "
                  f"truncated: {truncated}; dropped as truncated: {dropped}."),
            ("table", "lengths", header, rows), ("lengths", lengths)]


def _near_duplicate_blocks(m: DatasetManifest) -> list[tuple]:
    blocks: list[tuple] = [("h", 3, "Near-duplicates")]
    nd = m.near_duplicates
    if nd is None:
        return [*blocks, ("p", "Not checked (data.near_duplicates: null); exact copies only.")]
    within = sum(d.reason == "near_duplicate" for d in m.drops)
    near_eval = sum(d.reason == "cross_split_leak" and "near" in d.detail for d in m.drops)
    blocks.append(("p", f"Jaccard >= {nd['threshold']:g} over {nd['shingle_size']}-{nd['shingle_unit'][:-1]} shingles "
                        f"of the user text: {within} later copies dropped within a split, {near_eval} training "
                        f"records dropped near an evaluation record; {len(m.possible_leaks)} pairs across two groups "
                        "(possible leakage the group key does not capture)."))
    if m.possible_leaks:
        rows = [[_ref(p.record), _ref(p.earlier), f"{p.jaccard:.3f}", p.action] for p in m.possible_leaks[:LISTED_PAIRS]]
        blocks.append(("table", "leaks", ["record", "near", "Jaccard", "action"], rows))
        if len(m.possible_leaks) > LISTED_PAIRS:
            blocks.append(("p", f"First {LISTED_PAIRS} of {len(m.possible_leaks)}; all in data/dataset_manifest.json."))
    blocks.append(("h", 3, "Near other domains' evaluation records"))
    if not m.cross_domain:
        return [*blocks, ("p", "No training record is near another domain's validation, test or golden record "
                               "(checked when the run prepares every domain; a report, not a drop).")]
    rows = [[_ref(c.record), c.domain, _ref(c.other), f"{c.jaccard:.3f}"] for c in m.cross_domain[:LISTED_PAIRS]]
    blocks.append(("table", "cross-domain", ["training record", "domain", "its evaluation record", "Jaccard"], rows))
    if len(m.cross_domain) > LISTED_PAIRS:
        blocks.append(("p", f"First {LISTED_PAIRS} of {len(m.cross_domain)}; all in data/dataset_manifest.json."))
    return blocks


def _blocks(report: DomainReport) -> list[tuple]:
    result = report.result
    blocks = [("p", report.description), ("p", f"Run {report.run_id} · base model {report.base_model}")]
    blocks += _gate_blocks(result.gate) if result.gate else []
    blocks += _eval_blocks(result.test, "test", "Test split: base vs tuned vs ONNX") if result.test else []
    blocks += _context_blocks(result.test) if result.test else []
    blocks += _eval_blocks(result.golden, "golden", "Golden set") if result.golden else []
    blocks += _trial_blocks(report) if result.trials else []
    if report.failing_examples:
        blocks += [("h", 2, "Failing examples (tuned model)"), ("examples", report.failing_examples)]
    if result.drift and result.drift.merged_vs_onnx:
        blocks += _onnx_parity_blocks(result.drift)
    blocks += _variant_blocks(result) if result.variants else []
    blocks += _drift_blocks(result.drift) if result.drift else []
    blocks += _timing_blocks(result.timings) if result.timings else []
    blocks += _data_blocks(report.data) if report.data else []
    if report.lineage:
        blocks.append(("details", "Lineage", [("kv", "lineage", report.lineage.model_dump(mode="json"))]))
    return blocks


def _examples(groups: list[FailingExamples]):
    """(field, [(id, input, expected, got)])."""
    for g in groups:
        yield g.field, [(a.id, a.input, a.expected, a.got) for a in g.examples]


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


def _loss_plot(trials: list[TrialOutcome], winner: int | None) -> str | None:
    if not any(t.history for t in trials):
        return None
    fig, axes = _axes(2)
    for ax, key in zip(axes, ("loss", "eval_loss")):
        for i, t in enumerate(trials):
            pts = [(r["step"], r[key]) for r in t.history if "step" in r and key in r]
            if not pts:
                continue
            hp = t.hparams
            label = f"r={hp.lora_rank} lr={_hp(hp.learning_rate)} ep={hp.epochs}"
            style = ({"lw": 2.8, "color": WINNER_COLOUR, "zorder": 3} if i == winner
                     else {"lw": 1.0, "alpha": 0.75, "color": TRIAL_COLOURS[i % len(TRIAL_COLOURS)]})
            ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None,
                    label=label + (" ★" if i == winner else ""), **style)
        ax.set(title="train loss" if key == "loss" else "eval_loss", xlabel="step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", transform=ax.transAxes)
    return _svg(fig)


def _scatter_plot(trials: list[TrialOutcome], winner: int | None, metric: str, hparam: str) -> str | None:
    pts = [(getattr(t.hparams, hparam), t.metrics[metric], i == winner) for i, t in enumerate(trials)
           if metric in t.metrics]
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


LENGTH_PARTS = (("prompt", "prompt tokens"), ("answer", "answer tokens"), ("total", "prompt + answer tokens"))


def _length_plot(lengths: LengthSummary) -> str:
    """Token-length histograms per split (prompt, answer, both; each split's share of records per bin),
    train.max_seq_length marked where it cuts."""
    fig, axes = _axes(3)
    for ax, (part, title) in zip(axes, LENGTH_PARTS):
        hist: Histogram = getattr(lengths, part)
        for i, (split, counts) in enumerate(hist.counts.items()):  # shares, so that splits of any size compare
            shares = [c / (sum(counts) or 1) for c in counts]
            ax.stairs(shares, hist.edges, label=f"{split} ({sum(counts)})", lw=1.6,
                      color=TRIAL_COLOURS[i % len(TRIAL_COLOURS)])
        if part != "answer":  # a prompt this long leaves no answer token; both together past it are truncated
            ax.axvline(lengths.max_seq_length, ls="--", lw=1.2, color="#cf222e",
                       label=f"max_seq_length {lengths.max_seq_length}")
        ax.set(title=title, xlabel="tokens", ylabel="share of the split's records")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _svg(fig)


def _md_histograms(lengths: LengthSummary) -> list[str]:
    """The histograms as tables, the bin train.max_seq_length falls in marked (or where it lies, past them all)."""
    out, limit = [], lengths.max_seq_length
    for part, title in LENGTH_PARTS:
        hist: Histogram = getattr(lengths, part)
        edges, splits = hist.edges, list(hist.counts)
        rows = []
        for i in range(len(edges) - 1):
            cut = part != "answer" and edges[i] <= limit < edges[i + 1]
            span = str(edges[i]) if edges[i + 1] - edges[i] == 1 else f"{edges[i]}–{edges[i + 1] - 1}"
            rows.append([span + (f" (max_seq_length {limit})" if cut else ""),
                         *(str(hist.counts[s][i]) for s in splits)])
        where = ("" if part == "answer" or edges[0] <= limit < edges[-1] else
                 f" (max_seq_length {limit}: {'past' if limit >= edges[-1] else 'below'} every record)")
        out += [f"**{title}**{where}", "", *_md_table(["tokens", *splits], rows)]
    return out


def _plot_metric(report: DomainReport) -> str | None:
    """The metric plotted against the hparams: the one the rule ranks by, else score, else eval_loss."""
    have = {k for t in report.result.trials for k in t.metrics}
    ranked_by = report.selection.ranked_by if report.selection else None
    return next((m for m in (ranked_by, "score", "eval_loss") if m in have), None)


def _plots_html(report: DomainReport) -> str:
    trials, winner, metric = report.result.trials, report.winner, _plot_metric(report)
    parts = [("loss curves per trial", _loss_plot(trials, winner))]
    parts += [(f"{metric} by {h}", _scatter_plot(trials, winner, metric, h) if metric else None)
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
        elif kind == "lengths":
            out += _md_histograms(a[0])
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


def result_markdown(result: DomainResult) -> str:
    """The release gate's checks, the test split's metrics with their 95 % intervals and the ONNX variants, as the report
    shows them (a published model's card carries them)."""
    blocks = _gate_blocks(result.gate) if result.gate else []
    blocks += _eval_blocks(result.test, "test", "Test split: base vs tuned vs ONNX") if result.test else []
    blocks += _context_blocks(result.test) if result.test else []
    blocks += _variant_blocks(result) if result.variants else []
    return "\n".join(_md_blocks(blocks)).rstrip() + "\n"


def render_markdown(report: DomainReport) -> str:
    lines = [f"# {_md(_verdict_line(report.result))}", "", *_md_blocks(_blocks(report))]
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
    def cells(r):
        return "".join(f"<td>{c if isinstance(c, Raw) else _html_cell(c)}</td>" for c in r)
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
        elif kind == "lengths":
            out.append(f'<div class="plots">{_length_plot(a[0])}</div>')
        elif kind == "examples":
            out.append(_examples_html(a[0]))
        elif kind == "details":
            out.append(f"<details><summary><h2 style='display:inline'>{html.escape(a[0])}</h2></summary>"
                       + "".join(_html_blocks(a[1])) + "</details>")
    return out


def render_html(report: DomainReport) -> str:
    status = report.result.status
    verdict = (f'<div class="verdict v-{status}" id="verdict">{html.escape(_verdict_line(report.result))}</div>')
    return _page(f"{report.result.name}: {_verdict(status)}", "\n".join([verdict, *_html_blocks(_blocks(report))]))


def write_reports(report: DomainReport, out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2, ensure_ascii=False),
                                         encoding="utf-8")
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(report), encoding="utf-8")


# ---------- human review (lorafleet review), days after the run ----------
class ReviewImport(BaseModel):
    """One export's ratings, as imported."""

    model_config = ConfigDict(frozen=True)
    export_id: str
    records: int
    imported_at: str
    source: str  # the reviewer's file, by name


class RatedRecord(BaseModel):
    """One reviewed test record: its mean rating per model (over the reviews that rated it) and the comments."""

    model_config = ConfigDict(frozen=True)
    id: str
    base: float
    tuned: float
    comments: list[str] = []


class ReviewReport(BaseModel):
    """A domain's human review, decided days after its run (``lorafleet review import``): the ratings, the gate decided
    again with them, and what became of latest.json. Saved as review/verdict.json, rendered to review/report.md and
    review/report.html beside the run's own report (which, published, stays as the run wrote it)."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    domain: str
    decided_at: str
    status_at_run: DomainStatus
    status: DomainStatus
    ratings: HumanRatings
    reviews: list[ReviewImport]
    records: list[RatedRecord] = []
    gate: GateVerdict
    pointer: str  # what the import did to latest.json, in words


def _review_verdict_line(review: ReviewReport) -> str:
    failed = review.gate.failed
    tail = (("not promoted; " if review.status_at_run != "published" else "") + "failed gate checks: " + ", ".join(failed)
            if failed else f"{len(review.gate.checks)} gate check{'s' * (len(review.gate.checks) != 1)} passed")
    return f"{_verdict(review.status)} — {review.domain}, reviewed: {tail}"


def _review_blocks(review: ReviewReport) -> list[tuple]:
    h = review.ratings
    rows = [["base", _cell(h.base), str(h.n)], ["tuned", _cell(h.tuned), str(h.n)],
            ["tuned − base", _cell(h.delta, signed=True, metric="human rating"), str(h.n)]]
    imports = [[i.export_id, str(i.records), i.imported_at, i.source] for i in review.reviews]
    records = [[r.id, _num(r.base), _num(r.tuned), _num(r.tuned - r.base, signed=True), " · ".join(r.comments)]
               for r in sorted(review.records, key=lambda r: (r.tuned - r.base, r.id))]
    gate = _gate_blocks(review.gate)[1:]  # its table, under a heading of its own
    return [("p", f"Run {review.run_id} · decided {review.decided_at} · at the run: {_verdict(review.status_at_run)} "
                  "(the run's own report is report.html in the folder above)"),
            ("h", 2, "Human review"),
            ("p", f"{h.n} test records, each answered by the base and the tuned model, both answers rated 1–5 by people "
                  "who did not know which model wrote which (shown as answers A and B, in an order shuffled and kept in "
                  "the export's key). tuned − base: 95 % paired-bootstrap interval over the records; a record rated "
                  "in several reviews counts once, with its mean ratings."),
            ("table", "human", ["model", "mean rating (1–5)", "records"], rows),
            ("table", "reviews", ["export", "records rated", "imported", "file"], imports),
            ("h", 2, "Release gate, decided again with the ratings"), *gate,
            ("p", review.pointer),
            ("details", "Every rated record, tuned worse first",
             [("table", "rated", ["id", "base", "tuned", "tuned − base", "comments"], records)])]


def render_review_markdown(review: ReviewReport) -> str:
    lines = [f"# {_md(_review_verdict_line(review))}", "", *_md_blocks(_review_blocks(review))]
    return "\n".join(lines).rstrip() + "\n"


def render_review_html(review: ReviewReport) -> str:
    verdict = (f'<div class="verdict v-{review.status}" id="verdict">{html.escape(_review_verdict_line(review))}</div>')
    return _page(f"{review.domain}: {_verdict(review.status)} (reviewed)",
                 "\n".join([verdict, *_html_blocks(_review_blocks(review))]))


# ---------- per-run summary ----------
def _note(d: DomainResult) -> str:
    if d.matches_run:
        return f"same inputs as run {d.matches_run}"
    return ", ".join(d.gate.failed if d.gate else []) or (d.error or "")


def _summary_rows(summary: RunSummary) -> tuple[list[str], list[list[str]]]:
    """Header and text rows: domain, verdict, key metrics..., failed checks, error or the run it matches."""
    domains = list(summary.domains.items())
    metrics = list(dict.fromkeys(m for _, d in domains for m in d.key_metrics))
    rows = [[name, _verdict(d.status), *(_num(d.key_metrics.get(m)) for m in metrics), _note(d)] for name, d in domains]
    return ["domain", "verdict", *metrics, "notes"], rows


def _report_link(name: str, d: DomainResult) -> str:
    """Relative to runs/<run_id>/index.html: the domain's report in this run, or in the run it matches."""
    esc = html.escape
    if d.status == "failed":
        return "—"
    if d.matches_run:
        return f'<a href="../{esc(d.matches_run)}/{esc(name)}/report.html">report ({esc(d.matches_run)})</a>'
    return f'<a href="{esc(name)}/report.html">report</a>'


def render_index(summary: RunSummary) -> str:
    esc = html.escape
    header, rows = _summary_rows(summary)
    cells = []
    for row, (name, d) in zip(rows, summary.domains.items()):
        badge = f'<span class="verdict v-{d.status}">{esc(row[1])}</span>'
        history = f'<a href="../../domains/{esc(name)}/history.html">history</a>'  # storage: runs/<id>/, domains/<d>/
        cells.append([row[0], Raw(badge), *row[2:], Raw(_report_link(name, d)), Raw(history)])
    head = (f"<h1>Run {esc(summary.run_id)}: {esc(summary.status)}</h1>"
            f"<p>{esc(_num(summary.seconds))} s · storage <code>{esc(summary.storage)}</code></p>")
    return _page(f"lorafleet run {summary.run_id}", head + _table_html("index", [*header, "report", "history"], cells))


def summary_table(summary: RunSummary) -> str:
    """The same per-domain information as index.html, as a plain-text table for a terminal."""
    header, rows = _summary_rows(summary)
    return text_table(header, [[*r[:-1], r[-1].replace("\n", " ")[:80]] for r in rows])


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a dashed rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)]) + "\n"
