"""Data policy checks. Each returns the records it keeps and a drop entry (line, reason) for the rest."""
from __future__ import annotations

import json
import re
import unicodedata
from typing import TYPE_CHECKING, Any

import jsonschema

if TYPE_CHECKING:
    from lorafleet.data import Example


def _drop(example: Example, reason: str) -> dict[str, Any]:
    return {"line": example.line, "group": example.group, "reason": reason}


def answer_problem(completion: str, validator) -> tuple[str, str] | None:
    """Why a reference answer is unusable: ``("not_json", msg)`` or ``("schema", msg)``; None when it is JSON
    that satisfies the schema (``validator``: a jsonschema validator)."""
    try:
        answer = json.loads(completion)
    except json.JSONDecodeError as exc:
        return "not_json", exc.msg
    error = next(iter(validator.iter_errors(answer)), None)
    return None if error is None else ("schema", error.message)


def drop_invalid_answers(examples: list[Example], schema: dict) -> tuple[list[Example], list[dict]]:
    """A training target that is not JSON satisfying the output schema would teach the wrong thing."""
    validator = jsonschema.Draft202012Validator(schema)
    kept, drops = [], []
    for e in examples:
        problem = answer_problem(e.completion, validator)
        if problem is None:
            kept.append(e)
        elif problem[0] == "not_json":
            drops.append(_drop(e, "answer is not valid JSON"))
        else:
            drops.append(_drop(e, f"answer fails the output schema: {problem[1]}"))
    return kept, drops


def dedup_exact(examples: list[Example]) -> tuple[list[Example], list[dict]]:
    """Identical (prompt, answer) rows: keep the first."""
    seen: dict[str, int] = {}
    kept, drops = [], []
    for e in examples:
        if e.id in seen:
            drops.append(_drop(e, f"exact duplicate of line {seen[e.id]}"))
        else:
            seen[e.id] = e.line
            kept.append(e)
    return kept, drops


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def drop_cross_split_leaks(splits: dict[str, list[Example]]) -> tuple[dict[str, list[Example]], list[dict]]:
    """A val/test prompt whose normalised user text also appears in train (under another group) is dropped:
    it would measure memory, not generalisation. Train is never touched."""
    seen = {normalise_text(e.user_text) for e in splits["train"]}
    out = {"train": list(splits["train"])}
    drops = []
    for name in ("val", "test"):
        out[name] = []
        for e in splits[name]:
            key = normalise_text(e.user_text)
            if key in seen:
                drops.append(_drop(e, f"{name} prompt also in an earlier split"))
            else:
                seen.add(key)
                out[name].append(e)
    return out, drops
