"""Human review of a published run's domain, days after the run (``lorafleet review export | import``).

``export``: a sample of the domain's evaluated test records, stratified by how the tuned model's automatic score
compares with the base's on each record, each with its input, the expected answer and the two models' answers shown as
"answer A" and "answer B", written to a CSV or JSONL file a reviewer fills in (``rating_a``, ``rating_b``: 1-5). As many
rows show the tuned answer first as the base's, in a drawn order; which answer is which model's goes to the export's
key in storage (``runs/<run>/<domain>/review/key-<export_id>.json``), never into the reviewer's file.

``import``: the filled-in file, validated whole before anything is written (one export, known ids, each once, every
answer rated 1-5); the ratings, unblinded with the key, are written once (``ratings-<export_id>.json``). Then the
domain's gate is decided again (``gate.decide``, pure: the run's own evaluations and gate config, plus the ratings of
every review of the run's domain), recorded with its report (``verdict.json``, ``report.{html,md}`` under ``review/``),
the domain promoted when it now passes, and its history entry given the new verdict. The published manifest and the
run's own report stay as the run wrote them.
"""
from __future__ import annotations

import csv
import io
import json
import math
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic

from lorafleet import gate, history, metrics, publish
from lorafleet.config import EvalConfig, GateConfig
from lorafleet.report import RatedRecord, ReviewImport, ReviewReport, render_review_html, render_review_markdown
from lorafleet.results import DomainResult

COLUMNS = ("export_id", "run_id", "domain", "id", "input", "expected", "answer_a", "answer_b", "rating_a", "rating_b",
           "comment")
IDENTITY = ("export_id", "run_id", "domain")  # the same on every row: which export the file answers
RATED = ("rating_a", "rating_b")
REQUIRED = (*IDENTITY, "id", *RATED)  # what an import reads (comment too, where present)
FORMATS = (".csv", ".jsonl")
RATING_MIN, RATING_MAX = 1, 5
STRATA = ("tuned better", "tie", "base better")  # by the tuned - base automatic score on the record
MODELS = ("base", "tuned")
SHOWN_PROBLEMS = 25


class ReviewError(ValueError):
    """A review file, or what it names, is unusable; the message names the file and the row."""


# ---- export ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pair:
    """The base and the tuned model's answers to one test record, and how their automatic scores compare."""

    id: str
    input: str
    expected: str
    base: str
    tuned: str
    gain: float  # tuned - base score (points); a score the evaluation could not give counts 0

    @property
    def stratum(self) -> str:
        return STRATA[0] if self.gain > 0 else STRATA[2] if self.gain < 0 else STRATA[1]


def _score(row: dict[str, Any]) -> float:
    value = (row.get("score") or {}).get("score")
    return 0.0 if value is None else float(value)


def pairs_of(base_rows: list[dict[str, Any]], tuned_rows: list[dict[str, Any]]) -> list[Pair]:
    """Base and tuned evaluation rows (``eval/test-<model>.jsonl``) paired by record id, in the tuned rows' order."""
    base = {r["id"]: r for r in base_rows}
    tuned_ids = [r["id"] for r in tuned_rows]
    if len(base) != len(base_rows) or len(set(tuned_ids)) != len(tuned_ids) or set(base) != set(tuned_ids):
        raise ReviewError(f"the base ({len(base_rows)} rows) and tuned ({len(tuned_rows)} rows) evaluations do not "
                          "answer the same test records once each")
    return [Pair(id=t["id"], input=t["input"], expected=t["expected"], base=base[t["id"]]["got"], tuned=t["got"],
                 gain=_score(t) - _score(base[t["id"]])) for t in tuned_rows]


def _allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """n split over the strata in proportion to their sizes (largest remainders), each stratum at least one where n
    allows."""
    total = sum(sizes.values())
    quota = {s: n * k // total for s, k in sizes.items()}
    by_remainder = sorted(sizes, key=lambda s: (-(n * sizes[s] - quota[s] * total), STRATA.index(s)))
    for s in by_remainder[: n - sum(quota.values())]:
        quota[s] += 1
    if n >= len(sizes):
        for s in sizes:
            if quota[s] == 0:
                donor = max(quota, key=lambda d: (quota[d], -STRATA.index(d)))
                quota[donor], quota[s] = quota[donor] - 1, 1
    return quota


def stratified_sample(pairs: list[Pair], n: int, rng: random.Random) -> list[Pair]:
    """``n`` records (all, when there are no more), drawn from each stratum in proportion to its size, so the sample's
    mean rating gain estimates the evaluated test split's; in a drawn order, so no stratum shows as a block."""
    n = min(n, len(pairs))
    groups = {s: [p for p in pairs if p.stratum == s] for s in STRATA}
    groups = {s: g for s, g in groups.items() if g}
    quota = _allocate({s: len(g) for s, g in groups.items()}, n)
    chosen = [p for s, g in groups.items() for p in rng.sample(g, quota[s])]
    rng.shuffle(chosen)
    return chosen


def blind(count: int, rng: random.Random) -> list[str]:
    """Which model's answer each of ``count`` rows shows as answer A: as many rows the tuned model's as the base's (an
    odd count's last one drawn), in a drawn order, so neither position favours a model."""
    firsts = list(MODELS) * (count // 2) + ([rng.choice(MODELS)] if count % 2 else [])
    rng.shuffle(firsts)
    return firsts


def _other(model: str) -> str:
    return MODELS[1 - MODELS.index(model)]


def _format(path: Path) -> str:
    if path.suffix.lower() not in FORMATS:
        raise ReviewError(f"{path}: a review file is {' or '.join(FORMATS)} (by its name's ending)")
    return path.suffix.lower()


def _eval_rows(storage: publish.Storage, run_id: str, domain: str, model: str) -> list[dict[str, Any]]:
    data = publish.read_published_object(storage, run_id, domain, f"eval/test-{model}.jsonl")
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Exported:
    export_id: str
    out: Path
    key_uri: str
    records: int
    available: int
    strata: dict[str, int]


def export(storage_uri: str, run_id: str, domain: str, n: int, out: str | Path, seed: int = 0,
           now: datetime | None = None) -> Exported:
    """Write the reviewer's file ``out`` (.csv or .jsonl, a new file) for ``n`` of the run's evaluated test records of
    the domain, after its key went to storage."""
    out = Path(out)
    fmt = _format(out)
    if n <= 0:
        raise ReviewError(f"--n {n}: export at least one record")
    if out.exists():
        raise ReviewError(f"{out}: exists already; export into a new file (a filled-in review is never overwritten)")
    if not out.parent.is_dir():
        raise ReviewError(f"{out.parent}: no such folder")
    storage = publish.Storage(storage_uri)
    pairs = pairs_of(*(_eval_rows(storage, run_id, domain, model) for model in MODELS))
    if not pairs:
        raise ReviewError(f"run {run_id}, domain {domain}: no evaluated test records")
    rng = random.Random(seed)
    sample = stratified_sample(pairs, n, rng)
    firsts = blind(len(sample), rng)
    created = (now or datetime.now(UTC)).astimezone(UTC)
    export_id = f"{created:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
    strata = {s: sum(p.stratum == s for p in sample) for s in STRATA}
    key = {"export_id": export_id, "run_id": run_id, "domain": domain, "created_at": created.isoformat(timespec="seconds"),
           "seed": seed, "requested": n, "records": len(sample), "available": len(pairs),
           "stratified_by": "tuned - base automatic score on the record", "strata": strata,
           "rows": [{"id": p.id, "stratum": p.stratum, "answer_a": first, "answer_b": _other(first)}
                    for p, first in zip(sample, firsts)]}
    rows = [{"export_id": export_id, "run_id": run_id, "domain": domain, "id": p.id, "input": p.input,
             "expected": p.expected, "answer_a": getattr(p, first), "answer_b": getattr(p, _other(first)),
             "rating_a": None, "rating_b": None, "comment": ""} for p, first in zip(sample, firsts)]
    key_uri = publish.write_review_key(storage, run_id, domain, export_id, key)  # before the file: a file needs its key
    _write_rows(out, fmt, rows)
    return Exported(export_id, out, key_uri, len(sample), len(pairs), strata)


def _write_rows(out: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    # utf-8-sig: spreadsheets read a CSV with a byte-order mark as UTF-8 (Vietnamese, Thai), and import skips it
    with open(out, "x", encoding="utf-8-sig" if fmt == ".csv" else "utf-8", newline="") as handle:
        if fmt == ".csv":
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        else:
            handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


# ---- import: reading and validating the reviewer's file ------------------------------------------------------------

@dataclass(frozen=True)
class FileRow:
    where: str  # "row 3" (a spreadsheet's numbering: the header is row 1) or "line 3" (JSONL)
    values: dict[str, Any]


def read_rows(path: Path) -> list[FileRow]:
    """The rows of a filled-in review file, each with where it is in the file."""
    fmt = _format(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ReviewError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ReviewError(f"{path}: not UTF-8 text (save the file as UTF-8)") from exc
    if fmt == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ReviewError(f"{path}: row 1 (the header): no column {', '.join(missing)}")
        rows = [FileRow(f"row {i}", row) for i, row in enumerate(reader, start=2)]
    else:
        rows, problems = [], []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                problems.append(f"line {i}: not JSON")
                continue
            if not isinstance(value, dict):
                problems.append(f"line {i}: not a JSON object")
                continue
            rows.append(FileRow(f"line {i}", value))
        if problems:
            raise _problems(path, problems)
    if not rows:
        raise ReviewError(f"{path}: no rows")
    return rows


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _problems(path: Path, problems: list[str]) -> ReviewError:
    shown = problems[:SHOWN_PROBLEMS]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return ReviewError(f"{path}: nothing imported; {len(problems)} problem{'s' * (len(problems) != 1)}:\n  "
                       + "\n  ".join(shown) + more)


def which_export(path: Path, rows: list[FileRow]) -> tuple[str, str, str]:
    """(export_id, run_id, domain): the same on every row, else an error naming the rows that differ."""
    problems, found = [], []
    for col in IDENTITY:
        seen: dict[str, list[str]] = {}
        for row in rows:
            seen.setdefault(_text(row.values.get(col)), []).append(row.where)
        if "" in seen:
            problems.append(f"{col} is empty on {_rows(seen.pop(''))}")
        if len(seen) > 1:
            problems.append(f"{col} differs between rows: " +
                            "; ".join(f"{value!r} on {_rows(where)}" for value, where in seen.items()))
        found.append(next(iter(seen), ""))
    export_id = found[0]
    if not problems and not publish.RUN_ID_RE.fullmatch(export_id):
        problems.append(f"export_id {export_id!r} is not an export id (e.g. 20261203-101500-a1b2c3)")
    if problems:
        raise _problems(path, problems)
    return found[0], found[1], found[2]


def _rows(where: list[str]) -> str:
    return ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")


def rating(value: Any) -> tuple[int | None, str | None]:
    """(rating, None) for a whole number from 1 to 5 (a JSON number or text), else (None, what is wrong)."""
    if isinstance(value, bool):
        return None, f"{value!r}: not a rating (a whole number from {RATING_MIN} to {RATING_MAX})"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit() and value.strip().isascii():
        value = int(value.strip())
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"is empty: rate every answer from {RATING_MIN} to {RATING_MAX}"
    if not isinstance(value, int):
        return None, f"{value!r}: not a rating (a whole number from {RATING_MIN} to {RATING_MAX})"
    if not RATING_MIN <= value <= RATING_MAX:
        return None, f"{value}: out of range (ratings go from {RATING_MIN} to {RATING_MAX})"
    return value, None


def unblind(path: Path, rows: list[FileRow], key: dict[str, Any]) -> list[dict[str, Any]]:
    """Every exported record's ratings per model (``{"id", "base", "tuned", "comment"}``, in the key's order), read
    with the key; every problem in the file (an id the export does not have, a record rated twice or not at all, a
    rating that is not a whole number from 1 to 5) named at once, with its row."""
    answers = {r["id"]: r for r in key["rows"]}
    problems: list[str] = []
    seen: dict[str, str] = {}
    ratings: dict[str, dict[str, Any]] = {}
    for row in rows:
        record = _text(row.values.get("id"))
        where = f"{row.where} (id {record})" if record else row.where
        if not record:
            problems.append(f"{where}: no id")
            continue
        if record not in answers:
            problems.append(f"{where}: unknown id: export {key['export_id']} has no record {record!r}")
            continue
        if record in seen:
            problems.append(f"{where}: rated twice: this record is on {seen[record]} too")
            continue
        seen[record] = row.where
        given = {}
        for col in RATED:
            value, problem = rating(row.values.get(col))
            if problem:
                problems.append(f"{where}: {col} {problem}")
            given[col] = value
        if None not in given.values():
            a, b = answers[record]["answer_a"], answers[record]["answer_b"]
            ratings[record] = {"id": record, a: given["rating_a"], b: given["rating_b"],
                               "comment": _text(row.values.get("comment"))}
    missing = [r for r in answers if r not in seen]
    if missing:
        problems.append(f"{len(missing)} exported record{'s' * (len(missing) != 1)} not in the file: {_rows(missing)}")
    if problems:
        raise _problems(path, problems)
    return [{"id": r, "base": ratings[r]["base"], "tuned": ratings[r]["tuned"], "comment": ratings[r]["comment"]}
            for r in answers]


# ---- import: the verdict ------------------------------------------------------------------------------------------

def summarize(reviews: Sequence[dict[str, Any]], eval_cfg: EvalConfig) -> tuple[metrics.HumanRatings, list[RatedRecord]]:
    """Every review's ratings of a run's domain (ratings files) as one summary: a record rated in several reviews counts
    once, with its mean ratings; intervals from the run's bootstrap settings (eval.bootstrap_samples, eval.seed)."""
    reviews = sorted(reviews, key=lambda r: r["export_id"])
    per_record: dict[str, list[dict[str, Any]]] = {}
    for review in reviews:
        for r in review["ratings"]:
            per_record.setdefault(r["id"], []).append(r)
    records = [RatedRecord(id=i, base=sum(r["base"] for r in rs) / len(rs), tuned=sum(r["tuned"] for r in rs) / len(rs),
                           comments=[r["comment"] for r in rs if r.get("comment")]) for i, rs in per_record.items()]
    summary = metrics.rating_summary([r.base for r in records], [r.tuned for r in records],
                                     samples=eval_cfg.bootstrap_samples, seed=eval_cfg.seed,
                                     reviews=[r["export_id"] for r in reviews])
    return summary, records


def redecide(result: DomainResult, gate_cfg: GateConfig, ratings: metrics.HumanRatings) -> gate.GateVerdict:
    """The run's gate decided again: the same checks on the run's own evaluations (its ONNX variants' too), and the
    ratings."""
    if result.test is None:
        raise ReviewError(f"domain {result.name}: the run recorded no test evaluation to decide a gate on")
    variants = {name: v.evaluation for name, v in result.variants.items()} or None  # none: no ONNX model was built
    return gate.decide(gate_cfg, result.test, result.golden, human=ratings, variants=variants)


@dataclass(frozen=True)
class Imported:
    export_id: str
    run_id: str
    domain: str
    records: int
    ratings_uri: str
    written: bool  # False: the same ratings were imported already (the verdict was decided again)
    review: ReviewReport
    report_uri: str


def import_file(path: str | Path, storage_uri: str, replace: bool = False, now: datetime | None = None) -> Imported:
    """Validate a filled-in review file whole, write its ratings once, then decide the domain's gate again with every
    review of the run's domain, record the verdict and its report, promote the domain if it passes now, and give its
    history entry the new verdict. Nothing is written when anything in the file is wrong."""
    path = Path(path)
    rows = read_rows(path)
    export_id, run_id, domain = which_export(path, rows)
    storage = publish.Storage(storage_uri)
    try:
        key = publish.read_review_key(storage, run_id, domain, export_id)
    except publish.PublishError as exc:  # run id or domain is not a safe key: not one an export wrote
        raise ReviewError(f"{path}: {exc}") from exc
    if key is None or (key["run_id"], key["domain"]) != (run_id, domain):
        where = storage.url(publish.review_key(run_id, domain, ""))
        raise ReviewError(f"{path}: export_id {export_id}: no such export of run {run_id}, domain {domain} (no key in "
                          f"{where}): a file from another storage, run or domain, or an edited export_id, run_id or "
                          "domain column")
    ratings = unblind(path, rows, key)
    decided = (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    existing, token = publish.read_ratings(storage, run_id, domain, export_id)
    same = existing is not None and existing["ratings"] == ratings
    if existing is not None and not same and not replace:
        raise ReviewError(f"{path}: export {export_id} was imported on {existing['imported_at']} with other ratings "
                          f"({existing['source']}); nothing imported. --replace replaces them")
    record = existing if same else {"export_id": export_id, "run_id": run_id, "domain": domain, "imported_at": decided,
                                    "source": path.name, "ratings": ratings}
    # everything the verdict needs is read (and checked) before anything is written
    result = DomainResult.from_json(publish.read_domain_summary(storage, run_id, domain))
    config = publish.read_manifest(storage, run_id, domain).get("lineage", {}).get("config", {})
    try:
        gate_cfg = GateConfig.model_validate(config.get("gate", {}))
        eval_cfg = EvalConfig.model_validate(config.get("eval", {}))
    except pydantic.ValidationError as exc:
        raise ReviewError(f"run {run_id}, domain {domain}: its recorded config's gate or eval section is not one this "
                          f"lorafleet reads ({exc.error_count()} problem(s), first: {exc.errors()[0]['msg']})") from exc
    reviews = [r for r in publish.list_ratings(storage, run_id, domain) if r["export_id"] != export_id] + [record]
    summary, records = summarize(reviews, eval_cfg)
    verdict = redecide(result, gate_cfg, summary)
    ratings_uri = (storage.url(publish.review_key(run_id, domain, f"ratings-{export_id}.json")) if same else
                   publish.write_ratings(storage, run_id, domain, export_id, record, token))
    status = "published" if verdict.passed else "gated"
    review = ReviewReport(
        run_id=run_id, domain=domain, decided_at=decided, status_at_run=result.status, status=status, ratings=summary,
        reviews=[ReviewImport(export_id=r["export_id"], records=len(r["ratings"]), imported_at=r["imported_at"],
                              source=r["source"]) for r in sorted(reviews, key=lambda r: r["export_id"])],
        records=records, gate=verdict, pointer=_move_pointer(storage, run_id, domain, result.status, verdict))
    publish.write_review_file(storage, run_id, domain, "verdict.json",
                              json.dumps(review.model_dump(mode="json"), indent=2, ensure_ascii=False).encode("utf-8"))
    publish.write_review_file(storage, run_id, domain, "report.md", render_review_markdown(review).encode("utf-8"))
    report_uri = publish.write_review_file(storage, run_id, domain, "report.html", render_review_html(review).encode("utf-8"))
    _update_history(storage, run_id, domain, result.model_copy(update={"status": status, "gate": verdict}))
    return Imported(export_id, run_id, domain, len(ratings), ratings_uri, not same, review, report_uri)


def _move_pointer(storage: publish.Storage, run_id: str, domain: str, status_at_run: str,
                  verdict: gate.GateVerdict) -> str:
    """Promote the domain when its gate passes now; in words, what became of latest.json. A pointer never moves back."""
    if verdict.passed:
        if publish.promote(storage, run_id, domain):
            return f"latest.json -> run {run_id}: promoted by this review."
        latest = storage.read_json(publish.latest_key(domain))["run_id"]
        return (f"latest.json points at run {run_id} already." if latest == run_id else
                f"latest.json stays at run {latest}, a newer run: a pointer never moves back to an older run.")
    latest_pointer, _ = storage.read_json_versioned(publish.latest_key(domain))
    latest = latest_pointer["run_id"] if latest_pointer else None
    if latest == run_id:
        return (f"The review fails the gate, but latest.json still points at run {run_id}, promoted by the run before the "
                "review: lorafleet never moves a pointer back (consumers may hold this model already, and no older run "
                f"is known to be better). Replace the model: `lorafleet run --force {domain}`, or change its config or "
                "data, and the next run that passes moves latest.json on.")
    where = f"stays at run {latest}" if latest else "names no run yet"
    return f"Not promoted: latest.json {where}."


def _update_history(storage: publish.Storage, run_id: str, domain: str, result: DomainResult) -> None:
    """The run's entry in the domain's history gets the verdict the review decided (its date stays the run's)."""
    entry = next((e for e in publish.read_history(storage, domain) if e["run_id"] == run_id), None)
    if entry is not None and entry["verdict"] != result.status:
        history.record_run(storage, run_id, {domain: result}, now=datetime.fromisoformat(entry["date"]))


def describe(ratings: metrics.HumanRatings) -> str:
    """``tuned 3.90 vs base 2.10, gain +1.80 [+1.40, +2.20] over 32 records (1 review)``."""
    low, high = ratings.delta.ci or (math.nan, math.nan)
    reviews = len(ratings.reviews)
    return (f"tuned {ratings.tuned.value:.2f} vs base {ratings.base.value:.2f}, gain {ratings.delta.value:+.2f} "
            f"[{low:+.2f}, {high:+.2f}] over {ratings.n} records ({reviews} review{'s' * (reviews != 1)})")
