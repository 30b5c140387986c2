"""``lorafleet data diff``: two versions of a domain's prepared data (what two runs published under ``data/``)
compared record by record.

A record's id is the hash of its prompt and answer (``data.to_example``), so the same id in both versions is the
same question and answer; it has changed when its split or group did. A record whose answer was edited has a new
id: a record of each version asked the same prompt is paired as one record whose answer changed. Whatever is left
was added or removed. Pure: the caller reads the files (``publish.read_published_data``).
"""
from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")


class DiffError(ValueError):
    """A published data file is not what ``data.write_prepared`` writes; the message names file and line."""


@dataclass(frozen=True)
class Row:
    split: str
    id: str
    group: str
    prompt: list[dict[str, str]]
    completion: str

    @property
    def prompt_key(self) -> str:
        return json.dumps(self.prompt, ensure_ascii=False, sort_keys=True)

    @property
    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.prompt if m["role"] == "user")


@dataclass(frozen=True)
class Change:
    before: Row
    after: Row

    @property
    def what(self) -> list[str]:
        """What changed, e.g. ``["answer", "split train -> test"]``."""
        b, a = self.before, self.after
        return [*(["answer"] if b.completion != a.completion else []),
                *([f"split {b.split} -> {a.split}"] if b.split != a.split else []),
                *([f"group {b.group} -> {a.group}"] if b.group != a.group else [])]


@dataclass
class DatasetDiff:
    added: list[Row] = field(default_factory=list)
    removed: list[Row] = field(default_factory=list)
    changed: list[Change] = field(default_factory=list)
    unchanged: int = 0

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def rows(files: dict[str, bytes], where: str = "") -> list[Row]:
    """The rows of a prepared data folder's split files (name -> bytes, as ``publish.read_published_data`` gives)."""
    out = []
    for split in SPLITS:
        name = f"{split}.jsonl"
        if name not in files:
            raise DiffError(f"{where}{name}: missing")
        for line_no, line in enumerate(files[name].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Row(split, row["id"], row["group"], row["prompt"], row["completion"]))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DiffError(f"{where}{name}:{line_no}: not a prepared record ({exc})") from exc
    return out


def _pair(before: list[Row], after: list[Row], key: Callable[[Row], Hashable]):
    """(pairs of rows with equal keys, each side's rows left), every list in its input order."""
    waiting: dict[Hashable, list[int]] = defaultdict(list)
    for i, row in enumerate(after):
        waiting[key(row)].append(i)
    pairs, left, taken = [], [], set()
    for row in before:
        if waiting.get(key(row)):
            i = waiting[key(row)].pop(0)
            pairs.append((row, after[i]))
            taken.add(i)
        else:
            left.append(row)
    return pairs, left, [row for i, row in enumerate(after) if i not in taken]


def compare(before: list[Row], after: list[Row]) -> DatasetDiff:
    """Records added, removed and changed from ``before`` to ``after``: paired by id, then by prompt."""
    same_id, before, after = _pair(before, after, lambda r: r.id)
    same_prompt, removed, added = _pair(before, after, lambda r: r.prompt_key)
    changed = [Change(b, a) for b, a in [*same_id, *same_prompt] if Change(b, a).what]
    order = {s: i for i, s in enumerate(SPLITS)}
    return DatasetDiff(added=sorted(added, key=lambda r: (order[r.split], r.id)),
                       removed=sorted(removed, key=lambda r: (order[r.split], r.id)),
                       changed=sorted(changed, key=lambda c: (order[c.after.split], c.after.id)),
                       unchanged=len(same_id) + len(same_prompt) - len(changed))


def _snippet(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return json.dumps(flat if len(flat) <= width else flat[:width - 1] + "…", ensure_ascii=False)


def _counts(manifest: dict[str, Any]) -> str:
    counts = manifest.get("counts", {})
    return "/".join(str(counts.get(s, "?")) for s in SPLITS)


def render(diff: DatasetDiff, label_a: str, label_b: str, manifest_a: dict[str, Any], manifest_b: dict[str, Any],
           limit: int = 10) -> str:
    """The counts, then up to ``limit`` records of each kind."""
    lines = [f"{label_a} -> {label_b}",
             f"dataset {manifest_a.get('dataset_version', '?')[:12]} (train/val/test {_counts(manifest_a)}) -> "
             f"{manifest_b.get('dataset_version', '?')[:12]} (train/val/test {_counts(manifest_b)})",
             f"{len(diff.added)} added, {len(diff.removed)} removed, {len(diff.changed)} changed, "
             f"{diff.unchanged} unchanged"]
    sections = [("added", "+", [(r.id, r.split, f"group {r.group}", r.user_text) for r in diff.added]),
                ("removed", "-", [(r.id, r.split, f"group {r.group}", r.user_text) for r in diff.removed]),
                ("changed", "~", [(c.before.id if c.before.id == c.after.id else f"{c.before.id} -> {c.after.id}",
                                   c.after.split, ", ".join(c.what), c.after.user_text) for c in diff.changed])]
    for title, mark, items in sections:
        if not items:
            continue
        lines.append(f"{title}:")
        lines += [f"  {mark} {ident}  {split}  {what}  {_snippet(text)}" for ident, split, what, text in items[:limit]]
        if len(items) > limit:
            lines.append(f"  ... and {len(items) - limit} more")
    return "\n".join(lines)
