"""Warm trial workers: a worker process runs trial after trial (imports paid once), and trials stay isolated:
the same config and seed give the same adapter whether a trial is the first or a later one on its worker, and
a trial that crashes is replaced without losing the others."""
import pytest

from lorafleet import data, publish, sweep
from lorafleet.config import load_domain

pytestmark = pytest.mark.integration


def _adapter(outcome, where):
    from safetensors.torch import load_file

    outcome.checkpoint.to_directory(str(where))
    return load_file(where / "adapter_model.safetensors")


def test_a_reused_worker_trains_the_same_adapter_and_a_crash_costs_one_trial(local_ray, small_base, domain_copy,
                                                                             tmp_path):
    import torch
    from ray.tune import Callback

    # the same rank-4 trial five times (num_samples), one at a time (2 CPUs each), then a rank that cannot be
    # allocated (a trial's OOM: its worker is replaced)
    cfg = load_domain(domain_copy("medical"), {
        "base_model": str(small_base), "train": {"max_steps": 3, "eval_steps": 3},
        "sweep": {"space": {"lora_rank": [4]}, "num_samples": 5, "resources_per_trial": {"cpu": 2}},
        "eval": {"max_examples": 1, "max_new_tokens": 4}})
    crash = cfg.model_copy(update={"name": "crash", "sweep": cfg.sweep.model_copy(update={
        "space": cfg.sweep.space.model_copy(update={"lora_rank": [1000000000]}), "num_samples": 1})})
    pids: dict[str, int] = {}

    class WorkerOfEachTrial(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            pids[trial.trial_id] = result["pid"]

    prepared = data.prepare(cfg)
    outcomes = sweep.run_sweep({"medical": sweep.DomainPlan(cfg, prepared), "crash": sweep.DomainPlan(crash, prepared)},
                               publish.Storage(str(tmp_path / "store")), "warm", callbacks=[WorkerOfEachTrial()])
    good = outcomes["medical"]
    assert [t.finished for t in good] == [True] * 5
    assert [t.error and "allocate" in t.error for t in outcomes["crash"]] == [True]
    assert len(set(pids.values())) < len(pids), f"no worker ran two trials: {pids}"  # workers were reused
    first, *later = [_adapter(t, tmp_path / f"adapter{i}") for i, t in enumerate(good)]
    for adapter in later:
        assert adapter.keys() == first.keys()
        for name, tensor in adapter.items():
            assert torch.allclose(tensor, first[name], atol=1e-6), name
