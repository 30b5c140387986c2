"""Data preparation: format adapters -> chat examples -> governance -> group split -> manifest.

Every record becomes one ``Example``: the prompt messages (system + user turns) and the
assistant's answer, which is the JSON the model must learn to produce.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import jsonschema

from lorafleet import context as context_mod
from lorafleet import governance, sources
from lorafleet.base_model import TokenCounter, token_counter
from lorafleet.config import DomainConfig
from lorafleet.context import Context
from lorafleet.prompt import record_turns, with_system_prompt, without_context
from lorafleet.sources import DataError  # a record cannot be used; the message names its file and line

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    id: str
    group: str
    prompt: list[dict[str, str]]
    completion: str
    line: int
    # the record's own ``metadata`` object (schema_version, quality_label, run_id, ...), kept into the splits' files
    # and evaluation rows; not part of the dataset version
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    entity: str | None = None  # a domain with context: the record's entity (its context.key field)
    context: str | None = None  # and that entity's rendered context, which ends the prompt's system message

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt if m["role"] == "user")

    def without_context(self) -> Example:
        """The same record asked with its context taken out of the system prompt (itself, for a record without)."""
        if self.context is None:
            return self
        return replace(self, prompt=without_context(self.prompt, self.context), context=None)

    def as_trl(self) -> dict[str, Any]:
        """TRL's conversational prompt-completion form (loss on the completion only)."""
        return {"prompt": self.prompt, "completion": [{"role": "assistant", "content": self.completion}]}


@dataclass
class Histogram:
    """Records per split over shared bins: ``counts[split][i]`` records have ``edges[i] <= tokens < edges[i + 1]``."""

    edges: list[int]
    counts: dict[str, list[int]]


@dataclass
class LengthSummary:
    """The kept records' lengths in the base model's tokens (``governance.TokenLengths``), per split."""

    tokenizer: str  # the base model whose tokenizer counted them
    max_seq_length: int  # train.max_seq_length: where training truncates a record
    prompt: Histogram
    answer: Histogram
    total: Histogram
    stats: dict[str, dict[str, int]]  # split -> prompt/answer/total p50, p95 and max
    truncated: dict[str, int]  # split -> kept records whose prompt and answer exceed max_seq_length


@dataclass
class DatasetManifest:
    domain: str
    source: str
    format: str
    seed: int
    dataset_version: str
    records_read: int
    counts: dict[str, int]
    groups: dict[str, int]
    drops: list[governance.Drop] = field(default_factory=list)  # every record left out (also in drops.jsonl)
    drops_by_reason: dict[str, int] = field(default_factory=dict)  # governance.REASONS code -> records
    lengths: LengthSummary | None = None  # None: data.measure_tokens is false
    labels: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # field -> split -> label -> records
    near_duplicates: dict[str, Any] | None = None  # the data.near_duplicates settings applied; None: off
    possible_leaks: list[governance.NearPair] = field(default_factory=list)  # near-duplicates across two groups
    cross_domain: list[governance.CrossDomainMatch] = field(default_factory=list)  # set by flag_cross_domain
    context: str | None = None  # a domain with context: the context file read, its sha256 and entities
    context_sha256: str | None = None
    context_entities: int | None = None


@dataclass
class PreparedData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    manifest: DatasetManifest
    schema: dict[str, Any] = field(default_factory=dict)
    golden: list[Example] = field(default_factory=list)
    context: Context | None = None  # the context file every prompt's context came from (a domain with context)

    def split(self, name: str) -> list[Example]:
        return getattr(self, name)

    @property
    def eval_set_version(self) -> str:
        """sha256 of the records a model is judged on (validation, test and golden, as prepared): a trial's selection
        and a model's scores compare only where it is the same."""
        digest = hashlib.sha256()
        for name in ("val", "test", "golden"):
            for e in self.split(name):
                digest.update(json.dumps([name, e.id, e.prompt, e.completion], sort_keys=True).encode() + b"\n")
        return digest.hexdigest()


def context_of(cfg: DomainConfig) -> Context | None:
    """The domain's context file as read (once while it stays the same), or None for a domain without context."""
    if cfg.context is None:
        return None
    return context_mod.load(cfg.context_path, cfg.context.key, cfg.context.template, cfg.context.grounding_fields)


def to_example(record: dict[str, Any], cfg: DomainConfig, line: int, context: Context | None = None) -> Example:
    """One raw record -> Example; a domain with context asks it with its entity's context (``context``: the domain's
    context file, read if not given). Raises KeyError/ValueError/TypeError on a malformed record, ContextError (a
    ValueError) for an entity the context file lacks."""
    turns = record_turns(record, cfg.data.format)
    if cfg.data.group_key not in record:
        raise KeyError(cfg.data.group_key)
    if turns[-1]["role"] != "assistant":
        raise ValueError("the last turn must be the assistant's answer")
    prompt = turns[:-1]
    if not any(t["role"] == "user" for t in prompt):
        raise ValueError("no user turn before the answer")
    entity = rendered = None
    if cfg.context is not None:
        context = context or context_of(cfg)
        if cfg.context.key not in record:
            raise ValueError(f"missing field {cfg.context.key!r} (context.key: the record's entity in the context file "
                             f"{context.source})")
        entity = record[cfg.context.key]
        rendered = context.render(entity)
    prompt = with_system_prompt(prompt, cfg.system_prompt, rendered)
    answer = turns[-1]["content"].strip()
    group = str(record[cfg.data.group_key])
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"field 'metadata' must be a JSON object, got {type(metadata).__name__}")
    row_id = hashlib.sha256(json.dumps([prompt, answer], ensure_ascii=False).encode()).hexdigest()[:16]
    return Example(id=row_id, group=group, prompt=prompt, completion=answer, line=line, metadata=metadata,
                   entity=entity, context=rendered)


def read_records(path: str, source_format: str = "auto", csv_columns: dict[str, str] | None = None,
                 data_format: str = "messages") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each record of one file (``sources``: JSONL, a JSON array, Parquet, whose number is
    the row, or CSV through ``csv_columns``); DataError names file and line (row) otherwise."""
    for where, record in sources.read_file(path, sources.format_of(path, source_format), csv_columns, data_format):
        yield where.number, record


def load_examples(cfg: DomainConfig, path: str | None = None,
                  context: Context | None = None) -> tuple[list[Example], int]:
    """The records of ``path`` (default: the domain's data; a file or a glob of shards, read as data.source_format
    says) through the domain's format adapter (``context``: the domain's context file as read, for a domain with
    context). Records are streamed from the files; only the examples are kept."""
    declared = cfg.data.source_format if path is None else "auto"  # another file (golden) goes by its extension
    path = path or cfg.data_path
    context = context or context_of(cfg)
    examples, n_read = [], 0
    step = _step_mapper(cfg)
    for where, record in sources.read(path, declared, cfg.data.csv_columns, cfg.data.format):
        n_read += 1
        try:
            if step is not None:  # a pipeline step's annotated record -> its messages record (StepError: a ValueError)
                record = step(record)
            examples.append(to_example(record, cfg, where.number, context))
        except KeyError as exc:
            raise DataError(f"{where}: missing field {exc.args[0]!r} "
                            f"for format {cfg.data.format!r}") from exc
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}: {exc}") from exc
    if not examples:
        raise DataError(f"{path}: no records")
    return examples, n_read


def _step_mapper(cfg: DomainConfig):
    """A pipeline step's mapping from annotated records to its records (``lorafleet.steps``); None for a domain."""
    if cfg.step is None:
        return None
    from lorafleet import steps

    try:
        return steps.mapper(cfg.step, cfg.data.group_key, Path(cfg.source_file).parent)
    except steps.StepError as exc:
        raise DataError(f"{cfg.source_file}: step {cfg.name}: prompt: {exc}") from exc


def load_golden(cfg: DomainConfig, schema: dict, context: Context | None = None) -> list[Example]:
    """The domain's hand-written golden set: evaluated every run, never trained on. Every answer must
    satisfy the schema; a bad record stops the domain, naming file and line."""
    if not cfg.golden_path:
        return []
    examples, _ = load_examples(cfg, cfg.golden_path, context)
    validator = jsonschema.Draft202012Validator(schema)
    for e in examples:
        problem = governance.answer_problem(e.completion, validator)
        if problem is not None:
            what = "the answer is not JSON" if problem[0] == "not_json" else "the answer breaks the schema"
            raise DataError(f"{cfg.golden_path}:{e.line}: {what}: {problem[1]}")
    return examples


def split_by_group(examples: list[Example], ratios: dict[str, float], seed: int) -> dict[str, list[Example]]:
    """Assign whole groups to splits: shuffle the sorted group ids with the seed, cut by ratio."""
    groups = sorted({e.group for e in examples})
    if len(groups) < len(SPLITS):
        raise DataError(f"need at least {len(SPLITS)} distinct groups to split, found {len(groups)}")
    random.Random(seed).shuffle(groups)
    n_test = max(1, round(ratios["test"] * len(groups)))
    n_val = max(1, round(ratios["val"] * len(groups)))
    assignment = {g: "test" for g in groups[:n_test]}
    assignment.update({g: "val" for g in groups[n_test:n_test + n_val]})
    assignment.update({g: "train" for g in groups[n_test + n_val:]})
    out: dict[str, list[Example]] = {s: [] for s in SPLITS}
    for e in examples:
        out[assignment[e.group]].append(e)
    return out


def dataset_version(splits: dict[str, list[Example]]) -> str:
    """sha256 over the normalised rows, in a fixed order, with their split."""
    digest = hashlib.sha256()
    for name in SPLITS:
        for e in sorted(splits[name], key=lambda e: e.id):
            digest.update(json.dumps([name, e.group, e.prompt, e.completion], ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def prepare(cfg: DomainConfig, out_dir: str | Path | None = None) -> PreparedData:
    """Read, validate, govern and split one domain's data; write the splits, drops and manifest to out_dir."""
    context = context_of(cfg)
    examples, n_read = load_examples(cfg, context=context)
    schema = json.loads(Path(cfg.schema_path).read_text(encoding="utf-8"))
    quality, drops = cfg.data.quality, []
    for check in (lambda ex: governance.drop_invalid_answers(ex, schema),
                  lambda ex: governance.drop_by_label(ex, quality),
                  lambda ex: governance.drop_ungrounded(ex, quality, cfg.eval.evidence_fields),
                  governance.dedup_exact):
        examples, dropped = check(examples)
        drops += dropped
    lengths = None
    if cfg.data.measure_tokens:
        lengths = governance.measure_tokens(examples, _token_counter(cfg))
        examples, dropped = governance.drop_by_length(examples, lengths, quality, cfg.train.max_seq_length)
        drops += dropped
    splits = split_by_group(examples, cfg.data.splits, cfg.data.seed)
    golden = load_golden(cfg, schema, context)
    splits, dropped = governance.drop_cross_split_leaks(splits, golden)
    drops += dropped
    pairs: list[governance.NearPair] = []
    if cfg.data.near_duplicates is not None:
        splits, dropped, pairs = governance.drop_near_duplicates(splits, golden, cfg.data.near_duplicates)
        drops += dropped
    for name in SPLITS:
        if not splits[name]:
            raise DataError(f"{cfg.data_path}: the {name} split is empty after governance")
    by_reason = Counter(d.reason for d in drops)
    manifest = DatasetManifest(
        domain=cfg.name, source=cfg.data_path, format=cfg.data.format, seed=cfg.data.seed,
        dataset_version=dataset_version(splits), records_read=n_read,
        counts={s: len(splits[s]) for s in SPLITS},
        groups={s: len({e.group for e in splits[s]}) for s in SPLITS}, drops=drops,
        drops_by_reason={code: by_reason[code] for code in governance.REASONS if by_reason[code]},
        lengths=length_summary(splits, lengths, cfg) if lengths is not None else None,
        labels=label_counts(splits, schema, quality.label_field), possible_leaks=pairs,
        near_duplicates=cfg.data.near_duplicates.model_dump() if cfg.data.near_duplicates is not None else None,
        context=context.source if context else None, context_sha256=context.sha256 if context else None,
        context_entities=len(context.entities) if context else None)
    prepared = PreparedData(splits["train"], splits["val"], splits["test"], manifest, schema, golden, context)
    if out_dir is not None:
        write_prepared(prepared, Path(out_dir))
    return prepared


def _token_counter(cfg: DomainConfig) -> TokenCounter:
    try:
        return token_counter(cfg.base_model_ref, cfg.trust_remote_code)
    except Exception as exc:  # whatever stops it: a hub out of reach, a file without a tokenizer, a missing package
        raise DataError(f"{cfg.source_file}: base_model {cfg.base_model!r}: its tokenizer did not load "
                        f"({type(exc).__name__}: {exc}); data.measure_tokens needs it (token lengths, truncation): "
                        "set data.measure_tokens: false to prepare the data without them") from exc


# ---- what the manifest and report show of the kept records ---------------------------------------------------

HISTOGRAM_BINS = 16


def _bin_edges(low: int, high: int) -> list[int]:
    """Bins of a round width (1, 2 or 5 x 10^k tokens), about HISTOGRAM_BINS of them, from below ``low`` past
    ``high``."""
    raw, scale = max(1.0, (high - low) / HISTOGRAM_BINS), 1
    while scale * 10 <= raw:
        scale *= 10
    width = next(w * scale for w in (1, 2, 5, 10) if w * scale >= raw)
    return list(range(low // width * width, (high // width + 2) * width, width))


def _histogram(values: dict[str, list[int]]) -> Histogram:
    every = [v for vs in values.values() for v in vs] or [0]
    edges = _bin_edges(min(every), max(every))
    counts = {}
    for split, vs in values.items():
        row = [0] * (len(edges) - 1)
        for v in vs:
            row[bisect.bisect_right(edges, v) - 1] += 1
        counts[split] = row
    return Histogram(edges=edges, counts=counts)


def _percentile(sorted_values: list[int], q: float) -> int:
    return sorted_values[round(q * (len(sorted_values) - 1))] if sorted_values else 0


def length_summary(splits: dict[str, list[Example]], lengths: dict[str, governance.TokenLengths],
                   cfg: DomainConfig) -> LengthSummary:
    limit = cfg.train.max_seq_length
    parts = {part: {s: [getattr(lengths[e.id], part) for e in splits[s]] for s in SPLITS}
             for part in ("prompt", "answer", "total")}
    stats = {}
    for s in SPLITS:
        row = {}
        for part in ("prompt", "answer", "total"):
            values = sorted(parts[part][s])
            row |= {f"{part}_p50": _percentile(values, 0.5), f"{part}_p95": _percentile(values, 0.95),
                    f"{part}_max": values[-1] if values else 0}
        stats[s] = row
    return LengthSummary(
        tokenizer=cfg.base_model, max_seq_length=limit, prompt=_histogram(parts["prompt"]),
        answer=_histogram(parts["answer"]), total=_histogram(parts["total"]), stats=stats,
        truncated={s: sum(n > limit for n in parts["total"][s]) for s in SPLITS})


def label_counts(splits: dict[str, list[Example]], schema: dict, label_field: str) -> dict[str, dict[str, dict[str, int]]]:
    """Label distributions per split: the answer's top-level fields whose schema is an enum (``answer.<field>``),
    and the metadata's quality label (``metadata.<label_field>``) where records carry one."""
    enums = [name for name, prop in schema.get("properties", {}).items() if isinstance(prop, dict) and "enum" in prop]
    out: dict[str, dict[str, dict[str, int]]] = {}
    for s in SPLITS:
        for e in splits[s]:
            answer = json.loads(e.completion) if enums else {}
            found = [(f"answer.{name}", answer.get(name)) for name in enums if isinstance(answer, dict)]
            if label_field in e.metadata:
                found.append((f"metadata.{label_field}", e.metadata[label_field]))
            for key, value in found:
                label = value if isinstance(value, str) else json.dumps(value)
                per_split = out.setdefault(key, {name: {} for name in SPLITS})[s]
                per_split[label] = per_split.get(label, 0) + 1
    return {key: {s: dict(sorted(c.items())) for s, c in by_split.items()} for key, by_split in out.items()}


def flag_cross_domain(prepared: dict[str, PreparedData], configs: dict[str, DomainConfig]) -> None:
    """Each domain's training records near another domain's evaluation records (validation, test, golden), into
    its manifest's ``cross_domain``: a report, not a drop (each domain's own near_duplicates settings)."""
    found = governance.cross_domain_near_duplicates(
        {name: p.train for name, p in prepared.items()},
        {name: [(s, e) for s in ("val", "test", "golden") for e in p.split(s)] for name, p in prepared.items()},
        {name: configs[name].data.near_duplicates for name in prepared})
    for name, matches in found.items():
        prepared[name].manifest.cross_domain = matches


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for e in prepared.split(name):
                handle.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    with open(out_dir / "drops.jsonl", "w", encoding="utf-8") as handle:
        for drop in prepared.manifest.drops:
            handle.write(json.dumps(asdict(drop), ensure_ascii=False) + "\n")
    write_manifest(prepared, out_dir)


def write_manifest(prepared: PreparedData, out_dir: Path) -> None:
    (out_dir / "dataset_manifest.json").write_text(json.dumps(asdict(prepared.manifest), indent=2, ensure_ascii=False))
