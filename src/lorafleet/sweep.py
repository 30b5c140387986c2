"""Ray Tune sweep over every domain's search space at once.

All domains' trials go into one Tuner, so they share the cluster concurrently instead of running
one domain after another; each trial gets its domain's ``resources_per_trial``. The trial function
is stock: ``train_trial`` with a callback that reports every evaluation to Tune, and the adapter
reported last as the trial's checkpoint (stored in the run's storage, so any node can read it).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.config import DomainConfig, RangeSpec
from lorafleet.data import PreparedData
from lorafleet.train import HParams

log = logging.getLogger(__name__)

SPACE_KEYS = ("lora_rank", "learning_rate", "epochs")

# Ray Tune copies these from the driver's environment into every trial actor's runtime_env, and Ray's
# runtime-env agent writes runtime_envs to its log in plain text. Trials get credentials the way every
# Ray worker does instead: from their node's environment or instance role.
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


@contextlib.contextmanager
def credentials_kept_out_of_runtime_env():
    """While trials start, hide credential variables from this process's environment. Storage clients
    created before (the run's S3 filesystem) keep the credentials they already resolved."""
    saved = {k: os.environ.pop(k) for k in CREDENTIAL_VARS if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@dataclass
class DomainPlan:
    cfg: DomainConfig
    data: PreparedData


@dataclass
class TrialOutcome:
    hparams: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint: Any  # ray.tune.Checkpoint of the adapter, wherever the run's storage is
    error: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _sample(spec: list | RangeSpec, rng: random.Random) -> float:
    if isinstance(spec, list):
        return rng.choice(spec)
    if spec.log:
        value = math.exp(rng.uniform(math.log(spec.min), math.log(spec.max)))
    else:
        value = rng.uniform(spec.min, spec.max)
    return round(value) if spec.integer else value


def trial_hparams(cfg: DomainConfig) -> list[HParams]:
    """The domain's trials: the full grid (times num_samples), or num_samples random draws (seeded)."""
    space = cfg.sweep.space
    if cfg.sweep.search == "grid":
        grid = list(itertools.product(*(getattr(space, k) for k in SPACE_KEYS)))
        combos = grid * cfg.sweep.num_samples
    else:
        rng = random.Random(cfg.sweep.seed)
        combos = [tuple(_sample(getattr(space, k), rng) for k in SPACE_KEYS) for _ in range(cfg.sweep.num_samples)]
    return [HParams.from_dict(dict(zip(SPACE_KEYS, combo))) for combo in combos]


def _trainable(config: dict[str, Any], plans: dict[str, DomainPlan]) -> None:
    """One trial, in its own Ray worker process."""
    from ray import tune
    from transformers import TrainerCallback

    from lorafleet.train import train_trial

    spec = config["trial"]
    label = _trial_label(spec)

    class ReportToTune(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics:
                log.info("[%s] step %d/%d eval_loss %.4f", label, state.global_step, state.max_steps,
                         metrics.get("eval_loss", float("nan")))
                tune.report({**metrics, "step": state.global_step})

    plan = plans[spec["domain"]]
    work = Path(tune.get_context().get_trial_dir()) / "work"
    result = train_trial(plan.cfg.base_model, plan.cfg.train, HParams.from_dict(spec), plan.data.train,
                         plan.data.val, work, callbacks=[ReportToTune()],
                         after_training=lambda model, tokenizer: validation_metrics(plan, model, tokenizer, label))
    final = {**result.metrics, "backend": result.backend, "history": result.history, "step": result.metrics["steps"]}
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(result.adapter_dir))


def validation_metrics(plan: DomainPlan, model, tokenizer, label: str) -> dict[str, float]:
    """Greedy answers on the validation split, scored like the test split: what ``select.rule`` ranks."""
    from lorafleet import evaluate, metrics

    val = plan.data.val[: plan.cfg.eval.max_examples]
    answers = evaluate.generate(model, tokenizer, val, plan.cfg.eval.max_new_tokens, plan.cfg.eval.batch_size)
    rows = evaluate.score_rows(val, answers, plan.data.schema, plan.cfg.eval)
    values = evaluate.values(metrics.aggregate(rows, samples=1))
    log.info("[%s] validation: %s", label, ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return values


def _trial_label(spec: dict[str, Any]) -> str:
    return f"{spec['domain']}-r{spec['lora_rank']}-lr{spec['learning_rate']:g}-e{spec['epochs']}"


def _trial_name(trial) -> str:
    return f"{_trial_label(trial.config['trial'])}-{trial.trial_id}"


def trial_progress(total: int):
    """A Tune callback that logs a line as each trial ends: how many are done, and its result."""
    import time

    from ray.tune import Callback

    class TrialProgress(Callback):
        def __init__(self):
            self.done = 0
            self.started: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.setdefault(trial.trial_id, time.time())
            log.info("sweep: started %s", _trial_label(trial.config["trial"]))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            result = trial.last_result or {}
            shown = {k: result[k] for k in ("eval_loss", "schema_pass_rate", "score") if isinstance(result.get(k), float)}
            seconds = time.time() - self.started.get(trial.trial_id, time.time())
            log.info("sweep: %d/%d trials done: %s in %.0f s (%s)", self.done, total, _trial_label(trial.config["trial"]),
                     seconds, ", ".join(f"{k} {v:.3f}" for k, v in shown.items()))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            log.error("sweep: %d/%d trials done: %s FAILED", self.done, total, _trial_label(trial.config["trial"]))

    return TrialProgress()


def run_sweep(plans: dict[str, DomainPlan], storage_path: str, name: str, storage_filesystem=None,
              verbose: int = 1, callbacks: list | None = None) -> dict[str, list[TrialOutcome]]:
    """Run every domain's trials in one Tuner; return the outcomes grouped by domain."""
    from ray import tune
    from ray.tune import PlacementGroupFactory

    trials = [{"domain": d, **vars(hp)} for d, plan in plans.items() for hp in trial_hparams(plan.cfg)]
    log.info("sweep: %d trials over %d domains", len(trials), len(plans))

    def resources(config: dict[str, Any]) -> PlacementGroupFactory:
        res = plans[config["trial"]["domain"]].cfg.sweep.resources_per_trial
        return PlacementGroupFactory([{"CPU": res.cpu, "GPU": res.gpu}])

    callbacks = [trial_progress(len(trials)), *(callbacks or [])]
    trainable = tune.with_resources(tune.with_parameters(_trainable, plans=plans), resources)
    experiment = f"{storage_path.rstrip('/')}/{name}"
    if tune.Tuner.can_restore(experiment, storage_filesystem=storage_filesystem):
        # an earlier attempt of this run was interrupted: finished trials are kept, the rest run again
        log.info("sweep: resuming the interrupted sweep at %s", experiment)
        tuner = tune.Tuner.restore(experiment, trainable, resume_errored=True,
                                   storage_filesystem=storage_filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(trials)},
            tune_config=tune.TuneConfig(reuse_actors=False, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_filesystem,
                                      verbose=verbose, failure_config=tune.FailureConfig(max_failures=1),
                                      callbacks=callbacks),
        )
    with credentials_kept_out_of_runtime_env():
        grid = tuner.fit()
    outcomes: dict[str, list[TrialOutcome]] = {d: [] for d in plans}
    for result in grid:
        spec = dict(result.config["trial"])
        domain = spec.pop("domain")
        if domain not in outcomes:
            continue
        metrics = dict(result.metrics or {})
        history = metrics.pop("history", [])
        error = None if result.error is None else f"{type(result.error).__name__}: {result.error}"
        keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not k.startswith(
            ("time_", "timestamp", "pid", "hostname", "node_ip", "date", "trial_id", "experiment_tag",
             "iterations_since_restore", "training_iteration", "done", "checkpoint_dir_name", "should_checkpoint"))}
        outcomes[domain].append(TrialOutcome(
            hparams=spec, metrics=keep if error is None and result.checkpoint else {},
            checkpoint=result.checkpoint, error=error, history=history))
    return outcomes
