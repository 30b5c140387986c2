"""What the stages hand each other after training: a trial's outcome, a domain's result and a run's summary.
Typed records; JSON only where they are written (summary.json, domain_summary.json), and read back from
there when a rerun keeps what an earlier attempt published."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.export import Drift, Parity, Speed
from lorafleet.gate import GateVerdict
from lorafleet.metrics import KEY_METRICS, Evaluation, SplitEvaluation
from lorafleet.train import HParams

DomainStatus = Literal["published", "gated", "failed", "unchanged"]
RunStatus = Literal["succeeded", "partial", "failed"]


class TrialLineage(BaseModel):
    """What one trial's result depends on besides its hyperparameters, as a model registry keeps it: the prompt
    (system prompt + chat template), the records it was judged on, the data it trained on, and its train settings
    as it trained (a round's own steps and sequence length applied)."""

    model_config = ConfigDict(frozen=True)
    prompt_sha256: str
    eval_set_version: str
    dataset_version: str
    train: dict[str, Any]


class TrialOutcome(BaseModel):
    """One trial as the sweep ended it: its hyperparameters, backend, final metrics (validation answers
    included) and log history, or the error that stopped it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    hparams: HParams
    backend: str | None = None
    load_in_4bit: bool = False
    metrics: dict[str, float] = {}
    history: list[dict[str, float]] = []
    error: str | None = None
    restarts: int = Field(0, description="Times the trial started again after a lost worker, node or driver.")
    resumed_from: list[int] = Field([], description="The checkpoint step each restart went on from (0: none yet).")
    stopped_early_at: int | None = Field(
        None, description="The step (ASHA's rung) at which the scheduler stopped the trial; None: not stopped early.")
    round: int | None = Field(None, description="The staged search's round the trial belongs to (0: the smoke trial).")
    lineage: TrialLineage | None = None
    checkpoint: Any = Field(None, exclude=True)  # ray.tune.Checkpoint of the adapter, in the run's storage

    @property
    def finished(self) -> bool:
        return self.error is None and bool(self.metrics) and self.checkpoint is not None

    @property
    def candidate(self) -> bool:
        """Whether the trial may win: finished, and not the staged search's smoke trial (too few steps)."""
        return self.finished and self.round != 0

    @property
    def ended_how(self) -> str:
        """Why a trial that did not finish has no result: its error, or where the scheduler stopped it."""
        if self.error:
            return self.error
        return f"stopped early at step {self.stopped_early_at}" if self.stopped_early_at is not None else ""


class RoundNote(BaseModel):
    """One round of the staged search: the rule that produced its configs, flags for a person, its trials."""

    model_config = ConfigDict(frozen=True)
    round: int
    why: str
    flags: list[str] = []
    trials: list[str] = []


class SearchStory(BaseModel):
    """How a domain's staged search went: each round, and why it stopped (``fix_prompt``: the verdict is that the
    prompt or the output constraints need fixing, not the hyperparameters)."""

    model_config = ConfigDict(frozen=True)
    rounds: list[RoundNote] = []
    stopped: str | None = None
    fix_prompt: bool = False
    flags: list[str] = []


class Artifacts(BaseModel):
    model_config = ConfigDict(frozen=True)
    adapter: str
    merged: str
    onnx: str | None
    report: str
    data: str


class VariantResult(BaseModel):
    """One ONNX variant of a domain's model (export.variants; the export itself first): what its weights are, where
    it is published, how it answered the test split, how closely it follows the merged model, its size and speed."""

    model_config = ConfigDict(frozen=True)
    folder: str = Field(description="Its folder in the domain's: onnx (the export), onnx-<variant>.")
    weights: str = Field(description="What its weights are, e.g. fp32, or int4 MatMul weights (block 32) over fp32.")
    evaluation: Evaluation = Field(description="Its answers to the evaluated test records, scored (95 % intervals).")
    parity: Parity = Field(description="Against the merged PyTorch model on those records.")
    provider: str = Field(description="The onnxruntime execution provider it was evaluated on.")
    bytes: int = Field(description="Its graph and the graph's external data (onnx/), tokenizer and config aside.")
    speed: Speed = Field(description="Greedy tokens/s in onnxruntime on the CPU.")


class FinishTimings(BaseModel):
    """Seconds each phase of a domain's finishing task took (``pipeline.finish_domain``). None: the phase did not
    run (no ONNX export), or had not ended when the record was written: the domain's report and its
    domain_summary.json are written before report and publish end, the run's summary.json has every phase."""

    model_config = ConfigDict(frozen=True, extra="forbid")  # a misspelt phase fails, rather than going unseen
    merge: float | None = Field(None, description="The winner's adapter fetched and merged into the 16-bit base.")
    base_eval: float | None = None
    tuned_eval: float | None = Field(None, description="The merged model loaded and evaluated.")
    context_eval: float | None = Field(None, description="A domain with context: the merged model evaluated again with "
                                       "each record's context removed.")
    merge_drift: float | None = Field(None, description="The adapter on the base as trained: loaded, answers, logits.")
    onnx_export: float | None = None
    onnx_load: float | None = None
    onnx_parity_eval: float | None = Field(None, description="The ONNX model's answers and loss, then its parity.")
    onnx_variants: float | None = Field(
        None, description="Every ONNX variant's speed on the CPU, and each one built from the export (int4): built, "
        "loaded, its answers, loss and parity.")
    report: float | None = Field(None, description="Lineage (the weights' hashes), the model folders' contract files "
                                 "(model card, file hashes) and the reports.")
    publish: float | None = None


class DomainResult(BaseModel):
    """How one domain ended, whoever produced it: published or gated after finishing, failed (bad config or
    data, every trial failed, finishing failed), kept from an earlier attempt of the same run (resumed), or
    unchanged: the same inputs as its latest published run (``matches_run``), so not retrained; its winner,
    evaluations, gate and artifacts are that run's."""

    model_config = ConfigDict(frozen=True)
    name: str
    status: DomainStatus
    error: str | None = None
    resumed: bool = False
    matches_run: str | None = None
    dataset_version: str | None = None
    trials: list[TrialOutcome] = []
    winner: HParams | None = None
    test: SplitEvaluation | None = None
    golden: SplitEvaluation | None = None
    drift: Drift | None = None
    variants: dict[str, VariantResult] = Field(
        default_factory=dict, description="Each ONNX variant (export.variants), the export itself first: its "
        "evaluation, parity, size and speed. The export's evaluation and parity are also test.onnx and "
        "drift.merged_vs_onnx.")
    gate: GateVerdict | None = None
    artifacts: Artifacts | None = None
    timings: FinishTimings | None = None
    search: SearchStory | None = None

    @classmethod
    def failed(cls, name: str, error: str, trials: list[TrialOutcome] | None = None,
               dataset_version: str | None = None) -> DomainResult:
        return cls(name=name, status="failed", error=error, trials=trials or [], dataset_version=dataset_version)

    @property
    def key_metrics(self) -> dict[str, float | None]:
        """The few numbers the run index and the terminal table show for a domain."""
        if self.test is None:
            return {}
        keys: dict[str, float | None] = {k: self.test.tuned.value(k) for k in KEY_METRICS
                                         if k in self.test.tuned.metrics}
        if "score" in self.test.delta.metrics:
            keys["score gain"] = self.test.delta.metrics["score"].value
        if self.test.context is not None and "context_grounding" in self.test.context.gain.metrics:
            keys["context gain"] = self.test.context.gain.metrics["context_grounding"].value
        if self.golden is not None:
            keys["golden score"] = self.golden.tuned.value("score")
        return keys

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json"), "key_metrics": self.key_metrics}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DomainResult:
        return cls.model_validate({k: v for k, v in data.items() if k != "key_metrics"})


class RunSummary(BaseModel):
    """A whole run: written last to runs/<run_id>/summary.json (a run with a summary is a finished run)."""

    model_config = ConfigDict(frozen=True)
    run_id: str
    status: RunStatus
    seconds: float
    storage: str
    domains: dict[str, DomainResult]
    summary_uri: str | None = None
    index_uri: str | None = None

    @classmethod
    def of(cls, run_id: str, storage: str, seconds: float, domains: dict[str, DomainResult]) -> RunSummary:
        failed = sum(d.status == "failed" for d in domains.values())
        status = "succeeded" if failed == 0 else ("failed" if failed == len(domains) else "partial")
        return cls(run_id=run_id, status=status, seconds=round(seconds, 1), storage=storage,
                   domains=dict(sorted(domains.items())))

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(mode="json", exclude={"domains"}),
                "domains": {name: d.to_json() for name, d in self.domains.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSummary:
        return cls.model_validate({**data, "domains": {n: DomainResult.from_json(d)
                                                       for n, d in data["domains"].items()}})
