"""How each domain's trials are chosen and stopped, inside the one Tune experiment every domain shares.

Tune takes one searcher and one scheduler per experiment, and a sweep's experiment holds every domain's trials (so
domains share the cluster). ``DomainSearch`` is that searcher: it asks each domain's own strategy for the domain's
next trial (``grid``/``random``: a list fixed up front; ``optuna``: Tune's ``OptunaSearch``, TPE, told each trial's
end) and hands each ended trial back to the strategy it came from. ``DomainSchedulers`` is that scheduler: a domain
with ``sweep.scheduler: asha`` gets its own Tune ``ASHAScheduler``, so trials are only ever compared with trials of
their own domain; other domains' trials run to their end.

A trial's Tune config is ``{"trial": spec}``, spec being its domain, the domain's fingerprint and its HParams.
"""
from __future__ import annotations

import math
import pickle
from typing import Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from lorafleet import rounds
from lorafleet.config import DomainConfig, RangeSpec
from lorafleet.metrics import FIELD_PREFIX
from lorafleet.packing import PackedGpus
from lorafleet.results import RoundNote, SearchStory
from lorafleet.sweep import SPACE_KEYS, trial_hparams
from lorafleet.train import HParams


class FixedTrials:
    """grid and random: the domain's trials, fixed before the sweep, in order."""

    def __init__(self, hparams: list[HParams]):
        self.todo, self.total = list(hparams), len(hparams)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        return vars(self.todo.pop(0)) if self.todo else None

    def on_trial_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        pass

    @property
    def exhausted(self) -> bool:
        return not self.todo


class OptunaTrials:
    """optuna: ``num_samples`` trials, each asked of Tune's OptunaSearch (TPE, seeded) when a slot is free, at most
    ``max_concurrent`` at once so that later trials learn from earlier ones; a trial that did not end with the
    objective (failed, stopped by a guard or early) is told as pruned."""

    def __init__(self, cfg: DomainConfig):
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        sweep = cfg.sweep
        self.left, self.live = sweep.num_samples, set()
        self.max_concurrent = sweep.optuna.max_concurrent
        self.metric = sweep.optuna.metric
        sampler = TPESampler(seed=sweep.seed, n_startup_trials=sweep.optuna.startup_trials)
        self.optuna = OptunaSearch(space=tune_space(cfg), metric=sweep.optuna.metric, mode=sweep.optuna.mode,
                                   sampler=sampler)

    @property
    def total(self) -> int | None:
        return None  # known only as the search goes (a trial Optuna already proposed may repeat a combination)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.left or len(self.live) >= self.max_concurrent:
            return None
        self.left -= 1
        self.live.add(trial_id)
        return vars(HParams.from_dict(self.optuna.suggest(trial_id)))

    def on_trial_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        self.live.discard(trial_id)
        ended = result if result and "backend" in result and self.metric in result else None
        self.optuna.on_trial_complete(trial_id, result=ended, error=error)

    @property
    def exhausted(self) -> bool:
        return not self.left


class RoundsTrials:
    """strategy: rounds, the staged search (rounds.py plans it): each round's configs are suggested together, and the
    next round is planned from their validation results once the last of them ended. Each trial's spec carries its
    round; ``story`` tells what produced each round and why the search stopped."""

    def __init__(self, cfg: DomainConfig):
        self.settings, self.rule = rounds.Settings.from_domain(cfg), list(cfg.select.rule)
        self.history: list[list[rounds.Observed]] = []
        self.ended: list[rounds.Observed] = []  # of the round under way
        self.live: dict[str, rounds.RoundConfig] = {}
        self.notes: list[RoundNote] = []
        self.stopped: rounds.Stopped | None = None
        self.todo: list[rounds.RoundConfig] = []
        self._plan()

    @property
    def total(self) -> int | None:
        return None

    def _plan(self) -> None:
        decision = rounds.plan_next(self.settings, self.history, rounds.pick_with(self.rule))
        if isinstance(decision, rounds.Stopped):
            self.stopped = decision
            return
        self.todo = list(decision.configs)
        self.notes.append(RoundNote(round=decision.round, why=decision.why, flags=list(decision.flags),
                                    trials=[c.label for c in decision.configs]))

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if not self.todo:
            return None
        config = self.live[trial_id] = self.todo.pop(0)
        return {**config.as_dict(), "epochs": 1, "round": len(self.history)}

    def on_trial_complete(self, trial_id: str, result: dict | None, error: bool) -> None:
        config = self.live.pop(trial_id, None)
        if config is None:
            return
        result = result or {}
        numbers = {k: float(v) for k, v in result.items()  # Tune flattens nested values (lineage/...): not metrics
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and "/" not in k}
        self.ended.append(rounds.Observed(
            config, metrics={k: v for k, v in numbers.items() if not k.startswith(FIELD_PREFIX)},
            fields={k[len(FIELD_PREFIX):]: v for k, v in numbers.items() if k.startswith(FIELD_PREFIX)},
            failed=error or "backend" not in result))
        if not self.live and not self.todo:
            self.history.append(self.ended)
            self.ended = []
            self._plan()

    @property
    def exhausted(self) -> bool:
        return self.stopped is not None

    def story(self) -> SearchStory:
        stopped = self.stopped
        return SearchStory(rounds=self.notes, stopped=stopped.reason if stopped else None,
                           fix_prompt=bool(stopped and stopped.fix_prompt),
                           flags=list(stopped.flags) if stopped else [])


def tune_space(cfg: DomainConfig) -> dict[str, Any]:
    """The domain's search space as Tune's sampling domains: a list is a choice, a range a (log-)uniform or
    integer draw."""
    from ray import tune

    def domain(spec: list | RangeSpec):
        if isinstance(spec, list):
            return tune.choice(spec)
        if spec.integer:
            return tune.lograndint(int(spec.min), int(spec.max) + 1) if spec.log else tune.randint(
                int(spec.min), int(spec.max) + 1)
        return tune.loguniform(spec.min, spec.max) if spec.log else tune.uniform(spec.min, spec.max)

    return {k: domain(getattr(cfg.sweep.space, k)) for k in SPACE_KEYS}


class DomainSearch(Searcher):
    """Tune's searcher for an experiment of several domains: each suggestion comes from the first domain (in the
    experiment's order) whose strategy has a trial to run now; the search is finished once every strategy is."""

    def __init__(self, strategies: dict[str, Strategy], fingerprints: dict[str, str],
                 packed: PackedGpus | None = None):
        super().__init__()  # no metric of its own: each domain's strategy has its own, checked when it loads
        self.strategies, self.fingerprints, self.packed = strategies, fingerprints, packed
        self.owner: dict[str, str] = {}  # trial id -> domain
        self.packed_live: dict[str, float] = {}  # trial id -> its GPU share, for the packed domains' trials

    def suggest(self, trial_id: str) -> dict | None:
        for domain, strategy in self.strategies.items():
            share = self.packed.shares.get(domain) if self.packed else None
            if share and sum(self.packed_live.values()) + share > self.packed.budget + 1e-9:
                continue  # the GPUs hold as many of these trials as packed; a next one would take finishing's share
            spec = strategy.suggest(trial_id)
            if spec is not None:
                self.owner[trial_id] = domain
                if share:
                    self.packed_live[trial_id] = share
                return {"trial": {"domain": domain, "fingerprint": self.fingerprints[domain], **spec}}
        return Searcher.FINISHED if all(s.exhausted for s in self.strategies.values()) else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.packed_live.pop(trial_id, None)
        domain = self.owner.get(trial_id)
        if domain is not None:
            self.strategies[domain].on_trial_complete(trial_id, result, error)

    def exhausted(self, domain: str) -> bool:
        """Whether the domain's strategy has no trial left to suggest (its trials may still run)."""
        return self.strategies[domain].exhausted

    def story(self, domain: str) -> SearchStory | None:
        """How the domain's search went, round by round (the staged search only)."""
        strategy = self.strategies.get(domain)
        return strategy.story() if isinstance(strategy, RoundsTrials) else None

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


Strategy = FixedTrials | OptunaTrials | RoundsTrials


def strategy(cfg: DomainConfig) -> Strategy:
    """The domain's strategy: the staged rounds, Optuna, or its grid or random trials fixed before the sweep."""
    if cfg.sweep.strategy == "rounds":
        return RoundsTrials(cfg)
    return OptunaTrials(cfg) if cfg.sweep.search == "optuna" else FixedTrials(trial_hparams(cfg))


class DomainSchedulers(FIFOScheduler):
    """Tune's scheduler for an experiment of several domains: a domain with ``sweep.scheduler: asha`` has its own
    ASHAScheduler (its trials compared with each other only), the others run every trial to its end. A trial whose
    evaluation comes at or past its domain's last rung (``max_steps``: the longest trial) is at its end and goes on
    to report its validation answers."""

    def __init__(self, asha: dict[str, ASHAScheduler], max_steps: dict[str, int]):
        super().__init__()
        self.asha, self.max_steps = asha, max_steps

    def _of(self, trial) -> ASHAScheduler | None:
        return self.asha.get(trial.config["trial"]["domain"])

    def on_trial_add(self, tune_controller, trial) -> None:
        if (s := self._of(trial)) is not None:
            s.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        if (s := self._of(trial)) is not None:
            s.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        s = self._of(trial)
        if s is None or result.get("step", 0) >= self.max_steps[trial.config["trial"]["domain"]]:
            return TrialScheduler.CONTINUE
        return s.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if (s := self._of(trial)) is not None:
            s.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if (s := self._of(trial)) is not None:
            s.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{d}: {s.debug_string()}" for d, s in self.asha.items()) or "FIFO"


def longest_trial(cfg: DomainConfig, n_train: int) -> int:
    """The optimizer steps of the domain's longest trial: its most epochs over the training records, or
    train.max_steps."""
    epochs = cfg.sweep.space.epochs
    most = max(epochs) if isinstance(epochs, list) else int(epochs.max)
    steps = math.ceil(n_train / (cfg.train.batch_size * cfg.train.grad_accum)) * most
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def asha_max_steps(cfg: DomainConfig, longest_trial: int) -> int:
    """ASHA's max_t for the domain, in optimizer steps: sweep.asha.max_steps, else its longest trial."""
    return max(cfg.sweep.asha.max_steps or longest_trial, cfg.sweep.asha.grace_period)


def domain_schedulers(plans: dict[str, tuple[DomainConfig, int]]) -> DomainSchedulers:
    """The experiment's scheduler for its domains, given each domain's config and training records."""
    max_steps = {d: asha_max_steps(cfg, longest_trial(cfg, n_train)) for d, (cfg, n_train) in plans.items()
                 if cfg.sweep.scheduler == "asha"}
    return DomainSchedulers({d: asha_scheduler(plans[d][0], m) for d, m in max_steps.items()}, max_steps)


def asha_scheduler(cfg: DomainConfig, max_steps: int) -> ASHAScheduler:
    """The domain's ASHA (sweep.asha): rungs in optimizer steps, one bracket; a trial reaching max_t ends as it
    would anyway."""
    a = cfg.sweep.asha
    return ASHAScheduler(time_attr="step", metric=a.metric, mode=a.mode, max_t=max_steps, grace_period=a.grace_period,
                         reduction_factor=a.reduction_factor, brackets=1, stop_last_trials=False)
