"""The release gate: may the tuned model become the domain's latest? Pure: numbers in, verdict out.

Every check carries its kind, value, threshold, verdict and a line of detail, so that reports can show
why a model was or was not promoted.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from lorafleet.config import GateConfig
from lorafleet.metrics import Evaluation, SplitEvaluation, better_direction

CheckKind = Literal["absolute", "not_below_base", "min_improvement", "field_regression", "golden", "context_improvement"]


class GateCheck(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: CheckKind
    name: str
    value: float | None
    threshold: float
    passed: bool
    detail: str


class GateVerdict(BaseModel):
    model_config = ConfigDict(frozen=True)
    checks: list[GateCheck]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]


def _threshold(kind: CheckKind, prefix: str, name: str, threshold: float, evaluation: Evaluation | None,
               where: str) -> GateCheck:
    """The tuned model's ``name`` at or beyond ``threshold`` in the metric's better direction."""
    up, value = better_direction(name), evaluation.value(name) if evaluation else None
    detail = ("the domain has no golden set (eval.golden)" if evaluation is None else
              "not measured" if value is None else f"tuned {value:.3f} {where}")
    return GateCheck(kind=kind, name=f"{prefix}{name} {'>=' if up > 0 else '<='} {threshold:g}", value=value,
                     threshold=threshold, passed=value is not None and up * (value - threshold) >= 0, detail=detail)


def decide(gate: GateConfig, test: SplitEvaluation, golden: SplitEvaluation | None = None) -> GateVerdict:
    """Apply every configured check to the test split (and the golden set); the gate passes when all pass.
    Thresholds are met in each metric's better direction (``>=`` for rates and score, ``<=`` for eval_loss and
    perplexity). A metric the evaluation could not measure (e.g. grounding of a model that quoted nothing)
    fails its check, saying so."""
    tuned, base, delta = test.tuned, test.base, test.delta
    checks = [_threshold("absolute", "", name, threshold, tuned, "on the test split")
              for name, threshold in gate.min.items()]
    for name in gate.not_below_base:
        t, b, up = tuned.value(name), base.value(name), better_direction(name)
        label = f"{name} not {'below' if up > 0 else 'above'} base"
        if t is None:
            checks.append(GateCheck(kind="not_below_base", name=label, value=None, threshold=0.0,
                                    passed=False, detail="not measured on the tuned model"))
            continue
        b = 0.0 if b is None else b  # the base model gave nothing to measure (e.g. no quotes at all)
        checks.append(GateCheck(kind="not_below_base", name=label, value=t - b, threshold=0.0,
                                passed=up * (t - b) >= 0, detail=f"tuned {t:.3f} vs base {b:.3f}"))
    for name, threshold in gate.min_improvement.items():
        gain, up = delta.metrics.get(name), better_direction(name)
        label = f"{name} {'gain' if up > 0 else 'drop'} >= {threshold:g}"
        if gain is None or gain.ci is None:
            checks.append(GateCheck(kind="min_improvement", name=label, value=None,
                                    threshold=threshold, passed=False, detail="not measured on both models"))
            continue
        low, high = sorted(up * bound for bound in gain.ci)  # the improvement's interval, better direction up
        checks.append(GateCheck(kind="min_improvement", name=label, value=low, threshold=threshold,
                                passed=low >= threshold,
                                detail=f"{'gain' if up > 0 else 'drop'} {up * gain.value:+.3f}, 95% interval "
                                f"[{low:+.3f}, {high:+.3f}]; its lower end counts"))
    if gate.max_field_regression is not None:
        fields = delta.fields
        worst = min(fields, key=lambda f: fields[f].value) if fields else None
        value = fields[worst].value if worst else 0.0
        checks.append(GateCheck(kind="field_regression", name=f"no field falls more than {gate.max_field_regression:g}",
                                value=value, threshold=-gate.max_field_regression,
                                passed=value >= -gate.max_field_regression,
                                detail=f"worst field: {worst} ({value:+.3f} vs base)" if worst else "no fields"))
    checks += [_threshold("golden", "golden ", name, threshold, golden.tuned if golden else None,
                          f"on {golden.tuned.n} golden records" if golden else "")
               for name, threshold in gate.golden_min.items()]
    for name, threshold in gate.context_min_improvement.items():
        gain, up = test.context.gain.metrics.get(name) if test.context else None, better_direction(name)
        label = f"{name} gain with context >= {threshold:g}"
        if gain is None or gain.ci is None:
            checks.append(GateCheck(kind="context_improvement", name=label, value=None, threshold=threshold,
                                    passed=False, detail="not measured with and without the context"))
            continue
        low, high = sorted(up * bound for bound in gain.ci)
        unseen = len(test.context.unseen)
        checks.append(GateCheck(kind="context_improvement", name=label, value=low, threshold=threshold,
                                passed=low >= threshold,
                                detail=f"tuned with vs without its context, {unseen} of {len(test.context.entities)} "
                                f"entities unseen in training: {up * gain.value:+.3f}, 95% interval [{low:+.3f}, "
                                f"{high:+.3f}]; its lower end counts"))
    return GateVerdict(checks=checks)
