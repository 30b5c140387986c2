"""The hand-written golden sets: one ``golden.jsonl`` per bundled domain, read through the project's own
format adapter, valid against the domain's schema, and disjoint from the training data.

Every failure message names the golden file and the record's line.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from lorafleet.config import DomainConfig, find_domain_files, load_domain
from lorafleet.data import Example, load_examples, prepare, read_records
from lorafleet.governance import normalise_text

ROOT = Path(__file__).resolve().parents[2]
DOMAINS_DIR = ROOT / "configs" / "domains"
BUNDLED = ["brand_captions", "contracts", "financial", "legal", "medical", "story_summary"]
DOMAIN_FILES = {p.stem: p for p in find_domain_files(DOMAINS_DIR)}
MIN_RECORDS = 10
LONG_INPUT_CHARS = 2_500


@dataclass(frozen=True)
class GoldenRow:
    where: str  # "<golden file>:<line>"
    example: Example
    text: str  # the input the reference answer is read from
    answer: object


def _golden_path(name: str) -> Path:
    return DOMAINS_DIR / name / "golden.jsonl"


def _golden_cfg(name: str) -> DomainConfig:
    """The domain's own config, pointed at its golden file (same format, group key and system prompt)."""
    return load_domain(DOMAIN_FILES[name], overrides={"data": {"path": f"{name}/golden.jsonl"}})


def _input_text(cfg: DomainConfig, example: Example, record: dict) -> str:
    # alpaca: the adapter prepends the instruction to the input; the answer is read from the input alone
    return record["input"] if cfg.data.format == "alpaca" else example.user_text


def _rel(path: str | Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _golden_rows(name: str) -> list[GoldenRow]:
    cfg = _golden_cfg(name)
    examples, _ = load_examples(cfg)  # the project's adapter; DataError names file:line
    records = dict(read_records(cfg.data_path))
    rows = []
    for e in examples:
        where = f"{_rel(cfg.data_path)}:{e.line}"
        try:
            answer = json.loads(e.completion)
        except json.JSONDecodeError as exc:
            pytest.fail(f"{where}: reference answer is not valid JSON: {exc.msg}")
        rows.append(GoldenRow(where, e, _input_text(cfg, e, records[e.line]), answer))
    return rows


def _data_examples(name: str) -> tuple[DomainConfig, list[Example]]:
    cfg = load_domain(DOMAIN_FILES[name])
    return cfg, load_examples(cfg)[0]


def test_every_bundled_domain_is_covered() -> None:
    assert set(BUNDLED) <= set(DOMAIN_FILES), f"bundled domain YAMLs missing under {DOMAINS_DIR}"


@pytest.mark.parametrize("name", sorted(DOMAIN_FILES))
def test_golden_file_exists_and_reads_through_the_adapter(name: str) -> None:
    path = _golden_path(name)
    assert path.is_file(), f"{_rel(path)}: missing golden set for domain {name!r}"
    rows = _golden_rows(name)
    assert len(rows) >= MIN_RECORDS, f"{_rel(path)}: {len(rows)} records, expected at least {MIN_RECORDS}"
    n_lines = sum(1 for _ in read_records(str(path)))
    assert n_lines == len(rows), f"{_rel(path)}: {n_lines} records read but {len(rows)} examples built"


@pytest.mark.parametrize("name", sorted(DOMAIN_FILES))
def test_reference_answers_validate_against_the_schema(name: str) -> None:
    cfg = _golden_cfg(name)
    schema = json.loads(Path(cfg.schema_path).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for row in _golden_rows(name):
        errors = [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                  for e in validator.iter_errors(row.answer)]
        assert not errors, f"{row.where}: reference answer fails {_rel(cfg.schema_path)}: {errors}"


CONTEXT_DOMAINS = sorted(name for name in DOMAIN_FILES if load_domain(DOMAIN_FILES[name]).context is not None)


@pytest.mark.parametrize("name", sorted(set(DOMAIN_FILES) - set(CONTEXT_DOMAINS)))
def test_golden_groups_do_not_collide_with_data_groups(name: str) -> None:
    _, data = _data_examples(name)
    data_groups = {e.group for e in data}
    seen: dict[str, str] = {}
    for row in _golden_rows(name):
        group = row.example.group
        assert group not in data_groups, f"{row.where}: group {group!r} is also a data.jsonl group"
        assert re.fullmatch(r"golden-\d{2,}", group), f"{row.where}: group {group!r} is not golden-NN"
        assert group not in seen, f"{row.where}: group {group!r} already used at {seen[group]}"
        seen[group] = row.where


@pytest.mark.parametrize("name", CONTEXT_DOMAINS)
def test_golden_entities_are_in_the_context_file_and_held_out_of_training(name: str) -> None:
    """A domain with context groups records by entity (its group key is the context key, e.g. brand): a golden record
    names an entity of the context file, and one the split keeps out of training, so the golden set measures entities
    the model never trained on too."""
    cfg = load_domain(DOMAIN_FILES[name])
    prepared = prepare(cfg)
    trained = {e.group for e in prepared.train}
    for row in _golden_rows(name):
        assert row.example.entity in prepared.context.entities, f"{row.where}: not in {_rel(cfg.context_path)}"
        assert row.example.group not in trained, f"{row.where}: {row.example.group!r} is a training entity"
    assert cfg.data.group_key == cfg.context.key


@pytest.mark.parametrize("name", sorted(DOMAIN_FILES))
def test_no_golden_input_leaks_from_the_data(name: str) -> None:
    """Same rule as governance.drop_cross_split_leaks: normalised user text, whatever the group."""
    data_cfg, data = _data_examples(name)
    data_inputs = {normalise_text(e.user_text): f"{_rel(data_cfg.data_path)}:{e.line}" for e in data}
    seen: dict[str, str] = {}
    for row in _golden_rows(name):
        key = normalise_text(row.example.user_text)
        assert key not in data_inputs, f"{row.where}: input also appears in {data_inputs.get(key)}"
        assert key not in seen, f"{row.where}: input repeats the golden record at {seen.get(key)}"
        seen[key] = row.where


@pytest.mark.parametrize("name", sorted(DOMAIN_FILES))
def test_golden_set_has_a_long_input(name: str) -> None:
    rows = _golden_rows(name)
    longest = max(rows, key=lambda r: len(r.text))
    assert len(longest.text) >= LONG_INPUT_CHARS, (
        f"{_rel(_golden_path(name))}: longest input is {len(longest.text)} characters ({longest.where}), "
        f"expected one of at least {LONG_INPUT_CHARS}")


@pytest.mark.parametrize("name", sorted(DOMAIN_FILES))
def test_golden_set_has_non_ascii_text_carried_into_the_answer(name: str) -> None:
    def non_ascii(text: str) -> bool:
        return any(ord(c) > 127 for c in text)

    rows = _golden_rows(name)
    hits = [r.where for r in rows if non_ascii(r.text) and non_ascii(json.dumps(r.answer, ensure_ascii=False))]
    assert hits, f"{_rel(_golden_path(name))}: no record has non-ASCII characters in both its input and its answer"


EVIDENCE_DOMAINS = sorted(
    name for name in DOMAIN_FILES
    if "evidence" in json.loads(Path(load_domain(DOMAIN_FILES[name]).schema_path).read_text(encoding="utf-8"))
    .get("properties", {}))


def test_story_summary_has_evidence() -> None:
    assert "story_summary" in EVIDENCE_DOMAINS


@pytest.mark.parametrize("name", EVIDENCE_DOMAINS)
def test_evidence_is_verbatim_from_the_input(name: str) -> None:
    for row in _golden_rows(name):
        for i, quote in enumerate(row.answer["evidence"]):
            assert quote in row.text, f"{row.where}: evidence[{i}] {quote!r} is not a verbatim substring of the input"


@pytest.mark.parametrize("name", sorted(DOMAIN_FILES))
def test_sidecar_lists_every_record(name: str) -> None:
    """golden.md: a table of record number -> what it tests, one row per golden record."""
    path = DOMAINS_DIR / name / "golden.md"
    assert path.is_file(), f"{_rel(path)}: missing (the edge-case table for {_rel(_golden_path(name))})"
    table = path.read_text(encoding="utf-8")
    numbers = [int(m) for m in re.findall(r"^\|\s*(\d+)\s*\|", table, flags=re.MULTILINE)]
    lines = [row.example.line for row in _golden_rows(name)]
    assert numbers == lines, f"{_rel(path)}: table rows {numbers} do not match the records at lines {lines}"
