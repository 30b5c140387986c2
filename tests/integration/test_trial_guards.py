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


def _medical(domain_copy, small_base, train: dict):
    cfg = load_domain(domain_copy("medical"), {"base_model": str(small_base), "train": train})
    return cfg, data.prepare(cfg)


def test_a_trial_past_its_time_limit_is_stopped_with_the_reason(small_base, domain_copy, tmp_path):
    from lorafleet.train import HParams, TrialStopped, train_trial

    cfg, prepared = _medical(domain_copy, small_base, {"max_steps": 200, "eval_steps": 100, "timeout_minutes": 0.0001})
    with pytest.raises(TrialStopped, match=r"^timed out: still training after train\.timeout_minutes \(0\.0001\) at "
                                           r"step 1 of 200$"):
        train_trial(cfg.base_model_ref, cfg.train, HParams(4, 2e-3, 1), prepared.train, prepared.val, tmp_path)


def test_out_of_gpu_memory_retries_with_half_the_micro_batch_and_the_same_effective_batch(small_base, domain_copy,
                                                                                           tmp_path):
    import torch
    from transformers import TrainerCallback

    from lorafleet.train import HParams, train_trial

    class OutOfMemoryAboveTwo(TrainerCallback):
        """What a GPU does to a micro-batch that does not fit, here for any micro-batch above 2."""

        effective: list[int] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.effective.append(args.per_device_train_batch_size * args.gradient_accumulation_steps)
            if args.per_device_train_batch_size > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    cfg, prepared = _medical(domain_copy, small_base, {"max_steps": 3, "eval_steps": 3, "batch_size": 8})
    guard = OutOfMemoryAboveTwo()
    result = train_trial(cfg.base_model_ref, cfg.train, HParams(4, 2e-3, 1), prepared.train, prepared.val, tmp_path,
                         callbacks=[guard])
    assert result.metrics["oom_retries"] == 2 and result.metrics["micro_batch"] == 2 and result.metrics["steps"] == 3
    assert set(guard.effective) == {8}  # 8 x 1, then 4 x 2, then 2 x 4

    cfg, prepared = _medical(domain_copy, small_base, {"max_steps": 3, "eval_steps": 3, "batch_size": 16})
    with pytest.raises(torch.OutOfMemoryError):  # 16, 8, 4: still too large after two halvings
        train_trial(cfg.base_model_ref, cfg.train, HParams(4, 2e-3, 1), prepared.train, prepared.val, tmp_path / "b",
                    callbacks=[OutOfMemoryAboveTwo()])
