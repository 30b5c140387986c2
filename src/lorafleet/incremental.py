"""Whether a nightly run retrains a domain: only when what its model is made from (config, data, base weights,
lorafleet version: ``lineage.Inputs``) differs from its latest published run's, or when forced. Pure; the pipeline
reads the published lineage and acts on the decision."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorafleet.lineage import Inputs


@dataclass(frozen=True)
class Published:
    """A domain's latest published run (``latest.json`` -> its manifest) and the inputs its lineage records."""

    run_id: str
    inputs: Inputs

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> Published:
        return cls(run_id=manifest["run_id"], inputs=Inputs.model_validate(manifest["lineage"]))


@dataclass(frozen=True)
class Decision:
    retrain: bool
    reason: str  # for the log: what changed, or which run the domain matches
    matches_run: str | None = None  # the published run whose model stays, when not retrained


def decide(current: Inputs, published: Published | None, forced: bool = False) -> Decision:
    if forced:
        return Decision(True, "forced (--force)")
    if published is None:
        return Decision(True, "no published run to compare with")
    if current.base_model_sha256 is None:  # a hub id not on disk: the same name may hold other weights
        return Decision(True, "the base model's weights are not on disk to hash, so they may have changed")
    changed = [name for name in Inputs.model_fields if getattr(current, name) != getattr(published.inputs, name)]
    if changed:
        return Decision(True, f"{', '.join(changed)} changed since run {published.run_id}")
    return Decision(False, f"config, data, base weights and lorafleet version as in run {published.run_id}",
                    matches_run=published.run_id)
