"""Data policy checks. Each returns the records it keeps and a ``Drop`` (record, reason code, detail) for the rest;
``data.prepare`` runs them in order. Reason codes (``REASONS``) are what the manifest counts and drops.jsonl
records:

before the split   not_json, schema (the answer), quality_label, ungrounded (data.quality), exact_duplicate,
                   too_short, too_long, truncated (token lengths, data.quality)
after the split    cross_split_leak (a training record whose user text is an evaluation record's, exactly or
                   near; a test record whose user text is a validation record's), near_duplicate (a later near
                   copy within a split)

Near-duplicates: the user text's shingles (NFKC, casefolded; words or characters) are MinHashed (datasketch) and
looked up in an LSH index of the records kept so far; each candidate is confirmed by the exact Jaccard similarity
of the two shingle sets, recomputed from the two texts, so no shingle set is held beyond its record's turn.
"""
from __future__ import annotations

import json
import re
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema

from lorafleet.config import NearDuplicateConfig, QualityConfig
from lorafleet.metrics import grounding

if TYPE_CHECKING:
    from lorafleet.data import Example

# reason code -> what it means (the report's table says it beside each count)
REASONS = {
    "not_json": "the answer is not JSON",
    "schema": "the answer breaks the output schema",
    "quality_label": "its metadata's quality label is not one data.quality.keep_labels keeps",
    "ungrounded": "fewer of its answer's evidence items are in its input than data.quality.min_grounding",
    "exact_duplicate": "the same prompt and answer as an earlier record",
    "too_short": "fewer tokens than data.quality.prompt_tokens or answer_tokens allow",
    "too_long": "more tokens than data.quality.prompt_tokens or answer_tokens allow",
    "truncated": "prompt and answer exceed train.max_seq_length (data.quality.drop_truncated)",
    "cross_split_leak": "a training record whose user text is (or nearly is) an evaluation record's, or a test "
                        "record whose user text is a validation record's",
    "near_duplicate": "a near-duplicate of an earlier record of its split (data.near_duplicates)",
}
EVAL_SPLITS = ("val", "test", "golden")  # the records models are judged on: never dropped for a training record


@dataclass(frozen=True)
class Drop:
    """A record left out, and why: ``reason`` is a ``REASONS`` code, ``detail`` says it for this record."""

    id: str
    line: int
    group: str
    reason: str
    detail: str
    split: str | None = None  # where it was when dropped; None before the split


@dataclass(frozen=True)
class RecordRef:
    """A record named in a near-duplicate pair: where it is (``split``: train/val/test/golden) and its source line."""

    id: str
    line: int
    group: str
    split: str


@dataclass(frozen=True)
class NearPair:
    """Two near-duplicate records of different groups (possible leakage the group key does not capture): ``record``
    met ``earlier`` in that order, and ``action`` says what came of it."""

    record: RecordRef
    earlier: RecordRef
    jaccard: float
    action: str


@dataclass(frozen=True)
class CrossDomainMatch:
    """A training record of this domain near an evaluation record of ``domain`` (reported, not dropped)."""

    record: RecordRef
    domain: str
    other: RecordRef
    jaccard: float


def _drop(example: Example, reason: str, detail: str, split: str | None = None) -> Drop:
    return Drop(id=example.id, line=example.line, group=example.group, reason=reason, detail=detail, split=split)


def _ref(example: Example, split: str) -> RecordRef:
    return RecordRef(id=example.id, line=example.line, group=example.group, split=split)


# ---- the answer ----------------------------------------------------------------------------------------------

def answer_problem(completion: str, validator) -> tuple[str, str] | None:
    """Why a reference answer is unusable: ``("not_json", msg)`` or ``("schema", msg)``; None when it is JSON
    that satisfies the schema (``validator``: a jsonschema validator)."""
    try:
        answer = json.loads(completion)
    except json.JSONDecodeError as exc:
        return "not_json", exc.msg
    error = next(iter(validator.iter_errors(answer)), None)
    return None if error is None else ("schema", error.message)


def drop_invalid_answers(examples: list[Example], schema: dict) -> tuple[list[Example], list[Drop]]:
    """A training target that is not JSON satisfying the output schema would teach the wrong thing."""
    validator = jsonschema.Draft202012Validator(schema)
    kept, drops = [], []
    for e in examples:
        problem = answer_problem(e.completion, validator)
        if problem is None:
            kept.append(e)
        elif problem[0] == "not_json":
            drops.append(_drop(e, "not_json", f"answer is not valid JSON: {problem[1]}"))
        else:
            drops.append(_drop(e, "schema", f"answer fails the output schema: {problem[1]}"))
    return kept, drops


# ---- the domain's quality filters ----------------------------------------------------------------------------

def _keep_if(examples: list[Example], problem: Callable[[Example], tuple[str, str] | None]) -> tuple[list[Example], list[Drop]]:
    kept, drops = [], []
    for e in examples:
        found = problem(e)
        if found is None:
            kept.append(e)
        else:
            drops.append(_drop(e, *found))
    return kept, drops


def drop_by_label(examples: list[Example], quality: QualityConfig) -> tuple[list[Example], list[Drop]]:
    """Human QA labels: keep a record whose metadata's label_field is one of keep_labels."""
    if quality.keep_labels is None:
        return examples, []
    keep, field = set(quality.keep_labels), quality.label_field

    def problem(e: Example) -> tuple[str, str] | None:
        if field not in e.metadata:
            return "quality_label", f"no {field} in its metadata"
        label = e.metadata[field]
        return None if label in keep else ("quality_label", f"{field} {label!r} is not kept")
    return _keep_if(examples, problem)


def drop_ungrounded(examples: list[Example], quality: QualityConfig,
                    evidence_fields: Sequence[str]) -> tuple[list[Example], list[Drop]]:
    """An answer quoting evidence its input does not hold teaches the model to make quotes up (metrics.grounding:
    each item verbatim in the input, whitespace and Unicode form normalised)."""
    if quality.min_grounding is None:
        return examples, []

    def problem(e: Example) -> tuple[str, str] | None:
        answer = json.loads(e.completion)  # schema-checked already
        share = grounding(answer if isinstance(answer, dict) else {}, e.user_text, evidence_fields)
        if share is None or share >= quality.min_grounding:
            return None
        return "ungrounded", f"{share:.0%} of its evidence items are in its input (min {quality.min_grounding:g})"
    return _keep_if(examples, problem)


@dataclass(frozen=True)
class TokenLengths:
    """A record's prompt (system and user turns in the chat template, the assistant's turn opened) and answer (with
    its end token) in the base model's tokens."""

    prompt: int
    answer: int

    @property
    def total(self) -> int:
        return self.prompt + self.answer


def measure_tokens(examples: list[Example], tokenizer, batch_size: int = 1024) -> dict[str, TokenLengths]:
    """Token lengths by record id, in batches (the fast tokenizer encodes a batch on its own threads)."""
    from lorafleet.prompt import prompt_text

    lengths: dict[str, TokenLengths] = {}
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        prompts = tokenizer([prompt_text(tokenizer, e.prompt) for e in batch], add_special_tokens=False)["input_ids"]
        answers = tokenizer([e.completion for e in batch], add_special_tokens=False)["input_ids"]
        for e, p, a in zip(batch, prompts, answers):
            lengths[e.id] = TokenLengths(len(p), len(a) + 1)  # + the end token, as training appends it
    return lengths


def drop_by_length(examples: list[Example], lengths: dict[str, TokenLengths], quality: QualityConfig,
                   max_seq_length: int) -> tuple[list[Example], list[Drop]]:
    """Prompt and answer token bounds (too_short, too_long); prompt and answer over train.max_seq_length (truncated)
    when drop_truncated."""
    def problem(e: Example) -> tuple[str, str] | None:
        n = lengths[e.id]
        for part, bounds, count in (("prompt", quality.prompt_tokens, n.prompt), ("answer", quality.answer_tokens, n.answer)):
            if bounds.min is not None and count < bounds.min:
                return "too_short", f"{part} of {count} tokens, under data.quality.{part}_tokens.min ({bounds.min})"
            if bounds.max is not None and count > bounds.max:
                return "too_long", f"{part} of {count} tokens, over data.quality.{part}_tokens.max ({bounds.max})"
        if quality.drop_truncated and n.total > max_seq_length:
            return "truncated", (f"prompt {n.prompt} + answer {n.answer} tokens, over train.max_seq_length "
                                 f"({max_seq_length})")
        return None
    return _keep_if(examples, problem)


# ---- duplicates and leakage ----------------------------------------------------------------------------------

def dedup_exact(examples: list[Example]) -> tuple[list[Example], list[Drop]]:
    """Identical (prompt, answer) rows: keep the first."""
    seen: dict[str, int] = {}
    kept, drops = [], []
    for e in examples:
        if e.id in seen:
            drops.append(_drop(e, "exact_duplicate", f"exact duplicate of line {seen[e.id]}"))
        else:
            seen[e.id] = e.line
            kept.append(e)
    return kept, drops


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def drop_cross_split_leaks(splits: dict[str, list[Example]],
                           golden: Sequence[Example] = ()) -> tuple[dict[str, list[Example]], list[Drop]]:
    """A training record whose normalised user text is also an evaluation record's (validation, test or golden,
    under another group) is dropped from train: the evaluation would measure memory, not generalisation. A test
    record whose user text is a validation record's is dropped from test (one prompt judged twice)."""
    evaluation: dict[str, tuple[str, Example]] = {}
    for name, examples in (("golden", golden), ("val", splits["val"])):
        for e in examples:
            evaluation.setdefault(normalise_text(e.user_text), (name, e))
    out: dict[str, list[Example]] = {"val": list(splits["val"]), "test": []}
    drops = []
    for e in splits["test"]:
        key = normalise_text(e.user_text)
        if key in evaluation and evaluation[key][0] == "val":
            drops.append(_drop(e, "cross_split_leak", f"test prompt also in val (line {evaluation[key][1].line})", "test"))
        else:
            evaluation.setdefault(key, ("test", e))
            out["test"].append(e)
    out["train"] = []
    for e in splits["train"]:
        where = evaluation.get(normalise_text(e.user_text))
        if where is None:
            out["train"].append(e)
        else:
            name, other = where
            drops.append(_drop(e, "cross_split_leak", f"train prompt also in {name} (line {other.line}, group "
                                                      f"{other.group})", "train"))
    return {name: out[name] for name in ("train", "val", "test")}, drops


_WORD = re.compile(r"\w+")


def shingles(text: str, cfg: NearDuplicateConfig) -> set[str]:
    """The text's shingles: shingle_size consecutive words (or characters) of its normalised form."""
    text = normalise_text(text)
    units: Sequence[str] = _WORD.findall(text) if cfg.shingle_unit == "words" else text
    joiner = " " if cfg.shingle_unit == "words" else ""
    k = cfg.shingle_size
    if not units:
        return set()
    if len(units) <= k:
        return {joiner.join(units)}
    return {joiner.join(units[i:i + k]) for i in range(len(units) - k + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _crc32(shingle: bytes) -> int:
    return zlib.crc32(shingle)  # deterministic across processes (Python's hash is salted), 32 bits as affine32 wants


LSH_RECALL = 0.995  # the least chance that a pair exactly at the threshold becomes a candidate


def lsh_bands(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows): the most rows per band (the fewest candidates to confirm) with which a pair of Jaccard
    ``threshold`` shares a band with probability ``recall`` or more. datasketch's own choice weighs false positives
    and negatives alike, which for 0.9 and 128 permutations finds a pair at the threshold 31 % of the time: here every
    candidate is confirmed exactly, so a false positive costs a comparison and a false negative a missed duplicate."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class ShingleIndex:
    """The records added so far, by key, in a MinHash LSH index; ``matches`` confirms every LSH candidate by the
    exact Jaccard of the two texts' shingle sets. Only the MinHash band keys and the texts are kept."""

    def __init__(self, cfg: NearDuplicateConfig):
        from datasketch import MinHash, MinHashLSH

        self.cfg = cfg
        self._empty = MinHash(num_perm=cfg.num_perm, seed=1, hashfunc=_crc32)  # copied: permutations made once
        self._lsh = MinHashLSH(num_perm=cfg.num_perm, params=lsh_bands(cfg.threshold, cfg.num_perm))
        self._texts: dict[Any, str] = {}

    def _minhash(self, units: set[str]):
        m = self._empty.copy()
        m.update_batch([s.encode("utf-8") for s in units])
        return m

    def add(self, key: Any, text: str, units: set[str] | None = None, minhash=None) -> None:
        units = shingles(text, self.cfg) if units is None else units
        if not units:
            return
        self._lsh.insert(key, minhash if minhash is not None else self._minhash(units), check_duplication=False)
        self._texts[key] = text

    def matches(self, text: str, units: set[str] | None = None) -> tuple[list[tuple[Any, float]], Any]:
        """The keys whose text is a near-duplicate of ``text`` (Jaccard >= threshold), most similar first, with the
        text's MinHash (to ``add`` it without hashing again)."""
        units = shingles(text, self.cfg) if units is None else units
        if not units:
            return [], None
        minhash = self._minhash(units)
        found = []
        for key in self._lsh.query(minhash):
            similarity = jaccard(units, shingles(self._texts[key], self.cfg))
            if similarity >= self.cfg.threshold:
                found.append((key, similarity))
        found.sort(key=lambda kv: -kv[1])
        return found, minhash


def drop_near_duplicates(splits: dict[str, list[Example]], golden: Sequence[Example],
                         cfg: NearDuplicateConfig) -> tuple[dict[str, list[Example]], list[Drop], list[NearPair]]:
    """Near-duplicates by user text, in one pass over golden, val, test, then train (each in file order): a record
    near an earlier one of its own split is dropped (near_duplicate); a training record near an evaluation record is
    dropped from train (cross_split_leak); evaluation records are never dropped for another split's record. Every
    pair across two groups is reported (possible leakage the group key does not capture)."""
    index = ShingleIndex(cfg)
    records: list[tuple[str, Example]] = []  # index key -> (split, example)
    out: dict[str, list[Example]] = {name: [] for name in splits}
    drops: list[Drop] = []
    pairs: list[NearPair] = []
    for split, examples in (("golden", golden), ("val", splits["val"]), ("test", splits["test"]),
                            ("train", splits["train"])):
        for e in examples:
            units = shingles(e.user_text, cfg)
            found, minhash = index.matches(e.user_text, units)
            near = [(records[key][0], records[key][1], sim) for key, sim in found]
            if split == "golden":  # the hand-written set is checked, not deduplicated
                near = []
            eval_hit = next(((s, o, sim) for s, o, sim in near if s in EVAL_SPLITS), None) if split == "train" else None
            same_hit = next(((s, o, sim) for s, o, sim in near if s == split), None)
            if eval_hit is not None:
                s, other, sim = eval_hit
                drops.append(_drop(e, "cross_split_leak", f"train prompt near {s} line {other.line} (group "
                                                          f"{other.group}, Jaccard {sim:.2f})", split))
                action = f"dropped from train (near {s})"
            elif same_hit is not None:
                s, other, sim = same_hit
                drops.append(_drop(e, "near_duplicate", f"near line {other.line} of {s} (group {other.group}, "
                                                        f"Jaccard {sim:.2f})", split))
                action = f"later copy dropped from {split}"
            else:
                action = "kept both (evaluation records are never dropped for another split's)" if near else ""
                if split != "golden":
                    out[split].append(e)
                index.add(len(records), e.user_text, units, minhash)
                records.append((split, e))
            for s, other, sim in near:
                if other.group != e.group:
                    pairs.append(NearPair(_ref(e, split), _ref(other, s), round(sim, 4), action))
    return {name: out[name] for name in ("train", "val", "test")}, drops, pairs


def cross_domain_near_duplicates(train: dict[str, list[Example]], evaluation: dict[str, Iterable[tuple[str, Example]]],
                                 settings: dict[str, NearDuplicateConfig | None]) -> dict[str, list[CrossDomainMatch]]:
    """For each domain whose near-duplicate detection is on: its training records near another domain's evaluation
    records (``evaluation``: domain -> (split, example)), by its own shingle settings. A report, not a drop."""
    found: dict[str, list[CrossDomainMatch]] = {name: [] for name in train}
    by_settings: dict[NearDuplicateConfig, list[str]] = {}
    for name, cfg in settings.items():
        if cfg is not None:
            by_settings.setdefault(cfg, []).append(name)
    for cfg, domains in by_settings.items():
        index, records = ShingleIndex(cfg), []
        for name, examples in evaluation.items():
            for split, e in examples:
                index.add(len(records), e.user_text)
                records.append((name, split, e))
        for name in domains:
            for e in train[name]:
                for key, sim in index.matches(e.user_text)[0]:
                    other_domain, split, other = records[key]
                    if other_domain != name:
                        found[name].append(CrossDomainMatch(_ref(e, "train"), other_domain, _ref(other, split),
                                                            round(sim, 4)))
    return found
