"""Data policy checks. Each returns the records it keeps and a ``Drop`` (record, reason code, detail) for the rest;
``data.prepare`` runs them in order. Reason codes (``REASONS``) are what the manifest counts and drops.jsonl
records:

before the split   not_json, schema (the answer), quality_label, ungrounded (data.quality), exact_duplicate,
                   too_short, too_long, truncated (token lengths, data.quality)
after the split    cross_split_leak (a training record whose user text is an evaluation record's, exactly or
                   near; a test record whose user text is a validation record's), near_duplicate (a later near
                   copy within a split)

Near-duplicates (``drop_near_duplicates``, ``cross_domain_near_duplicates``): the user text's shingles (NFKC,
casefolded; words or characters; hashed) are MinHashed and looked up in datasketch's LSH index of the records kept so
far, in one streaming pass; each candidate is confirmed by the exact Jaccard similarity of the two shingle sets,
recomputed from the texts, so no shingle set is held beyond its record's turn (``ShingleIndex``).
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
import numpy as np

from lorafleet.base_model import TokenCounter
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


def measure_tokens(examples: list[Example], counter: TokenCounter, batch_size: int = 1024) -> dict[str, TokenLengths]:
    """Token lengths by record id, in batches (the tokenizer encodes a batch on all cores)."""
    lengths: dict[str, TokenLengths] = {}
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        prompts = counter.count([counter.prompt(e.prompt) for e in batch])
        answers = counter.count([e.completion for e in batch])
        for e, p, a in zip(batch, prompts, answers):
            lengths[e.id] = TokenLengths(p, a + 1)  # + the end token, as training appends it
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
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


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
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over an array (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class Shingler:
    """A text's shingles, as the sorted distinct 64-bit hashes of shingle_size consecutive units (words: runs of
    letters and digits; or characters) of its NFKC-normalised, casefolded form; a text shorter than that is one
    shingle. Words are hashed once each (blake2b) and remembered; a shingle's hash mixes its units' in order."""

    def __init__(self, cfg: NearDuplicateConfig):
        self.cfg = cfg
        self._words: dict[str, int] = {}
        self._weights = _mix64(np.arange(1, cfg.shingle_size + 1, dtype=np.uint64)) | np.uint64(1)

    def _codes(self, text: str) -> np.ndarray:
        text = unicodedata.normalize("NFKC", text).casefold()
        if self.cfg.shingle_unit == "characters":
            return np.frombuffer(" ".join(text.split()).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        words, known = _WORD.findall(text), self._words.get
        codes = [known(w) for w in words]
        if None in codes:
            for i, word in enumerate(words):
                if codes[i] is None:
                    codes[i] = self._words[word] = int.from_bytes(
                        hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return np.array(codes, dtype=np.uint64)

    def hashes(self, text: str) -> np.ndarray:
        """Every shingle's hash, in text order, repeats kept (unmixed: ``__call__`` and the signatures mix them)."""
        codes = self._codes(text)
        n = len(codes)
        if n == 0:
            return codes
        k = min(self.cfg.shingle_size, n)
        hashes = np.full(n - k + 1, k, dtype=np.uint64)
        for j in range(k):
            hashes += codes[j:n - k + 1 + j] * self._weights[j]
        return hashes

    def __call__(self, text: str) -> np.ndarray:
        return np.unique(_mix64(self.hashes(text)))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Of two shingle sets (sorted distinct hashes)."""
    common = len(np.intersect1d(a, b, assume_unique=True))
    union = len(a) + len(b) - common
    return common / union if union else 0.0


LSH_RECALL = 0.995  # the least chance that a pair exactly at the threshold becomes a candidate
SIGNATURE_BATCH = 256  # records whose MinHash signatures are computed at once (numpy), then indexed one by one
CONFIRM_CACHE = 4096  # shingle sets of candidates kept for the next confirmation


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


def agreement_floor(jaccard: float, num_perm: int, chance: float) -> float:
    """The least share of equal MinHash values to ask of a candidate: a pair of this Jaccard similarity shows less
    with probability ``chance`` at most (each of the num_perm values agrees with probability ``jaccard``)."""
    if jaccard >= 1:
        return 1.0
    below = 0.0
    for k in range(num_perm + 1):
        below += math.exp(math.lgamma(num_perm + 1) - math.lgamma(k + 1) - math.lgamma(num_perm - k + 1)
                          + k * math.log(jaccard) + (num_perm - k) * math.log1p(-jaccard))
        if below > chance:
            return k / num_perm
    return 1.0


class ShingleIndex:
    """Records, keyed by the order they were added (0, 1, ...), in datasketch's MinHashLSH. ``matches`` takes the
    LSH's candidates, keeps those whose signatures agree on enough permutations that a pair at the threshold is
    dropped here with a chance under PREFILTER_MISS (binomial), and confirms each by the exact
    Jaccard of the two shingle sets, the candidate's recomputed from its text. Kept per record: its text, its LSH band
    keys and its signature (num_perm 32-bit values), no shingle set. Signatures are datasketch's affine32 MinHash
    (its permutations) of the shingle hashes, computed for SIGNATURE_BATCH records at a time with numpy (``scan``)."""

    PREFILTER_MISS = 1e-6

    def __init__(self, cfg: NearDuplicateConfig):
        from datasketch import MinHash, MinHashLSH

        self.cfg, self.shingles = cfg, Shingler(cfg)
        a, b = MinHash(num_perm=cfg.num_perm, seed=1, scheme="affine32").permutations
        self._a, self._b = np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)
        self._lsh = MinHashLSH(num_perm=cfg.num_perm, params=lsh_bands(cfg.threshold, cfg.num_perm))
        self._texts: list[str] = []
        self._signatures = np.zeros((1024, cfg.num_perm), dtype=np.uint32)
        self._agreement = agreement_floor(cfg.threshold, cfg.num_perm, self.PREFILTER_MISS)
        # the shingle sets of records confirmed against lately (templated data brings the same ones back)
        self._set_of = functools.lru_cache(maxsize=CONFIRM_CACHE)(lambda key: self.shingles(self._texts[key]))

    def _minhashes(self, batch: list[np.ndarray]) -> list[Any]:
        """The MinHash of each text's shingle hashes (``Shingler.hashes``), all at once."""
        from datasketch import LeanMinHash

        sizes = [len(h) for h in batch]
        if not any(sizes):
            return [None] * len(batch)
        flat = _mix64(np.concatenate(batch))
        folded = ((flat >> np.uint64(32)) ^ (flat & np.uint64(0xFFFFFFFF))).astype(np.uint32)
        permuted = folded[:, None] * self._a[None, :] + self._b[None, :]  # a*h + b mod 2^32: affine32
        starts = np.cumsum([0, *(n for n in sizes if n)])[:-1]
        rows = iter(np.minimum.reduceat(permuted, starts, axis=0))
        return [LeanMinHash(seed=1, hashvalues=next(rows), scheme="affine32") if n else None for n in sizes]

    def scan(self, texts: Iterable[str]) -> Iterator[tuple[np.ndarray, Any]]:
        """(shingle hashes, MinHash or None for a text without shingles) of each text, in order, computed a batch at
        a time as they are consumed."""
        batch: list[np.ndarray] = []
        for text in texts:
            batch.append(self.shingles.hashes(text))
            if len(batch) == SIGNATURE_BATCH:
                yield from zip(batch, self._minhashes(batch))
                batch = []
        if batch:
            yield from zip(batch, self._minhashes(batch))

    def add(self, text: str, minhash) -> int:
        """Index the text (its MinHash from ``scan``); its key."""
        key = len(self._texts)
        self._texts.append(text)
        if minhash is not None:
            if key == len(self._signatures):
                self._signatures = np.concatenate([self._signatures, np.zeros_like(self._signatures)])
            self._signatures[key] = minhash.hashvalues
            self._lsh.insert(key, minhash, check_duplication=False)
        return key

    def matches(self, hashes: np.ndarray, minhash) -> list[tuple[int, float]]:
        """The keys of the records whose text is a near-duplicate (Jaccard >= threshold) of the text whose shingle
        hashes and MinHash ``scan`` gave, most similar first."""
        if minhash is None:
            return []
        candidates = np.fromiter(self._lsh.query(minhash), dtype=np.int64)
        if not len(candidates):
            return []
        agreement = (self._signatures[candidates] == minhash.hashvalues).mean(axis=1)
        candidates = candidates[agreement >= self._agreement]
        if not len(candidates):
            return []
        units, found = np.unique(_mix64(hashes)), []
        for key in sorted(candidates.tolist()):
            similarity = jaccard(units, self._set_of(key))
            if similarity >= self.cfg.threshold:
                found.append((key, similarity))
        return sorted(found, key=lambda kv: -kv[1])


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
    order = [(split, e) for split, examples in (("golden", golden), ("val", splits["val"]), ("test", splits["test"]),
                                                 ("train", splits["train"])) for e in examples]
    for (split, e), (hashes, minhash) in zip(order, index.scan(e.user_text for _, e in order)):
        # the hand-written golden set is indexed, not deduplicated
        near = [(*records[key], sim) for key, sim in index.matches(hashes, minhash)] if split != "golden" else []
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
            index.add(e.user_text, minhash)
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
        index = ShingleIndex(cfg)
        records = [(name, split, e) for name, examples in evaluation.items() for split, e in examples]
        for (_, _, e), (_, minhash) in zip(records, index.scan(e.user_text for _, _, e in records)):
            index.add(e.user_text, minhash)
        for name in domains:
            for e, (hashes, minhash) in zip(train[name], index.scan(e.user_text for e in train[name])):
                for key, sim in index.matches(hashes, minhash):
                    other_domain, split, other = records[key]
                    if other_domain != name:
                        found[name].append(CrossDomainMatch(_ref(e, "train"), other_domain, _ref(other, split),
                                                            round(sim, 4)))
    return found
