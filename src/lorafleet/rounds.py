"""The staged search of ``sweep.strategy: rounds``: a few configs a round, each round planned from the last one's
metrics. Pure: no Ray, no torch, no I/O; every decision is deterministic.

``plan_next(settings, history, pick)`` reads what the rounds so far observed (``history[i]``: round i's trials,
their validation metrics and per-field accuracy) and answers either the next round's configs (``NextRound``,
with the rule that produced them, a sentence a person reads) or why the search stops (``Stopped``).

- Round 0, smoke: one config (the base learning rate, ``smoke_steps`` steps). If its validation
  ``schema_pass_rate`` is below ``smoke_gate`` the domain stops with ``fix_prompt``: the prompt or the output
  constraints need fixing, not the hyperparameters.
- Round 1: three configs that keep the rank and max_seq_length and move the learning strength only: the base
  (``base_learning_rate``, ``base_steps``), a conservative one (lr x ``conservative_lr_factor``, steps x
  ``conservative_steps_factor``) and a stronger one (lr x ``stronger_lr_factor``, steps x
  ``stronger_steps_factor``).
- Round 2 on: at most two configs derived from the latest round's winner by declared rules:
  its lowest field accuracy (evidence and free-text fields aside) below ``field_accuracy_below`` asks for one
  config with steps x ``more_steps_factor`` and one with lr x ``higher_lr_factor``; an evidence field below
  ``evidence_below`` asks for max_seq_length x ``longer_seq_factor`` (at most ``max_seq_length_cap``); grounding
  below ``grounding_below`` is flagged as a prompt problem and asks for no config. When the rules ask for more
  than two, each rule's first config comes first. A config already tried is never proposed again; when no rule
  asks for a new one the search stops.
- Stops, after each round from round 1 on, in this order: every trial of the round failed; the winner reached
  ``target_score``; (from round 2) the winner's ``score`` beat the previous round's winner's by less than
  ``min_improvement`` points; (from round 2) both winners lie within ``oscillation_band`` points under
  ``target_score``; ``max_rounds`` rounds (round 0 included) are done.

A round's winner is the domain's own selection rule (``pick``: ``pick_with(domain.select.rule)`` wraps
``select.pick_winner``) over the round's finished trials. The domain's winner is chosen after the search, by the same
rule over every finished trial but the smoke trial (which trains too few steps to be a candidate).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from lorafleet.select import pick_winner

if TYPE_CHECKING:
    from lorafleet.config import DomainConfig, RankKey, RoundsConfig

MAX_DERIVED = 2  # configs a round from round 2 on
GROUNDING_FLAG = "grounding low: a prompt problem"
EPSILON = 1e-9  # a gain of exactly min_improvement (80.3 - 80.0 in floating point) counts as reaching it


@dataclass(frozen=True)
class RoundConfig:
    """One trial's hyperparameters in the staged search."""

    lora_rank: int
    learning_rate: float
    max_steps: int
    max_seq_length: int

    def __post_init__(self) -> None:
        if self.lora_rank <= 0 or self.max_steps <= 0 or self.max_seq_length <= 0:
            raise ValueError(f"lora_rank, max_steps and max_seq_length must be > 0: {self}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be finite and > 0: {self}")

    @property
    def label(self) -> str:
        """How reports name a config: ``r16 lr0.0002 s200 L1024``."""
        return f"r{self.lora_rank} lr{self.learning_rate:g} s{self.max_steps} L{self.max_seq_length}"

    def as_dict(self) -> dict[str, int | float]:
        return {"lora_rank": self.lora_rank, "learning_rate": self.learning_rate, "max_steps": self.max_steps,
                "max_seq_length": self.max_seq_length}


@dataclass(frozen=True)
class Observed:
    """One trial of a round: its config, validation metrics (schema_pass_rate, score, grounding, eval_loss...),
    validation per-field accuracy, and whether it failed. A trial with no metrics counts as failed."""

    config: RoundConfig
    metrics: dict[str, float] = field(default_factory=dict)
    fields: dict[str, float] = field(default_factory=dict)
    failed: bool = False

    @property
    def finished(self) -> bool:
        return not self.failed and bool(self.metrics)


@dataclass(frozen=True)
class NextRound:
    """The configs of round ``round``, the rule that produced them (a sentence), and flags a person should read
    (e.g. grounding low) that asked for no config."""

    round: int
    configs: tuple[RoundConfig, ...]
    why: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stopped:
    """Why the search stops, with its numbers. ``fix_prompt``: the verdict is that the prompt or the output
    constraints need fixing, not the hyperparameters (the smoke gate, or grounding flagged low)."""

    reason: str
    fix_prompt: bool = False
    flags: tuple[str, ...] = ()


Decision = NextRound | Stopped
Pick = Callable[[Sequence[Observed]], Observed | None]


@dataclass(frozen=True)
class Settings:
    """``sweep.rounds`` with what it leaves to other sections resolved: the max_seq_length of rounds 0 and 1
    (``sweep.rounds.max_seq_length`` or ``train.max_seq_length``), the evidence fields (``eval.evidence_fields``)
    and the free-text fields (``eval.text_fields``, left out of the low-field rule: chrF and ROUGE-L score them)."""

    rounds: RoundsConfig
    max_seq_length: int
    evidence_fields: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "evidence_fields", tuple(self.evidence_fields))
        object.__setattr__(self, "text_fields", tuple(self.text_fields))
        if self.rounds.smoke_gate is None:  # config.py rejects it at load time; a hand-built settings too
            raise ValueError("sweep.rounds.smoke_gate: the staged search needs a round-0 gate")

    @classmethod
    def from_domain(cls, cfg: DomainConfig) -> Settings:
        rounds = cfg.sweep.rounds
        if rounds is None:
            raise ValueError(f"domain {cfg.name}: sweep.rounds is not set (sweep.strategy: {cfg.sweep.strategy})")
        return cls(rounds=rounds, max_seq_length=rounds.max_seq_length or cfg.train.max_seq_length,
                   evidence_fields=tuple(cfg.eval.evidence_fields), text_fields=tuple(cfg.eval.text_fields))


def pick_with(rule: Sequence[RankKey]) -> Pick:
    """The domain's selection rule (``select.rule``) as ``plan_next``'s ``pick``: the winner among the
    observed trials by their metrics, None when none finished."""

    def pick(observed: Sequence[Observed]) -> Observed | None:
        trials = [o.metrics if o.finished else None for o in observed]
        if not any(trials):
            return None
        return observed[pick_winner(trials, rule).winner]

    return pick


def plan_next(settings: Settings, history: Sequence[Sequence[Observed]], pick: Pick) -> Decision:
    """The next round's configs, or why the search stops, from the rounds observed so far (``history[i]``:
    round i's trials). An empty history gives round 0. Raises ValueError for a round with no trials."""
    r = settings.rounds
    if not history:
        smoke = RoundConfig(r.lora_rank, _lr(r.base_learning_rate), r.smoke_steps, settings.max_seq_length)
        return NextRound(0, (smoke,), f"round 0, smoke: one config, {r.smoke_steps} steps, to check that the pipeline "
                         f"trains and its answers pass the schema (gate: schema_pass_rate >= {r.smoke_gate:g})")
    for i, trials in enumerate(history):
        if not trials:
            raise ValueError(f"history[{i}]: round {i} has no trials")
    k = len(history) - 1
    winner = _winner(history[k], pick)
    if k == 0:
        return _after_smoke(settings, winner, len(history[0]))
    if winner is None:
        return Stopped(f"every trial of round {k} failed ({len(history[k])} trial(s)); fix the cause before searching "
                       "further")
    flags = _flags(settings, winner)
    fix_prompt = any(f.startswith(GROUNDING_FLAG) for f in flags)
    score = _metric(winner, "score")
    if r.target_score is not None and score is not None and score >= r.target_score:
        return Stopped(f"round {k}'s winner {winner.config.label} scored {score:.2f}, reaching target_score "
                       f"{r.target_score:g}", fix_prompt, flags)
    if k >= 2:
        previous = _winner(history[k - 1], pick)
        before = None if previous is None else _metric(previous, "score")
        if score is not None and before is not None:
            gain = score - before
            if gain < r.min_improvement - EPSILON:
                return Stopped(f"round {k}'s winner {winner.config.label} scored {score:.2f}, {gain:+.2f} points on "
                               f"round {k - 1}'s {before:.2f}: less than min_improvement {r.min_improvement:g}",
                               fix_prompt, flags)
            if r.target_score is not None and all(
                    r.target_score - r.oscillation_band <= s < r.target_score for s in (before, score)):
                return Stopped(f"rounds {k - 1} and {k}'s winners scored {before:.2f} and {score:.2f}, both within "
                               f"oscillation_band {r.oscillation_band:g} points under target_score {r.target_score:g}: "
                               "stuck just under it; the prompt or the retrieval is the next lever", fix_prompt,
                               flags)
        else:
            unscored = " and ".join(f"round {i}'s" for i, s in ((k - 1, before), (k, score)) if s is None)
            flags += (f"no score for {unscored} winner: the improvement and oscillation rules could not judge",)
    if len(history) >= r.max_rounds:
        return Stopped(f"max_rounds {r.max_rounds} reached (rounds 0 to {k})", fix_prompt, flags)
    return _derived(settings, history, winner, flags, fix_prompt)


def _after_smoke(settings: Settings, winner: Observed | None, n: int) -> Decision:
    r = settings.rounds
    if winner is None:
        return Stopped(f"every trial of round 0 (smoke) failed ({n} trial(s)): the pipeline does not train; fix it "
                       "before searching")
    rate = _metric(winner, "schema_pass_rate")
    if rate is None:
        return Stopped(f"round 0 (smoke, {winner.config.label}) reported no schema_pass_rate: the round-0 gate "
                       "cannot judge it")
    if rate < r.smoke_gate:
        return Stopped(f"round 0 (smoke, {winner.config.label}): schema_pass_rate {rate:.3f} is below the round-0 gate "
                       f"{r.smoke_gate:g}: fix the prompt or the output constraints (JSON-only instructions, the "
                       "schema), not the hyperparameters", fix_prompt=True)
    c = winner.config
    base = RoundConfig(c.lora_rank, _lr(r.base_learning_rate), r.base_steps, c.max_seq_length)
    conservative = replace(base, learning_rate=_lr(base.learning_rate * r.conservative_lr_factor),
                           max_steps=_steps(base.max_steps * r.conservative_steps_factor))
    stronger = replace(base, learning_rate=_lr(base.learning_rate * r.stronger_lr_factor),
                       max_steps=_steps(base.max_steps * r.stronger_steps_factor))
    return NextRound(1, (base, conservative, stronger),
                     f"round 0 passed the gate (schema_pass_rate {rate:.3f} >= {r.smoke_gate:g}); round 1 keeps rank "
                     f"and max_seq_length and moves the learning strength only: base, conservative (lr x "
                     f"{r.conservative_lr_factor:g}, steps x {r.conservative_steps_factor:g}), stronger (lr x "
                     f"{r.stronger_lr_factor:g}, steps x {r.stronger_steps_factor:g})")


def _flags(settings: Settings, winner: Observed) -> tuple[str, ...]:
    r = settings.rounds
    grounding = _metric(winner, "grounding")
    if grounding is not None and grounding < r.grounding_below:
        return (f"{GROUNDING_FLAG}: round winner {winner.config.label} has grounding {grounding:.3f} < "
                f"grounding_below {r.grounding_below:g}; make the prompt demand evidence quoted verbatim from the "
                "input (no config comes from it)",)
    return ()


def _derived(settings: Settings, history: Sequence[Sequence[Observed]], winner: Observed,
             flags: tuple[str, ...], fix_prompt: bool) -> Decision:
    """Round k+1 from round k's winner by the declared rules (module docstring)."""
    r, c, k = settings.rounds, winner.config, len(history) - 1
    fields = {f: v for f, v in winner.fields.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    plain = {f: v for f, v in fields.items() if f not in settings.evidence_fields and f not in settings.text_fields}
    evidence = {f: v for f, v in fields.items() if f in settings.evidence_fields}
    rules: list[tuple[str, list[RoundConfig]]] = []  # (the rule as a sentence, its configs in order)
    if plain:
        name, value = _lowest(plain)
        if value < r.field_accuracy_below:
            rules.append((f"field {name} accuracy {value:.3f} < field_accuracy_below {r.field_accuracy_below:g}: more "
                          f"steps (x {r.more_steps_factor:g}) or a slightly higher lr (x {r.higher_lr_factor:g})",
                          [replace(c, max_steps=_steps(c.max_steps * r.more_steps_factor)),
                           replace(c, learning_rate=_lr(c.learning_rate * r.higher_lr_factor))]))
    if evidence:
        name, value = _lowest(evidence)
        if value < r.evidence_below:
            longer = _steps(c.max_seq_length * r.longer_seq_factor)
            if r.max_seq_length_cap is not None:
                longer = min(longer, r.max_seq_length_cap)
            if longer > c.max_seq_length:
                rules.append((f"evidence field {name} accuracy {value:.3f} < evidence_below {r.evidence_below:g}: a "
                              f"longer max_seq_length (x {r.longer_seq_factor:g}, cap {r.max_seq_length_cap})",
                              [replace(c, max_seq_length=longer)]))
            else:
                flags += (f"evidence field {name} accuracy {value:.3f} < evidence_below {r.evidence_below:g}, but "
                          f"max_seq_length {c.max_seq_length} is already at max_seq_length_cap {r.max_seq_length_cap}"
                          + (" or above" if c.max_seq_length > (r.max_seq_length_cap or 0) else ""),)
    if not rules:
        lowest = ", ".join(f"lowest {what} {_said(values)}" for what, values in (("field", plain),
                                                                                  ("evidence field", evidence)))
        return Stopped(f"no rule asks for another config: round {k}'s winner {c.label} has {lowest} "
                       f"(field_accuracy_below {r.field_accuracy_below:g}, evidence_below {r.evidence_below:g})",
                       fix_prompt, flags)
    tried = {_key(o.config) for trials in history for o in trials}
    fresh: list[list[RoundConfig]] = []
    skipped: list[str] = []
    for _, configs in rules:
        new = []
        for config in configs:
            if _key(config) in tried:
                skipped.append(config.label)
            else:
                tried.add(_key(config))
                new.append(config)
        fresh.append(new)
    chosen: list[RoundConfig] = []
    for depth in range(max(map(len, fresh))):  # each rule's first config, then each one's second...
        chosen.extend(configs[depth] for configs in fresh if depth < len(configs))
    dropped = chosen[MAX_DERIVED:]
    chosen = chosen[:MAX_DERIVED]
    said = "; ".join(sentence for sentence, _ in rules)
    if not chosen:
        return Stopped(f"no rule asks for another config: round {k}'s winner {c.label}: {said}; but every config "
                       f"they ask for was tried already ({', '.join(skipped)})", fix_prompt, flags)
    why = f"from round {k}'s winner {c.label}: {said}"
    if skipped:
        why += f"; already tried, not repeated: {', '.join(skipped)}"
    if dropped:
        why += f"; at most {MAX_DERIVED} a round, each rule's first config first: left out {', '.join(d.label for d in dropped)}"
    return NextRound(k + 1, tuple(chosen), why, flags)


def _winner(observed: Sequence[Observed], pick: Pick) -> Observed | None:
    finished = [o for o in observed if o.finished]
    return pick(finished) if finished else None


def _metric(observed: Observed, name: str) -> float | None:
    value = observed.metrics.get(name)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _lowest(values: dict[str, float]) -> tuple[str, float]:
    """The lowest value, ties broken by the field's name (deterministic whatever the dict's order)."""
    return min(values.items(), key=lambda kv: (kv[1], kv[0]))


def _said(values: dict[str, float]) -> str:
    if not values:
        return "none reported"
    name, value = _lowest(values)
    return f"{name} {value:.3f}"


def _steps(x: float) -> int:
    """A scaled step count (or length), rounded half up, at least 1."""
    return max(1, math.floor(x + 0.5))


def _lr(x: float) -> float:
    """A scaled learning rate to 6 significant digits: 2e-4 x 1.5 is 0.0003, not 0.00030000000000000003."""
    return float(f"{x:.6g}")


def _key(config: RoundConfig) -> tuple[int, str, int, int]:
    return config.lora_rank, f"{config.learning_rate:.6g}", config.max_steps, config.max_seq_length
