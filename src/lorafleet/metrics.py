"""Per-example evaluation metrics and bootstrap confidence intervals. Pure functions: no torch, no I/O.

Every metric is a mean over examples of a per-example value, so one percentile bootstrap over examples
gives every confidence interval. ``score_example`` makes one row per example; ``aggregate`` summarises rows;
``paired_delta`` compares two models on the same examples.

Score ("points", 0-100): ``score = 100 * sum(w_i * v_i) / sum(w_i)`` over the (name, weight) pairs of
``MetricSpec.score_weights``, where ``v_i`` is the example's per-example value of that name (json_valid,
schema_pass, field_accuracy, grounding, chrf, rouge_l or context_grounding, each in [0, 1]). A value that is None
for the example (grounding without evidence items, text metrics without text fields, context_grounding without its
entity's items) is left out and the remaining weights are
renormalised; when nothing is left the score is None. The default is 20 json_valid + 30 schema_pass +
50 field_accuracy.
"""
from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_MISSING = object()


@dataclass(frozen=True)
class MetricInfo:
    """A metric lorafleet measures: its name everywhere (config, reports, summaries), which way is better,
    whether it is one of the few key numbers shown per domain, and the per-example value it averages (None
    for the ones computed another way: eval_loss, perplexity)."""

    name: str
    higher_is_better: bool
    key: bool = False
    example_value: str | None = None
    needs: str | None = None  # the config setting (dotted) without which it is never measured


# The one registry of metric names, in the order reports show them.
REGISTRY: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("json_valid_rate", True, key=True, example_value="json_valid"),
    MetricInfo("schema_pass_rate", True, key=True, example_value="schema_pass"),
    MetricInfo("field_accuracy", True, key=True, example_value="field_accuracy"),
    MetricInfo("score", True, key=True, example_value="score"),
    MetricInfo("grounding", True, example_value="grounding", needs="eval.evidence_fields"),
    MetricInfo("chrf", True, example_value="chrf", needs="eval.text_fields"),
    MetricInfo("rouge_l", True, example_value="rouge_l", needs="eval.text_fields"),
    MetricInfo("context_grounding", True, example_value="context_grounding", needs="context.grounding_fields"),
    MetricInfo("eval_loss", False),
    MetricInfo("perplexity", False),
)}
KEY_METRICS = tuple(name for name, m in REGISTRY.items() if m.key)


def better_direction(name: str) -> int:
    """+1 where a higher value is better, -1 where a lower one is (eval_loss, perplexity); +1 for names the
    registry does not know (per-field accuracies)."""
    info = REGISTRY.get(name)
    return -1 if info is not None and not info.higher_is_better else 1


# The per-example values a score can weight (score itself aside).
ROW_VALUES = tuple(m.example_value for m in REGISTRY.values() if m.example_value not in (None, "score"))
# A trial's validation accuracy of one answer field, reported as field_accuracy.<field> (the staged search reads it).
FIELD_PREFIX = "field_accuracy."
# What every trial reports (train.train_trial, and its validation answers scored): what select.rule can rank.
TRIAL_METRICS = ("eval_loss", "train_seconds", "load_seconds", "steps",
                 *(name for name, m in REGISTRY.items() if m.example_value))


class Metric(BaseModel):
    """A value with its 95 % interval (None where no interval is computed, e.g. eval loss)."""

    model_config = ConfigDict(frozen=True)
    value: float | None
    ci: tuple[float, float] | None = None


class Evaluation(BaseModel):
    """One model on one split: every metric with its interval, and per-field accuracy."""

    model_config = ConfigDict(frozen=True)
    n: int
    metrics: dict[str, Metric] = {}
    fields: dict[str, Metric] = {}

    def value(self, name: str) -> float | None:
        """The metric's value, or None when it was not measured."""
        metric = self.metrics.get(name)
        return None if metric is None else metric.value

    def values(self) -> dict[str, float | None]:
        return {name: m.value for name, m in self.metrics.items()}


class Delta(BaseModel):
    """tuned - base on the same examples, with paired-bootstrap intervals."""

    model_config = ConfigDict(frozen=True)
    metrics: dict[str, Metric] = {}
    fields: dict[str, Metric] = {}


class ContextEvaluation(BaseModel):
    """A domain with context: the tuned model asked the same records with each record's context removed from the
    system prompt, and the gain the context brings (with - without, paired), on the split's entities."""

    model_config = ConfigDict(frozen=True)
    key: str = Field(description="The entity field (context.key).")
    entities: list[str] = Field(description="The entities of the evaluated records.")
    unseen: list[str] = Field(description="Those of them no training record has: held out.")
    without: Evaluation
    gain: Delta = Field(description="Tuned with its context minus tuned without it, on the same records.")


class SplitEvaluation(BaseModel):
    """Base, tuned and (where exported) ONNX models on one split, and the tuned - base delta; for a domain with
    context, also the tuned model without it."""

    model_config = ConfigDict(frozen=True)
    base: Evaluation
    tuned: Evaluation
    delta: Delta
    onnx: Evaluation | None = None
    context: ContextEvaluation | None = None


class ExampleScore(BaseModel):
    """The per-example values of one answer (see the module docstring)."""

    model_config = ConfigDict(frozen=True)
    json_valid: float
    schema_pass: float
    fields: dict[str, float]
    field_accuracy: float
    grounding: float | None = None
    chrf: float | None = None
    rouge_l: float | None = None
    context_grounding: float | None = None
    score: float | None = None


@dataclass(frozen=True)
class MetricSpec:
    number_tolerance: float = 0.01          # relative: |a-b| <= tol * max(|a|,|b|)
    evidence_fields: tuple[str, ...] = ()   # items (string or list of strings) must appear verbatim in the input
    text_fields: tuple[str, ...] = ()       # free-text fields scored with chrF and ROUGE-L
    score_weights: tuple[tuple[str, float], ...] = (("json_valid", 0.2), ("schema_pass", 0.3), ("field_accuracy", 0.5))

    def __post_init__(self):
        object.__setattr__(self, "evidence_fields", tuple(self.evidence_fields))
        object.__setattr__(self, "text_fields", tuple(self.text_fields))
        object.__setattr__(self, "score_weights", tuple((str(n), float(w)) for n, w in self.score_weights))
        unknown = [n for n, _ in self.score_weights if n not in ROW_VALUES]
        if unknown:
            raise ValueError(f"score_weights: unknown {', '.join(unknown)}; known: {', '.join(ROW_VALUES)}")
        if any(w < 0 for _, w in self.score_weights):
            raise ValueError("score_weights may not be negative")
        if sum(w for _, w in self.score_weights) <= 0:
            raise ValueError("score_weights need a positive sum (score is their weighted mean)")
        if self.number_tolerance < 0:
            raise ValueError("number_tolerance must be >= 0")


class _WordTokenizer:
    """ROUGE tokenizer: runs of unicode letters, marks and digits, casefolded. The usual default keeps only
    [a-z0-9], which empties Vietnamese and Thai (Thai vowel signs are marks, so a plain \\w splits words)."""

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).casefold()
        return "".join(c if unicodedata.category(c)[0] in "LMN" else " " for c in text).split()


@functools.cache
def _text_scorers():
    """chrF and ROUGE-L from torchmetrics (the same numbers as sacrebleu and rouge-score; already on GPU hosts),
    imported only by domains that score free text. ROUGE-L gets our tokenizer and no ASCII-only normaliser."""
    from torchmetrics.functional.text import chrf_score, rouge_score

    tokenizer = _WordTokenizer().tokenize

    def chrf(pred: str, ref: str) -> float:
        return float(chrf_score([pred], [[ref]], n_word_order=0))  # chrF (no word n-grams: not chrF++)

    def rouge_l(pred: str, ref: str) -> float:
        return float(rouge_score(pred, ref, rouge_keys="rougeL", tokenizer=tokenizer,
                                 normalizer=lambda text: text)["rougeL_fmeasure"])

    return chrf, rouge_l


def _text(s: str, casefold: bool = True) -> str:
    s = unicodedata.normalize("NFKC", s)
    return " ".join((s.casefold() if casefold else s).split())


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _canon(v: Any) -> Any:
    """A canonical form for set membership: normalised strings, numbers as rounded floats, sorted lists."""
    if isinstance(v, str):
        return _text(v)
    if _is_num(v):
        return round(float(v), 6)
    if isinstance(v, list):
        return sorted(json.dumps(_canon(x), sort_keys=True, ensure_ascii=False) for x in v)
    if isinstance(v, dict):
        return {k: _canon(x) for k, x in v.items()}
    return v


def _field_score(pred: Any, ref: Any, tol: float = 0.01) -> float:
    """How well a predicted value matches the reference value, in [0, 1]. Missing or another type: 0; strings:
    normalised exact match; numbers: relative tolerance; bool/null: equality; lists: set F1 over canonical items
    (both empty: 1); dicts: mean over the reference's keys, recursively."""
    if pred is _MISSING:
        return 0.0
    if isinstance(ref, str):
        return float(isinstance(pred, str) and _text(pred) == _text(ref))
    if _is_num(ref):
        return float(_is_num(pred) and abs(pred - ref) <= tol * max(abs(pred), abs(ref)))
    if isinstance(ref, list):
        if not isinstance(pred, list):
            return 0.0
        p, r = ({json.dumps(_canon(x), sort_keys=True, ensure_ascii=False) for x in xs} for xs in (pred, ref))
        return 1.0 if not p and not r else 2 * len(p & r) / (len(p) + len(r))
    if isinstance(ref, dict):
        if not isinstance(pred, dict):
            return 0.0
        if not ref:
            return float(not pred)
        return sum(_field_score(pred.get(k, _MISSING), v, tol) for k, v in ref.items()) / len(ref)
    return float(type(pred) is type(ref) and pred == ref)  # bool, null


def parse_answer(text: str) -> tuple[bool, Any]:
    """(ok, value): strict JSON after stripping whitespace, ``null`` included."""
    try:
        return True, json.loads(text.strip())
    except ValueError:
        return False, None


def grounding(pred: dict, input_text: str, fields: Sequence[str]) -> float | None:
    """The share of the answer's evidence items (strings, or lists of strings, under ``fields``) found verbatim in
    the input, whitespace and Unicode form normalised; None when it has none."""
    source = _text(input_text, casefold=False)
    items: list[str] = []
    for f in fields:
        v = pred.get(f)
        items.extend([v] if isinstance(v, str) else v if isinstance(v, list) else [])
    items = [_text(x, casefold=False) for x in items if isinstance(x, str) and x.strip()]
    return sum(x in source for x in items) / len(items) if items else None


@functools.lru_cache(maxsize=4096)
def _context_pattern(item: str) -> re.Pattern:
    """An item found as a whole word: not inside a longer run of ASCII letters and digits ('#Glow' is not in
    '#GlowUp'); scripts written without spaces (Thai) match anywhere."""
    text = _text(item)
    return re.compile(("(?<![a-z0-9_])" if text[:1].isascii() and text[:1].isalnum() or text[:1] == "_" else "")
                      + re.escape(text) + ("(?![a-z0-9_])" if text[-1:].isascii() and (text[-1:].isalnum()
                                                                                        or text[-1:] == "_") else ""))


def context_grounding(answer: str, own: Sequence[str], others: Sequence[str] = ()) -> float | None:
    """The share of the entity's own grounding items (from its context record) found in the answer's text, 0 when an
    item of another entity is found there: an answer that carries another brand's hashtags is not grounded in its own
    context. Items match after NFKC, case and whitespace normalisation, as whole words (``_context_pattern``). None
    when the entity has no items."""
    if not own:
        return None
    text = _text(answer)
    if any(_context_pattern(x).search(text) for x in others):
        return 0.0
    return sum(bool(_context_pattern(x).search(text)) for x in own) / len(own)


def _text_scores(pred: str | None, ref: str) -> tuple[float, float]:
    if not isinstance(pred, str):
        return 0.0, 0.0
    if not pred.strip() and not ref.strip():
        return 1.0, 1.0
    chrf, rouge_l = _text_scorers()
    return chrf(pred, ref), rouge_l(pred, ref)


def score_example(pred_text: str, ref_text: str, input_text: str, validator, spec: MetricSpec,
                  context_items: tuple[Sequence[str], Sequence[str]] | None = None) -> ExampleScore:
    """The per-example values of one answer (see the module docstring). ``validator`` is a jsonschema
    validator (Draft202012Validator); ``context_items``: the record's entity's grounding items and every other
    entity's (a domain with context), for ``context_grounding``."""
    ok, pred = parse_answer(pred_text)
    ref = json.loads(ref_text)
    ref = ref if isinstance(ref, dict) else {}
    got = pred if isinstance(pred, dict) else {}
    fields = {k: _field_score(got.get(k, _MISSING), v, spec.number_tolerance) for k, v in ref.items()}
    row: dict[str, Any] = {  # built up, then frozen into an ExampleScore
        "json_valid": float(ok), "schema_pass": float(ok and validator.is_valid(pred)), "fields": fields,
        "field_accuracy": sum(fields.values()) / len(fields) if fields else 0.0,
        "grounding": grounding(got, input_text, spec.evidence_fields), "chrf": None, "rouge_l": None,
        "context_grounding": context_grounding(pred_text, *context_items) if context_items else None}
    if spec.text_fields:
        pairs = [_text_scores(got.get(f), ref[f] if isinstance(ref.get(f), str) else "") for f in spec.text_fields]
        row["chrf"] = sum(c for c, _ in pairs) / len(pairs)
        row["rouge_l"] = sum(r for _, r in pairs) / len(pairs)
    used = [(w, row[n]) for n, w in spec.score_weights if row[n] is not None]
    total = sum(w for w, _ in used)
    row["score"] = 100 * sum(w * v for w, v in used) / total if total > 0 else None
    return ExampleScore(**row)


def _column(values: Sequence[float | None]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=float)


def _indices(n: int, samples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def _resampled_means(col: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean of the non-missing values of each resample (NaN where a resample has none)."""
    vals = col[idx]
    ok = ~np.isnan(vals)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, vals, 0.0).sum(axis=1) / ok.sum(axis=1)


LEVEL = 0.95  # every interval is a 95 % one


def _interval(means: np.ndarray) -> list[float]:
    lo, hi = np.nanquantile(means, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def bootstrap_ci(values: Sequence[float | None], samples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over examples; None values are missing (skipped in each
    resample). Deterministic for a given seed. Raises ValueError when there is no value."""
    col = _column(values)
    if np.isnan(col).all():
        raise ValueError("bootstrap_ci needs at least one value")
    return tuple(_interval(_resampled_means(col, _indices(len(col), samples, seed))))


def _columns(scores: Sequence[ExampleScore], fields: list[str]) -> tuple[dict, dict]:
    metrics = {name: _column([getattr(s, m.example_value) for s in scores])
               for name, m in REGISTRY.items() if m.example_value}
    return ({k: c for k, c in metrics.items() if not np.isnan(c).all()},
            {f: _column([s.fields.get(f, 0.0) for s in scores]) for f in fields})


def _field_names(*score_lists: Sequence[ExampleScore]) -> list[str]:
    return sorted({f for scores in score_lists for s in scores for f in s.fields})


def aggregate(scores: Sequence[ExampleScore], samples: int = 1000, seed: int = 0) -> Evaluation:
    """Every metric's mean over examples with its percentile-bootstrap interval, and per-field accuracy.
    Optional metrics (grounding, chrf, rouge_l) appear when an example has a value and average over those;
    an example lacking a field counts 0 for it."""
    if not scores:
        return Evaluation(n=0)
    idx = _indices(len(scores), samples, seed)
    metrics, fields = _columns(scores, _field_names(scores))

    def summary(col: np.ndarray) -> Metric:
        return Metric(value=float(np.nanmean(col)), ci=_interval(_resampled_means(col, idx)))

    return Evaluation(n=len(scores), metrics={k: summary(c) for k, c in metrics.items()},
                      fields={f: summary(c) for f, c in fields.items()})


def paired_delta(base: Sequence[ExampleScore], tuned: Sequence[ExampleScore], samples: int = 1000,
                 seed: int = 0) -> Delta:
    """tuned - base for every metric both sides have, and every field, with a paired bootstrap interval
    (example indices resampled jointly). Both must score the same examples in the same order."""
    if len(base) != len(tuned):
        raise ValueError(f"{len(base)} base scores for {len(tuned)} tuned scores")
    if not base:
        return Delta()
    idx = _indices(len(base), samples, seed)
    names = _field_names(base, tuned)
    (bm, bf), (tm, tf) = _columns(base, names), _columns(tuned, names)

    def delta(b: np.ndarray, t: np.ndarray) -> Metric:
        diffs = _resampled_means(t, idx) - _resampled_means(b, idx)
        return Metric(value=float(np.nanmean(t) - np.nanmean(b)), ci=_interval(diffs))

    return Delta(metrics={k: delta(bm[k], tm[k]) for k in bm if k in tm},
                 fields={f: delta(bf[f], tf[f]) for f in names})


def worst_fields(scores: Sequence[ExampleScore], k: int = 3) -> list[str]:
    """The k fields with the lowest mean over examples (an example lacking a field counts 0), ties by name."""
    names = _field_names(scores)
    means = {f: sum(s.fields.get(f, 0.0) for s in scores) / len(scores) for f in names}
    return sorted(names, key=lambda f: (means[f], f))[:k]


class HumanRatings(BaseModel):
    """People's ratings (1-5) of the base and the tuned model's answers to the same test records, each pair rated
    blind to which model wrote which (``lorafleet review``): each model's mean rating with its 95 % interval, and
    tuned - base with a paired-bootstrap interval. A record rated in several reviews counts once, with the mean of
    its ratings."""

    model_config = ConfigDict(frozen=True)
    n: int
    base: Metric
    tuned: Metric
    delta: Metric
    reviews: list[str] = []  # the export ids whose ratings these are


def rating_summary(base: Sequence[float], tuned: Sequence[float], samples: int = 1000, seed: int = 0,
                   reviews: Sequence[str] = ()) -> HumanRatings:
    """Means and intervals of paired ratings (``base[i]`` and ``tuned[i]`` rate the answers to one record), the
    delta's interval from record indices resampled jointly, as ``paired_delta`` does."""
    if len(base) != len(tuned):
        raise ValueError(f"{len(base)} base ratings for {len(tuned)} tuned ratings")
    if not base:
        raise ValueError("rating_summary needs at least one rated record")
    b, t = _column(base), _column(tuned)
    idx = _indices(len(b), samples, seed)
    mb, mt = _resampled_means(b, idx), _resampled_means(t, idx)
    return HumanRatings(n=len(b), base=Metric(value=float(b.mean()), ci=_interval(mb)),
                        tuned=Metric(value=float(t.mean()), ci=_interval(mt)),
                        delta=Metric(value=float(t.mean() - b.mean()), ci=_interval(mt - mb)), reviews=list(reviews))
