"""Context injection: facts that change more often than a model is trained, kept in a context file and put into the
prompt at training, evaluation and predict time, so that adding an entity (a brand) is an edit of the file, not a
retrain.

A context file holds one record per entity, keyed by an entity field (``context.key``, e.g. ``brand``) that the
domain's records carry too: a JSON array of objects, a JSON object with one member that is such an array (e.g.
``{"brands": [...]}``), or JSONL (one object a line). A record is rendered through the domain's ``context.template``
(``prompt.render_context``) and appended to the system prompt (``prompt.with_system_prompt``). Every problem is a
``ContextError`` naming the file and the record (its line in JSONL, its position in a JSON array, and its key).

No torch or transformers here: ``lorafleet predict`` reads the published copy (or the file ``--context`` names)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import string
from dataclasses import dataclass, field
from typing import Any

from lorafleet.prompt import render_context

PUBLISHED_NAME = "context"  # the published copy in a model folder: context.json or context.jsonl


class ContextError(ValueError):
    """A context file or template that cannot be used, or an entity it lacks; the message names the file."""


def template_fields(template: str) -> list[str]:
    """The record fields a context template names (``{tone}``), in order, each once; ValueError for a template
    ``str.format`` cannot read or a field that is not a plain name (``{a.b}``, ``{a[0]}``, ``{a!r}``)."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"the template is not a str.format template: {exc} (write a literal brace as {{{{ or }}}})") \
            from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][\w-]*", name) or spec or conversion:
            raise ValueError(f"the template's field {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} is not a plain field name such as {{tone}}")
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("the template names no field of the entity's record (e.g. {tone})")
    return names


@dataclass(frozen=True, eq=False)
class Context:
    """A context file as read: every entity's record by its key, where each record is in the file, and the file's
    bytes and sha256 (what the published copy holds)."""

    source: str
    key: str
    template: str
    grounding_fields: tuple[str, ...]
    entities: dict[str, dict[str, Any]]
    where: dict[str, str]
    data: bytes = field(repr=False)
    sha256: str = ""
    suffix: str = ".json"
    _grounding: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=dict, repr=False, compare=False)

    def record(self, entity: Any) -> dict[str, Any]:
        """The entity's record; a ContextError naming the file when it has none."""
        if not isinstance(entity, str) or isinstance(entity, bool):
            raise ContextError(f"{self.key} must be a string naming an entity of the context file {self.source}, "
                               f"got {json.dumps(entity, ensure_ascii=False)}")
        if entity not in self.entities:
            raise ContextError(f"{self.key} {entity!r} is not in the context file {self.source} "
                               f"({len(self.entities)} entities: {_some(self.entities)})")
        return self.entities[entity]

    def render(self, entity: Any) -> str:
        """The entity's record through the template: what is appended to the system prompt."""
        return render_context(self.template, self.record(entity))

    def items(self, entity: str) -> list[str]:
        """The entity's grounding items: the strings of its ``grounding_fields``."""
        return _items(self.entities[entity], self.grounding_fields)

    def grounding_items(self, entity: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(the entity's own grounding items, every other entity's that are not also its own)."""
        if entity not in self._grounding:
            own = tuple(dict.fromkeys(self.items(entity)))
            others = tuple(dict.fromkeys(x for e in self.entities if e != entity for x in self.items(e) if x not in own))
            self._grounding[entity] = (own, others)
        return self._grounding[entity]

    @property
    def published_name(self) -> str:
        return PUBLISHED_NAME + self.suffix


def _items(record: dict[str, Any], fields: tuple[str, ...]) -> list[str]:
    items: list[str] = []
    for name in fields:
        value = record.get(name)
        items.extend([value] if isinstance(value, str) else value if isinstance(value, list) else [])
    return [x for x in items if isinstance(x, str) and x.strip()]


def _some(names, shown: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def read_context(path: str, key: str, template: str, grounding_fields: tuple[str, ...] | list[str] = ()) -> Context:
    """Read and check a context file (a local path or an fsspec URI): valid JSON or JSONL, one object per entity, each
    with a unique ``key`` and every field the template and ``grounding_fields`` name (a grounding field a string or a
    list of strings). ContextError names the file and, for a record, where it is and its key."""
    import fsspec

    try:
        with fsspec.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, ValueError) as exc:
        raise ContextError(f"{path}: cannot read the context file: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_context(data, path, key, template, tuple(grounding_fields))


def parse_context(data: bytes, source: str, key: str, template: str, grounding_fields: tuple[str, ...] = ()) -> Context:
    """``read_context`` of bytes already read (``source``: the file's name in messages)."""
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ContextError(f"context.template: {exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ContextError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    records, suffix = _records(text, source, key)
    entities: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    needed = [*fields, *(f for f in grounding_fields if f not in fields)]
    for line, position, record in records:
        at = f"{source}:{line}: {position}" if line else f"{source}: {position}"
        if not isinstance(record, dict):
            raise ContextError(f"{at}: expected a JSON object (an entity's record), got {type(record).__name__}")
        entity = record.get(key)
        if not isinstance(entity, str) or not entity:
            problem = "has no" if key not in record else "has a non-string or empty"
            raise ContextError(f"{at}: {problem} {key!r} field (context.key: the entity's name)")
        label = f"{at} ({key} {entity!r})"
        if entity in entities:
            raise ContextError(f"{label}: {key} {entity!r} is already the key of {where[entity]}")
        missing = [f for f in needed if f not in record]
        if missing:
            raise ContextError(f"{label}: no field {', '.join(map(repr, missing))}, which "
                               f"{'the template names' if set(missing) & set(fields) else 'context.grounding_fields names'}")
        for name in grounding_fields:
            value = record[name]
            if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(x, str) for x in value)):
                raise ContextError(f"{label}: grounding field {name!r} must be a string or a list of strings, "
                                   f"got {json.dumps(value, ensure_ascii=False)[:80]}")
        entities[entity], where[entity] = record, f"line {line}, {position}" if line else position
    if not entities:
        raise ContextError(f"{source}: no entity records")
    return Context(source=source, key=key, template=template, grounding_fields=tuple(grounding_fields),
                   entities=entities, where=where, data=data, sha256=hashlib.sha256(data).hexdigest(), suffix=suffix)


def _records(text: str, source: str, key: str) -> tuple[list[tuple[int | None, str, Any]], str]:
    """(line, position, record) triples and the file's kind: a JSON document (``.json``) or JSONL (``.jsonl``, one object a
    line; chosen when the file is not one JSON document but its first line is)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None or not _is_json(lines[first]):
            raise ContextError(f"{source}:{whole.lineno}:{whole.colno}: not valid JSON: {whole.msg}") from None
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append((number, f"{key} record", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ContextError(f"{source}:{number}:{exc.colno}: not valid JSON (a JSONL file: one JSON object a "
                                   f"line): {exc.msg}") from None
        return records, ".jsonl"
    if isinstance(document, list):
        lines = _element_lines(text, _skip(text, 0))
        return [(lines[i], f"record [{i}]", r) for i, r in enumerate(document)], ".json"
    if isinstance(document, dict):
        if key in document:  # one record: a JSONL file of one line, or a JSON file of one entity
            one_line = len(text.strip().splitlines()) == 1
            return [(1, f"{key} record", document)], ".jsonl" if one_line else ".json"
        if len(document) == 1 and isinstance(next(iter(document.values())), list):
            name, records = next(iter(document.items()))
            at = _skip(text, 0) + 1  # past "{"
            _, at = json.JSONDecoder().raw_decode(text, _skip(text, at))  # the member's name
            lines = _element_lines(text, _skip(text, _skip(text, at) + 1))  # past ":"
            return [(lines[i], f"{name}[{i}]", r) for i, r in enumerate(records)], ".json"
    shape = f"an object with keys {_some(document)}" if isinstance(document, dict) else type(document).__name__
    raise ContextError(f"{source}: expected entity records: a JSON array of objects, an object with one member that is "
                       f"such an array (e.g. {{\"brands\": [...]}}), or JSONL (one object a line); got {shape}")


def _skip(text: str, at: int) -> int:
    """The index of the first character at or after ``at`` that is not JSON whitespace."""
    while at < len(text) and text[at] in " \t\r\n":
        at += 1
    return at


def _element_lines(text: str, at: int) -> list[int]:
    """The line of each element of the JSON array that starts at ``text[at]`` (a document already known valid)."""
    decoder, lines = json.JSONDecoder(), []
    at = _skip(text, at + 1)  # past "["
    while at < len(text) and text[at] != "]":
        lines.append(text.count("\n", 0, at) + 1)
        _, end = decoder.raw_decode(text, at)
        at = _skip(text, end)
        at = _skip(text, at + 1) if at < len(text) and text[at] == "," else at
    return lines


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def _stamp(path: str) -> tuple[int, int] | None:
    """A local file's (mtime, size): a changed file is read again; a URI is read once per process."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=16)
def _load(path: str, key: str, template: str, grounding_fields: tuple[str, ...], stamp) -> Context:
    return read_context(path, key, template, grounding_fields)


def load(path: str, key: str, template: str, grounding_fields: tuple[str, ...] | list[str] = ()) -> Context:
    """``read_context``, read once while the file stays the same (a local file's mtime and size)."""
    return _load(path, key, template, tuple(grounding_fields), _stamp(path))
