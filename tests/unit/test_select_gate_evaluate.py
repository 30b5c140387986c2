import json
import math

import pytest

from lorafleet.config import GateConfig, RankKey
from lorafleet.evaluate import score
from lorafleet.gate import decide
from lorafleet.select import pick_winner

SCHEMA = {"type": "object", "required": ["name", "amount"], "additionalProperties": False,
          "properties": {"name": {"type": "string"}, "amount": {"type": "number"}}}


def test_pick_winner_orders_by_rule_and_breaks_ties():
    trials = [{"hparams": {}, "metrics": {"eval_loss": 1.0, "score": 0.5}},
              {"hparams": {}, "metrics": {"eval_loss": 0.5, "score": 0.1}},
              {"hparams": {}, "metrics": {"eval_loss": 0.5, "score": 0.9}},
              {"hparams": {}, "metrics": {}}]
    assert pick_winner(trials, [RankKey(metric="eval_loss", mode="min")]) == 1
    assert pick_winner(trials, [RankKey(metric="eval_loss"), RankKey(metric="score", mode="max")]) == 2
    assert pick_winner(trials, [RankKey(metric="score", mode="max")]) == 2


def test_pick_winner_ranks_missing_or_nan_last():
    trials = [{"metrics": {"eval_loss": math.nan}}, {"metrics": {"other": 1}}, {"metrics": {"eval_loss": 9.0}}]
    assert pick_winner(trials, [RankKey(metric="eval_loss")]) == 2
    with pytest.raises(ValueError, match="no finished trial"):
        pick_winner([{"metrics": {}}], [RankKey(metric="eval_loss")])


def test_gate_reports_every_check():
    verdict = decide({"schema_pass_rate": 0.4, "json_valid_rate": 0.95},
                     GateConfig(min={"schema_pass_rate": 0.5, "json_valid_rate": 0.9}))
    assert not verdict["passed"]
    assert [(c["value"], c["passed"]) for c in verdict["checks"]] == [(0.4, False), (0.95, True)]
    assert decide({"schema_pass_rate": 0.5}, GateConfig(min={"schema_pass_rate": 0.5}))["passed"]
    with pytest.raises(ValueError, match="gate.min.bogus: no such metric"):
        decide({"schema_pass_rate": 0.5}, GateConfig(min={"bogus": 0.1}))


def test_score_counts_validity_schema_and_fields():
    ref = json.dumps({"name": "Acme Corp", "amount": 10})
    preds = ['{"name": "acme  corp", "amount": 10.0}',   # normalised match on both fields
             '{"name": "Acme Corp", "amount": "10"}',    # valid JSON, schema fails, one field right
             'not json',
             '{"name": "Other", "amount": 3, "x": 1}']  # valid JSON, schema fails (extra key), no field right
    m = score(preds, [ref] * 4, SCHEMA)
    assert m == {"json_valid_rate": 0.75, "schema_pass_rate": 0.25, "field_accuracy": (1 + 0.5 + 0 + 0) / 4, "n": 4}
