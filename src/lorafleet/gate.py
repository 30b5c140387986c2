"""The release gate: may the tuned model become the domain's latest? Pure: numbers in, verdict out.

Every check carries its kind, value, threshold, verdict and a line of detail, so that reports can show
why a model was or was not promoted.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from lorafleet.config import GateConfig
from lorafleet.metrics import Evaluation, HumanRatings, SplitEvaluation, better_direction

CheckKind = Literal["absolute", "not_below_base", "min_improvement", "field_regression", "golden", "human", "variant",
                    "context_improvement"]
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
               where: str, who: str = "tuned", absent: str = "the domain has no golden set (eval.golden)") -> GateCheck:
    """``who``'s (the tuned model's, an ONNX variant's) ``name`` at or beyond ``threshold`` in the metric's better
    direction; ``absent``: why there is no ``evaluation``."""
    up, value = better_direction(name), evaluation.value(name) if evaluation else None
    detail = (absent if evaluation is None else
              "not measured" if value is None else f"{who} {value:.3f} {where}")
    return GateCheck(kind=kind, name=f"{prefix}{name} {'>=' if up > 0 else '<='} {threshold:g}", value=value,
                     threshold=threshold, passed=value is not None and up * (value - threshold) >= 0, detail=detail)


def decide(gate: GateConfig, test: SplitEvaluation, golden: SplitEvaluation | None = None,
           human: HumanRatings | None = None, variants: dict[str, Evaluation] | None = None) -> GateVerdict:
    """Apply every configured check to the test split (and the golden set, people's ratings and the ONNX variants'
    test split); the gate passes when all pass. Thresholds are met in each metric's better direction (``>=`` for rates
    and score, ``<=`` for eval_loss and perplexity). A metric the evaluation could not measure (e.g. grounding of a
    model that quoted nothing) fails its check, saying so. ``human``: the ratings, None while nobody reviewed the run.
    ``variants``: each ONNX variant's test evaluation, the primary export first (the one ``gate.variants``' drops are
    measured from); None: no ONNX model was built (export.onnx: false), so ``gate.variants`` is not judged."""
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
    if gate.human_min_improvement is not None:
        checks.append(_human(gate.human_min_improvement, gate, human))
    checks += _variant_checks(gate, variants) if variants is not None else []
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


def _variant_checks(gate: GateConfig, variants: dict[str, Evaluation]) -> list[GateCheck]:
    """Each gated variant against the primary export on the same test records (how far it falls behind, judged on
    the two point estimates), and against its own minimums. A variant that was not evaluated fails its checks."""
    primary = next(iter(variants), None)
    reference = variants.get(primary) if primary else None
    checks = []
    for variant, thresholds in gate.variants.items():
        evaluation = variants.get(variant)
        for name, most in thresholds.max_drop.items():
            up = better_direction(name)
            label = f"{variant} {name} at most {most:g} {'below' if up > 0 else 'above'} {primary or 'the export'}"
            value, ref = (evaluation.value(name) if evaluation else None), (reference.value(name) if reference else None)
            if value is None or ref is None:
                missing = variant if value is None else primary
                checks.append(GateCheck(kind="variant", name=label, value=None, threshold=most, passed=False,
                                        detail=f"{name} not measured on {missing or 'the export'}"))
                continue
            drop = round(up * (ref - value), 12)  # 1.0 - 0.98 is 0.020000000000000018: not a drop past 0.02
            checks.append(GateCheck(kind="variant", name=label, value=drop, threshold=most, passed=drop <= most,
                                    detail=f"{variant} {value:.3f} vs {primary} {ref:.3f} on the test split"))
        checks += [_threshold("variant", f"{variant} ", name, threshold, evaluation, "on the test split", who=variant,
                              absent=f"{variant} not evaluated") for name, threshold in thresholds.min.items()]
    return checks
