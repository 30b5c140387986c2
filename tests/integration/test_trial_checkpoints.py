"""In-trial checkpoints: a trial whose worker process is SIGKILLed goes on from its last checkpoint (in the run's
storage, here the moto S3 server) and, on the CPU path where training is deterministic, ends with the adapter and
eval loss of a trial never killed."""
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from lorafleet import data, publish, sweep
from lorafleet.config import load_domain

pytestmark = pytest.mark.integration

STEPS, EVERY = 30, 3
KILL_AT = (3, 15, 27)  # 10 %, 50 %, 90 % of the trial's steps


def _killer(kill_at_step: dict[int, int]):
    """A Tune callback (in the driver) SIGKILLing the worker of the trial numbered n (in the order their first
    checkpoints reached the driver: fixed once seen, whatever trials exist yet or their random ids) as soon as Tune
    recorded its checkpoint at or past ``kill_at_step[n]``, once."""
    from ray.tune import Callback

    class KillWorkers(Callback):
        killed: dict[str, int] = {}
        numbered: dict[str, int] = {}

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            n = self.numbered.setdefault(trial.trial_id, len(self.numbered))
            step = trial.last_result.get("checkpoint_step", 0)
            if n in kill_at_step and trial.trial_id not in self.killed and step >= kill_at_step[n]:
                self.killed[trial.trial_id] = step
                os.kill(trial.last_result["pid"], signal.SIGKILL)

    return KillWorkers()


def test_a_killed_trial_resumes_from_its_checkpoint_and_ends_as_if_never_killed(local_ray, small_base, domain_copy,
                                                                                 s3_bucket, tmp_path):
    # four trials of the same hyperparameters: trial 0 runs through, trials 1-3 are killed at 10, 50 and 90 %;
    # dropout on, so resuming must restore the RNG state too
    cfg = load_domain(domain_copy("medical"), {
        "base_model": str(small_base),
        "train": {"max_steps": STEPS, "eval_steps": 10, "checkpoint_steps": EVERY, "lora_dropout": 0.1},
        "sweep": {"space": {"lora_rank": [4], "learning_rate": [0.002]}, "num_samples": 4,
                  "resources_per_trial": {"cpu": 1}},
        "eval": {"max_examples": 1, "max_new_tokens": 4}})
    killer = _killer(dict(enumerate(KILL_AT, start=1)))  # the first trial seen runs through
    outcomes = sweep.run_sweep({"medical": sweep.DomainPlan(cfg, data.prepare(cfg))}, publish.Storage(s3_bucket),
                               "killed", callbacks=[killer])["medical"]
    assert len(killer.killed) == 3 and all(t.finished for t in outcomes), (killer.numbered, killer.killed,
                                                                             [t.error for t in outcomes])
    assert sorted(t.restarts for t in outcomes) == [0, 1, 1, 1]
    assert sorted(r for t in outcomes for r in t.resumed_from) == sorted(killer.killed.values())  # the step it saw
    assert all(s in KILL_AT for s in killer.killed.values())  # a checkpoint every EVERY steps: at most one lost

    def adapter(trial) -> dict[str, torch.Tensor]:
        folder = tmp_path / f"adapter-{id(trial)}"
        trial.checkpoint.to_directory(str(folder))
        return load_file(folder / "adapter_model.safetensors")

    reference = next(t for t in outcomes if t.restarts == 0)
    expected = adapter(reference)
    for resumed in (t for t in outcomes if t.restarts):
        got = adapter(resumed)
        assert got.keys() == expected.keys()
        worst = max((got[k] - expected[k]).abs().max().item() for k in expected)
        assert worst <= 1e-5, (resumed.resumed_from, worst)
        assert abs(resumed.metrics["eval_loss"] - reference.metrics["eval_loss"]) <= 1e-4
        assert resumed.metrics["steps"] == STEPS
