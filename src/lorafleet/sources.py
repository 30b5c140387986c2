"""Where a domain's records come from: one file or a glob of shards (read in sorted path order, so the records
come in the same order every time), on a local disk or at any fsspec URL (``file://``, ``s3://``), as JSONL, a
JSON array, Parquet, or CSV with a declared column mapping. Each record comes with its position (file and line;
row for Parquet and CSV), which every error names.

Nothing is read whole: JSONL and CSV are read line by line, a JSON array in 1 MiB chunks (one record decoded at a
time), Parquet in Arrow record batches, a row group at a time (as ``datasets`` streams Parquet, without its cache
or its casts). The records are plain dicts, as a JSONL line gives them; ``data.to_example`` turns each into an
example.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import fsspec

FORMATS = ("jsonl", "json", "parquet", "csv")
EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".pq": "parquet",
              ".csv": "csv"}
COMPRESSIONS = (".gz", ".bz2", ".xz")  # fsspec opens these by their extension (text formats only)
# The field of a data format that holds the turns; in a CSV its cell is JSON.
TURNS_FIELD = {"messages": "messages", "conversations": "conversations"}
# A CSV record of a messages or conversations domain may give one user input and its answer instead of the turns.
SINGLE_TURN = ("input", "output")
ALPACA_FIELDS = ("instruction", "output")  # input is optional (an empty input asks the instruction alone)
CHUNK = 1 << 20
PARQUET_BATCH = 1024


class DataError(ValueError):
    """A record cannot be used; the message names the file and line (row for Parquet and CSV)."""


@dataclass(frozen=True)
class Position:
    """Where a record is: its file, its first line in a text file (JSONL, JSON, CSV) and its row in a table (CSV,
    Parquet; 1 is the first record)."""

    file: str
    line: int | None
    row: int | None = None

    @property
    def number(self) -> int:
        """The line, or the row where there are no lines (Parquet): ``Example.line``."""
        return self.line if self.line is not None else self.row

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.file}: row {self.row}"
        return f"{self.file}:{self.line}" + (f" (row {self.row})" if self.row is not None else "")


# ---- what a path names -------------------------------------------------------------------------------------

def format_of(path: str, declared: str = "auto") -> str:
    """The format a path is read in: the declared one, or (auto) its extension's, a compression suffix aside;
    JSONL for any other extension (what lorafleet always read)."""
    if declared != "auto":
        return declared
    name = path.rsplit("/", 1)[-1].lower()
    for suffix in COMPRESSIONS:
        name = name.removesuffix(suffix)
    dot = name.rfind(".")
    return EXTENSIONS.get(name[dot:], "jsonl") if dot >= 0 else "jsonl"


def is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def expand(pattern: str) -> list[str]:
    """The files a path names: itself, or every file a glob matches, in sorted order. DataError when none."""
    fs, root = fsspec.core.url_to_fs(pattern)
    fs.invalidate_cache()  # list afresh: a cached listing (s3fs) names files as they were, maybe since replaced
    if is_glob(pattern):
        found = sorted(p for p, info in fs.glob(root, detail=True).items() if info["type"] == "file")
        if not found:
            raise DataError(f"{pattern}: no file matches")
        return [_as_given(fs, pattern, p) for p in found]
    if not fs.exists(root):
        raise DataError(f"{pattern}: no such file")
    if fs.isdir(root):
        raise DataError(f"{pattern}: is a folder; name its files with a glob, e.g. {pattern.rstrip('/')}/*.jsonl")
    return [pattern]


def _as_given(fs: fsspec.AbstractFileSystem, pattern: str, path: str) -> str:
    """A matched path written as the pattern was: a URL for a URL, a plain path for a plain path."""
    return fs.unstrip_protocol(path) if "://" in pattern else path


def csv_mapping_problems(columns: dict[str, str], data_format: str, group_key: str) -> list[str]:
    """What a CSV column mapping (record field -> column) lacks for the domain's data format; empty when it will
    do. Each problem names the field as a domain YAML does."""
    problems = []
    if group_key not in columns:
        problems.append(f"data.csv_columns: no column for the group key {group_key!r} (data.group_key)")
    if data_format == "alpaca":
        missing = [f for f in ALPACA_FIELDS if f not in columns]
        if missing:
            problems.append(f"data.csv_columns: alpaca records need {' and '.join(ALPACA_FIELDS)} (input is "
                            f"optional); no column for {', '.join(missing)}")
    else:
        turns = TURNS_FIELD[data_format]
        single = [f for f in SINGLE_TURN if f in columns]
        if turns in columns and single:
            problems.append(f"data.csv_columns: give either {turns} (a JSON cell of turns) or input and output "
                            f"(one question and its answer), not both")
        elif turns not in columns and len(single) != len(SINGLE_TURN):
            problems.append(f"data.csv_columns: {data_format} records need {turns} (a column of JSON-encoded turns) "
                            f"or input and output (a column for the question, one for the answer)")
    empty = sorted(field for field, column in columns.items() if not column)
    if empty:
        problems.append(f"data.csv_columns: {', '.join(empty)}: an empty column name")
    return problems


# ---- reading ----------------------------------------------------------------------------------------------

def read(pattern: str, source_format: str = "auto", csv_columns: dict[str, str] | None = None,
         data_format: str = "messages") -> Iterator[tuple[Position, dict[str, Any]]]:
    """(position, record) of every record a path or glob names, file after file in sorted order."""
    for path in expand(pattern):
        yield from read_file(path, format_of(path, source_format), csv_columns, data_format)


def read_file(path: str, source_format: str, csv_columns: dict[str, str] | None = None,
              data_format: str = "messages") -> Iterator[tuple[Position, dict[str, Any]]]:
    """(position, record) of every record of one file in ``source_format`` (not auto)."""
    if source_format == "jsonl":
        yield from _jsonl(path)
    elif source_format == "json":
        yield from _json_array(path)
    elif source_format == "parquet":
        yield from _parquet(path)
    elif source_format == "csv":
        if not csv_columns:
            raise DataError(f"{path}: a CSV file is read through a column mapping (data.csv_columns)")
        yield from _csv(path, csv_columns, data_format)
    else:
        raise ValueError(f"unknown source format {source_format!r}; known: {', '.join(FORMATS)}")


def _record(where: Position, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _jsonl(path: str) -> Iterator[tuple[Position, dict[str, Any]]]:
    """Bytes line by line, each decoded alone: a line that is not UTF-8 is named like one that is not JSON."""
    with fsspec.open(path, "rb", compression="infer") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not UTF-8 text (byte {exc.start + 1} of the line)") from exc
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON: {exc.msg} (column {exc.colno})") from exc
            where = Position(path, line_no)
            yield where, _record(where, record)


_SPACE = re.compile(r"[ \t\n\r]*")


class _ArrayReader:
    """A JSON array of records read in chunks, one record decoded at a time, with the line each starts on."""

    def __init__(self, path: str, handle: IO[str]):
        self.path, self.handle = path, handle
        self.buf, self.pos, self.line, self.eof = "", 0, 1, False  # line: the line self.pos is on
        self.decoder = json.JSONDecoder()

    def more(self) -> bool:
        if self.eof:
            return False
        chunk = self.handle.read(CHUNK)
        if not chunk:
            self.eof = True
            return False
        self.buf, self.pos = self.buf[self.pos:] + chunk, 0
        return True

    def advance(self, end: int) -> None:
        self.line += self.buf.count("\n", self.pos, end)
        self.pos = end

    def next_char(self) -> str:
        """The next character that is not white space ('' at the end), not consumed."""
        while True:
            self.advance(_SPACE.match(self.buf, self.pos).end())
            if self.pos < len(self.buf) or not self.more():
                return self.buf[self.pos:self.pos + 1]

    def fail(self, problem: str, at: int | None = None) -> DataError:
        line = self.line + (self.buf.count("\n", self.pos, at) if at is not None else 0)
        return DataError(f"{self.path}:{line}: {problem}")

    def value(self) -> Any:
        if len(self.buf) - self.pos < CHUNK:
            self.more()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # a record cut by the chunk's end fails at that end (or in a string still open there): read on;
                # any other failure is the file's
                cut = exc.msg.startswith("Unterminated string") or exc.pos >= len(self.buf) - 10
                if cut and self.more():
                    continue
                raise self.fail(f"not valid JSON: {exc.msg} (column {exc.colno})", exc.pos) from exc
            self.advance(end)
            return value

    def records(self) -> Iterator[tuple[Position, dict[str, Any]]]:
        if self.next_char() != "[":
            raise self.fail("expected a JSON array of records ([{...}, ...])")
        self.advance(self.pos + 1)
        if self.next_char() == "]":
            self.advance(self.pos + 1)
        else:
            while True:
                self.next_char()
                where = Position(self.path, self.line)
                yield where, _record(where, self.value())
                after = self.next_char()
                self.advance(self.pos + 1)
                if after == "]":
                    break
                if after != ",":
                    raise self.fail("expected ',' or ']' after a record" if after else "the array is not closed")
        if self.next_char():
            raise self.fail("more data after the array's closing ']'")


def _json_array(path: str) -> Iterator[tuple[Position, dict[str, Any]]]:
    with fsspec.open(path, "rt", encoding="utf-8-sig", compression="infer") as handle:
        try:
            yield from _ArrayReader(path, handle).records()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text") from exc


def _parquet(path: str) -> Iterator[tuple[Position, dict[str, Any]]]:
    """Rows in Arrow record batches; a column is a record field, a null cell a field the record lacks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fsspec.open(path, "rb") as handle:
        try:
            table = pq.ParquetFile(handle)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(f"{path}: not a Parquet file: {exc}") from exc
        row = 0
        for batch in table.iter_batches(batch_size=PARQUET_BATCH):
            for record in batch.to_pylist():
                row += 1
                yield Position(path, None, row), {k: v for k, v in record.items() if v is not None}


def _csv(path: str, columns: dict[str, str], data_format: str) -> Iterator[tuple[Position, dict[str, Any]]]:
    """Rows through the mapping (record field -> column). The format's turns field (messages, conversations) is a
    JSON cell; ``input`` and ``output`` instead make one user turn and the assistant's answer; any other field is
    the cell's text."""
    csv.field_size_limit(2**31 - 1)  # a long document in one cell is a record, not an error
    with fsspec.open(path, "rt", encoding="utf-8-sig", newline="", compression="infer") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty; a CSV source starts with a header row naming its columns")
            index = _header_index(path, header, columns)
            row, line = 0, reader.line_num + 1
            for cells in reader:
                where, line = Position(path, line, row + 1), reader.line_num + 1
                if not cells:  # a blank line
                    continue
                row += 1
                if len(cells) != len(header):
                    raise DataError(f"{where}: {len(cells)} fields, the header has {len(header)}")
                yield where, _csv_record(where, cells, index, data_format)
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{reader.line_num + 1}: not UTF-8 text") from exc


def _header_index(path: str, header: list[str], columns: dict[str, str]) -> dict[str, int]:
    """record field -> the index of its column; DataError naming the mapping's fields whose column is missing."""
    missing = [f"{field} -> {column!r}" for field, column in columns.items() if column not in header]
    if missing:
        raise DataError(f"{path}:1: data.csv_columns: no such column for {', '.join(missing)} "
                        f"(the header has {', '.join(map(repr, header))})")
    repeated = sorted({c for c in columns.values() if header.count(c) > 1})
    if repeated:
        raise DataError(f"{path}:1: the header names column(s) {', '.join(map(repr, repeated))} more than once")
    return {field: header.index(column) for field, column in columns.items()}


def _csv_record(where: Position, cells: list[str], index: dict[str, int], data_format: str) -> dict[str, Any]:
    record: dict[str, Any] = {field: cells[i] for field, i in index.items()}
    turns = TURNS_FIELD.get(data_format)
    if turns is None:
        return record
    if turns in record:
        try:
            record[turns] = json.loads(record[turns])
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: column for {turns}: not valid JSON: {exc.msg} (column {exc.colno})") from exc
    elif all(f in record for f in SINGLE_TURN):
        question, answer = record.pop("input"), record.pop("output")
        record[turns] = ([{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                         if data_format == "messages" else
                         [{"from": "human", "value": question}, {"from": "gpt", "value": answer}])
    return record
