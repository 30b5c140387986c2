"""Pick a domain's winning trial. Pure: no Ray, no I/O."""
from __future__ import annotations

import math
from typing import Any, Sequence

from lorafleet.config import RankKey


def pick_winner(trials: Sequence[dict[str, Any]], rule: Sequence[RankKey]) -> int:
    """Index of the best trial under the ordered rule (each key min or max; later keys break ties).

    ``trials`` are ``{"hparams": ..., "metrics": ...}``. A trial missing a metric, or with a
    non-finite value, ranks last on that key. Raises ValueError when no trial has metrics at all.
    """
    candidates = [i for i, t in enumerate(trials) if t.get("metrics")]
    if not candidates:
        raise ValueError("no finished trial to choose from")

    def key(i: int) -> tuple:
        parts = []
        for k in rule:
            value = trials[i]["metrics"].get(k.metric)
            ok = isinstance(value, (int, float)) and math.isfinite(value)
            parts.append((0, value if k.mode == "min" else -value) if ok else (1, 0.0))
        return (*parts, i)

    return min(candidates, key=key)
