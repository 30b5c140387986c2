"""Domain configuration: the only place that reads YAML.

One YAML file per domain (``configs/domains/<name>.yaml``). Every field is typed and
validated by pydantic; unknown keys are rejected; errors name the file and the field.
A pipeline file (``configs/pipelines/<pipeline>.yaml``, ``load_pipeline``) expands into one domain per step.
"""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorafleet.base_model import GGUF_PREFIX, GGUFError, check_gguf, locate_gguf
from lorafleet.context import ContextError, template_fields
from lorafleet.context import load as load_context
from lorafleet.metrics import REGISTRY, TRIAL_METRICS, MetricSpec
from lorafleet.sources import DataError, csv_mapping_problems, expand, format_of

# A domain name is also a storage key and a folder name: lowercase letters, digits, _ and -, and dots between such
# parts (a pipeline step's domain is <pipeline>.<step>): never a leading dot, "..", a trailing dot, / or NUL.
DOMAIN_NAME_RE = re.compile(r"^(?=.{1,63}$)[a-z0-9][a-z0-9_-]*(?:\.[a-z0-9][a-z0-9_-]*)*$")
STEP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,30}$")  # a pipeline's or a step's own name: no dot
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class ConfigError(ValueError):
    """A domain config (or its data/schema reference) is unusable; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NearDuplicateConfig(_Strict):
    """Near-duplicate records by the Jaccard similarity of their user text's shingle sets (MinHash + LSH finds the
    candidates, each is confirmed by its exact Jaccard). Within a split the later copy is dropped (near_duplicate);
    a training record near an evaluation record (validation, test, golden) is dropped from train (cross_split_leak),
    never the evaluation record; a pair across two groups is also reported as possible leakage."""

    threshold: float = Field(
        0.9, gt=0, le=1, description="Jaccard similarity at or above which two records are near-duplicates. A long "
        "input differing from another in a few values (whose answers then differ) can reach 0.9: raise it, or set "
        "near_duplicates: null, where such records are the point.")
    shingle_size: int = Field(5, ge=1, le=64, description="Units per shingle (a text shorter than this is one "
                              "shingle).")
    shingle_unit: Literal["words", "characters"] = Field(
        "words", description="words: runs of letters and digits of the NFKC-normalised, casefolded text (case, "
        "punctuation and spacing are ignored); characters: for scripts written without spaces (Thai, Chinese, "
        "Japanese), characters of that text with whitespace collapsed.")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations. The LSH bands are chosen so that a "
                          "pair at the threshold is a candidate at least 99.5 % of the time; more permutations keep "
                          "pairs far under it from being candidates to confirm, and cost more hashing.")


class LengthBounds(_Strict):
    min: int | None = Field(None, ge=0, description="Fewest tokens a record may have (too_short); null: no bound.")
    max: int | None = Field(None, gt=0, description="Most tokens a record may have (too_long); null: no bound.")

    @model_validator(mode="after")
    def _ordered(self) -> LengthBounds:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self

    @property
    def bounded(self) -> bool:
        return self.min is not None or self.max is not None


class QualityConfig(_Strict):
    """Record filters of the domain (governance.py): each dropped record gets the filter's reason code. All off by
    default but the schema check, which always applies."""

    label_field: str = Field(
        "quality_label", description="The field of a record's metadata object holding its human QA label; its "
        "distribution per split is reported.")
    keep_labels: list[str] | None = Field(
        None, min_length=1, description="Keep only records whose label_field is one of these (quality_label); a "
        "record without one is dropped too. null: no label filter.")
    min_grounding: float | None = Field(
        None, gt=0, le=1, description="Drop a record whose answer's evidence items (eval.evidence_fields) are found "
        "verbatim in its input less than this fraction (ungrounded); an answer without evidence items is kept. "
        "null: off.")
    prompt_tokens: LengthBounds = Field(
        default_factory=LengthBounds, description="Bounds of the prompt (system and user turns, chat template) in the "
        "base model's tokens.")
    answer_tokens: LengthBounds = Field(
        default_factory=LengthBounds, description="Bounds of the answer in the base model's tokens (its end token "
        "included).")
    drop_truncated: bool = Field(
        False, description="Drop records whose prompt and answer exceed train.max_seq_length (truncated); they are "
        "counted per split either way.")


class DataConfig(_Strict):
    path: str = Field(description="The records: a file, a glob of shards (shards/*.jsonl, read in sorted path order) "
                      "or an fsspec URL (file://, s3://, globs too); relative to the YAML file.")
    source_format: Literal["auto", "jsonl", "json", "parquet", "csv"] = Field(
        "auto", description="How the files are read: jsonl (a record a line), json (one array of records), parquet "
        "(a column per record field) or csv (through csv_columns). auto: by the path's extension (.jsonl/.ndjson, "
        ".json, .parquet/.pq, .csv; JSONL, JSON and CSV may be compressed: .gz, .bz2, .xz); any other is read as JSONL.")
    csv_columns: dict[str, str] | None = Field(
        None, description="CSV only, and needed there: record field -> the CSV column holding it (the header names "
        "the columns). The group key and the format's fields: alpaca's instruction, output and optional input; for "
        "messages or conversations either the turns (messages/conversations: a column of JSON-encoded turns) or "
        "input and output (one user question and the assistant's answer). Any other field is read as text.")
    format: Literal["messages", "conversations", "alpaca"] = Field(
        description="messages: OpenAI-style role/content; conversations: ShareGPT from/value; "
        "alpaca: instruction/input/output.")
    group_key: str = Field(description="Record field; records sharing its value never cross splits.")
    splits: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0
    near_duplicates: NearDuplicateConfig | None = Field(
        default_factory=NearDuplicateConfig, description="Near-duplicate detection; null: off (exact duplicates and "
        "exact cross-split copies are dropped either way).")
    quality: QualityConfig = Field(default_factory=QualityConfig)
    measure_tokens: bool = Field(
        True, description="Measure every record's prompt and answer in the base model's tokens (its tokenizer is "
        "loaded to prepare the data): length histograms and the records train.max_seq_length truncates, in the "
        "manifest and report; needed by quality.prompt_tokens, quality.answer_tokens and quality.drop_truncated. "
        "false: no tokenizer is loaded.")

    @field_validator("splits")
    @classmethod
    def _splits_sum_to_one(cls, splits: dict[str, float]) -> dict[str, float]:
        if set(splits) != {"train", "val", "test"}:
            raise ValueError("splits needs exactly train, val and test")
        if any(v <= 0 for v in splits.values()):
            raise ValueError("every split ratio must be > 0")
        if abs(sum(splits.values()) - 1.0) > 1e-6:
            raise ValueError(f"split ratios must sum to 1, got {sum(splits.values()):g}")
        return splits


class ContextConfig(_Strict):
    """Context injection: each record's entity (its ``key`` field) looked up in a context file and rendered into the
    system prompt at training, evaluation and predict time, so a new entity is an edit of the file, not a retrain."""

    path: str = Field(description="JSON file (an array of entity records, or an object with one member that is one, "
                      "e.g. {\"brands\": [...]}) or JSONL file, relative to the YAML file, or a URI.")
    key: str = Field(description="The entity field: every record of the data and of the context file has it (e.g. "
                     "brand); a record is asked with the context record of the same value. To evaluate on entities "
                     "training never saw, make it data.group_key too.")
    template: str = Field(description="How an entity's record is written into the prompt, after the system prompt and "
                          "a blank line: str.format fields naming the record's fields, e.g. \"Brand: {brand}\\nTone: "
                          "{tone}\"; a list is written as its items joined by ', '.")
    grounding_fields: list[str] = Field(
        default_factory=list, description="Fields of the entity's record (strings or lists of strings) whose items a "
        "good answer carries (e.g. hashtags): context_grounding is the share of them found in the answer, 0 when an "
        "item of another entity is.")

    @field_validator("template")
    @classmethod
    def _plain_fields(cls, template: str) -> str:
        template_fields(template)
        return template


class TrainConfig(_Strict):
    max_seq_length: int = Field(512, gt=16)
    batch_size: int = Field(8, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0, description="Caps every trial, whatever its epochs (quick profile).")
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    load_in_4bit: bool | Literal["auto"] = Field("auto", description="auto: 4-bit NF4 on CUDA, full precision on CPU.")
    lora_alpha_ratio: float = Field(2.0, gt=0, description="lora_alpha = ratio * lora_rank.")
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    eval_steps: int = Field(25, gt=0, description="Evaluate (and report to Tune) every N steps.")
    gradient_checkpointing: bool | Literal["auto", "offload"] = Field(
        "auto", description="Recompute activations in the backward pass instead of keeping them: less memory, slower "
        "steps. offload: also copy them to CPU memory (Unsloth's mode; peft recomputes without offloading). auto: off "
        "on CPUs and on a GPU a trial needs under a quarter of without it, offload otherwise.")
    divergence: float | None = Field(
        3.0, gt=1, description="Stop a trial whose logged training loss becomes NaN or infinite, or exceeds this many "
        "times its first logged loss, as failed with that reason; null: never. A diverging cross-entropy climbs "
        "towards ln(vocabulary size) (6.9 for the tiny model, 10.8 for a 49k vocabulary), not to infinity.")
    checkpoint_steps: int | None = Field(
        50, gt=0, description="Every N optimizer steps (and at the end) a trial's adapter, optimizer, scheduler, RNG "
        "states and data position go to the run's storage: a trial whose worker or node is lost resumes there, on "
        "any node, losing at most N steps. null: only the final adapter.")
    max_failures: int = Field(
        2, ge=0, description="Times a trial is restarted (from its last checkpoint) after its worker or node was lost "
        "or it raised (Tune's FailureConfig; the largest value among a sweep's domains applies to the sweep).")
    timeout_minutes: float | None = Field(
        None, gt=0, description="Stop a trial still training after this many minutes (of one attempt) as failed with "
        "that reason, checked after every optimizer step; null: no limit.")
    optimizer: Literal["adamw_torch_fused", "adamw_torch", "adamw_8bit", "paged_adamw_8bit"] = Field(
        "adamw_torch_fused", description="The trainer's optimizer on every backend (Unsloth's own default is 8-bit "
        "AdamW: measured on an H100, 0.77x fused AdamW's tokens/s for a 1.5B trial). The 8-bit ones need "
        "bitsandbytes (CUDA).")
    seed: int = 0


class RangeSpec(_Strict):
    min: float
    max: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.log and self.min <= 0:
            raise ValueError("a log range needs min > 0")
        return self


class SearchSpace(_Strict):
    lora_rank: list[int] | RangeSpec = Field(default_factory=lambda: [8, 16])
    learning_rate: list[float] | RangeSpec = Field(default_factory=lambda: [2e-4])
    epochs: list[int] | RangeSpec = Field(default_factory=lambda: [1])

    @field_validator("lora_rank", "learning_rate", "epochs")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not value:
                raise ValueError("needs at least one value")
            if any(v <= 0 for v in value):
                raise ValueError("values must be > 0")
        return value


class Resources(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float = Field(0, ge=0)


class TrialResources(_Strict):
    cpu: float = Field(1, gt=0)
    gpu: float | Literal["auto"] = Field(
        0, description="A trial's share of a GPU; auto: as many trials per GPU as its memory holds (measured once "
        "by a two-step probe) and its node's CPUs drive.")

    @field_validator("gpu")
    @classmethod
    def _not_negative(cls, gpu: float | str) -> float | str:
        if isinstance(gpu, float) and gpu < 0:
            raise ValueError("must be auto or a number >= 0")
        return gpu


# What a trial reports at each of its evaluations during training (Tune results before its end), so what an early
# stopping scheduler can compare trials by; the validation answers' metrics come only at a trial's end.
INTERIM_METRICS = ("eval_loss", "eval_mean_token_accuracy")


class AshaConfig(_Strict):
    """Tune's ASHAScheduler over a domain's trials: at each rung (grace_period x reduction_factor^k steps) a trial
    whose metric is not among the best 1/reduction_factor of the trials that reached the rung is stopped."""

    metric: str = Field("eval_loss", description="An evaluation metric trials report during training.")
    mode: Literal["min", "max"] = "min"
    grace_period: int = Field(20, gt=0, description="Steps every trial trains before it can be stopped.")
    reduction_factor: float = Field(3.0, gt=1, description="Keep the best 1/reduction_factor at each rung.")
    max_steps: int | None = Field(
        None, gt=0, description="ASHA's max_t in optimizer steps; default: the domain's longest trial.")

    @field_validator("metric")
    @classmethod
    def _reported_during_training(cls, metric: str) -> str:
        if metric not in INTERIM_METRICS:
            raise ValueError(f"trials never report {metric} while they train (at their evaluations they report "
                             f"{', '.join(INTERIM_METRICS)}; validation answers are scored only at a trial's end)")
        return metric


class OptunaConfig(_Strict):
    """Tune's OptunaSearch (TPE): each new trial's hyperparameters from the trials that ended before it."""

    metric: str = Field("eval_loss", description="A metric every trial reports at its end (see select.rule).")
    mode: Literal["min", "max"] = "min"
    max_concurrent: int = Field(
        2, gt=0, description="Trials of the domain at once: a trial is chosen only from those that ended before it.")
    startup_trials: int = Field(3, gt=0, description="Random trials before TPE models the results.")

    @field_validator("metric")
    @classmethod
    def _reported(cls, metric: str) -> str:
        if metric not in TRIAL_METRICS:
            raise ValueError(f"trials never report {metric}; they report {', '.join(TRIAL_METRICS)}")
        return metric


class RoundsConfig(_Strict):
    """sweep.strategy: rounds: a staged search of a few configs a round (lorafleet.rounds explains it)."""

    smoke_steps: int = Field(20, gt=0, description="Round 0's one smoke trial trains this many steps.")
    smoke_gate: float | None = Field(
        0.9, ge=0, le=1, description="Lowest validation schema_pass_rate of round 0's smoke trial; below it the domain "
        "stops with a verdict to fix the prompt or the output constraints, not the hyperparameters. Required.")
    base_learning_rate: float = Field(2e-4, gt=0, description="Round 0's and round 1's base learning rate.")
    base_steps: int = Field(200, gt=0, description="Round 1's base number of steps.")
    lora_rank: int = Field(16, gt=0, description="LoRA rank of every config (the search does not move it).")
    max_seq_length: int | None = Field(
        None, gt=16, description="Rounds 0 and 1's max_seq_length; null: train.max_seq_length.")
    conservative_lr_factor: float = Field(0.5, gt=0, lt=1, description="Round 1's conservative config: base lr x this.")
    conservative_steps_factor: float = Field(
        1.5, ge=1, description="Round 1's conservative config: base steps x this.")
    stronger_lr_factor: float = Field(1.5, gt=1, description="Round 1's stronger config: base lr x this.")
    stronger_steps_factor: float = Field(0.75, gt=0, le=1, description="Round 1's stronger config: base steps x this.")
    field_accuracy_below: float = Field(
        0.8, ge=0, le=1, description="From round 2: the winner's lowest field accuracy (evidence and text fields "
        "aside) below this asks for one config with more steps and one with a higher lr.")
    more_steps_factor: float = Field(1.5, gt=1, description="The low-field rule's longer config: steps x this.")
    higher_lr_factor: float = Field(1.25, gt=1, description="The low-field rule's other config: lr x this.")
    evidence_below: float = Field(
        0.8, ge=0, le=1, description="From round 2: an evidence field's (eval.evidence_fields) accuracy below this asks "
        "for a config with a longer max_seq_length.")
    longer_seq_factor: float = Field(1.5, gt=1, description="The low-evidence rule's config: max_seq_length x this.")
    max_seq_length_cap: int | None = Field(
        4096, gt=16, description="The low-evidence rule never goes past this max_seq_length; null: no cap.")
    grounding_below: float = Field(
        0.8, ge=0, le=1, description="From round 2: the winner's grounding below this is flagged as a prompt problem "
        "(no config comes from it).")
    min_improvement: float = Field(
        0.3, ge=0, description="Stop when a round's winner beats the previous round's on score by less than this "
        "many points.")
    target_score: float | None = Field(
        None, gt=0, le=100, description="Stop when a round's winner reaches this score, or when two successive "
        "rounds' winners both score within oscillation_band under it; null: neither.")
    oscillation_band: float = Field(0.5, ge=0, description="Points under target_score that count as stuck just under.")
    max_rounds: int = Field(4, ge=2, description="Rounds at most, round 0 (smoke) included.")

    @field_validator("smoke_gate")
    @classmethod
    def _gate_required(cls, gate: float | None) -> float:
        if gate is None:
            raise ValueError("the staged search needs a round-0 gate (the smoke trial's lowest validation "
                             "schema_pass_rate, e.g. 0.9)")
        return gate

    @model_validator(mode="after")
    def _seq_under_cap(self) -> RoundsConfig:
        if self.max_seq_length is not None and self.max_seq_length_cap is not None \
                and self.max_seq_length > self.max_seq_length_cap:
            raise ValueError(f"max_seq_length ({self.max_seq_length}) is above max_seq_length_cap "
                             f"({self.max_seq_length_cap})")
        return self


class SweepConfig(_Strict):
    space: SearchSpace = Field(default_factory=SearchSpace)
    search: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every combination; random: num_samples seeded draws; optuna: num_samples trials "
        "chosen one after another by Optuna's TPE from the results so far (sweep.optuna).")
    num_samples: int = Field(1, gt=0, description="grid: repeats of the grid; random, optuna: number of trials.")
    scheduler: Literal["fifo", "asha"] = Field(
        "fifo", description="fifo: every trial trains to its end; asha: Tune's ASHAScheduler stops the trials behind "
        "at each rung (sweep.asha); a stopped trial is recorded stopped_early and never wins.")
    asha: AshaConfig = Field(default_factory=AshaConfig)
    optuna: OptunaConfig = Field(default_factory=OptunaConfig)
    resources_per_trial: TrialResources = Field(default_factory=TrialResources)
    reuse_workers: bool = Field(
        True, description="A worker process runs trial after trial of the same resources, keeping its imports and "
        "loaded base (Tune's reuse_actors); false: a fresh process per trial.")
    seed: int = 0
    strategy: Literal["sweep", "rounds"] = Field(
        "sweep", description="sweep: every config of space at once; rounds: a staged search (sweep.rounds).")
    rounds: RoundsConfig | None = Field(None, description="The staged search's settings; needed by strategy: rounds.")

    @model_validator(mode="after")
    def _rounds_section(self) -> SweepConfig:
        if self.strategy == "rounds" and self.rounds is None:
            raise ValueError("strategy: rounds needs a rounds section with its round-0 gate, sweep.rounds.smoke_gate "
                             "(e.g. rounds: {smoke_gate: 0.9})")
        if self.strategy != "rounds" and self.rounds is not None:
            raise ValueError("rounds: read only by strategy: rounds; set sweep.strategy: rounds or drop sweep.rounds")
        # sweep.rounds plans every trial (space and num_samples are not read); a search or scheduler asked for beside
        # it would be silently ignored
        if self.strategy == "rounds" and (self.search != "grid" or self.scheduler != "fifo"):
            raise ValueError(f"strategy: rounds plans its trials itself: search: {self.search} and scheduler: "
                             f"{self.scheduler} would do nothing; use search: grid and scheduler: fifo with it")
        return self

    @model_validator(mode="after")
    def _asha_decides_the_length(self) -> SweepConfig:
        epochs = self.space.epochs
        if self.scheduler == "asha" and (isinstance(epochs, RangeSpec) or len(set(epochs)) > 1):
            raise ValueError("space.epochs: with scheduler: asha give one epoch count, the longest a trial may train: "
                             "ASHA decides how far each trial goes, and trials of different epoch counts decay their "
                             "learning rate on different schedules, which its rungs would compare at equal steps")
        return self

    @model_validator(mode="after")
    def _grid_needs_lists(self) -> SweepConfig:
        if self.search == "grid":
            for name in ("lora_rank", "learning_rate", "epochs"):
                if isinstance(getattr(self.space, name), RangeSpec):
                    raise ValueError(f"space.{name}: a grid search needs a list; use search: random for a range")
        return self


class RankKey(_Strict):
    metric: str
    mode: Literal["min", "max"] = "min"
    threshold: float | None = Field(
        None, description="Makes the key a filter: keep the trials that reach it (>= for max, <= for min); "
        "when none does, keep all.")
    within: float = Field(0.0, ge=0, description="Trials this close to the best count as tied; the next key decides.")


class SelectConfig(_Strict):
    rule: list[RankKey] = Field(
        default_factory=lambda: [RankKey(metric="eval_loss", mode="min")],
        description="Ordered keys over the trials' validation metrics: each keeps the trials that reach its "
        "threshold, then those within `within` of the best; the next key decides among them.")


OnnxVariant = Literal["fp32", "fp16", "int4"]
ONNX_VARIANTS: tuple[str, ...] = get_args(OnnxVariant)
# variants built from the primary export rather than exported (export.build_variant)
DERIVED_VARIANTS = ("int4",)


class ExportConfig(_Strict):
    onnx: bool = True
    dtype: Literal["fp32", "fp16"] = Field(
        "fp32", description="ONNX weights' precision. fp16 halves the files and exports on the GPU (Optimum exports "
        "fp16 on CUDA only); the PyTorch models are then evaluated in fp16 too, so parity compares like with like.")
    variants: list[OnnxVariant] = Field(
        description="The ONNX models published, each evaluated, compared with the merged model, sized and timed on the "
        "CPU. The first is the export itself, in export.dtype, published in onnx/; each further one is built from it "
        "and published in onnx-<variant>/. int4: its MatMul weights 4-bit (onnxruntime's MatMulNBits, block "
        "int4_block_size), the rest as exported. Default: [dtype]. With onnx: false none is built (and gate.variants "
        "is not judged).")
    int4_block_size: int = Field(
        32, description="int4: weights quantized in blocks of this many along the input dimension, each block with "
        "its own scale and zero point (smaller: closer to the export, larger files). A power of two, 16 or more.")

    @model_validator(mode="before")
    @classmethod
    def _primary_by_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "variants" not in data:
            return {**data, "variants": [data.get("dtype", "fp32")]}
        return data

    @field_validator("int4_block_size")
    @classmethod
    def _power_of_two(cls, size: int) -> int:
        if size < 16 or size & (size - 1):
            raise ValueError(f"must be a power of two, 16 or more (MatMulNBits' blocks), got {size}")
        return size

    @model_validator(mode="after")
    def _buildable(self) -> ExportConfig:
        variants = self.variants
        if not variants:
            raise ValueError(f"variants: needs at least the export itself, [{self.dtype}]")
        if len(set(variants)) < len(variants):
            raise ValueError(f"variants: {', '.join(variants)} names a variant twice")
        if variants[0] != self.dtype:
            example = ", ".join([self.dtype, *(v for v in variants if v in DERIVED_VARIANTS)])
            raise ValueError(f"variants: the first is the export itself, in export.dtype ({self.dtype}), not "
                             f"{variants[0]}; e.g. variants: [{example}]")
        exported_twice = [v for v in variants[1:] if v not in DERIVED_VARIANTS]
        if exported_twice:
            raise ValueError(f"variants: {exported_twice[0]} beside the {self.dtype} export is not built: only one "
                             f"precision is exported (export.dtype); further variants are built from it: "
                             f"{', '.join(DERIVED_VARIANTS)}")
        if "int4_block_size" in self.model_fields_set and "int4" not in variants:
            raise ValueError("int4_block_size: read only for an int4 variant; add int4 to export.variants or drop it")
        return self


class EvalConfig(_Strict):
    max_new_tokens: int = Field(192, gt=0)
    max_examples: int | None = Field(None, gt=0, description="Evaluate at most this many test (and val) records.")
    batch_size: int = Field(8, gt=0)
    golden: str | None = Field(None, description="Hand-written golden set (the data's format), relative to the YAML.")
    number_tolerance: float = Field(0.01, ge=0, description="Relative tolerance for numeric fields.")
    evidence_fields: list[str] = Field(
        default_factory=list, description="Fields whose items must be quoted verbatim from the input (grounding).")
    text_fields: list[str] = Field(default_factory=list, description="Free-text fields scored with chrF and ROUGE-L.")
    score_weights: dict[Literal["json_valid", "schema_pass", "field_accuracy", "grounding", "chrf", "rouge_l",
                                "context_grounding"], float] = Field(
        default_factory=lambda: {"json_valid": 0.2, "schema_pass": 0.3, "field_accuracy": 0.5},
        description="score = 100 x weighted mean of these per-example values (points).")
    bootstrap_samples: int = Field(1000, gt=0, description="Resamples for the 95 % confidence intervals.")
    seed: int = 0
    resources: Resources | None = Field(
        None, description="Ray resources of the domain's task after the sweep (merge, ONNX export, evaluation); "
        "default: sweep.resources_per_trial.")

    @field_validator("score_weights")
    @classmethod
    def _weighted_mean(cls, weights: dict[str, float]) -> dict[str, float]:
        MetricSpec(score_weights=tuple(weights.items()))  # its checks, at load time rather than after training
        return weights


class NotifyConfig(_Strict):
    webhook_env: str | None = Field(
        None, description="Name of the environment variable that holds the webhook URL (Slack incoming webhook or "
        "compatible) told how the run ended; domains naming the same variable share one message. The URL is a "
        "secret: it never goes in a config file.")

    @field_validator("webhook_env")
    @classmethod
    def _a_variable_name(cls, name: str | None) -> str | None:
        # the value is never repeated in the message: it may be the secret itself, pasted in by mistake
        if name is not None and not ENV_NAME_RE.fullmatch(name):
            problem = ("looks like a URL; the URL is a secret and stays out of config files" if "/" in name else
                       "is not an environment variable name")
            raise ValueError(f"{problem}: name the variable that holds the URL, e.g. LORAFLEET_SLACK_WEBHOOK")
        return name


EVAL_METRICS = tuple(REGISTRY)
# Metrics measured only when the eval section lists the fields they score.
METRIC_NEEDS = {name: m.needs for name, m in REGISTRY.items() if m.needs}


def _unknown_metrics(named: list[str]) -> str | None:
    unknown = sorted({m for m in named if m not in EVAL_METRICS})
    return f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(EVAL_METRICS)}" if unknown else None


class VariantGate(_Strict):
    """What one ONNX variant must reach on the test split, besides what the tuned model must."""

    max_drop: dict[str, float] = Field(
        default_factory=dict, description="metric -> how far the variant may fall behind the primary ONNX export "
        "(export.variants' first) on the same test records, in the metric's worse direction.")
    min: dict[str, float] = Field(
        default_factory=dict, description="metric -> lowest value the variant may have on the test split.")

    @field_validator("max_drop")
    @classmethod
    def _not_negative(cls, drops: dict[str, float]) -> dict[str, float]:
        negative = [m for m, v in drops.items() if v < 0]
        if negative:
            raise ValueError(f"{negative[0]}: a drop is 0 or more (0: not worse than the primary export)")
        return drops

    @model_validator(mode="after")
    def _known_metrics(self) -> VariantGate:
        if problem := _unknown_metrics([*self.max_drop, *self.min]):
            raise ValueError(problem)
        if not self.max_drop and not self.min:
            raise ValueError("no thresholds: give max_drop or min, or drop the variant's section")
        return self


class GateConfig(_Strict):
    min: dict[str, float] = Field(
        default_factory=dict, description="metric -> lowest value the tuned model may have on the test split.")
    not_below_base: list[str] = Field(
        default_factory=list, description="Metrics on which the tuned model may not score below the base model.")
    min_improvement: dict[str, float] = Field(
        default_factory=dict, description="metric -> smallest tuned-minus-base gain, judged on the lower end of "
        "the gain's 95 % interval.")
    max_field_regression: float | None = Field(
        None, ge=0, description="No field's accuracy may fall below the base model's by more than this.")
    golden_min: dict[str, float] = Field(
        default_factory=dict, description="metric -> lowest value the tuned model may have on the golden set.")
    human_min_improvement: float | None = Field(
        None, ge=0, lt=4, description="Human review (lorafleet review): the tuned model's mean rating (1-5, rated blind "
        "beside the base model's answer to the same test record) must beat the base's, with the lower end of the "
        "paired 95 % interval of tuned - base above this. null: ratings are reported, never gate.")
    require_review: bool = Field(
        False, description="With human_min_improvement: a run's domain is gated 'not reviewed' until `lorafleet review "
        "import` brings ratings that pass it (and promotes it then). false: without ratings the check says 'not "
        "reviewed' and does not hold promotion back.")
    human_min_reviewed: int = Field(
        20, gt=0, description="With human_min_improvement: the check fails when fewer test records than this were "
        "rated (an interval over a handful of records says little).")
    variants: dict[OnnxVariant, VariantGate] = Field(
        default_factory=dict, description="ONNX variant (export.variants, not the first) -> its own thresholds, "
        "e.g. {int4: {max_drop: {schema_pass_rate: 0.02}}}; a variant that misses one fails the domain's gate. Not "
        "judged with export.onnx: false (no ONNX model is built).")
    context_min_improvement: dict[str, float] = Field(
        default_factory=dict, description="metric -> smallest gain of the tuned model asked with each record's context "
        "over the same model asked without it, on the test split, judged on the lower end of the gain's 95 % interval "
        "(a domain with context).")

    @model_validator(mode="after")
    def _known_metrics(self) -> GateConfig:
        if problem := _unknown_metrics([*self.min, *self.not_below_base, *self.min_improvement, *self.golden_min,
                                        *self.context_min_improvement]):
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _human_review(self) -> GateConfig:
        if self.human_min_improvement is None:
            if self.require_review:
                raise ValueError("require_review: waits for a review that human_min_improvement judges, which is not "
                                 "set; set gate.human_min_improvement (e.g. 0.3) or drop gate.require_review")
            if self.human_min_reviewed != type(self).model_fields["human_min_reviewed"].default:
                raise ValueError("human_min_reviewed: read only with human_min_improvement; set "
                                 "gate.human_min_improvement or drop gate.human_min_reviewed")
        return self


class StepConfig(_Strict):
    """Set by a pipeline file's expansion (``load_pipeline``), never written in a domain file: how each annotated
    record of data.path becomes this step's messages record (``lorafleet.steps``)."""

    pipeline: str = Field(description="The pipeline's name: the domain is <pipeline>.<step>.")
    step: str
    input: str | None = Field(None, description="Dotted path of the annotated field that is the user message.")
    prompt: str | None = Field(None, description="module:function called on each annotated record; returns the "
                               "user message (the same function the serving code calls).")
    target: dict[str, str] = Field(description="Answer field -> dotted path of the annotated field it holds; the "
                                   "answer is their JSON object, in this order.")
    prompt_builder_sha256: str | None = Field(None, description="Set at load: sha256 of the builder's source.")

    @model_validator(mode="after")
    def _one_input(self) -> StepConfig:
        if (self.input is None) == (self.prompt is None):
            raise ValueError("give either input (a dotted field path) or prompt (module:function), not both or neither")
        if not self.target:
            raise ValueError("target: needs at least one answer field -> dotted path")
        return self


class DomainConfig(_Strict):
    # a config may hold a secret pasted in by mistake (a webhook URL): validation errors never repeat a value
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    name: str
    description: str = ""
    base_model: str = Field(
        "tiny", description="'tiny' (embedded default), a hub id, a local path, or gguf:FILE (a .gguf file, relative "
        "to the YAML, or PACKAGE/FILE inside an installed Python package), dequantized once into the cache.")
    trust_remote_code: bool = Field(
        False, description="Let transformers run the Python code a hub base model ships with it (its own modelling "
        "files) wherever the base or the merged model is loaded. Off: only architectures transformers has built in. "
        "Turn it on only for a base whose code you have read.")
    system_prompt: str
    context: ContextConfig | None = Field(
        None, description="Context injection: an entity's record from a context file, rendered into the system prompt.")
    data: DataConfig
    output_schema: str = Field(description="JSON Schema file, relative to the YAML file.")
    train: TrainConfig = Field(default_factory=TrainConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    source_file: str = Field("", description="Set by load_domain: the YAML this config came from.")
    step: StepConfig | None = Field(None, description="Set by load_pipeline for a pipeline's step.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not DOMAIN_NAME_RE.fullmatch(name):
            raise ValueError(f"domain name {name!r} must match {DOMAIN_NAME_RE.pattern}")
        return name

    def resolve(self, relative: str) -> str:
        """A path relative to the YAML file (URIs are returned unchanged)."""
        if "://" in relative or Path(relative).is_absolute():
            return relative
        return str(Path(self.source_file).parent / relative)

    @property
    def base_model_ref(self) -> str:
        """base_model as every stage takes it: a gguf: file by its absolute path, wherever the stage runs."""
        if not self.base_model.startswith(GGUF_PREFIX):
            return self.base_model
        return GGUF_PREFIX + str(locate_gguf(self.base_model[len(GGUF_PREFIX):], Path(self.source_file).parent))

    @property
    def data_path(self) -> str:
        return self.resolve(self.data.path)

    @property
    def schema_path(self) -> str:
        return self.resolve(self.output_schema)

    @property
    def context_path(self) -> str | None:
        return self.resolve(self.context.path) if self.context else None

    @property
    def context_template(self) -> str | None:
        """The template an entity's context is written with: part of the prompt's hash (``lineage.prompt_sha256``)."""
        return self.context.template if self.context else None

    @property
    def golden_path(self) -> str | None:
        return self.resolve(self.eval.golden) if self.eval.golden else None

    @property
    def finish_resources(self) -> Resources:
        """Ray resources of the task that finishes the domain after the sweep (merge, ONNX export, evaluation)."""
        if self.eval.resources is not None:
            return self.eval.resources
        trial = self.sweep.resources_per_trial
        return Resources(cpu=trial.cpu, gpu=trial.gpu)

    @model_validator(mode="after")
    def _consistent(self) -> DomainConfig:
        problems = _contradictions(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _setting(cfg: DomainConfig, dotted: str) -> Any:
    """A config value by its dotted name (``eval.text_fields``); None where a section is absent."""
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None) if node is not None else None
    return node


def _contradictions(cfg: DomainConfig) -> list[str]:
    """Settings that contradict each other across sections, caught at load time rather than after minutes of
    training; each names its fields as the YAML does."""
    problems = _source_problems(cfg)
    train, trial_gpu = cfg.train, cfg.sweep.resources_per_trial.gpu
    if trial_gpu == "auto" and cfg.eval.resources is None:
        return ["sweep.resources_per_trial.gpu: auto packs the trials; the task that finishes the domain after them "
                "needs its own resources: set eval.resources (e.g. {cpu: 2, gpu: 0.2})"]
    finish = cfg.finish_resources
    finish_gpu = (f"eval.resources.gpu: {finish.gpu:g}" if cfg.eval.resources is not None else
                  f"sweep.resources_per_trial.gpu: {finish.gpu:g}, which eval.resources defaults to")
    quality = cfg.data.quality
    if quality.min_grounding is not None and not cfg.eval.evidence_fields:
        problems.append("data.quality.min_grounding: needs the answer's evidence fields, but eval.evidence_fields is "
                        "empty; list them there or drop data.quality.min_grounding")
    if not cfg.data.measure_tokens:
        needs = [f"data.quality.{name}" for name, on in (
            ("prompt_tokens", quality.prompt_tokens.bounded), ("answer_tokens", quality.answer_tokens.bounded),
            ("drop_truncated", quality.drop_truncated)) if on]
        if needs:
            problems.append(f"{', '.join(needs)}: counted in tokens, but data.measure_tokens is false; set it to true "
                            "or drop them")
    if cfg.gate.golden_min and not cfg.eval.golden:
        problems.append("gate.golden_min: needs a golden set, but eval.golden is not set; set eval.golden or drop "
                        "gate.golden_min")
    if trial_gpu == 0:
        if train.backend == "unsloth":
            problems.append("train.backend: unsloth needs CUDA in every trial, but sweep.resources_per_trial.gpu is 0; "
                            "use train.backend: auto or peft, or give sweep.resources_per_trial a GPU")
        if train.load_in_4bit is True:
            problems.append("train.load_in_4bit: true needs CUDA (bitsandbytes) in every trial, but "
                            "sweep.resources_per_trial.gpu is 0; use auto or false, or give sweep.resources_per_trial "
                            "a GPU")
    elif train.load_in_4bit is not False and finish.gpu == 0:  # auto: 4-bit on CUDA
        problems.append(
            f"train.load_in_4bit: {'auto' if train.load_in_4bit == 'auto' else 'true'} trains on a 4-bit base on the "
            f"trials' GPUs (sweep.resources_per_trial.gpu: {trial_gpu}), and the winner's merge-drift check reloads "
            f"that base in 4-bit where the domain is finished, which gets no GPU ({finish_gpu}); give eval.resources "
            "a GPU fraction or set train.load_in_4bit: false")
    if cfg.export.onnx and cfg.export.dtype == "fp16" and finish.gpu == 0:
        problems.append(f"export.dtype: fp16 exports on CUDA only (Optimum), but the task that finishes the domain "
                        f"gets no GPU ({finish_gpu}); use export.dtype: fp32, set export.onnx: false, or give "
                        "eval.resources a GPU fraction")
    gate, primary = cfg.gate, cfg.export.variants[0]
    for variant in gate.variants:
        if variant == primary:
            problems.append(f"gate.variants.{variant}: {variant} is the primary ONNX export (export.variants' first), "
                            "the one other variants are measured against; gate.min holds the tuned model itself")
        elif variant not in cfg.export.variants:
            problems.append(f"gate.variants.{variant}: {variant} is not built: export.variants is "
                            f"[{', '.join(cfg.export.variants)}]; add it there or drop gate.variants.{variant}")
    named = [*(("gate.min", m) for m in gate.min), *(("gate.not_below_base", m) for m in gate.not_below_base),
             *(("gate.min_improvement", m) for m in gate.min_improvement),
             *(("gate.golden_min", m) for m in gate.golden_min),
             *((f"gate.variants.{v}.{part}", m) for v, g in gate.variants.items()
               for part in ("max_drop", "min") for m in getattr(g, part)),
             *((f"select.rule.{i}.metric", k.metric) for i, k in enumerate(cfg.select.rule)),
             *(("eval.score_weights", m) for m in cfg.eval.score_weights)]
    named += [("gate.context_min_improvement", m) for m in gate.context_min_improvement]
    for where, metric in named:
        needs = METRIC_NEEDS.get(metric)
        if needs and not _setting(cfg, needs):
            problems.append(f"{where}: {metric} is never measured: {needs} is empty; list the fields it "
                            f"scores there or drop {metric}")
    if gate.context_min_improvement and cfg.context is None:
        problems.append("gate.context_min_improvement: compares answers with and without each record's context, but "
                        "the domain has no context section; add one or drop gate.context_min_improvement")
    for i, key in enumerate(cfg.select.rule):
        if key.metric not in TRIAL_METRICS:
            problems.append(f"select.rule.{i}.metric: trials never report {key.metric}; they report "
                            f"{', '.join(TRIAL_METRICS)}")
        if key.threshold is not None and key.within:
            problems.append(f"select.rule.{i}.within: does nothing on a key with a threshold (that key only "
                            "filters); put it on a key without one")
    return problems


def _source_problems(cfg: DomainConfig) -> list[str]:
    """data.source_format and data.csv_columns against the files they read (the data, and the golden set, which is
    read by its extension and through the same mapping when it is a CSV)."""
    data = cfg.data
    csv_fields = [label for label, fmt in (("data.path", format_of(data.path, data.source_format)),
                                           ("eval.golden", format_of(cfg.eval.golden or "", "auto")))
                  if fmt == "csv"]
    if not csv_fields:
        if data.csv_columns is not None:
            return [f"data.csv_columns: read only from a CSV source, but data.path is read as "
                    f"{format_of(data.path, data.source_format)} (data.source_format: {data.source_format})"]
        return []
    if data.csv_columns is None:
        fields = "instruction: task, input: context, output: answer" if data.format == "alpaca" else \
            "input: question, output: answer"
        return [f"data.csv_columns: {' and '.join(csv_fields)} name{'s' * (len(csv_fields) == 1)} a CSV source, which "
                f"is read through a column mapping: record field -> CSV column, e.g. {{{data.group_key}: group, "
                f"{fields}}}"]
    return csv_mapping_problems(data.csv_columns, data.format, data.group_key)


# Fields a config may still carry from an earlier version: rejected with why, not with pydantic's "Extra inputs".
REMOVED_FIELDS = {
    ("sweep", "metric"): "it never ranked trials; select.rule chooses the winner",
    ("sweep", "mode"): "it never ranked trials; select.rule chooses the winner",
}


def _removed_fields(raw: dict[str, Any]) -> list[str]:
    found = []
    for key, why in REMOVED_FIELDS.items():
        node: Any = raw
        for part in key[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key[-1] in node:
            found.append(f"{'.'.join(key)}: removed: {why}")
    return found


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["train.max_steps=20", "sweep.space.learning_rate=[1e-9]"]`` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected key=value")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part} is set twice")
        node[parts[-1]] = _yaml_value(raw, f"--set {pair!r}")
    return nested


def load_overrides_file(path: str | Path) -> dict[str, Any]:
    """A profile: a YAML mapping of overrides applied to every chosen domain (before any --set)."""
    return _read_mapping(Path(path), "a profile is a mapping of config fields")


def merge_overrides(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    return merged


def _yaml_value(raw: str, where: str) -> Any:
    # YAML 1.1 reads ``1e-9`` as a string: a float field (pydantic, lax mode) parses it, a text field keeps it
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not a YAML value: {exc}") from exc


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_domain(path: str | Path, overrides: dict[str, Any] | None = None) -> DomainConfig:
    """Read, override and validate one domain YAML. Raises ConfigError naming the file and field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields, got {type(raw).__name__}")
    raw = _merge(raw, overrides or {})
    if "step" in raw:
        raise ConfigError(f"{path}: step: set by a pipeline file's steps (configs/pipelines/), not by a domain file")
    removed = _removed_fields(raw)
    if removed:
        raise ConfigError(f"{path}: {'; '.join(removed)}")
    raw["source_file"] = str(path.resolve())
    return _validated(raw, str(path))


def _validated(raw: dict[str, Any], where: str) -> DomainConfig:
    """A domain's fields (source_file set) as a DomainConfig whose files exist; ConfigError prefixed by ``where``."""
    try:
        cfg = DomainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {'; '.join(_describe(err) for err in exc.errors())}") from exc
    if "://" not in cfg.schema_path and not Path(cfg.schema_path).is_file():
        raise ConfigError(f"{where}: output_schema: file not found: {cfg.schema_path}")
    for label, ref in [("data.path", cfg.data_path), ("eval.golden", cfg.golden_path)]:
        if ref and ("://" not in ref or ref.startswith("file://")):  # remote sources are checked when read
            try:
                expand(ref)
            except DataError as exc:
                raise ConfigError(f"{where}: {label}: {exc}") from exc
    if cfg.context is not None:
        if "://" not in cfg.context_path and not Path(cfg.context_path).is_file():
            raise ConfigError(f"{where}: context.path: file not found: {cfg.context_path}")
        try:
            load_context(cfg.context_path, cfg.context.key, cfg.context.template, cfg.context.grounding_fields)
        except ContextError as exc:
            raise ConfigError(f"{where}: context: {exc}") from exc
    if cfg.base_model.startswith(GGUF_PREFIX):
        try:
            check_gguf(Path(cfg.base_model_ref[len(GGUF_PREFIX):]))
        except GGUFError as exc:
            raise ConfigError(f"{where}: base_model: {exc}") from exc
    return cfg


def _describe(err: dict[str, Any]) -> str:
    """One pydantic error as ``field: problem``; a whole-config check's message already names its fields."""
    loc = ".".join(str(p) for p in err["loc"])
    if not loc and err["type"] == "value_error":
        return str(err["ctx"]["error"])
    return f"{loc or '<root>'}: {err['msg']}"


def find_domain_files(config_dir: str | Path, domains: list[str] | None = None,
                      pipeline_dir: str | Path | None = None) -> list[Path]:
    """The YAML files to run: every ``*.yaml`` domain file in config_dir (and pipeline file in pipeline_dir, when
    given), or those holding the chosen domains. ``domains`` are names or globs (``fnmatch``): a domain file's stem,
    a pipeline step's domain ``<pipeline>.<step>``, ``folktale.*``; a pipeline's own name chooses all its steps.
    A name or glob that chooses nothing is an error (a misspelt name is not a silent skip)."""
    config_dir = Path(config_dir)
    files = sorted(config_dir.glob("*.yaml")) + sorted(config_dir.glob("*.yml"))
    pipelines = []
    if pipeline_dir is not None and Path(pipeline_dir).is_dir():
        pipelines = sorted(Path(pipeline_dir).glob("*.yaml")) + sorted(Path(pipeline_dir).glob("*.yml"))
    if not files and not pipelines:
        raise ConfigError(f"{config_dir}: no *.yaml domain files")
    if not domains:
        return files + pipelines
    by_name = {f.stem: f for f in files}
    for path in pipelines:
        by_name |= {f"{path.stem}.{step}": path for step in pipeline_step_names(path)}
    chosen: list[Path] = []
    missing = []
    for pattern in domains:
        hits = [by_name[n] for n in sorted(by_name) if chooses([pattern], n)]
        if not hits:
            missing.append(pattern)
        chosen += [f for f in dict.fromkeys(hits) if f not in chosen]
    if missing:
        raise ConfigError(f"{config_dir}: no domain file for {', '.join(missing)} "
                          f"(have: {', '.join(sorted(by_name))})")
    return chosen


def chooses(domains: list[str] | None, name: str) -> bool:
    """Whether ``--domains`` (names or globs; None: all) choose the domain ``name``; a pipeline's name chooses its
    steps (``folktale`` is ``folktale.*``)."""
    return domains is None or any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(name, f"{p}.*") for p in domains)


# ---- pipeline files: one annotated source, several steps, each its own domain ------------------------------------

PIPELINE_KEYS = ("name", "source", "steps")  # a pipeline file's own keys; every other key is shared by its steps
STEP_KEYS = ("name", "input", "prompt", "target")  # a step's own keys; every other key overrides the shared ones
BUILDER_PROBE_RECORDS = 3  # a step's mapping and prompt builder are tried on this many records at load time


class PipelineSource(_Strict):
    """A pipeline's annotated records: every step reads them (its data section, format messages)."""

    path: str = Field(description="The annotated records (JSONL, JSON or Parquet; a glob of shards; an fsspec URL), "
                      "relative to the YAML file.")
    source_format: Literal["auto", "jsonl", "json", "parquet"] = "auto"
    group_key: str = Field(description="Top-level field of an annotated record; records sharing it never cross "
                           "splits (in every step).")
    splits: dict[Literal["train", "val", "test"], float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})
    seed: int = 0


def is_pipeline(raw: Any) -> bool:
    return isinstance(raw, dict) and "steps" in raw


def pipeline_step_names(path: str | Path) -> list[str]:
    """The step names a pipeline file declares (read only as far as that)."""
    raw = _read_mapping(Path(path))
    steps = raw.get("steps")
    if not isinstance(steps, list):
        raise ConfigError(f"{path}: steps: a list of steps, each a mapping with a name")
    return [s["name"] for s in steps if isinstance(s, dict) and isinstance(s.get("name"), str)]


def load_file(path: str | Path, overrides: dict[str, Any] | None = None,
              domains: list[str] | None = None) -> dict[str, DomainConfig | ConfigError]:
    """A domain file's config, or a pipeline file's chosen steps' configs (``domains`` as ``chooses`` reads them),
    by domain name. A step that does not load is its ConfigError (the others still load); a file that does not is
    raised."""
    path = Path(path)
    if is_pipeline(_read_mapping(path)):
        return load_pipeline(path, overrides, domains)
    cfg = load_domain(path, overrides)
    return {cfg.name: cfg}


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None,
                  domains: list[str] | None = None) -> dict[str, DomainConfig | ConfigError]:
    """Expand a pipeline file into one DomainConfig per chosen step, named ``<pipeline>.<step>``: the shared fields,
    the step's own over them, ``--set``/profile overrides over both; data: the source, read as messages records
    that the step's mapping makes (``lorafleet.steps``). Each step's mapping and prompt builder are tried on the
    source's first records here, and a builder's source hash is recorded (``step.prompt_builder_sha256``). Errors
    name the file and the step."""
    path = Path(path)
    raw = _read_mapping(path)
    for key in ("data", "step"):
        if key in raw:
            raise ConfigError(f"{path}: {key}: a pipeline's steps read source (and their steps section); "
                              f"drop {key}")
    name = raw.get("name")
    if not isinstance(name, str) or not STEP_NAME_RE.fullmatch(name):
        raise ConfigError(f"{path}: name: a pipeline name must match {STEP_NAME_RE.pattern}, got {name!r}")
    try:
        source = PipelineSource.model_validate(raw.get("source"))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {'; '.join('source.' + _describe(err) for err in exc.errors())}") from exc
    steps = raw["steps"]
    if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
        raise ConfigError(f"{path}: steps: a non-empty list of steps, each a mapping")
    seen: set[str] = set()
    for i, step in enumerate(steps):
        step_name = step.get("name")
        if not isinstance(step_name, str) or not STEP_NAME_RE.fullmatch(step_name):
            raise ConfigError(f"{path}: steps.{i}.name: must match {STEP_NAME_RE.pattern}, got {step_name!r}")
        if step_name in seen:
            raise ConfigError(f"{path}: steps.{i}.name: {step_name!r} is used by an earlier step")
        seen.add(step_name)
    shared = {k: v for k, v in raw.items() if k not in PIPELINE_KEYS}
    data = {"path": source.path, "source_format": source.source_format, "format": "messages",
            "group_key": source.group_key, "splits": source.splits, "seed": source.seed}
    out: dict[str, DomainConfig | ConfigError] = {}
    for step in steps:
        domain = f"{name}.{step['name']}"
        if not chooses(domains, domain):
            continue
        where = f"{path}: step {domain}"
        fields = _merge(_merge(shared, {k: v for k, v in step.items() if k not in STEP_KEYS}), {"data": data})
        fields = _merge(fields, overrides or {})
        fields |= {"name": domain, "source_file": str(path.resolve()),
                   "step": {"pipeline": name, "step": step["name"], "target": step.get("target"),
                            **{k: step[k] for k in ("input", "prompt") if k in step}}}
        try:
            removed = _removed_fields(fields)
            if removed:
                raise ConfigError(f"{where}: {'; '.join(removed)}")
            out[domain] = _checked_step(_validated(fields, where), path)
        except ConfigError as exc:
            out[domain] = exc
    return out


def _checked_step(cfg: DomainConfig, path: Path) -> DomainConfig:
    """The step's mapping (and prompt builder) tried on the source's first records; the builder's source hash
    recorded in the config."""
    from lorafleet import steps as steps_mod
    from lorafleet.sources import read

    step = cfg.step
    assert step is not None
    where = f"{path}: step {cfg.name}"
    folder = Path(cfg.source_file).parent
    try:
        if step.prompt:
            step = step.model_copy(update={
                "prompt_builder_sha256": steps_mod.builder_sha256(steps_mod.load_builder(step.prompt, folder))})
        to_record = steps_mod.mapper(step, cfg.data.group_key, folder)
    except steps_mod.StepError as exc:
        raise ConfigError(f"{where}: prompt: {exc}") from exc
    records = read(cfg.data_path, cfg.data.source_format, None, "messages")
    try:
        for n, (position, record) in enumerate(records):
            if n == BUILDER_PROBE_RECORDS:
                break
            try:
                to_record(record)
            except steps_mod.StepError as exc:
                raise ConfigError(f"{path}: {exc} (record {position})") from exc
    except DataError as exc:
        raise ConfigError(f"{where}: source.path: {exc}") from exc
    finally:
        records.close()
    return cfg.model_copy(update={"step": step})


def _read_mapping(path: Path, expected: str = "expected a mapping of fields") -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError naming the file (and line) otherwise."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{f':{mark.line + 1}' if mark else ''}: invalid YAML: {problem}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {expected}, got {type(raw).__name__}")
    return raw
