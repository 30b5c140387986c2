"""The release gate: may the tuned model become the domain's latest? Pure: numbers in, verdict out.

Every check carries its kind, value, threshold, verdict and a line of detail, so that reports can show
why a model was or was not promoted. Evaluation summaries are ``evaluate.evaluate_model``'s:
``{"metrics": {name: {"value", "ci"}}, "fields": {...}}``; ``delta`` is ``metrics.paired_delta``'s.
"""
from __future__ import annotations

from typing import Any

from lorafleet.config import GateConfig


def _value(summary: dict[str, Any] | None, name: str) -> float | None:
    """The metric's value, or None when the evaluation could not measure it (e.g. grounding of a model that
    quoted nothing): a check on an unmeasured value fails, saying so."""
    entry = (summary or {}).get("metrics", {}).get(name)
    return None if entry is None else entry["value"]


def _check(kind: str, name: str, value: float | None, threshold: float, passed: bool, detail: str) -> dict[str, Any]:
    return {"kind": kind, "name": name, "value": value, "threshold": threshold, "passed": bool(passed),
            "detail": detail}


def decide(gate: GateConfig, tuned: dict[str, Any], base: dict[str, Any], delta: dict[str, Any],
           golden_tuned: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply every configured check; the gate passes when all pass."""
    checks = []
    for name, threshold in gate.min.items():
        value = _value(tuned, name)
        ok = value is not None and value >= threshold
        checks.append(_check("absolute", f"{name} >= {threshold:g}", value, threshold, ok,
                             f"tuned {value:.3f} on the test split" if value is not None else "not measured"))
    for name in gate.not_below_base:
        t, b = _value(tuned, name), _value(base, name)
        if t is None:
            checks.append(_check("not_below_base", f"{name} not below base", None, 0.0, False,
                                 "not measured on the tuned model"))
            continue
        b = 0.0 if b is None else b  # the base model gave nothing to measure (e.g. no quotes at all)
        checks.append(_check("not_below_base", f"{name} not below base", t - b, 0.0, t >= b,
                             f"tuned {t:.3f} vs base {b:.3f}"))
    for name, threshold in gate.min_improvement.items():
        d = delta.get(name)
        if d is None:
            checks.append(_check("min_improvement", f"{name} gain >= {threshold:g}", None, threshold, False,
                                 "not measured on both models"))
            continue
        low = d["ci"][0]
        checks.append(_check("min_improvement", f"{name} gain >= {threshold:g}", low, threshold, low >= threshold,
                             f"gain {d['value']:+.3f}, 95% interval [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]; "
                             "its lower end counts"))
    if gate.max_field_regression is not None:
        fields = delta.get("fields", {})
        worst = min(fields, key=lambda f: fields[f]["value"]) if fields else None
        value = fields[worst]["value"] if worst else 0.0
        checks.append(_check("field_regression", f"no field falls more than {gate.max_field_regression:g}", value,
                             -gate.max_field_regression, value >= -gate.max_field_regression,
                             f"worst field: {worst} ({value:+.3f} vs base)" if worst else "no fields"))
    for name, threshold in gate.golden_min.items():
        value = _value(golden_tuned, name)
        ok = value is not None and value >= threshold
        detail = ("the domain has no golden set (eval.golden)" if golden_tuned is None else
                  f"tuned {value:.3f} on {golden_tuned.get('n')} golden records" if value is not None else "not measured")
        checks.append(_check("golden", f"golden {name} >= {threshold:g}", value, threshold, ok, detail))
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
