"""Guards on a trial: one whose training loss diverges is stopped at once with the reason, without a retry,
and does not take the other trials of its domain with it."""
import re

import pytest

from lorafleet import data, publish, sweep
from lorafleet.config import load_domain

pytestmark = pytest.mark.integration


def test_a_diverging_trial_is_stopped_with_its_reason_and_not_retried(local_ray, small_base, domain_copy, tmp_path):
    from ray.tune import Callback

    # lr 50 sends the loss from 3.9 towards ln(1024) = 6.9 (measured: 6.3 at step 3); lr 2e-3 trains; a log line
    # every step (eval_steps // 4)
    cfg = load_domain(domain_copy("medical"), {
        "base_model": str(small_base), "train": {"max_steps": 12, "eval_steps": 4, "divergence": 1.5},
        "sweep": {"space": {"lora_rank": [4], "learning_rate": [50.0, 0.002]}, "resources_per_trial": {"cpu": 1}},
        "eval": {"max_examples": 1, "max_new_tokens": 4}})
    retried = []

    class Retries(Callback):
        def on_trial_recover(self, iteration, trials, trial, **info):
            retried.append(trial.trial_id)

    outcomes = sweep.run_sweep({"medical": sweep.DomainPlan(cfg, data.prepare(cfg))},
                               publish.Storage(str(tmp_path / "store")), "guards", callbacks=[Retries()])["medical"]
    by_lr = {t.hparams.learning_rate: t for t in outcomes}
    diverged, sound = by_lr[50.0], by_lr[0.002]
    assert not diverged.finished and diverged.checkpoint is None
    reason = re.fullmatch(r"diverged: training loss (became (nan|inf|-inf) at step (\d+)|\S+ at step (\d+) exceeds "
                          r"train\.divergence \(1\.5\) x its first logged loss \S+)", diverged.error)
    assert reason, diverged.error
    assert int(reason.group(3) or reason.group(4)) < 12  # stopped, not run to its end
    assert sound.finished and sound.error is None
    assert retried == []
