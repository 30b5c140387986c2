"""A published run of a bundled domain (contracts) made without training, the way the pipeline publishes one: made-up
answers scored by the pipeline's own producers (evaluate.score_answers, pipeline.compare, gate.decide), the evaluation
rows under eval/, the report, then pipeline.publish_domain, promote_passed and the history. Human review tests export
from it and import into it."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lorafleet import data, evaluate, gate, history, metrics, pipeline, publish, report, review
from lorafleet.lineage import Lineage, config_sha256, config_snapshot
from lorafleet.pipeline import FinishContext, ModelScores, compare
from lorafleet.results import DomainResult
from lorafleet.train import HParams
from tests.conftest import DOMAINS_DIR

DOMAIN = "contracts"
RECORDS = 24  # test records the made-up models answer


def base_answer(i: int, e) -> str:
    return e.completion if i % 3 == 0 else "I think the contract is about payment."


def tuned_answer(i: int, e) -> str:
    return json.dumps({**json.loads(e.completion), "amount": "1,200"}) if i % 4 == 1 else e.completion


def publish_run(tmp_path: Path, storage_uri: str, run_id: str, gate_cfg: dict[str, Any] | None = None) -> DomainResult:
    """Run ``run_id`` of the contracts domain, published (and promoted if its gate passed), in its history."""
    from lorafleet.config import GateConfig, load_domain

    # only the gate given (validated as a config's): what these tests gate on is the human check
    cfg = load_domain(DOMAINS_DIR / f"{DOMAIN}.yaml")
    cfg = cfg.model_copy(update={"gate": GateConfig.model_validate(gate_cfg or {})})
    prepared = data.prepare(cfg)
    test = prepared.test[:RECORDS]

    def scores(answer) -> ModelScores:
        scored = evaluate.score_answers(test, [answer(i, e) for i, e in enumerate(test)], prepared.schema, cfg.eval)
        return ModelScores(test=evaluate.SplitScores(metrics.aggregate([a.score for a in scored]), scored, token_ids=[]),
                           golden=None)

    base, tuned = scores(base_answer), scores(tuned_answer)
    test_eval, _ = compare(cfg, base, tuned, None)
    verdict = gate.decide(cfg.gate, test_eval)  # as finish_domain decides it
    storage = publish.Storage(storage_uri)
    result = DomainResult(name=cfg.name, status="published" if verdict.passed else "gated",
                          dataset_version=prepared.manifest.dataset_version, winner=HParams(8, 2e-4, 1), test=test_eval,
                          gate=verdict, artifacts=pipeline.artifact_uris(storage, run_id, cfg))
    out = tmp_path / "work" / run_id / cfg.name
    (out / "eval").mkdir(parents=True)
    for kind, s in (("base", base), ("tuned", tuned)):  # as pipeline.score_model writes them
        (out / "eval" / f"test-{kind}.jsonl").write_text(
            "".join(json.dumps(a.model_dump(), ensure_ascii=False) + "\n" for a in s.test.answers), encoding="utf-8")
    record = Lineage(run_id=run_id, lorafleet_version="0.1.0", git_commit=None, packages={}, config=config_snapshot(cfg),
                     config_sha256=config_sha256(cfg), dataset_version=prepared.manifest.dataset_version,
                     split_counts=prepared.manifest.counts, golden_records=0, seeds={}, base_model=cfg.base_model,
                     base_model_sha256=None, winner=HParams(8, 2e-4, 1), trial_count=1, backend="peft",
                     merged_sha256=None)
    report.write_reports(report.DomainReport(run_id=run_id, base_model=cfg.base_model, result=result, lineage=record), out)
    pipeline.publish_domain(FinishContext(run_id, storage_uri, tmp_path / "work", None), cfg.name, result, record, out)
    pipeline.promote_passed(storage, run_id, {cfg.name: result})
    history.record_run(storage, run_id, {cfg.name: result})
    return result


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A review file's rows as a spreadsheet or a script sees them."""
    if path.suffix == ".csv":
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows saved back as a spreadsheet (UTF-8 with a byte-order mark) or a script would."""
    if path.suffix == ".csv":
        with open(path, "w", encoding="utf-8-sig", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def blind_rater(row: dict[str, Any]) -> dict[str, Any]:
    """A reviewer who knows the right answer and not the models: 5 for it, 3 for other JSON, 1 for prose."""
    def rate(answer: str) -> int:
        if answer == row["expected"]:
            return 5
        try:
            json.loads(answer)
            return 3
        except ValueError:
            return 1
    return {**row, "rating_a": rate(row["answer_a"]), "rating_b": rate(row["answer_b"])}


def export_and_rate(storage_uri: str, run_id: str, out: Path, rater=blind_rater) -> tuple[review.Exported, list[dict]]:
    """``lorafleet review export`` of every evaluated record into ``out``, filled in by ``rater``."""
    done = review.export(storage_uri, run_id, DOMAIN, 40, out)
    rows = [rater(r) for r in read_rows(out)]
    write_rows(out, rows)
    return done, rows
