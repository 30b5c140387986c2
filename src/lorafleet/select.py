"""Pick a domain's winning trial by the declared rule. Pure: no Ray, no I/O."""
from __future__ import annotations

import math
from typing import Any, Sequence

from lorafleet.config import RankKey


def _value(trial: dict[str, Any], metric: str) -> float | None:
    value = (trial.get("metrics") or {}).get(metric)
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


def pick_winner(trials: Sequence[dict[str, Any]], rule: Sequence[RankKey]) -> tuple[int, list[str]]:
    """Index of the winning trial, and how the rule got there (a line a step).

    ``trials`` are ``{"hparams": ..., "metrics": ...}``. Each key in turn: trials without a finite value
    for it drop out (unless none has one: then the key is skipped). A key with a threshold is a filter: the
    trials that reach it stay (if none does, all stay, and the note says so: the gate judges that). A key
    without one ranks: the trials within ``within`` of the best stay. The first remaining trial wins. Raises ValueError when no trial
    has metrics.
    """
    candidates = [i for i, t in enumerate(trials) if t.get("metrics")]
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
    return candidates[0], notes
