"""Data preparation: format adapters -> chat examples -> governance -> group split -> manifest.

Every record becomes one ``Example``: the prompt messages (system + user turns) and the
assistant's answer, which is the JSON the model must learn to produce.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import fsspec
import jsonschema

from lorafleet import context as context_mod
from lorafleet import governance
from lorafleet.config import DomainConfig
from lorafleet.context import Context
from lorafleet.prompt import record_turns, with_system_prompt, without_context

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A record cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    id: str
    group: str
    prompt: list[dict[str, str]]
    completion: str
    line: int
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
class DatasetManifest:
    domain: str
    source: str
    format: str
    seed: int
    dataset_version: str
    records_read: int
    counts: dict[str, int]
    groups: dict[str, int]
    drops: list[dict[str, Any]] = field(default_factory=list)
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
    row_id = hashlib.sha256(json.dumps([prompt, answer], ensure_ascii=False).encode()).hexdigest()[:16]
    return Example(id=row_id, group=group, prompt=prompt, completion=answer, line=line, entity=entity, context=rendered)


def read_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank JSONL line; DataError names file:line otherwise."""
    with fsspec.open(path, "rt", encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def load_examples(cfg: DomainConfig, path: str | None = None,
                  context: Context | None = None) -> tuple[list[Example], int]:
    """The records of ``path`` (default: the domain's data) through the domain's format adapter (``context``: the
    domain's context file as read, for a domain with context)."""
    path = path or cfg.data_path
    context = context or context_of(cfg)
    examples, n_read = [], 0
    for line_no, record in read_records(path):
        n_read += 1
        try:
            examples.append(to_example(record, cfg, line_no, context))
        except KeyError as exc:
            raise DataError(f"{path}:{line_no}: missing field {exc.args[0]!r} "
                            f"for format {cfg.data.format!r}") from exc
        except (TypeError, ValueError) as exc:
            raise DataError(f"{path}:{line_no}: {exc}") from exc
    if not examples:
        raise DataError(f"{path}: no records")
    return examples, n_read


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
    """Read, validate, govern and split one domain's data; write the splits and manifest to out_dir."""
    context = context_of(cfg)
    examples, n_read = load_examples(cfg, context=context)
    schema = json.loads(Path(cfg.schema_path).read_text(encoding="utf-8"))
    examples, drops = governance.drop_invalid_answers(examples, schema)
    examples, dup_drops = governance.dedup_exact(examples)
    splits = split_by_group(examples, cfg.data.splits, cfg.data.seed)
    splits, leak_drops = governance.drop_cross_split_leaks(splits)
    drops += dup_drops + leak_drops
    for name in SPLITS:
        if not splits[name]:
            raise DataError(f"{cfg.data_path}: the {name} split is empty after governance")
    manifest = DatasetManifest(
        domain=cfg.name, source=cfg.data_path, format=cfg.data.format, seed=cfg.data.seed,
        dataset_version=dataset_version(splits), records_read=n_read,
        counts={s: len(splits[s]) for s in SPLITS},
        groups={s: len({e.group for e in splits[s]}) for s in SPLITS}, drops=drops,
        context=context.source if context else None, context_sha256=context.sha256 if context else None,
        context_entities=len(context.entities) if context else None)
    prepared = PreparedData(splits["train"], splits["val"], splits["test"], manifest, schema,
                            load_golden(cfg, schema, context), context)
    if out_dir is not None:
        write_prepared(prepared, Path(out_dir))
    return prepared


def write_prepared(prepared: PreparedData, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for e in prepared.split(name):
                handle.write(json.dumps(asdict(e), ensure_ascii=False) + "\n")
    (out_dir / "dataset_manifest.json").write_text(json.dumps(asdict(prepared.manifest), indent=2, ensure_ascii=False))
