"""Ray Tune sweep over every domain's search space at once.

All domains' trials go into one Tuner, so they share the cluster concurrently instead of running
one domain after another; each trial gets its domain's ``resources_per_trial``. The trial function
is stock: ``train_trial`` with a callback that reports every evaluation to Tune, and the adapter
reported last as the trial's checkpoint (stored in the run's storage, so any node can read it).

A rerun of a run id picks up where the earlier attempt stopped: each Tune experiment of the run is
recorded with the fingerprint of every domain it trains (what the trials depend on: base model, data
version, train/sweep/eval settings). A domain whose fingerprint still matches resumes in its experiment
(finished trials kept, errored and unfinished ones run again); a domain that is already published or was
dropped from the run has its leftover trials skipped; a domain whose config or data changed starts over in
a fresh experiment, and the log says so.

A domain is handed over (``on_domain_trained``, in the driver) as soon as every one of its trials ended,
while other domains' trials still run, so that its finishing need not wait for the whole sweep: a Tune
callback sees each trial end; a domain whose trials had all ended in an earlier attempt gets no Tune event
and is handed over when its experiment's fit returns. Each domain is handed over exactly once.
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lorafleet import packing, publish
from lorafleet.base_model import GGUF_PREFIX
from lorafleet.config import DomainConfig, RangeSpec
from lorafleet.console import library_prints_to_log, progress
from lorafleet.data import PreparedData
from lorafleet.lineage import prompt_sha256, sha256_file
from lorafleet.results import SearchStory, TrialLineage, TrialOutcome
from lorafleet.train import TRIAL_RECORD, HParams

if TYPE_CHECKING:  # search.py imports Ray Tune, which this module imports only where a sweep runs
    from lorafleet.search import DomainSearch

log = logging.getLogger(__name__)

SPACE_KEYS = ("lora_rank", "learning_rate", "epochs")
KEY_TRIAL_METRICS = ("eval_loss", "schema_pass_rate", "score")

# Ray Tune copies these from the driver's environment into every trial actor's runtime_env, and Ray's
# runtime-env agent writes runtime_envs to its log in plain text. Trials get credentials the way every
# Ray worker does instead: from their node's environment or instance role.
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN")


def keep_credentials_out_of_trial_runtime_envs() -> None:
    """Take the credential variables off Tune's list of driver variables it copies into trial actors'
    runtime_env (``ray.tune.execution.class_cache``); the driver's own environment stays as it is, so its
    storage clients can reconnect or refresh tokens at any time during the sweep."""
    from ray.tune.execution import class_cache

    class_cache.ENV_VARS_TO_PROPAGATE.difference_update(CREDENTIAL_VARS)


@dataclass(frozen=True)
class DomainPlan:
    cfg: DomainConfig
    data: PreparedData

    @functools.cached_property
    def fingerprint(self) -> str:
        """What a trial's result depends on: a change here means earlier trials no longer apply."""
        c = self.cfg
        inputs = {"base_model": c.base_model, "system_prompt": c.system_prompt, "data": self.data.manifest.dataset_version,
                  "train": c.train.model_dump(mode="json"), "sweep": c.sweep.model_dump(mode="json"),
                  "eval": c.eval.model_dump(mode="json")}
        if c.base_model.startswith(GGUF_PREFIX):  # a file replaced at the same path is another base
            inputs["base_weights"] = sha256_file(Path(c.base_model_ref[len(GGUF_PREFIX):]))
        return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _sample(spec: list | RangeSpec, rng: random.Random) -> float:
    if isinstance(spec, list):
        return rng.choice(spec)
    if spec.log:
        value = math.exp(rng.uniform(math.log(spec.min), math.log(spec.max)))
    else:
        value = rng.uniform(spec.min, spec.max)
    return round(value) if spec.integer else value


def trial_hparams(cfg: DomainConfig) -> list[HParams]:
    """The domain's trials fixed before the sweep: the full grid (times num_samples), or num_samples random draws
    (seeded); none for a search that chooses as it goes (optuna)."""
    space = cfg.sweep.space
    if cfg.sweep.search == "optuna":
        return []
    if cfg.sweep.search == "grid":
        grid = list(itertools.product(*(getattr(space, k) for k in SPACE_KEYS)))
        combos = grid * cfg.sweep.num_samples
    else:
        rng = random.Random(cfg.sweep.seed)
        combos = [tuple(_sample(getattr(space, k), rng) for k in SPACE_KEYS) for _ in range(cfg.sweep.num_samples)]
    return [HParams.from_dict(dict(zip(SPACE_KEYS, combo))) for combo in combos]


def space_ranks(cfg: DomainConfig) -> list[int]:
    """Every LoRA rank a trial of the domain may get (a range: its largest), for sizing a trial's memory."""
    ranks = cfg.sweep.space.lora_rank
    return list(ranks) if isinstance(ranks, list) else [int(ranks.max)]


def _trainable(config: dict[str, Any], plans: dict[str, DomainPlan], storage_uri: str, run_id: str) -> None:
    """One trial, in its own Ray worker process; an attempt after a lost worker, node or driver goes on from the
    trial's last checkpoint. A leftover trial of a restored experiment whose domain is not (or no longer in the same
    form) part of this sweep returns at once."""
    from ray import tune

    started_at = time.time()
    spec = config["trial"]
    plan = plans.get(spec["domain"])
    if plan is None or plan.fingerprint != spec["fingerprint"]:
        tune.report({"skipped": 1.0})
        return
    label = _trial_label(spec)
    # scratch outside Tune's trial folder, which Tune copies to the run's storage as the experiment's state (and
    # would copy Trainer checkpoints from while the Trainer rotates them); what is kept goes up as a checkpoint
    with tempfile.TemporaryDirectory(prefix="lorafleet-trial-") as work:
        _run_trial(plan, spec, label, Path(work), storage_uri, run_id, started_at)


def _run_trial(plan: DomainPlan, spec: dict[str, Any], label: str, work: Path, storage_uri: str, run_id: str,
               started_at: float) -> None:
    from ray import tune
    from transformers import TrainerCallback

    from lorafleet.train import TrialStopped, train_trial

    resume_from, done = _last_checkpoint(work)
    if done is not None:  # ended in an earlier attempt whose driver was lost before Tune recorded it
        tune.report({**done, "started_at": started_at}, checkpoint=tune.get_checkpoint())
        return
    starts = publish.record_trial_start(publish.Storage(storage_uri), run_id, tune.get_context().get_experiment_name(),
                                        tune.get_context().get_trial_id(), _checkpoint_step(resume_from))
    restarts = {"restarts": len(starts) - 1, "resumed_from": starts[1:]}
    if resume_from is not None:
        log.warning("[%s] restart %d: resuming from its checkpoint at step %d", label, len(starts) - 1, starts[-1])

    class ReportToTune(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics:
                log.info("[%s] step %d/%d eval_loss %.4f", label, state.global_step, state.max_steps,
                         metrics.get("eval_loss", float("nan")))
                tune.report({**metrics, "step": state.global_step, **restarts})

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"  # the Trainer's own checkpoint
            tune.report({"step": state.global_step, "checkpoint_step": state.global_step, **restarts},
                        checkpoint=tune.Checkpoint.from_directory(str(folder)))

    hparams, chat_template = HParams.from_dict(spec), []

    def after_training(model, tokenizer) -> dict[str, float]:
        chat_template.append(tokenizer.chat_template)
        return validation_metrics(plan, model, tokenizer, label)

    try:
        result = train_trial(plan.cfg.base_model_ref, plan.cfg.train, hparams, plan.data.train, plan.data.val, work,
                             callbacks=[ReportToTune()], resume_from=resume_from, after_training=after_training,
                             trust_remote_code=plan.cfg.trust_remote_code)
    except TrialStopped as stopped:  # ends the trial as failed with its reason; not an error Tune would retry
        log.warning("[%s] %s", label, stopped)
        tune.report({"stopped": str(stopped), "started_at": started_at, **restarts})
        return
    trial_lineage = TrialLineage(prompt_sha256=prompt_sha256(plan.cfg.system_prompt, chat_template[0], plan.cfg.context_template),
                                 eval_set_version=plan.data.eval_set_version,
                                 dataset_version=plan.data.manifest.dataset_version,
                                 train=hparams.applied_to(plan.cfg.train).model_dump(mode="json"))
    final = {**result.metrics, "backend": result.backend, "load_in_4bit": result.load_in_4bit,
             "history": result.history, "step": result.metrics["steps"], "started_at": started_at, **restarts,
             "lineage": trial_lineage.model_dump()}
    tune.report(final, checkpoint=tune.Checkpoint.from_directory(result.adapter_dir))


def _last_checkpoint(work: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The trial's last checkpoint, fetched from the run's storage into ``work``: (a Trainer checkpoint to resume
    from, None), (None, the final report) when it is the trained adapter, or (None, None) for a first attempt."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, None
    folder = work / "resume"
    shutil.rmtree(folder, ignore_errors=True)
    checkpoint.to_directory(str(folder))
    if (folder / TRIAL_RECORD).is_file():
        record = json.loads((folder / TRIAL_RECORD).read_text())
        return None, {**record["metrics"], "backend": record["backend"], "load_in_4bit": record["load_in_4bit"]}
    return folder, None


def _checkpoint_step(folder: Path | None) -> int:
    """The optimizer step a Trainer checkpoint was saved at (0: no checkpoint, a start from scratch)."""
    return json.loads((folder / "trainer_state.json").read_text())["global_step"] if folder else 0


def validation_metrics(plan: DomainPlan, model, tokenizer, label: str) -> dict[str, float]:
    """Greedy answers on the validation split, scored like the test split: what ``select.rule`` ranks, and each
    answer field's accuracy (``field_accuracy.<field>``, what the staged search's rules read)."""
    from lorafleet import evaluate, metrics

    val = plan.data.val[: plan.cfg.eval.max_examples]
    answers = evaluate.generate(model, tokenizer, val, plan.cfg.eval.max_new_tokens, plan.cfg.eval.batch_size)
    scored = evaluate.score_answers(val, answers, plan.data.schema, plan.cfg.eval, plan.data.context)
    evaluation = metrics.aggregate([a.score for a in scored], samples=1)
    values = evaluation.values()
    log.info("[%s] validation: %s", label, ", ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return {**values, **{metrics.FIELD_PREFIX + name: m.value for name, m in evaluation.fields.items()}}


def _trial_label(spec: dict[str, Any]) -> str:
    return f"{spec['domain']}-{HParams.from_dict(spec).label.replace(' ', '-')}"


def _trial_name(trial) -> str:
    return f"{_trial_label(trial.config['trial'])}-{trial.trial_id}"


def _in_sweep(spec: dict[str, Any], fingerprints: dict[str, str]) -> bool:
    """Whether a trial trains one of this sweep's domains as they are now (``fingerprints``), unlike a leftover
    trial of a restored experiment whose domain was published, dropped or changed since."""
    return fingerprints.get(spec["domain"]) == spec["fingerprint"]


def trial_progress(fingerprints: dict[str, str], total: int | None):
    """A Tune callback (in the driver) that logs a line as each of this sweep's trials starts and ends
    (``fingerprints``: the domains this sweep trains; leftover trials of others are not counted; ``total``: their
    trials, None where a search chooses its trials as it goes)."""
    from ray.tune import Callback

    def ours(trial) -> bool:
        return _in_sweep(trial.config["trial"], fingerprints)

    def describe(trial) -> str:
        spec = trial.config["trial"]
        return f"[{spec['domain']}] trial {HParams.from_dict(spec).label}"

    def count(done: int) -> str:
        return f"{done}/{total} trials" if total is not None else f"{done} trials ended"

    class TrialProgress(Callback):
        def __init__(self):
            self.done = 0
            self.started: dict[str, float] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            if ours(trial):
                self.started.setdefault(trial.trial_id, time.time())
                progress.info("%s started", describe(trial))

        def on_trial_complete(self, iteration, trials, trial, **info):
            if not ours(trial):
                return
            self.done += 1
            result = trial.last_result or {}
            if result.get("stopped"):
                log.error("%s STOPPED, %s (%s)", describe(trial), result["stopped"], count(self.done))
                return
            shown = ", ".join(f"{k} {result[k]:.3f}" for k in KEY_TRIAL_METRICS if isinstance(result.get(k), float))
            if _stopped_early(result):
                progress.info("%s stopped early by ASHA at step %d: %s (%s)", describe(trial), result["step"], shown,
                              count(self.done))
                return
            seconds = time.time() - self.started.get(trial.trial_id, time.time())
            progress.info("%s done in %.0f s: %s (%s)", describe(trial), seconds, shown, count(self.done))

        def on_trial_recover(self, iteration, trials, trial, **info):
            if ours(trial):
                log.warning("%s lost its worker or failed; restarting it from its last checkpoint (failure %d)",
                            describe(trial), trial.num_failures)

        def on_trial_error(self, iteration, trials, trial, **info):
            if ours(trial):
                self.done += 1
                log.error("%s FAILED (%s); its error is in the worker logs", describe(trial), count(self.done))

    return TrialProgress()


DomainTrained = Callable[[str, list[TrialOutcome], SearchStory | None], None]


def domains_trained(plans: dict[str, DomainPlan], announce: DomainTrained, searcher: DomainSearch):
    """A Tune callback (in the driver) that calls ``announce(domain, outcomes)`` as soon as one of ``plans``'
    domains has no trial left to suggest (``searcher``, the experiment's searcher, which Tune tells of an ended trial
    before its callbacks) and every trial of it ended: completed, stopped, or failed for good (Tune calls
    ``on_trial_error`` only for a trial it will not retry). Trials restored as ended count; leftover trials of others
    do not."""
    from ray.tune import Callback
    from ray.tune.experiment import Trial

    class DomainsTrained(Callback):
        # all state is passed in, none captured: Tune pickles this class with its RunConfig into tuner.pkl
        def __init__(self, fingerprints: dict[str, str], announce: DomainTrained, searcher: DomainSearch):
            self.fingerprints, self.announce, self.searcher = fingerprints, announce, searcher

        def __getstate__(self):
            # the hook holds the driver's live state (finishing tasks), and the searcher is saved by Tune on its own:
            # no business in the experiment folder; a restored experiment gets this attempt's callbacks
            return {**self.__dict__, "announce": None, "searcher": None}

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.announce_if_trained(trials, trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self.announce_if_trained(trials, trial)

        def announce_if_trained(self, trials, ended) -> None:
            if not _in_sweep(ended.config["trial"], self.fingerprints):
                return
            domain = ended.config["trial"]["domain"]
            mine = [t for t in trials if t.config["trial"]["domain"] == domain
                    and _in_sweep(t.config["trial"], self.fingerprints)]
            # Tune creates trials as the searcher suggests them, and marks one TERMINATED after on_trial_complete
            if not self.searcher.exhausted(domain) or any(
                    t is not ended and t.status not in (Trial.TERMINATED, Trial.ERROR) for t in mine):
                return
            try:
                self.announce(domain, [_trial_outcome(t) for t in mine], self.searcher.story(domain))
            except Exception:  # noqa: BLE001 - Tune would take it for the trial's own error and retry the trial
                log.exception("[%s] not handed over as its trials ended; it will be when the sweep ends", domain)

    return DomainsTrained({d: p.fingerprint for d, p in plans.items()}, announce, searcher)


@dataclass(frozen=True)
class _Experiment:
    name: str
    plans: dict[str, DomainPlan]
    restore: bool


def _experiments(plans: dict[str, DomainPlan], storage: publish.Storage, run_id: str) -> list[_Experiment]:
    """The Tune experiments this attempt runs: earlier attempts' experiments that still hold trials of
    domains to train (unchanged), then a fresh one for every other domain."""
    from ray import tune

    tune_path, tune_fs = storage.tune_location(run_id)
    recorded = publish.read_sweep_records(storage, run_id)
    todo = dict(plans)
    experiments = []
    for name, fingerprints in recorded.items():
        mine = {d: todo.pop(d) for d, fp in fingerprints.items() if d in todo and todo[d].fingerprint == fp}
        if mine and tune.Tuner.can_restore(f"{tune_path}/{name}", storage_filesystem=tune_fs):
            experiments.append(_Experiment(name, mine, restore=True))
        else:
            todo.update(mine)
    for name, fingerprints in recorded.items():
        for d in sorted(d for d, fp in fingerprints.items() if d in todo and todo[d].fingerprint != fp):
            log.warning("[%s] config or data changed since an earlier attempt of run %s (%s); its trials start over",
                        d, run_id, name)
    if todo:
        name = f"sweep-{len(recorded) + 1}"
        publish.write_sweep_record(storage, run_id, name, {d: p.fingerprint for d, p in todo.items()})
        experiments.append(_Experiment(name, todo, restore=False))
    return experiments


def run_sweep(plans: dict[str, DomainPlan], storage: publish.Storage, run_id: str, verbose: bool = False,
              callbacks: list | None = None,
              on_domain_trained: DomainTrained | None = None) -> dict[str, list[TrialOutcome]]:
    """Train every domain's trials (resuming an earlier attempt of the run); the outcomes by domain. Each
    domain's outcomes also go to ``on_domain_trained`` once, as soon as its trials ended."""
    keep_credentials_out_of_trial_runtime_envs()
    # Tune snapshots the experiment state each time it drops a trial's older checkpoint (num_to_keep=1): what lets a
    # rerun after a lost driver resume each trial from its newest checkpoint. Its warning that snapshots come seconds
    # apart (with checkpoints seconds apart) is not a problem of ours
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    gpu_shares, packed = trial_gpu_shares(plans)
    announced: set[str] = set()

    def announce(domain: str, trials: list[TrialOutcome], story: SearchStory | None) -> None:
        if on_domain_trained is not None and domain not in announced:
            on_domain_trained(domain, trials, story)
            announced.add(domain)  # only once it went through: a hook that raised is tried again after the fit

    outcomes: dict[str, list[TrialOutcome]] = {}
    for experiment in _experiments(plans, storage, run_id):
        trained, searcher = _fit(experiment, gpu_shares, packed, storage, run_id, verbose, callbacks or [], announce)
        for domain, trials in trained.items():  # those whose trials had all ended in an earlier attempt
            announce(domain, trials, searcher.story(domain))
        outcomes.update(trained)
    return outcomes


def trial_gpu_shares(plans: dict[str, DomainPlan]) -> tuple[dict[str, float], packing.PackedGpus | None]:
    """Each domain's GPU share per trial: as configured, or packed (``gpu: auto``, see packing.py); and the packed
    trials' shares and budget, for the searcher to keep them within."""
    from lorafleet.base_model import cache_root

    auto = {d: packing.PackingRequest(
                shape=packing.TrialShape.of(p.cfg.base_model_ref, p.cfg.train, space_ranks(p.cfg),
                                            p.cfg.trust_remote_code),
                examples=packing.probe_examples(p.data.train, p.cfg.train.batch_size),
                cpus_per_trial=p.cfg.sweep.resources_per_trial.cpu, finishing_gpu=p.cfg.finish_resources.gpu)
            for d, p in plans.items() if p.cfg.sweep.resources_per_trial.gpu == "auto"}
    packed = packing.pack(auto, cache_root() / "probes") if auto else None
    shares = packed.shares if packed else {}
    return {d: shares[d] if d in shares else float(p.cfg.sweep.resources_per_trial.gpu) for d, p in plans.items()}, packed


def _fit(experiment: _Experiment, gpu_shares: dict[str, float], packed: packing.PackedGpus | None,
         storage: publish.Storage, run_id: str, verbose: bool,
         callbacks: list, announce: DomainTrained) -> tuple[dict[str, list[TrialOutcome]], DomainSearch]:
    """The experiment's trials by domain once its fit returned, and its searcher (as restored, for a rerun)."""
    from ray import tune
    from ray.tune import PlacementGroupFactory

    from lorafleet import search

    plans = experiment.plans
    strategies = {d: search.strategy(plan.cfg) for d, plan in plans.items()}
    totals = [s.total for s in strategies.values()]
    total = sum(totals) if None not in totals else None

    def resources(config: dict[str, Any]) -> PlacementGroupFactory:
        domain = config["trial"]["domain"]
        plan = plans.get(domain)
        cpu = plan.cfg.sweep.resources_per_trial.cpu if plan else 1
        return PlacementGroupFactory([{"CPU": cpu, "GPU": gpu_shares.get(domain, 0)}])

    tune_path, tune_fs = storage.tune_location(run_id)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, plans=plans, storage_uri=storage.uri, run_id=run_id), resources)
    callbacks = [trial_progress({d: p.fingerprint for d, p in plans.items()}, total), *callbacks]
    if experiment.restore:
        progress.info("sweep: resuming the interrupted sweep %s for %s", experiment.name, ", ".join(plans))
        tuner = tune.Tuner.restore(f"{tune_path}/{experiment.name}", trainable, resume_errored=True,
                                   storage_filesystem=tune_fs)
        # Tune restores the earlier attempt's searcher (its state saved with the experiment) and callbacks (pickled
        # with its RunConfig) and has no public way to replace the callbacks; this attempt's progress counts only the
        # domains it trains, and hands a domain over when the restored searcher has nothing left of it
        restored = tuner._local_tuner  # noqa: SLF001
        run_config = restored.get_run_config()
        domain_search = restored._tune_config.search_alg  # noqa: SLF001
        run_config.callbacks = [*callbacks, domains_trained(plans, announce, domain_search)]
        run_config.verbose = 1 if verbose else 0
    else:
        shown = f"{total} trials" if total is not None else "trials chosen as the search goes"
        progress.info("sweep: %s over %d domains (%s)", shown, len(plans), ", ".join(plans))
        domain_search = search.DomainSearch(strategies, {d: p.fingerprint for d, p in plans.items()}, packed)
        schedulers = search.domain_schedulers({d: (p.cfg, len(p.data.train)) for d, p in plans.items()})
        tuner = tune.Tuner(
            trainable,
            # warm workers: a trial's process runs the next trial of the same resources, so torch, TRL (and on
            # CUDA Unsloth) are imported and the base loaded once per worker, not once per trial; an errored
            # trial's worker is replaced
            tune_config=tune.TuneConfig(search_alg=domain_search, scheduler=schedulers, num_samples=-1,
                                        reuse_actors=all(p.cfg.sweep.reuse_workers for p in plans.values()),
                                        trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(name=experiment.name, storage_path=tune_path, storage_filesystem=tune_fs,
                                      verbose=1 if verbose else 0,
                                      callbacks=[*callbacks, domains_trained(plans, announce, domain_search)],
                                      # trials restart from their last checkpoint; only the newest is kept
                                      failure_config=tune.FailureConfig(
                                          max_failures=max(p.cfg.train.max_failures for p in plans.values())),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    with library_prints_to_log():
        grid = tuner.fit()
    return _outcomes(grid, plans), domain_search


def _outcomes(grid, plans: dict[str, DomainPlan]) -> dict[str, list[TrialOutcome]]:
    fingerprints = {d: p.fingerprint for d, p in plans.items()}
    outcomes: dict[str, list[TrialOutcome]] = {d: [] for d in plans}
    for result in grid:
        spec = result.config["trial"]
        if _in_sweep(spec, fingerprints):
            outcomes[spec["domain"]].append(_outcome(spec, result.metrics or {}, result.error, result.checkpoint))
    return outcomes


def _trial_outcome(trial) -> TrialOutcome:
    """A trial's outcome as Tune ended it, the same as ``_outcomes`` builds from its Result after the fit: at
    on_trial_complete, Tune already holds the trial's final report and checkpoint."""
    return _outcome(trial.config["trial"], trial.last_result or {}, _trial_error(trial), trial.checkpoint)


def _trial_error(trial) -> Exception | None:
    """The error that ended a trial, as its Result will hold it; from the driver's copy, since Tune copies it
    to the run's storage (where ``Trial.get_pickled_error`` reads) only at its next sync."""
    from ray import cloudpickle
    from ray.tune.error import TuneError
    from ray.tune.experiment import Trial

    if trial.status != Trial.ERROR:
        return None
    if trial.pickled_error_file:  # a task or actor error, pickled as raised
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    return TuneError(Path(trial.error_file).read_text()) if trial.error_file else None


def _outcome(spec: dict[str, Any], reported: dict[str, Any], error: BaseException | None,
             checkpoint) -> TrialOutcome:
    """What both a Tune ``Trial`` and a ``Result`` tell of a trial: its spec, its last report, the error that
    ended it (None if it completed) and its last checkpoint."""
    early = error is None and _stopped_early(reported)
    finished = error is None and checkpoint is not None and "stopped" not in reported and not early
    return TrialOutcome(
        hparams=HParams.from_dict(spec), backend=reported.get("backend"),
        load_in_4bit=bool(reported.get("load_in_4bit", False)),
        metrics=_trial_metrics(reported) if finished or early else {},
        history=reported.get("history", []),
        error=error_text(error) if error is not None else reported.get("stopped"),
        restarts=int(reported.get("restarts", 0)), resumed_from=reported.get("resumed_from", []),
        stopped_early_at=int(reported["step"]) if early else None,
        round=spec.get("round"), lineage=reported.get("lineage") if finished else None,
        checkpoint=checkpoint if finished else None)


def _stopped_early(reported: dict[str, Any]) -> bool:
    """Whether a trial's last report is one from the middle of its training: the scheduler (ASHA) stopped it there.
    A trial's own end always reports its backend; a guard's stop, its reason; a skipped leftover, that."""
    return bool(reported) and "step" in reported and not {"backend", "stopped", "skipped"} & reported.keys()


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def error_text(error: BaseException) -> str:
    """The error a trial raised, not Ray's wrapper of it (whose text is the remote traceback, in colour)."""
    cause = getattr(error, "cause", None)  # RayTaskError / TuneError carry the trial's own exception
    if isinstance(cause, BaseException):
        error = cause
    return _ANSI_ESCAPE.sub("", f"{type(error).__name__}: {error}").strip()


def _trial_metrics(reported: dict[str, Any]) -> dict[str, float]:
    """The trial's own numbers from its last Tune result, without Tune's bookkeeping."""
    bookkeeping = ("time_", "timestamp", "started_at", "restarts", "checkpoint_step", "pid", "hostname", "node_ip",
                   "date", "trial_id", "experiment_tag",
                   "iterations_since_restore", "training_iteration", "done", "checkpoint_dir_name",
                   "should_checkpoint")
    return {k: float(v) for k, v in reported.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.startswith(bookkeeping)}
