"""The release gate: may the tuned model be published as the domain's latest? Pure."""
from __future__ import annotations

from typing import Any

from lorafleet.config import GateConfig


def decide(tuned_metrics: dict[str, float], gate: GateConfig) -> dict[str, Any]:
    """Every ``min`` threshold is a check on the tuned model; the gate passes when all checks pass."""
    checks = []
    for name, threshold in gate.min.items():
        if name not in tuned_metrics:
            raise ValueError(f"gate.min.{name}: no such metric (have: {', '.join(sorted(tuned_metrics))})")
        value = tuned_metrics[name]
        checks.append({"name": f"{name} >= {threshold:g}", "value": value, "threshold": threshold,
                       "passed": value >= threshold})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}
