"""The release gate: may the tuned model become the domain's latest? Pure: numbers in, verdict out.

Every check carries its kind, value, threshold, verdict and a line of detail, so that reports can show
why a model was or was not promoted.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from lorafleet.config import GateConfig
from lorafleet.metrics import Evaluation, HumanRatings, SplitEvaluation, better_direction

CheckKind = Literal["absolute", "not_below_base", "min_improvement", "field_regression", "golden", "human"]
NOT_REVIEWED = "not reviewed"


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


def decide(gate: GateConfig, test: SplitEvaluation, golden: SplitEvaluation | None = None,
           human: HumanRatings | None = None) -> GateVerdict:
    """Apply every configured check to the test split (and the golden set, and people's ratings: ``human``, None
    while nobody reviewed the run); the gate passes when all pass. Thresholds are met in each metric's better
    direction (``>=`` for rates and score, ``<=`` for eval_loss and perplexity). A metric the evaluation could not
    measure (e.g. grounding of a model that quoted nothing) fails its check, saying so."""
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
    if gate.human_min_improvement is not None:
        checks.append(_human(gate.human_min_improvement, gate, human))
    return GateVerdict(checks=checks)


def _human(threshold: float, gate: GateConfig, human: HumanRatings | None) -> GateCheck:
    """``gate.human_min_improvement``: the tuned model's mean rating beats the base's, and the lower end of the
    paired interval of tuned - base is above the threshold, over at least ``gate.human_min_reviewed`` records.
    Without ratings the check is 'not reviewed', failing only where ``gate.require_review`` says so."""
    label = f"human rating gain > {threshold:g}"
    if human is None:
        why = ("gate.require_review: the domain waits for `lorafleet review import`" if gate.require_review else
               "gate.require_review is off: promotion does not wait for a review")
        return GateCheck(kind="human", name=f"{label} ({NOT_REVIEWED})", value=None, threshold=threshold,
                         passed=not gate.require_review, detail=f"no ratings imported; {why}")
    gain = human.delta
    low, high = gain.ci if gain.ci else (gain.value, gain.value)
    detail = (f"tuned {human.tuned.value:.2f} vs base {human.base.value:.2f} on {human.n} records rated blind; gain "
              f"{gain.value:+.2f}, 95% interval [{low:+.2f}, {high:+.2f}]; its lower end counts")
    if human.n < gate.human_min_reviewed:
        return GateCheck(kind="human", name=label, value=low, threshold=threshold, passed=False,
                         detail=f"{detail}; only {human.n} records rated, gate.human_min_reviewed asks for "
                         f"{gate.human_min_reviewed}")
    return GateCheck(kind="human", name=label, value=low, threshold=threshold,
                     passed=gain.value > 0 and low > threshold, detail=detail)
