"""Data sources: every bundled domain's data converted to each format (JSON array, Parquet, CSV with a column
mapping, a glob of JSONL shards, compressed JSONL, file://) yields the JSONL's dataset version; a bad input is named
by file and line (row for Parquet and CSV)."""
from __future__ import annotations

import csv
import gzip
import json
import re
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lorafleet import sources
from lorafleet.config import ConfigError, DataConfig, load_domain
from lorafleet.data import DataError, load_examples, prepare, read_records
from tests.conftest import DOMAINS_DIR, rewrite_yaml

BUNDLED = ["contracts", "medical", "financial", "legal", "story_summary"]


def _records(name: str) -> list[dict]:
    lines = (DOMAINS_DIR / name / "data.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _turns(record: dict, data_format: str) -> tuple[str, str]:
    """(question, answer) of a single-turn record."""
    if data_format == "messages":
        return record["messages"][0]["content"], record["messages"][1]["content"]
    return record["conversations"][0]["value"], record["conversations"][1]["value"]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _csv_single_turn(folder: Path, cfg) -> tuple[str, dict]:
    """Columns named unlike the record's fields: question/answer (alpaca: task/context/answer), plus the group."""
    records, key = _records(cfg.name), cfg.data.group_key
    if cfg.data.format == "alpaca":
        _write_csv(folder / "data.csv", ["grp", "task", "context", "answer"],
                   [[r[key], r["instruction"], r["input"], r["output"]] for r in records])
        return "data.csv", {key: "grp", "instruction": "task", "input": "context", "output": "answer"}
    _write_csv(folder / "data.csv", ["answer", "grp", "question"],
               [[_turns(r, cfg.data.format)[1], r[key], _turns(r, cfg.data.format)[0]] for r in records])
    return "data.csv", {key: "grp", "input": "question", "output": "answer"}


def _csv_json_turns(folder: Path, cfg) -> tuple[str, dict]:
    """The turns as a JSON cell (messages and conversations domains; alpaca has no turns)."""
    records, key, turns = _records(cfg.name), cfg.data.group_key, cfg.data.format
    if turns == "alpaca":
        return _csv_single_turn(folder, cfg)
    _write_csv(folder / "turns.csv", ["group", "turns"],
               [[r[key], json.dumps(r[turns], ensure_ascii=False)] for r in records])
    return "turns.csv", {key: "group", turns: "turns"}


def _json_array(folder: Path, cfg) -> tuple[str, None]:
    (folder / "data.json").write_text(json.dumps(_records(cfg.name), ensure_ascii=False, indent=2), encoding="utf-8")
    return "data.json", None


def _parquet(folder: Path, cfg) -> tuple[str, None]:
    pq.write_table(pa.Table.from_pylist(_records(cfg.name)), folder / "data.parquet", row_group_size=50)
    return "data.parquet", None


def _shards(folder: Path, cfg) -> tuple[str, None]:
    """Four JSONL shards whose names sort in the records' order only by their full names (part-10 after part-09)."""
    lines = (DOMAINS_DIR / cfg.name / "data.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (folder / "shards").mkdir()
    for i, name in enumerate(["part-08", "part-09", "part-10", "part-11"]):
        (folder / "shards" / f"{name}.jsonl").write_text("".join(lines[i::4]), encoding="utf-8")
    return "shards/part-*.jsonl", None


def _gzip(folder: Path, cfg) -> tuple[str, None]:
    (folder / "data.jsonl.gz").write_bytes(gzip.compress((DOMAINS_DIR / cfg.name / "data.jsonl").read_bytes()))
    return "data.jsonl.gz", None


def _file_url(folder: Path, cfg) -> tuple[str, None]:
    _shards(folder, cfg)
    return f"file://{folder / 'shards'}/part-*.jsonl", None


CONVERSIONS = {"json": _json_array, "parquet": _parquet, "csv": _csv_single_turn, "csv_json_turns": _csv_json_turns,
               "shards": _shards, "jsonl_gz": _gzip, "file_url": _file_url}


def _converted(domain_copy, name: str, conversion: str) -> Path:
    yaml_path = domain_copy(name)
    folder = yaml_path.parent / name
    path, columns = CONVERSIONS[conversion](folder, load_domain(yaml_path))
    (folder / "data.jsonl").unlink()  # nothing reads the JSONL behind the converted copy's back

    def edit(raw):
        raw["data"]["path"] = path if "://" in path else f"{name}/{path}"
        if columns:
            raw["data"]["csv_columns"] = columns

    return rewrite_yaml(yaml_path, edit)


@pytest.mark.parametrize("conversion", sorted(CONVERSIONS))
@pytest.mark.parametrize("name", BUNDLED)
def test_every_format_yields_the_jsonl_dataset_version(domain_copy, name, conversion):
    expected = prepare(load_domain(DOMAINS_DIR / f"{name}.yaml")).manifest
    got = prepare(load_domain(_converted(domain_copy, name, conversion))).manifest
    assert got.dataset_version == expected.dataset_version
    assert (got.records_read, got.counts, got.groups) == (expected.records_read, expected.counts, expected.groups)
    def reasons(manifest):  # the same drops, for the same reasons; the lines they name are the converted file's
        return sorted((d.reason, re.sub(r"line \d+", "line N", d.detail)) for d in manifest.drops)

    assert reasons(got) == reasons(expected) and len(got.drops) == 3


def test_a_json_array_is_read_in_chunks(domain_copy, monkeypatch):
    """Records cut anywhere by the chunks' ends (7 characters: inside strings, escapes, numbers, literals)."""
    monkeypatch.setattr(sources, "CHUNK", 7)
    expected = prepare(load_domain(DOMAINS_DIR / "story_summary.yaml")).manifest.dataset_version
    path = _converted(domain_copy, "story_summary", "json")
    assert prepare(load_domain(path)).manifest.dataset_version == expected
    records = [{"g": "1", "x": [True, False, None, -1.5e3, "\u00e9\\\"\n"]}] * 3
    (path.parent / "odd.json").write_text(f"\ufeff  [\n{json.dumps(records[0])},\n\n {json.dumps(records[1])} ,"
                                          f"{json.dumps(records[2])}\n]\n")
    assert [(n, r) for n, r in read_records(str(path.parent / "odd.json"))] == [(2, records[0]), (4, records[1]),
                                                                                 (4, records[2])]


def test_records_keep_their_positions(domain_copy):
    cfg = load_domain(_converted(domain_copy, "contracts", "shards"))
    examples, n_read = load_examples(cfg)
    assert n_read == 363 and examples[0].line == 1
    # part-08 holds records 1, 5, 9...; then part-09 (2, 6, ...): its first record is the bundled file's second
    assert examples[91].line == 1 and examples[91].completion == load_examples(
        load_domain(DOMAINS_DIR / "contracts.yaml"))[0][1].completion
    cfg = load_domain(_converted(domain_copy, "legal", "parquet"))
    assert [e.line for e in load_examples(cfg)[0][:3]] == [1, 2, 3]  # rows
    cfg = load_domain(_converted(domain_copy, "medical", "csv"))
    assert [e.line for e in load_examples(cfg)[0][:3]] == [2, 3, 4]  # lines: the header is line 1


def test_the_source_format_literal_lists_every_reader():
    assert set(typing.get_args(DataConfig.model_fields["source_format"].annotation)) == {"auto", *sources.FORMATS}


@pytest.mark.parametrize("path,expected", [("a/data.jsonl", "jsonl"), ("x.NDJSON", "jsonl"), ("s3://b/x.json", "json"),
                                           ("p/*.parquet", "parquet"), ("x.pq", "parquet"), ("x.csv.gz", "csv"),
                                           ("x.json.bz2", "json"), ("data.txt", "jsonl"), ("shards/*", "jsonl")])
def test_auto_reads_the_extension(path, expected):
    assert sources.format_of(path) == expected
    assert sources.format_of(path, "csv") == "csv"


# ---- bad inputs ---------------------------------------------------------------------------------------------

def test_a_glob_that_matches_nothing_stops_at_load(domain_copy):
    path = rewrite_yaml(domain_copy("contracts"), lambda raw: raw["data"].update(path="contracts/shards/*.jsonl"))
    with pytest.raises(ConfigError, match=r"contracts.yaml: data.path: .*contracts/shards/\*.jsonl: no file matches"):
        load_domain(path)
    path = rewrite_yaml(path, lambda raw: raw["data"].update(path="contracts"))
    with pytest.raises(ConfigError, match=r"data.path: .*contracts: is a folder; name its files with a glob"):
        load_domain(path)
    path = rewrite_yaml(path, lambda raw: raw["data"].update(path=f"file://{path.parent}/nope/*.jsonl"))
    with pytest.raises(ConfigError, match=r"data.path: file://.*/nope/\*.jsonl: no file matches"):
        load_domain(path)


def test_a_bad_line_names_its_shard_and_line(domain_copy):
    path = _converted(domain_copy, "contracts", "shards")
    shard = path.parent / "contracts" / "shards" / "part-10.jsonl"
    lines = shard.read_text().splitlines()
    lines[4] = "{broken"
    shard.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"contracts/shards/part-10.jsonl:5: not valid JSON"):
        prepare(load_domain(path))
    shard.write_bytes(b"\n".join(line.encode() for line in lines[:4]) + b"\n\"caf\xe9\"\n")
    with pytest.raises(DataError, match=r"part-10.jsonl:5: not UTF-8 text"):
        prepare(load_domain(path))


@pytest.mark.parametrize("text,line,problem", [
    ('[\n{"a": 1},\n{"a": 2}\n{"a": 3}]', 4, "expected ',' or ']' after a record"),
    ('[\n{"a": 1},\n\n{"a": 2,}]', 4, "not valid JSON: Expecting property name"),
    ('[\n{"a": 1},\n 7]', 3, "expected a JSON object, got int"),
    ('{"a": 1}', 1, r"expected a JSON array of records"),
    ("", 1, r"expected a JSON array of records"),
    ('[{"a": 1}]\n\n[]', 3, r"more data after the array's closing"),
    ('[{"a": 1},\n', 2, "not valid JSON: Expecting value"),
    ('[{"a": "x\n', 1, "not valid JSON: Invalid control character"),
])
def test_a_bad_json_array_names_file_and_line(tmp_path, text, line, problem):
    (tmp_path / "d.json").write_text(text)
    with pytest.raises(DataError, match=rf"d\.json:{line}: {problem}"):
        list(sources.read(str(tmp_path / "d.json")))


def _csv_domain(domain_copy, header: list[str], rows: list[list[str]], columns: dict) -> Path:
    path = domain_copy("story_summary")
    _write_csv(path.parent / "story_summary" / "data.csv", header, rows)
    return rewrite_yaml(path, lambda raw: raw["data"].update(path="story_summary/data.csv", csv_columns=columns))


ALPACA = {"source_video_id": "vid", "instruction": "task", "input": "context", "output": "answer"}


def test_a_csv_column_the_mapping_names_must_be_in_the_header(domain_copy):
    path = _csv_domain(domain_copy, ["vid", "task", "context", "reply"], [["v1", "t", "c", "{}"]], ALPACA)
    with pytest.raises(DataError, match=r"story_summary/data.csv:1: data.csv_columns: no such column for "
                                        r"output -> 'answer' \(the header has 'vid', 'task', 'context', 'reply'\)"):
        prepare(load_domain(path))


def test_a_bad_csv_row_names_file_line_and_row(domain_copy):
    good = [["v1", "task", "one\ntwo", "{}"]]  # a cell over two lines: the rows after it start a line later
    path = _csv_domain(domain_copy, ["vid", "task", "context", "answer"], good + [["v2", "task"]], ALPACA)
    with pytest.raises(DataError, match=r"story_summary/data.csv:4 \(row 2\): 2 fields, the header has 4"):
        prepare(load_domain(path))
    path = _csv_domain(domain_copy, ["vid", "task", "context", "answer"], good * 2, {**ALPACA, "input": "task"})
    rewrite_yaml(path, lambda raw: raw["data"].update(group_key="video"))
    with pytest.raises(ConfigError, match=r"data.csv_columns: no column for the group key 'video'"):
        load_domain(path)


def test_a_csv_turns_cell_that_is_not_json_names_its_row(domain_copy):
    path = domain_copy("medical")
    rows = [["p1", json.dumps([{"from": "human", "value": "q"}, {"from": "gpt", "value": "{}"}])], ["p2", "[{oops"]]
    _write_csv(path.parent / "medical" / "t.csv", ["patient", "turns"], rows)
    rewrite_yaml(path, lambda raw: raw["data"].update(path="medical/t.csv",
                                                     csv_columns={"patient_id": "patient", "conversations": "turns"}))
    with pytest.raises(DataError, match=r"medical/t.csv:3 \(row 2\): column for conversations: not valid JSON"):
        load_examples(load_domain(path))


def test_a_parquet_row_missing_a_field_names_its_row(domain_copy):
    path = _converted(domain_copy, "contracts", "parquet")
    records = _records("contracts")
    records[6]["contract_id"] = None  # a null cell is a field the record lacks
    pq.write_table(pa.Table.from_pylist(records), path.parent / "contracts" / "data.parquet", row_group_size=4)
    with pytest.raises(DataError, match=r"contracts/data.parquet: row 7: missing field 'contract_id'"):
        prepare(load_domain(path))
    (path.parent / "contracts" / "data.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"contracts/data.parquet: not a Parquet file"):
        prepare(load_domain(path))


@pytest.mark.parametrize("data,problem", [
    ({"path": "x.csv"}, r"data.csv_columns: data.path names a CSV source, which is read through a column mapping"),
    ({"csv_columns": {"contract_id": "c"}}, r"data.csv_columns: read only from a CSV source, but data.path is read as "
                                           r"jsonl \(data.source_format: auto\)"),
    ({"source_format": "csv", "csv_columns": {"contract_id": "c", "input": "q"}},
     r"data.csv_columns: messages records need messages \(a column of JSON-encoded turns\) or input and output"),
    ({"source_format": "csv", "csv_columns": {"contract_id": "c", "input": "q", "output": "a", "messages": "m"}},
     r"give either messages \(a JSON cell of turns\) or input and output"),
    ({"source_format": "csv", "csv_columns": {"contract_id": "", "messages": "m"}},
     r"data.csv_columns: contract_id: an empty column name"),
    ({"source_format": "tsv"}, r"data.source_format: Input should be 'auto', 'jsonl', 'json', 'parquet' or 'csv'"),
])
def test_source_settings_are_checked_at_load(domain_copy, data, problem):
    path = rewrite_yaml(domain_copy("contracts"), lambda raw: raw["data"].update(data))
    if data.get("path"):
        (path.parent / data["path"]).write_text("")
    with pytest.raises(ConfigError, match=rf"contracts.yaml: .*{problem}"):
        load_domain(path)


def test_a_csv_golden_set_is_read_through_the_mapping(domain_copy):
    path = _converted(domain_copy, "medical", "csv")
    golden = [json.loads(line) for line in (path.parent / "medical" / "golden.jsonl").read_text().splitlines()]
    _write_csv(path.parent / "medical" / "golden.csv", ["answer", "grp", "question"],
               [[_turns(r, "conversations")[1], r["patient_id"], _turns(r, "conversations")[0]] for r in golden])
    rewrite_yaml(path, lambda raw: raw["eval"].update(golden="medical/golden.csv"))
    def rows(golden):
        return [(e.id, e.group, e.prompt, e.completion) for e in golden]

    assert rows(prepare(load_domain(path)).golden) == rows(prepare(load_domain(DOMAINS_DIR / "medical.yaml")).golden)
