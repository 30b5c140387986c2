"""Data preparation: format adapters -> chat examples -> governance -> group split -> manifest.

Every record becomes one ``Example``: the prompt messages (system + user turns) and the
assistant's answer, which is the JSON the model must learn to produce.
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jsonschema

from lorafleet import governance, sources
from lorafleet.config import DomainConfig
from lorafleet.prompt import record_turns, with_system_prompt
from lorafleet.sources import DataError  # a record cannot be used; the message names its file and line

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    id: str
    group: str
    prompt: list[dict[str, str]]
    completion: str
    line: int

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt if m["role"] == "user")

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


@dataclass
class PreparedData:
    train: list[Example]
    val: list[Example]
    test: list[Example]
    manifest: DatasetManifest
    schema: dict[str, Any] = field(default_factory=dict)
    golden: list[Example] = field(default_factory=list)

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


def to_example(record: dict[str, Any], cfg: DomainConfig, line: int) -> Example:
    """One raw record -> Example. Raises KeyError/ValueError/TypeError on a malformed record."""
    turns = record_turns(record, cfg.data.format)
    if cfg.data.group_key not in record:
        raise KeyError(cfg.data.group_key)
    if turns[-1]["role"] != "assistant":
        raise ValueError("the last turn must be the assistant's answer")
    prompt = turns[:-1]
    if not any(t["role"] == "user" for t in prompt):
        raise ValueError("no user turn before the answer")
    prompt = with_system_prompt(prompt, cfg.system_prompt)
    answer = turns[-1]["content"].strip()
    group = str(record[cfg.data.group_key])
    row_id = hashlib.sha256(json.dumps([prompt, answer], ensure_ascii=False).encode()).hexdigest()[:16]
    return Example(id=row_id, group=group, prompt=prompt, completion=answer, line=line)


def read_records(path: str, source_format: str = "auto", csv_columns: dict[str, str] | None = None,
                 data_format: str = "messages") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of each record of one file (``sources``: JSONL, a JSON array, Parquet, whose number is
    the row, or CSV through ``csv_columns``); DataError names file and line (row) otherwise."""
    for where, record in sources.read_file(path, sources.format_of(path, source_format), csv_columns, data_format):
        yield where.number, record


def load_examples(cfg: DomainConfig, path: str | None = None) -> tuple[list[Example], int]:
    """The records of ``path`` (default: the domain's data; a file or a glob of shards, read as data.source_format
    says) through the domain's format adapter. Records are streamed from the files; only the examples are kept."""
    declared = cfg.data.source_format if path is None else "auto"  # another file (golden) goes by its extension
    path = path or cfg.data_path
    examples, n_read = [], 0
    step = _step_mapper(cfg)
    for where, record in sources.read(path, declared, cfg.data.csv_columns, cfg.data.format):
        n_read += 1
        try:
            if step is not None:  # a pipeline step's annotated record -> its messages record (StepError: a ValueError)
                record = step(record)
            examples.append(to_example(record, cfg, where.number))
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


def load_golden(cfg: DomainConfig, schema: dict) -> list[Example]:
    """The domain's hand-written golden set: evaluated every run, never trained on. Every answer must
    satisfy the schema; a bad record stops the domain, naming file and line."""
    if not cfg.golden_path:
        return []
    examples, _ = load_examples(cfg, cfg.golden_path)
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
    examples, n_read = load_examples(cfg)
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
        groups={s: len({e.group for e in splits[s]}) for s in SPLITS}, drops=drops)
    prepared = PreparedData(splits["train"], splits["val"], splits["test"], manifest, schema, load_golden(cfg, schema))
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
