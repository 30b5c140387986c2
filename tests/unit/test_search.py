"""The per-domain searcher and scheduler of a sweep's one Tune experiment, on made-up trials and curves (no Ray
cluster: Tune's ASHAScheduler and OptunaSearch are driven directly, as Tune's controller would)."""
from types import SimpleNamespace

import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from lorafleet import search
from lorafleet.config import ConfigError, load_domain
from lorafleet.train import HParams


def _cfg(domain_copy, sweep: dict, train: dict | None = None):
    return load_domain(domain_copy("contracts"), {"sweep": sweep, "train": {"max_steps": 100, **(train or {})}})


def _trial(trial_id: str, domain: str):
    return SimpleNamespace(trial_id=trial_id, config={"trial": {"domain": domain}})


def test_fixed_trials_come_domain_by_domain_then_the_search_is_finished():
    hp = [HParams(8, 1e-3, 1), HParams(16, 1e-3, 1)]
    s = search.DomainSearch({"a": search.FixedTrials(hp[:1]), "b": search.FixedTrials(hp)}, {"a": "fa", "b": "fb"})
    got = [s.suggest(f"t{i}") for i in range(4)]
    assert [g["trial"]["domain"] for g in got[:3]] == ["a", "b", "b"]
    assert got[1]["trial"] == {"domain": "b", "fingerprint": "fb", "lora_rank": 8, "learning_rate": 1e-3, "epochs": 1,
                               "max_steps": None, "max_seq_length": None}
    assert got[3] == Searcher.FINISHED
    assert s.exhausted("a") and s.exhausted("b")


def test_packed_trials_keep_within_the_gpus_budget_and_leave_finishing_its_share():
    # a domain packed 3 trials to a GPU at 0.2666 each, 0.8 of it for trials: a 4th would fit into finishing's 0.2
    # whenever no finishing task holds it, so the searcher holds it back; a CPU domain's trials are not counted
    hp = [HParams(8, lr, 1) for lr in (1e-3, 2e-3, 3e-3, 4e-3, 5e-3)]
    s = search.DomainSearch({"gpu": search.FixedTrials(hp), "cpu": search.FixedTrials(hp[:2])},
                            {"gpu": "fg", "cpu": "fc"}, search.PackedGpus({"gpu": 0.2666}, budget=0.8))
    got = [s.suggest(f"t{i}") for i in range(6)]
    assert [g["trial"]["domain"] if g else None for g in got] == ["gpu", "gpu", "gpu", "cpu", "cpu", None]
    s.on_trial_complete("t3")  # a CPU trial's end frees no GPU
    assert s.suggest("t6") is None
    s.on_trial_complete("t1")
    assert s.suggest("t7")["trial"]["learning_rate"] == 4e-3 and s.suggest("t8") is None


def test_optuna_keeps_to_its_concurrency_and_learns_from_ended_trials(domain_copy, tmp_path):
    cfg = _cfg(domain_copy, {"search": "optuna", "num_samples": 4, "space": {
        "lora_rank": [4, 8], "learning_rate": {"min": 1e-4, "max": 1e-2, "log": True}, "epochs": [1]},
        "optuna": {"metric": "eval_loss", "mode": "min", "max_concurrent": 2, "startup_trials": 1}})
    s = search.DomainSearch({"a": search.OptunaTrials(cfg)}, {"a": "fa"})
    first, second = s.suggest("t0"), s.suggest("t1")
    assert s.suggest("t2") is None  # two at once: the third waits for one to end
    for spec in (first["trial"], second["trial"]):
        assert spec["lora_rank"] in (4, 8) and 1e-4 <= spec["learning_rate"] <= 1e-2 and spec["epochs"] == 1
    s.on_trial_complete("t0", {"eval_loss": 1.5, "backend": "peft"})
    s.on_trial_complete("t1", {"eval_loss": 2.0, "step": 10})  # stopped early: told as pruned, not as a result
    study = s.strategies["a"].optuna._ot_study
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"] and study.best_value == 1.5
    assert s.suggest("t2") is not None and s.suggest("t3") is not None
    assert not s.exhausted("a") or s.suggest("t4") == Searcher.FINISHED
    assert s.suggest("t4") == Searcher.FINISHED

    # the searcher's state survives Tune's save and restore (a rerun after the driver was lost)
    s.save(str(tmp_path / "state.pkl"))
    again = search.DomainSearch({"a": search.OptunaTrials(cfg)}, {"a": "fa"})
    again.restore(str(tmp_path / "state.pkl"))
    assert len(again.strategies["a"].optuna._ot_study.trials) == 4 and again.exhausted("a")


def test_asha_stops_the_trials_behind_at_each_rung_of_their_own_domain_only(domain_copy):
    cfg = _cfg(domain_copy, {"scheduler": "asha", "asha": {"grace_period": 10, "reduction_factor": 2}})
    schedulers = search.DomainSchedulers({"a": search.asha_scheduler(cfg, 80)}, {"a": 80})
    trials = [_trial(f"a{i}", "a") for i in range(4)] + [_trial("b0", "b")]
    for t in trials:
        schedulers.on_trial_add(None, t)
    # made-up eval_loss curves: a0 best, a3 worst; b0 (no ASHA) far worse than all
    curves = {"a0": 1.0, "a1": 1.2, "a2": 1.4, "a3": 1.6, "b0": 9.0}
    decisions = {}
    for t in trials:  # rung 10: each trial reports in turn
        decisions[t.trial_id] = schedulers.on_trial_result(None, t, {"step": 10, "eval_loss": curves[t.trial_id]})
    # asynchronous: a trial is judged against those that reached the rung before it; the first always goes on
    assert decisions == {"a0": "CONTINUE", "a1": "STOP", "a2": "STOP", "a3": "STOP", "b0": "CONTINUE"}
    # a checkpoint report (no metric) never stops a trial
    assert schedulers.on_trial_result(None, trials[0], {"step": 12, "checkpoint_step": 12}) == TrialScheduler.CONTINUE
    assert schedulers.on_trial_result(None, trials[4], {"step": 500, "eval_loss": 99.0}) == TrialScheduler.CONTINUE
    # a trial at its last step goes on to its validation answers, however it compares
    assert schedulers.on_trial_result(None, trials[1], {"step": 80, "eval_loss": 5.0}) == TrialScheduler.CONTINUE


def test_asha_rungs_in_steps_up_to_the_longest_trial(domain_copy):
    cfg = _cfg(domain_copy, {"scheduler": "asha", "space": {"epochs": [3]},
                             "asha": {"grace_period": 5, "reduction_factor": 3}}, {"max_steps": None})
    n_train = 100
    per_epoch = -(-n_train // (cfg.train.batch_size * cfg.train.grad_accum))
    assert search.longest_trial(cfg, n_train) == 3 * per_epoch
    schedulers = search.domain_schedulers({"a": (cfg, n_train)})
    assert schedulers.max_steps == {"a": 3 * per_epoch}
    milestones = search.asha_scheduler(cfg, 45)._brackets[0]._rungs
    assert sorted(milestone for milestone, _ in milestones) == [5, 15, 45]


@pytest.mark.parametrize("sweep, message", [
    ({"scheduler": "hyperband"}, r"sweep.scheduler: Input should be 'fifo' or 'asha'"),
    ({"search": "bayesopt"}, r"sweep.search: Input should be 'grid', 'random' or 'optuna'"),
    ({"scheduler": "asha", "asha": {"metric": "score"}},
     r"sweep.asha.metric: Value error, trials never report score while they train"),
    ({"search": "optuna", "optuna": {"metric": "accuracy"}}, r"sweep.optuna.metric: Value error, trials never report"),
    ({"scheduler": "asha", "space": {"epochs": [1, 3]}},
     r"contracts.yaml: sweep: Value error, space.epochs: with scheduler: asha give one epoch count"),
])
def test_unknown_strategies_and_metrics_are_rejected_naming_the_field(domain_copy, sweep, message):
    with pytest.raises(ConfigError, match=message):
        _cfg(domain_copy, sweep)


def test_rounds_refuses_a_search_or_scheduler_it_would_ignore(domain_copy):
    with pytest.raises(ConfigError, match=r"strategy: rounds plans its trials itself: search: grid and scheduler: asha"):
        _cfg(domain_copy, {"strategy": "rounds", "rounds": {"smoke_gate": 0.9}, "scheduler": "asha"})


def _observed_result(schema_pass: float, score: float, field: float, steps: int) -> dict:
    return {"backend": "peft", "schema_pass_rate": schema_pass, "score": score, "eval_loss": 1.0, "steps": steps,
            "field_accuracy.clause_type": field, "history": [{"loss": 1.0}]}


def test_the_staged_search_suggests_a_round_at_a_time_and_plans_the_next_from_its_results(domain_copy, tmp_path):
    cfg = _cfg(domain_copy, {"strategy": "rounds", "rounds": {
        "smoke_gate": 0.5, "smoke_steps": 4, "base_steps": 8, "max_rounds": 3}})
    s = search.DomainSearch({"c": search.RoundsTrials(cfg)}, {"c": "fc"})
    smoke = s.suggest("t0")["trial"]
    assert smoke["round"] == 0 and smoke["max_steps"] == 4 and s.suggest("t1") is None  # round 1 waits for it
    s.on_trial_complete("t0", _observed_result(0.9, 40.0, 0.5, 4))
    round1 = [s.suggest(f"t{i}")["trial"] for i in (1, 2, 3)]
    assert [t["round"] for t in round1] == [1, 1, 1] and s.suggest("t4") is None
    assert sorted(t["max_steps"] for t in round1) == [6, 8, 12]  # stronger, base, conservative
    # the winner's clause_type accuracy is low: round 2 trains it longer and with a higher learning rate
    for i, t in zip((1, 2, 3), round1):
        s.on_trial_complete(f"t{i}", _observed_result(1.0, 50.0 + i, 0.2, t["max_steps"]))
    round2 = [s.suggest(f"t{i}")["trial"] for i in (4, 5)]
    assert [t["round"] for t in round2] == [2, 2] and s.suggest("t6") is None
    s.save(str(tmp_path / "state.pkl"))  # Tune saves the searcher in the middle of a round
    s.on_trial_complete("t4", _observed_result(1.0, 60.0, 0.3, 8))
    assert not s.exhausted("c")
    s.on_trial_complete("t5", None, error=True)
    assert s.exhausted("c") and s.suggest("t6") == Searcher.FINISHED
    story = s.story("c")
    assert [n.round for n in story.rounds] == [0, 1, 2] and "max_rounds" in story.stopped and not story.fix_prompt

    again = search.DomainSearch({"c": search.RoundsTrials(cfg)}, {"c": "fc"})
    again.restore(str(tmp_path / "state.pkl"))
    assert [n.round for n in again.story("c").rounds] == [0, 1, 2] and not again.exhausted("c")


def test_a_smoke_trial_below_the_round_0_gate_ends_the_search_with_a_verdict_on_the_prompt(domain_copy):
    cfg = _cfg(domain_copy, {"strategy": "rounds", "rounds": {"smoke_gate": 0.9}})
    s = search.DomainSearch({"c": search.RoundsTrials(cfg)}, {"c": "fc"})
    s.suggest("t0")
    s.on_trial_complete("t0", _observed_result(0.4, 20.0, 0.1, 20))
    story = s.story("c")
    assert s.exhausted("c") and story.fix_prompt and "0.4" in story.stopped and [n.round for n in story.rounds] == [0]
