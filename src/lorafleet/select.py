"""Pick a domain's winning trial by the declared rule. Pure: no Ray, no I/O."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from lorafleet.config import RankKey


class Selection(BaseModel):
    """The winning trial's index, how the rule got there (a line a step), the rule as a person reads it,
    and the metric it ranks by (the first key without a threshold)."""

    model_config = ConfigDict(frozen=True)
    winner: int
    notes: list[str]
    rule: list[str]
    ranked_by: str | None


def _value(metrics: Mapping[str, float] | None, metric: str) -> float | None:
    value = (metrics or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def describe(rule: Sequence[RankKey]) -> list[str]:
    """The rule as a person reads it, one line a key."""
    lines = []
    for k in rule:
        if k.threshold is not None:
            lines.append(f"{k.metric} {'>=' if k.mode == 'max' else '<='} {k.threshold:g}")
            continue
        line = f"{'highest' if k.mode == 'max' else 'lowest'} {k.metric}"
        if k.within:
            line += f" (within {k.within:g} counts as a tie)"
        lines.append(line)
    return lines


def pick_winner(trials: Sequence[Mapping[str, float] | None], rule: Sequence[RankKey]) -> Selection:
    """The winner among trials given as their metrics (None or empty for a trial that did not finish).

    Each key in turn: trials without a finite value for it drop out (unless none has one: then the key is
    skipped). A key with a threshold is a filter: the trials that reach it stay (if none does, all stay, and
    the note says so: the gate judges that). A key without one ranks: the trials within ``within`` of the
    best stay. The first remaining trial wins. Raises ValueError when no trial has metrics.
    """
    candidates = [i for i, m in enumerate(trials) if m]
    if not candidates:
        raise ValueError("no finished trial to choose from")
    notes = []
    for key in rule:
        if len(candidates) == 1:
            break
        have = [i for i in candidates if _value(trials[i], key.metric) is not None]
        if not have:
            notes.append(f"{key.metric}: no trial reports it; skipped")
            continue
        better = (lambda v, t: v >= t) if key.mode == "max" else (lambda v, t: v <= t)
        if key.threshold is not None:
            reach = [i for i in have if better(_value(trials[i], key.metric), key.threshold)]
            notes.append(f"{key.metric} {'>=' if key.mode == 'max' else '<='} {key.threshold:g}: "
                         + (f"{len(reach)} of {len(have)} trials" if reach else f"none of {len(have)} trials; all kept"))
            candidates = reach or have
            continue
        pick = max if key.mode == "max" else min
        best = pick(_value(trials[i], key.metric) for i in have)
        candidates = [i for i in have if abs(_value(trials[i], key.metric) - best) <= key.within]
        notes.append(f"{'highest' if key.mode == 'max' else 'lowest'} {key.metric} = {best:.4g}: "
                     f"{len(candidates)} trial(s) within {key.within:g}")
    return Selection(winner=candidates[0], notes=notes, rule=describe(rule),
                     ranked_by=next((k.metric for k in rule if k.threshold is None), None))
