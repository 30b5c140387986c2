import json
import math

import pytest

from lorafleet.config import ConfigError, EvalConfig, GateConfig, RankKey, load_domain
from lorafleet.data import Example
from lorafleet.evaluate import score_answers
from lorafleet.gate import decide
from lorafleet.metrics import Delta, Evaluation, Metric, SplitEvaluation
from lorafleet.select import describe, pick_winner

SCHEMA = {"type": "object", "required": ["name", "amount"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "amount": {"type": "number"}}}


def _trials(*metric_dicts):
    return list(metric_dicts)


# ---- selection: made-up trial tables -------------------------------------------------------------

BUNDLED_RULE = [RankKey(metric="schema_pass_rate", mode="max", threshold=0.5),
                RankKey(metric="score", mode="max", within=0.5),
                RankKey(metric="grounding", mode="max")]


def test_threshold_then_best_score_then_grounding_within_half_a_point():
    trials = _trials({"schema_pass_rate": 0.4, "score": 99.0, "grounding": 1.0},   # below the threshold
                     {"schema_pass_rate": 0.9, "score": 80.0, "grounding": 0.2},
                     {"schema_pass_rate": 0.8, "score": 80.4, "grounding": 0.6},   # tie on score, grounded better
                     {"schema_pass_rate": 0.95, "score": 70.0, "grounding": 0.9})
    selection = pick_winner(trials, BUNDLED_RULE)
    index, notes = selection.winner, selection.notes
    assert index == 2 and selection.ranked_by == "score"
    assert notes[0] == "schema_pass_rate >= 0.5: 3 of 4 trials"
    assert "2 trial(s) within 0.5" in notes[1]


def test_outside_the_margin_score_alone_decides():
    trials = _trials({"schema_pass_rate": 0.9, "score": 80.0, "grounding": 0.1},
                     {"schema_pass_rate": 0.9, "score": 80.6, "grounding": 0.0})
    assert pick_winner(trials, BUNDLED_RULE).winner == 1


def test_when_no_trial_reaches_the_threshold_all_stay_and_the_note_says_so():
    trials = _trials({"schema_pass_rate": 0.1, "score": 20.0}, {"schema_pass_rate": 0.2, "score": 10.0})
    selection = pick_winner(trials, BUNDLED_RULE)
    assert selection.winner == 0 and "none of 2 trials; all kept" in selection.notes[0]


def test_min_mode_missing_and_nan_values_and_errors():
    trials = _trials({"eval_loss": math.nan}, {"other": 1}, {"eval_loss": 9.0}, {"eval_loss": 3.0}, None)
    assert pick_winner(trials, [RankKey(metric="eval_loss")]).winner == 3
    # a key nobody reports is skipped, the next decides
    assert pick_winner(trials, [RankKey(metric="nope", mode="max"), RankKey(metric="eval_loss")]).winner == 3
    with pytest.raises(ValueError, match="no finished trial"):
        pick_winner(_trials({}), [RankKey(metric="eval_loss")])


def test_describe_reads_like_the_rule():
    assert describe(BUNDLED_RULE) == ["schema_pass_rate >= 0.5",
                                      "highest score (within 0.5 counts as a tie)", "highest grounding"]


# ---- gate: made-up metric tables -------------------------------------------------------------------

def _summary(n=20, fields=None, **values):
    return Evaluation(n=n, metrics={k: Metric(value=v, ci=(v - 0.05, v + 0.05)) for k, v in values.items()},
                      fields={f: Metric(value=v, ci=(v, v)) for f, v in (fields or {}).items()})


def _delta(fields=None, **gains):
    return Delta(metrics={k: Metric(value=v, ci=ci) for k, (v, ci) in gains.items()},
                 fields={f: Metric(value=v, ci=(v, v)) for f, v in (fields or {}).items()})


def _test(tuned, base, delta):
    return SplitEvaluation(tuned=tuned, base=base, delta=delta)


def _golden(tuned):
    return SplitEvaluation(tuned=tuned, base=tuned, delta=Delta())


FULL_GATE = GateConfig(min={"json_valid_rate": 0.9, "schema_pass_rate": 0.85}, not_below_base=["json_valid_rate", "grounding"],
                       min_improvement={"score": 10}, max_field_regression=0.05, golden_min={"schema_pass_rate": 0.8})


def test_gate_passes_when_every_check_holds():
    tuned = _summary(json_valid_rate=0.97, schema_pass_rate=0.9, grounding=0.8)
    base = _summary(json_valid_rate=0.2, schema_pass_rate=0.0, grounding=0.5)
    verdict = decide(FULL_GATE, _test(tuned, base, _delta(score=(40.0, (30.0, 50.0)), fields={"a": 0.5, "b": -0.01})),
                     _golden(_summary(n=12, schema_pass_rate=0.83)))
    assert verdict.passed, verdict
    assert [c.kind for c in verdict.checks] == ["absolute", "absolute", "not_below_base", "not_below_base",
                                                      "min_improvement", "field_regression", "golden"]


def test_gate_names_each_failing_check_with_value_threshold_and_detail():
    tuned = _summary(json_valid_rate=0.95, schema_pass_rate=0.6, grounding=0.4)
    base = _summary(json_valid_rate=0.99, schema_pass_rate=0.0, grounding=0.5)
    # the gain's point estimate clears 10 but its interval's lower end does not
    verdict = decide(FULL_GATE, _test(tuned, base, _delta(score=(12.0, (8.0, 16.0)),
                                                          fields={"amount": -0.2, "name": 0.3})), None)
    failed = {c.name: c for c in verdict.checks if not c.passed}
    assert not verdict.passed
    assert set(failed) == {"schema_pass_rate >= 0.85", "json_valid_rate not below base", "grounding not below base",
                           "score gain >= 10", "no field falls more than 0.05", "golden schema_pass_rate >= 0.8"}
    assert failed["score gain >= 10"].value == 8.0 and failed["score gain >= 10"].threshold == 10
    assert "worst field: amount" in failed["no field falls more than 0.05"].detail
    assert "no golden set" in failed["golden schema_pass_rate >= 0.8"].detail


def test_unmeasured_metrics_fail_and_base_without_a_value_counts_as_zero():
    gate = GateConfig(min={"grounding": 0.5}, not_below_base=["grounding"])
    verdict = decide(gate, _test(_summary(schema_pass_rate=1.0), _summary(), _delta()))
    assert [c.detail for c in verdict.checks] == ["not measured", "not measured on the tuned model"]
    verdict = decide(GateConfig(not_below_base=["grounding"]), _test(_summary(grounding=0.3), _summary(), _delta()))
    assert verdict.passed and verdict.checks[0].detail == "tuned 0.300 vs base 0.000"


def test_gate_config_rejects_unknown_metrics(tmp_path):
    with pytest.raises(ConfigError, match=r"gate: .*unknown metric\(s\) bogus"):
        load_domain("configs/domains/legal.yaml", {"gate": {"not_below_base": ["bogus"]}})


# ---- evaluation rows ------------------------------------------------------------------------------

def test_score_rows_keep_what_was_asked_expected_and_answered():
    ref = json.dumps({"name": "Acme Corp", "amount": 10})
    examples = [Example(id=str(i), group="g", prompt=[{"role": "user", "content": "Acme Corp pays 10"}],
                        completion=ref, line=i) for i in range(3)]
    answers = score_answers(examples, ['{"name": "acme  corp", "amount": 10.0}', 'not json',
                                       '{"name": "Acme Corp", "amount": "10"}'], SCHEMA, EvalConfig())
    assert [(a.score.json_valid, a.score.schema_pass, a.score.field_accuracy) for a in answers] == [
        (1, 1, 1.0), (0, 0, 0.0), (1, 0, 0.5)]
    assert answers[0].input == "Acme Corp pays 10" and answers[1].got == "not json"
    assert answers[0].score.score == 100.0 and answers[2].score.score == pytest.approx(20 + 25)


def test_lower_is_better_metrics_are_judged_downwards():
    gate = GateConfig(min={"eval_loss": 1.0}, not_below_base=["perplexity"], min_improvement={"eval_loss": 0.2})
    tuned, base = _summary(eval_loss=0.8, perplexity=2.2), _summary(eval_loss=1.5, perplexity=4.5)
    verdict = decide(gate, _test(tuned, base, _delta(eval_loss=(-0.7, (-0.9, -0.5)))))
    assert verdict.passed, verdict
    assert [c.name for c in verdict.checks] == ["eval_loss <= 1", "perplexity not above base", "eval_loss drop >= 0.2"]
    assert verdict.checks[2].value == pytest.approx(0.5)  # the drop's interval [0.5, 0.9]: its lower end counts
    worse = decide(gate, _test(base, tuned, _delta(eval_loss=(0.7, (0.5, 0.9)))))
    assert worse.failed == ["eval_loss <= 1", "perplexity not above base", "eval_loss drop >= 0.2"]


def test_golden_thresholds_follow_the_metric_direction_too():
    gate = GateConfig(golden_min={"eval_loss": 1.0, "schema_pass_rate": 0.5})
    test = _test(_summary(), _summary(), _delta())
    low_loss = decide(gate, test, _golden(_summary(n=12, eval_loss=0.8, schema_pass_rate=0.9)))
    assert low_loss.passed and [c.name for c in low_loss.checks] == ["golden eval_loss <= 1",
                                                                     "golden schema_pass_rate >= 0.5"]
    assert decide(gate, test, _golden(_summary(n=12, eval_loss=1.2, schema_pass_rate=0.9))).failed == [
        "golden eval_loss <= 1"]
