"""A domain's finishing starts as soon as that domain's own trials are done, while other domains still train;
every domain is handed over to its finishing exactly once, also one whose trials all ended in an earlier attempt
(a restored experiment, where Tune reports nothing of them)."""
import logging
import time
from collections import defaultdict

import pytest
import yaml

from lorafleet import data, pipeline, publish, sweep
from lorafleet.config import load_domain, parse_overrides
from tests.conftest import OPEN_GATE

pytestmark = pytest.mark.integration

QUICK = [*OPEN_GATE, "eval.max_examples=2", "eval.max_new_tokens=8", "export.onnx=false"]


def _change(path, **sections):
    """Override sections of a domain YAML in place (per domain, unlike a run's overrides)."""
    raw = yaml.safe_load(path.read_text())
    for key, values in sections.items():
        raw[key] = {**raw[key], **values}
    path.write_text(yaml.safe_dump(raw))
    return path


def _same(a, b) -> bool:
    """The same trial outcome, down to the checkpoint it points at (which model_dump leaves out)."""
    return a.model_dump() == b.model_dump() and getattr(a.checkpoint, "path", None) == getattr(b.checkpoint, "path", None)


def test_a_domain_is_finished_while_another_still_trains(local_ray, small_base, domain_copy, tmp_path, monkeypatch,
                                                         caplog):
    from ray.tune import Callback

    # 2 CPUs: contracts' single short trial and its finishing (0.25 CPU each) fit beside medical's three longer
    # trials, which run one after another (1.5 CPU each): medical still has two to train when contracts' is done
    space = {"learning_rate": [0.002], "epochs": [1]}
    quick = _change(domain_copy("contracts"), train={"max_steps": 3, "eval_steps": 3},
                    sweep={"space": {**space, "lora_rank": [4]}, "resources_per_trial": {"cpu": 0.25}})
    slow = _change(domain_copy("medical"), train={"max_steps": 30, "eval_steps": 30},
                   sweep={"space": {**space, "lora_rank": [2, 4, 8]}, "resources_per_trial": {"cpu": 1.5}})
    trial_ends: dict[str, list[float]] = defaultdict(list)
    announced, returned = {}, {}

    class TrialEnds(Callback):  # when the driver saw each trial complete
        def on_trial_complete(self, iteration, trials, trial, **info):
            trial_ends[trial.config["trial"]["domain"]].append(time.time())

    real_run_sweep = sweep.run_sweep

    def run_sweep(*args, on_domain_trained, callbacks=(), **kwargs):
        def record(domain, trials, story):
            announced[domain] = trials
            on_domain_trained(domain, trials, story)

        returned.update(real_run_sweep(*args, callbacks=[*callbacks, TrialEnds()], on_domain_trained=record, **kwargs))
        return returned

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    caplog.set_level(logging.INFO, logger="lorafleet.progress")
    summary = pipeline.run(pipeline.RunOptions(
        config_files=[quick, slow], overrides=parse_overrides([f"base_model={small_base}", *QUICK]),
        storage=str(tmp_path / "store"), run_id="overlap", work_dir=tmp_path / "work"))

    assert {n: d.status for n, d in summary.domains.items()} == {"contracts": "published", "medical": "published"}
    assert len(trial_ends["medical"]) == 3
    # contracts' finishing task had fetched the winner's adapter (its first step) before medical's last trial ended
    adapter_fetched = (tmp_path / "work" / "contracts" / "adapter").stat().st_mtime
    assert adapter_fetched < max(trial_ends["medical"]), (adapter_fetched, trial_ends)
    lines = [r.getMessage() for r in caplog.records]
    assert "[contracts] trials done; finishing while 1 domain still trains" in lines
    assert "[medical] trials done; finishing" in lines
    # what the sweep handed over as each domain's trials ended is what it returned at the end
    assert announced.keys() == returned.keys() == {"contracts", "medical"}
    for domain, trials in returned.items():
        assert len(announced[domain]) == len(trials) and all(map(_same, announced[domain], trials)), domain


def test_a_domain_whose_trials_ended_in_an_earlier_attempt_is_handed_over_once(local_ray, small_base, domain_copy,
                                                                               tmp_path):
    cfg = load_domain(domain_copy("medical"), {
        "base_model": str(small_base), "train": {"max_steps": 3, "eval_steps": 3},
        "sweep": {"space": {"lora_rank": [4]}, "resources_per_trial": {"cpu": 1}},
        "eval": {"max_examples": 1, "max_new_tokens": 4}})
    # a rank that cannot be allocated: its trial errors in every attempt (resumed as errored, it runs again)
    crash = cfg.model_copy(update={"name": "crash", "sweep": cfg.sweep.model_copy(update={
        "space": cfg.sweep.space.model_copy(update={"lora_rank": [1000000000]})})})
    prepared = data.prepare(cfg)
    plans = {"medical": sweep.DomainPlan(cfg, prepared), "crash": sweep.DomainPlan(crash, prepared)}
    storage = publish.Storage(str(tmp_path / "store"))

    def attempt():
        announced = []
        returned = sweep.run_sweep(plans, storage, "again",
                                   on_domain_trained=lambda domain, trials, story: announced.append((domain, trials)))
        assert sorted(d for d, _ in announced) == ["crash", "medical"]  # each exactly once
        for domain, trials in announced:
            assert len(trials) == len(returned[domain]) and all(map(_same, trials, returned[domain])), domain
        return announced, returned

    _, first = attempt()
    assert [t.finished for t in first["medical"]] == [True]
    assert [t.error and "allocate" in t.error for t in first["crash"]] == [True]

    announced, again = attempt()  # the experiment is restored: medical's trial had ended, crash's runs again
    # crash by Tune's on_trial_error during the fit; medical, which Tune reported nothing of, after the fit
    assert [d for d, _ in announced] == ["crash", "medical"]
    assert _same(dict(announced)["medical"][0], first["medical"][0])  # kept, not trained again
    assert "allocate" in dict(announced)["crash"][0].error
