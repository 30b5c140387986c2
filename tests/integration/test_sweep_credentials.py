"""Credentials stay in the driver's environment for the whole sweep (its storage clients may reconnect or
refresh tokens at any time), and out of the runtime_env that Tune gives trial actors (Ray logs those)."""
import os

import pytest

from lorafleet import data, publish, sweep
from lorafleet.config import load_domain

pytestmark = pytest.mark.integration


def test_driver_keeps_credentials_during_the_sweep_and_trials_get_none_in_their_runtime_env(
        local_ray, small_base, domain_copy, tmp_path, monkeypatch):
    from ray.tune import Callback
    from ray.tune.execution import class_cache

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-in-the-driver")
    cfg = load_domain(domain_copy("medical"), {
        "base_model": str(small_base), "train": {"max_steps": 2, "eval_steps": 1},
        "sweep": {"space": {"lora_rank": [4]}}, "eval": {"max_examples": 1, "max_new_tokens": 4}})
    seen = []

    class DriverEnvironment(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            seen.append(os.environ.get("AWS_SECRET_ACCESS_KEY"))

    outcomes = sweep.run_sweep({"medical": sweep.DomainPlan(cfg, data.prepare(cfg))},
                               publish.Storage(str(tmp_path / "store")), "creds", callbacks=[DriverEnvironment()])
    assert [t.finished for t in outcomes["medical"]] == [True]
    assert seen and set(seen) == {"canary-in-the-driver"}
    assert not set(sweep.CREDENTIAL_VARS) & class_cache.ENV_VARS_TO_PROPAGATE
