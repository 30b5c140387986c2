"""The staged search (lorafleet.rounds) on made-up metric histories, and its settings in the config."""
from __future__ import annotations

import random

import pytest

from lorafleet.config import ConfigError, RankKey, RoundsConfig, load_domain
from lorafleet.rounds import (
    NextRound,
    Observed,
    RoundConfig,
    Settings,
    Stopped,
    pick_with,
    plan_next,
)
from tests.conftest import rewrite_yaml

# the team plan's selection: schema pass first (>= 0.98), then score (within half a point a tie), then grounding
PICK = pick_with([RankKey(metric="schema_pass_rate", mode="max", threshold=0.98),
                  RankKey(metric="score", mode="max", within=0.5),
                  RankKey(metric="grounding", mode="max")])


def make_settings(**rounds) -> Settings:
    return Settings(RoundsConfig(**rounds), max_seq_length=1024, evidence_fields=("evidence",), text_fields=("summary",))


SETTINGS = make_settings()

SMOKE = RoundConfig(16, 2e-4, 20, 1024)
BASE = RoundConfig(16, 2e-4, 200, 1024)
CONSERVATIVE = RoundConfig(16, 1e-4, 300, 1024)
STRONGER = RoundConfig(16, 3e-4, 150, 1024)
# every field fine; the free-text field summary is low, which no rule reads (chrF/ROUGE-L score it)
GOOD_FIELDS = {"amount": 0.95, "parties": 0.9, "evidence": 0.9, "summary": 0.1}


def obs(config: RoundConfig, score: float, *, schema: float = 1.0, grounding: float = 0.95,
        failed: bool = False, **fields: float) -> Observed:
    return Observed(config, {"schema_pass_rate": schema, "score": score, "grounding": grounding, "eval_loss": 1.0},
                    {**GOOD_FIELDS, **fields}, failed=failed)


def passed_smoke() -> list[Observed]:
    return [obs(SMOKE, 40.0, schema=0.92)]


def round_1(winner_score: float = 80.0, **fields: float) -> list[Observed]:
    """Round 1 as planned, BASE winning with the given fields."""
    return [obs(BASE, winner_score, **fields), obs(CONSERVATIVE, winner_score - 2), obs(STRONGER, winner_score - 5)]


# round 0 -------------------------------------------------------------------------------------------------------------

def test_an_empty_history_asks_for_one_smoke_config():
    decision = plan_next(SETTINGS, [], PICK)
    assert decision == NextRound(0, (SMOKE,), decision.why)
    assert SMOKE.label == "r16 lr0.0002 s20 L1024"
    assert "20 steps" in decision.why and "schema_pass_rate >= 0.9" in decision.why


def test_a_smoke_trial_below_the_gate_stops_with_a_fix_the_prompt_verdict():
    decision = plan_next(SETTINGS, [[obs(SMOKE, 30.0, schema=0.85)]], PICK)
    assert decision == Stopped(
        "round 0 (smoke, r16 lr0.0002 s20 L1024): schema_pass_rate 0.850 is below the round-0 gate 0.9: fix the "
        "prompt or the output constraints (JSON-only instructions, the schema), not the hyperparameters",
        fix_prompt=True)


def test_the_gate_is_inclusive_and_its_value_comes_from_the_settings():
    assert isinstance(plan_next(SETTINGS, [[obs(SMOKE, 30.0, schema=0.9)]], PICK), NextRound)
    strict = make_settings(smoke_gate=0.95)
    decision = plan_next(strict, [[obs(SMOKE, 30.0, schema=0.92)]], PICK)
    assert isinstance(decision, Stopped) and decision.fix_prompt and "round-0 gate 0.95" in decision.reason


def test_a_failed_smoke_trial_stops_without_blaming_the_prompt():
    decision = plan_next(SETTINGS, [[Observed(SMOKE, {}, failed=True)]], PICK)
    assert decision == Stopped("every trial of round 0 (smoke) failed (1 trial(s)): the pipeline does not train; fix "
                               "it before searching")


def test_a_smoke_trial_without_schema_pass_rate_is_not_passed():
    decision = plan_next(SETTINGS, [[Observed(SMOKE, {"eval_loss": 1.2})]], PICK)
    assert isinstance(decision, Stopped) and not decision.fix_prompt
    assert decision.reason == ("round 0 (smoke, r16 lr0.0002 s20 L1024) reported no schema_pass_rate: the round-0 "
                               "gate cannot judge it")


# round 1 -------------------------------------------------------------------------------------------------------------

def test_round_1_is_base_conservative_and_stronger():
    decision = plan_next(SETTINGS, [passed_smoke()], PICK)
    assert isinstance(decision, NextRound) and decision.round == 1
    assert decision.configs == (BASE, CONSERVATIVE, STRONGER)
    assert [c.label for c in decision.configs] == ["r16 lr0.0002 s200 L1024", "r16 lr0.0001 s300 L1024",
                                                   "r16 lr0.0003 s150 L1024"]
    # only the learning strength moves: rank and length stay the smoke config's; lr and steps move against each other
    for c in decision.configs[1:]:
        assert (c.lora_rank, c.max_seq_length) == (SMOKE.lora_rank, SMOKE.max_seq_length)
        assert (c.learning_rate - BASE.learning_rate) * (c.max_steps - BASE.max_steps) < 0
    assert "conservative (lr x 0.5, steps x 1.5), stronger (lr x 1.5, steps x 0.75)" in decision.why


def test_round_1_uses_the_settings_base_and_factors():
    settings = Settings(RoundsConfig(base_learning_rate=1e-3, base_steps=90, lora_rank=8, conservative_lr_factor=0.25,
                                     stronger_steps_factor=0.5), max_seq_length=384)
    smoke = RoundConfig(8, 1e-3, 20, 384)
    assert plan_next(settings, [], PICK).configs == (smoke,)
    assert plan_next(settings, [[obs(smoke, 40.0)]], PICK).configs == (
        RoundConfig(8, 1e-3, 90, 384), RoundConfig(8, 2.5e-4, 135, 384), RoundConfig(8, 1.5e-3, 45, 384))


# round 2: the declared rules -----------------------------------------------------------------------------------------

def test_a_low_field_asks_for_more_steps_and_a_slightly_higher_lr():
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(amount=0.6)], PICK)
    assert decision == NextRound(2, (RoundConfig(16, 2e-4, 300, 1024), RoundConfig(16, 2.5e-4, 200, 1024)),
                                 "from round 1's winner r16 lr0.0002 s200 L1024: field amount accuracy 0.600 < "
                                 "field_accuracy_below 0.8: more steps (x 1.5) or a slightly higher lr (x 1.25)")


def test_the_rules_start_from_the_round_s_winner_by_the_domain_s_rule():
    # STRONGER has the best score, but its schema pass rate misses the rule's 0.98: BASE wins
    history = [passed_smoke(), [obs(BASE, 80.0, amount=0.6), obs(CONSERVATIVE, 78.0),
                                obs(STRONGER, 85.0, schema=0.95, amount=0.5)]]
    assert plan_next(SETTINGS, history, PICK).configs == (RoundConfig(16, 2e-4, 300, 1024),
                                                          RoundConfig(16, 2.5e-4, 200, 1024))


def test_a_low_evidence_field_asks_for_a_longer_max_seq_length():
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(evidence=0.5)], PICK)
    assert decision == NextRound(2, (RoundConfig(16, 2e-4, 200, 1536),),
                                 "from round 1's winner r16 lr0.0002 s200 L1024: evidence field evidence accuracy "
                                 "0.500 < evidence_below 0.8: a longer max_seq_length (x 1.5, cap 4096)")


def test_the_longer_max_seq_length_stops_at_the_cap():
    capped = make_settings(max_seq_length_cap=1200)
    assert plan_next(capped, [passed_smoke(), round_1(evidence=0.5)], PICK).configs == (RoundConfig(16, 2e-4, 200, 1200),)
    at_cap = make_settings(max_seq_length_cap=1024)
    decision = plan_next(at_cap, [passed_smoke(), round_1(evidence=0.5)], PICK)
    assert isinstance(decision, Stopped) and decision.reason.startswith("no rule asks for another config")
    assert decision.flags == ("evidence field evidence accuracy 0.500 < evidence_below 0.8, but max_seq_length 1024 is "
                              "already at max_seq_length_cap 1024",)


def test_low_field_and_low_evidence_give_one_config_each_at_most_two():
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(amount=0.6, evidence=0.5)], PICK)
    assert isinstance(decision, NextRound)
    assert decision.configs == (RoundConfig(16, 2e-4, 300, 1024), RoundConfig(16, 2e-4, 200, 1536))
    assert decision.why.endswith("at most 2 a round, each rule's first config first: left out r16 lr0.00025 s200 L1024")


def test_low_grounding_is_a_prompt_flag_and_no_config():
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(grounding=0.5)], PICK)
    assert isinstance(decision, Stopped) and decision.fix_prompt
    assert decision.reason == ("no rule asks for another config: round 1's winner r16 lr0.0002 s200 L1024 has lowest "
                               "field parties 0.900, lowest evidence field evidence 0.900 (field_accuracy_below 0.8, "
                               "evidence_below 0.8)")
    assert decision.flags == ("grounding low: a prompt problem: round winner r16 lr0.0002 s200 L1024 has grounding "
                              "0.500 < grounding_below 0.8; make the prompt demand evidence quoted verbatim from the "
                              "input (no config comes from it)",)


def test_low_grounding_beside_a_low_field_is_flagged_on_the_next_round():
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(amount=0.6, grounding=0.5)], PICK)
    assert isinstance(decision, NextRound) and len(decision.configs) == 2
    assert len(decision.flags) == 1 and decision.flags[0].startswith("grounding low: a prompt problem")


def test_free_text_fields_do_not_ask_for_configs():
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(summary=0.0)], PICK)
    assert isinstance(decision, Stopped) and not decision.fix_prompt and decision.flags == ()


def test_a_config_already_tried_is_not_repeated():
    # the stronger config is lr x 1.5 at the base steps: the low-field rule's higher lr (x 1.5 here) was tried
    settings = make_settings(stronger_steps_factor=1.0, higher_lr_factor=1.5)
    stronger = RoundConfig(16, 3e-4, 200, 1024)
    assert plan_next(settings, [passed_smoke()], PICK).configs == (BASE, CONSERVATIVE, stronger)
    history = [passed_smoke(), [obs(BASE, 80.0, amount=0.6), obs(CONSERVATIVE, 78.0), obs(stronger, 75.0)]]
    decision = plan_next(settings, history, PICK)
    assert decision == NextRound(2, (RoundConfig(16, 2e-4, 300, 1024),),
                                 "from round 1's winner r16 lr0.0002 s200 L1024: field amount accuracy 0.600 < "
                                 "field_accuracy_below 0.8: more steps (x 1.5) or a slightly higher lr (x 1.5); already "
                                 "tried, not repeated: r16 lr0.0003 s200 L1024")


def test_a_failed_trial_counts_as_tried_and_all_tried_stops():
    history = [passed_smoke(), [obs(BASE, 80.0, amount=0.6), Observed(RoundConfig(16, 2e-4, 300, 1024), failed=True),
                                Observed(RoundConfig(16, 2.5e-4, 200, 1024), {})]]
    decision = plan_next(SETTINGS, history, PICK)
    assert isinstance(decision, Stopped)
    assert decision.reason.endswith("but every config they ask for was tried already (r16 lr0.0002 s300 L1024, "
                                    "r16 lr0.00025 s200 L1024)")


# stop rules ----------------------------------------------------------------------------------------------------------

R2_STEPS, R2_LR = RoundConfig(16, 2e-4, 300, 1024), RoundConfig(16, 2.5e-4, 200, 1024)


def test_a_small_improvement_stops():
    history = [passed_smoke(), round_1(amount=0.6), [obs(R2_STEPS, 80.2, amount=0.7), obs(R2_LR, 79.0, amount=0.7)]]
    decision = plan_next(SETTINGS, history, PICK)
    assert decision == Stopped("round 2's winner r16 lr0.0002 s300 L1024 scored 80.20, +0.20 points on round 1's "
                               "80.00: less than min_improvement 0.3")


def test_a_worse_round_stops():
    history = [passed_smoke(), round_1(amount=0.6), [obs(R2_STEPS, 78.0, amount=0.7), obs(R2_LR, 77.0, amount=0.7)]]
    decision = plan_next(SETTINGS, history, PICK)
    assert isinstance(decision, Stopped) and "-2.00 points on round 1's 80.00" in decision.reason


def test_enough_improvement_goes_on_from_the_latest_winner():
    history = [passed_smoke(), round_1(amount=0.6), [obs(R2_STEPS, 79.0, amount=0.7), obs(R2_LR, 80.3, amount=0.7)]]
    decision = plan_next(SETTINGS, history, PICK)
    assert decision == NextRound(3, (RoundConfig(16, 2.5e-4, 300, 1024), RoundConfig(16, 3.125e-4, 200, 1024)),
                                 "from round 2's winner r16 lr0.00025 s200 L1024: field amount accuracy 0.700 < "
                                 "field_accuracy_below 0.8: more steps (x 1.5) or a slightly higher lr (x 1.25)")


def test_oscillating_just_under_the_target_stops():
    settings = make_settings(target_score=95)
    history = [passed_smoke(), round_1(94.5, amount=0.6), [obs(R2_STEPS, 94.9, amount=0.7), obs(R2_LR, 90.0)]]
    decision = plan_next(settings, history, PICK)
    assert decision == Stopped("rounds 1 and 2's winners scored 94.50 and 94.90, both within oscillation_band 0.5 "
                               "points under target_score 95: stuck just under it; the prompt or the retrieval is the "
                               "next lever")
    # one of the two outside the band: the search goes on
    below = [passed_smoke(), round_1(94.0, amount=0.6), history[2]]
    assert isinstance(plan_next(settings, below, PICK), NextRound)


def test_reaching_the_target_stops():
    settings = make_settings(target_score=95)
    history = [passed_smoke(), round_1(95.2, amount=0.6)]
    assert plan_next(settings, history, PICK) == Stopped(
        "round 1's winner r16 lr0.0002 s200 L1024 scored 95.20, reaching target_score 95")


def test_max_rounds_stops():
    history = [passed_smoke(), round_1(amount=0.6), [obs(R2_STEPS, 79.0, amount=0.7), obs(R2_LR, 81.0, amount=0.7)]]
    three = make_settings(max_rounds=3)
    assert plan_next(three, history, PICK) == Stopped("max_rounds 3 reached (rounds 0 to 2)")
    r3 = [obs(RoundConfig(16, 2.5e-4, 300, 1024), 82.0, amount=0.7), obs(RoundConfig(16, 3.125e-4, 200, 1024), 70.0)]
    assert plan_next(SETTINGS, [*history, r3], PICK) == Stopped("max_rounds 4 reached (rounds 0 to 3)")


def test_a_round_whose_trials_all_failed_stops():
    history = [passed_smoke(), round_1(amount=0.6), [Observed(R2_STEPS, failed=True), Observed(R2_LR, {})]]
    assert plan_next(SETTINGS, history, PICK) == Stopped(
        "every trial of round 2 failed (2 trial(s)); fix the cause before searching further")


def test_a_winner_without_a_score_is_flagged_and_the_rules_go_on():
    unscored = Observed(R2_STEPS, {"schema_pass_rate": 1.0, "eval_loss": 0.9}, {"amount": 0.7})
    decision = plan_next(SETTINGS, [passed_smoke(), round_1(amount=0.6), [unscored]], PICK)
    assert isinstance(decision, NextRound) and decision.round == 3
    assert decision.flags == ("no score for round 2's winner: the improvement and oscillation rules could not judge",)


def test_a_round_with_no_trials_is_a_caller_error():
    with pytest.raises(ValueError, match=r"history\[1\]: round 1 has no trials"):
        plan_next(SETTINGS, [passed_smoke(), []], PICK)


# the whole search ----------------------------------------------------------------------------------------------------

def test_the_decisions_replay_the_search():
    history = [passed_smoke(), round_1(amount=0.6), [obs(R2_STEPS, 80.1, amount=0.7), obs(R2_LR, 79.0)]]
    steps = [plan_next(SETTINGS, history[:i], PICK) for i in range(len(history) + 1)]
    assert [type(d).__name__ for d in steps] == ["NextRound", "NextRound", "NextRound", "Stopped"]
    assert [d.configs for d in steps[:3]] == [(SMOKE,), (BASE, CONSERVATIVE, STRONGER), (R2_STEPS, R2_LR)]
    assert "less than min_improvement 0.3" in steps[3].reason


def test_decisions_do_not_depend_on_dict_or_trial_order():
    history = [passed_smoke(), round_1(amount=0.6, parties=0.6)]
    first = plan_next(SETTINGS, history, PICK)
    assert "field amount accuracy" in first.why  # a tie: broken by the field's name
    shuffled = [passed_smoke(), [Observed(o.config, dict(reversed(o.metrics.items())), dict(reversed(o.fields.items())))
                                 for o in reversed(history[1])]]
    random.Random(0).shuffle(shuffled[1])
    assert plan_next(SETTINGS, shuffled, PICK) == first


# settings in the config ----------------------------------------------------------------------------------------------

def test_rounds_without_a_section_is_rejected_naming_the_smoke_gate(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["sweep"].update(strategy="rounds"))
    with pytest.raises(ConfigError, match=r"contracts.yaml: sweep: Value error, strategy: rounds needs a rounds section "
                                          r"with its round-0 gate, sweep.rounds.smoke_gate"):
        load_domain(path)


def test_rounds_with_a_null_smoke_gate_is_rejected_naming_the_field(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["sweep"].update(strategy="rounds", rounds={"smoke_gate": None}))
    with pytest.raises(ConfigError, match=r"contracts.yaml: sweep.rounds.smoke_gate: Value error, the staged search "
                                          r"needs a round-0 gate"):
        load_domain(path)


def test_a_rounds_section_without_the_rounds_strategy_is_rejected(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["sweep"].update(rounds={"smoke_gate": 0.9}))
    with pytest.raises(ConfigError, match=r"sweep: Value error, rounds: read only by strategy: rounds"):
        load_domain(path)


def test_rounds_settings_load_with_their_defaults(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["sweep"].update(strategy="rounds", rounds={}))
    cfg = load_domain(path)
    r = cfg.sweep.rounds
    assert (r.smoke_steps, r.smoke_gate, r.base_learning_rate, r.base_steps, r.lora_rank, r.max_seq_length) == (
        20, 0.9, 2e-4, 200, 16, None)
    assert (r.conservative_lr_factor, r.conservative_steps_factor, r.stronger_lr_factor, r.stronger_steps_factor) == (
        0.5, 1.5, 1.5, 0.75)
    assert (r.field_accuracy_below, r.evidence_below, r.grounding_below, r.min_improvement, r.target_score,
            r.oscillation_band, r.max_rounds) == (0.8, 0.8, 0.8, 0.3, None, 0.5, 4)
    settings = Settings.from_domain(cfg)
    assert settings.max_seq_length == cfg.train.max_seq_length == 384  # null: train.max_seq_length
    assert plan_next(settings, [], PICK).configs == (RoundConfig(16, 2e-4, 20, 384),)


@pytest.mark.parametrize(("rounds", "message"), [
    ({"conservative_lr_factor": 1.5}, r"sweep.rounds.conservative_lr_factor: Input should be less than 1"),
    ({"max_rounds": 1}, r"sweep.rounds.max_rounds: Input should be greater than or equal to 2"),
    ({"smoke_gate": 1.2}, r"sweep.rounds.smoke_gate: Input should be less than or equal to 1"),
    ({"max_seq_length": 8192}, r"sweep.rounds: Value error, max_seq_length \(8192\) is above max_seq_length_cap"),
])
def test_bad_rounds_settings_name_their_field(domain_copy, rounds, message):
    path = rewrite_yaml(domain_copy("contracts"), lambda r: r["sweep"].update(strategy="rounds", rounds=rounds))
    with pytest.raises(ConfigError, match=message):
        load_domain(path)
