"""Search strategies on real Ray Tune and the tiny model, two domains in one sweep: medical under ASHA (the trials
behind stopped at their first rung, kept with their partial results, never the winner) and contracts searched by
Optuna (its trials one at a time, each chosen after the ones before ended); each domain handed over once, with all
its trials, as its strategy has nothing left to run."""
import pytest

from lorafleet import data, publish, sweep
from lorafleet.config import load_domain
from lorafleet.pipeline import choose_winner

pytestmark = pytest.mark.integration


def test_asha_stops_the_trials_behind_and_optuna_chooses_trials_one_after_another(local_ray, small_base, domain_copy,
                                                                                    tmp_path):
    common = {"base_model": str(small_base), "train": {"max_steps": 12, "eval_steps": 4},
              "eval": {"max_examples": 1, "max_new_tokens": 4}}
    # one trial at a time (2 CPUs each): ASHA's first trial sets each rung's bar, so the two that learn nothing in 4
    # steps (lr 1e-7) are behind it there, whatever the machine's speed
    medical = load_domain(domain_copy("medical"), {**common, "sweep": {
        "space": {"lora_rank": [4], "learning_rate": [0.002, 1e-7, 1e-7]}, "resources_per_trial": {"cpu": 2},
        "scheduler": "asha", "asha": {"grace_period": 4, "reduction_factor": 2}}})
    contracts = load_domain(domain_copy("contracts"), {**common, "sweep": {
        "space": {"lora_rank": [4, 8], "learning_rate": {"min": 1e-4, "max": 3e-3, "log": True}, "epochs": [1]},
        "search": "optuna", "num_samples": 3, "optuna": {"max_concurrent": 1, "startup_trials": 1},
        "resources_per_trial": {"cpu": 2}}})
    handed_over: dict[str, list] = {}

    def on_trained(domain, trials, story):
        assert domain not in handed_over and story is None  # only the staged search tells a story
        handed_over[domain] = trials

    from ray.tune import Callback

    class Workers(Callback):
        pids: set[int] = set()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.pids.add(result["pid"])

    outcomes = sweep.run_sweep({d.name: sweep.DomainPlan(d, data.prepare(d)) for d in (medical, contracts)},
                               publish.Storage(str(tmp_path / "store")), "strategies", callbacks=[Workers()],
                               on_domain_trained=on_trained)
    # one trial at a time on one warm worker: a trial ASHA stopped handed its process on to the next trial
    assert len(Workers.pids) == 1, Workers.pids

    by_lr = sorted(outcomes["medical"], key=lambda t: -t.hparams.learning_rate)
    good, behind = by_lr[0], by_lr[1:]
    assert good.finished and good.stopped_early_at is None and good.metrics["steps"] == 12
    for trial in behind:
        assert not trial.finished and trial.error is None and trial.checkpoint is None
        assert trial.stopped_early_at == 4 and trial.ended_how == "stopped early at step 4"
        assert trial.metrics["eval_loss"] > good.metrics["eval_loss"]  # its partial result, kept
    assert choose_winner(medical, outcomes["medical"]).winner == outcomes["medical"].index(good)

    searched = outcomes["contracts"]
    assert len(searched) == 3 and all(t.finished for t in searched), [t.ended_how for t in searched]
    assert all(t.hparams.lora_rank in (4, 8) and 1e-4 <= t.hparams.learning_rate <= 3e-3 for t in searched)
    assert len({t.hparams.learning_rate for t in searched}) == 3  # drawn from the range, not a fixed list

    assert {d: len(t) for d, t in handed_over.items()} == {"medical": 3, "contracts": 3}
