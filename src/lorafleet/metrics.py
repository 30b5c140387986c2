"""Per-example evaluation metrics and bootstrap confidence intervals. Pure functions: no torch, no I/O.

Every metric is a mean over examples of a per-example value, so one percentile bootstrap over examples
gives every confidence interval. ``score_example`` makes one row per example; ``aggregate`` summarises rows;
``paired_delta`` compares two models on the same examples.

Score ("points", 0-100): ``score = 100 * sum(w_i * v_i) / sum(w_i)`` over the (name, weight) pairs of
``MetricSpec.score_weights``, where ``v_i`` is the example's per-example value of that name (json_valid,
schema_pass, field_accuracy, grounding, chrf or rouge_l, each in [0, 1]). A value that is None for the example
(grounding without evidence items, text metrics without text fields) is left out and the remaining weights are
renormalised; when nothing is left the score is None. The default is 20 json_valid + 30 schema_pass +
50 field_accuracy.
"""
from __future__ import annotations

import functools
import json
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ROW_VALUES = ("json_valid", "schema_pass", "field_accuracy", "grounding", "chrf", "rouge_l")
METRICS = {"json_valid_rate": "json_valid", "schema_pass_rate": "schema_pass", "field_accuracy": "field_accuracy",
           "score": "score", "grounding": "grounding", "chrf": "chrf", "rouge_l": "rouge_l"}
_MISSING = object()


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
        if unknown or any(w < 0 for _, w in self.score_weights) or sum(w for _, w in self.score_weights) <= 0:
            raise ValueError(f"score_weights need names from {ROW_VALUES} and non-negative weights with a "
                             f"positive sum: {self.score_weights}")
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


def _parse(text: str) -> tuple[bool, Any]:
    """(ok, value): strict JSON after stripping whitespace, ``null`` included."""
    try:
        return True, json.loads(text.strip())
    except ValueError:
        return False, None


def _grounding(pred: dict, input_text: str, fields: Sequence[str]) -> float | None:
    source = _text(input_text, casefold=False)
    items: list[str] = []
    for f in fields:
        v = pred.get(f)
        items.extend([v] if isinstance(v, str) else v if isinstance(v, list) else [])
    items = [_text(x, casefold=False) for x in items if isinstance(x, str) and x.strip()]
    return sum(x in source for x in items) / len(items) if items else None


def _text_scores(pred: str | None, ref: str) -> tuple[float, float]:
    if not isinstance(pred, str):
        return 0.0, 0.0
    if not pred.strip() and not ref.strip():
        return 1.0, 1.0
    chrf, rouge_l = _text_scorers()
    return chrf(pred, ref), rouge_l(pred, ref)


def score_example(pred_text: str, ref_text: str, input_text: str, validator, spec: MetricSpec) -> dict:
    """One row of per-example values: json_valid, schema_pass, fields, field_accuracy, grounding, chrf, rouge_l,
    score (see the module docstring). ``validator`` is a jsonschema validator (Draft202012Validator)."""
    ok, pred = _parse(pred_text)
    ref = json.loads(ref_text)
    ref = ref if isinstance(ref, dict) else {}
    got = pred if isinstance(pred, dict) else {}
    fields = {k: _field_score(got.get(k, _MISSING), v, spec.number_tolerance) for k, v in ref.items()}
    row: dict[str, Any] = {
        "json_valid": float(ok), "schema_pass": float(ok and validator.is_valid(pred)), "fields": fields,
        "field_accuracy": sum(fields.values()) / len(fields) if fields else 0.0,
        "grounding": _grounding(got, input_text, spec.evidence_fields), "chrf": None, "rouge_l": None}
    if spec.text_fields:
        pairs = [_text_scores(got.get(f), ref[f] if isinstance(ref.get(f), str) else "") for f in spec.text_fields]
        row["chrf"] = sum(c for c, _ in pairs) / len(pairs)
        row["rouge_l"] = sum(r for _, r in pairs) / len(pairs)
    used = [(w, row[n]) for n, w in spec.score_weights if row[n] is not None]
    total = sum(w for w, _ in used)
    row["score"] = 100 * sum(w * v for w, v in used) / total if total > 0 else None
    return row


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


def _interval(means: np.ndarray, level: float) -> list[float]:
    lo, hi = np.nanquantile(means, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def bootstrap_ci(values: Sequence[float | None], samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over examples; None values are missing (skipped in each
    resample). Deterministic for a given seed. Raises ValueError when there is no value."""
    col = _column(values)
    if np.isnan(col).all():
        raise ValueError("bootstrap_ci needs at least one value")
    return tuple(_interval(_resampled_means(col, _indices(len(col), samples, seed)), level))


def _columns(rows: list[dict], fields: list[str]) -> tuple[dict, dict]:
    metrics = {name: _column([r.get(key) for r in rows]) for name, key in METRICS.items()}
    return ({k: c for k, c in metrics.items() if not np.isnan(c).all()},
            {f: _column([r.get("fields", {}).get(f, 0.0) for r in rows]) for f in fields})


def _field_names(*row_lists: list[dict]) -> list[str]:
    return sorted({f for rows in row_lists for r in rows for f in r.get("fields", {})})


def aggregate(rows: list[dict], samples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """{"n", "metrics": {name: {"value", "ci"}}, "fields": {field: {"value", "ci"}}} from score_example rows.
    Optional metrics (grounding, chrf, rouge_l) appear when a row has a value and average over those rows;
    a row lacking a field counts 0 for it."""
    if not rows:
        return {"n": 0, "metrics": {}, "fields": {}}
    idx = _indices(len(rows), samples, seed)
    metrics, fields = _columns(rows, _field_names(rows))

    def summary(col: np.ndarray) -> dict:
        return {"value": float(np.nanmean(col)), "ci": _interval(_resampled_means(col, idx), level)}

    return {"n": len(rows), "metrics": {k: summary(c) for k, c in metrics.items()},
            "fields": {f: summary(c) for f, c in fields.items()}}


def paired_delta(base_rows: list[dict], tuned_rows: list[dict], samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """tuned - base for every metric both sides have, and every field, with a paired bootstrap interval
    (example indices resampled jointly). Rows must be for the same examples in the same order."""
    if len(base_rows) != len(tuned_rows):
        raise ValueError(f"{len(base_rows)} base rows for {len(tuned_rows)} tuned rows")
    if not base_rows:
        return {"fields": {}}
    idx = _indices(len(base_rows), samples, seed)
    names = _field_names(base_rows, tuned_rows)
    (bm, bf), (tm, tf) = _columns(base_rows, names), _columns(tuned_rows, names)

    def delta(b: np.ndarray, t: np.ndarray) -> dict:
        diffs = _resampled_means(t, idx) - _resampled_means(b, idx)
        return {"value": float(np.nanmean(t) - np.nanmean(b)), "ci": _interval(diffs, level)}

    out: dict[str, Any] = {k: delta(bm[k], tm[k]) for k in bm if k in tm}
    out["fields"] = {f: delta(bf[f], tf[f]) for f in names}
    return out


def worst_fields(rows: list[dict], k: int = 3) -> list[str]:
    """The k fields with the lowest mean score over rows (a row lacking a field counts 0), ties by name."""
    names = _field_names(rows)
    means = {f: sum(r.get("fields", {}).get(f, 0.0) for r in rows) / len(rows) for f in names}
    return sorted(names, key=lambda f: (means[f], f))[:k]
