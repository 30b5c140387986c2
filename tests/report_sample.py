"""A domain report built by the pipeline's own producers (data.prepare, evaluate.score_answers, metrics,
pipeline.compare, gate.decide, select.pick_winner, report.failing_examples) from made-up answers, so the
report tests render exactly what a run hands the renderer."""
from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

from lorafleet import data, evaluate, gate, history, metrics, publish, report, select
from lorafleet.config import VariantGate, load_domain
from lorafleet.export import Drift, Parity, Speed
from lorafleet.governance import CrossDomainMatch, Drop, NearPair, RecordRef
from lorafleet.lineage import Lineage, config_sha256, config_snapshot
from lorafleet.pipeline import ModelScores, compare
from lorafleet.results import DomainResult, FinishTimings, RunSummary, TrialOutcome, VariantResult
from lorafleet.train import HParams
from tests.conftest import DOMAINS_DIR

XSS = "<script>alert('x')</script>"


def _history(lr: float, steps: int = 40) -> list[dict]:
    rows = []
    for step in range(5, steps + 1, 5):
        rows.append({"step": step, "loss": 3.0 * math.exp(-lr * 400 * step / steps) + 0.4, "learning_rate": lr})
        if step % 10 == 0:
            rows.append({"step": step, "eval_loss": 3.2 * math.exp(-lr * 350 * step / steps) + 0.5})
    return rows


def prepared_cfg():
    return load_domain(DOMAINS_DIR / "contracts.yaml", {"description": f"Contract terms {XSS}"})


def _tuned_answer(i: int, e) -> str:
    if i % 4 == 0:  # a wrong amount, as a string: breaks the schema and the field
        return json.dumps({**json.loads(e.completion), "amount": "1,200"})
    if i % 7 == 0:
        return "not json ```"
    return e.completion


def sample_report() -> report.DomainReport:
    cfg = prepared_cfg()
    prepared = data.prepare(cfg)
    test = prepared.test[:24]
    long_input = test[0].__class__(**{**test[0].__dict__, "prompt": [
        test[0].prompt[0], {"role": "user", "content": test[0].user_text + " Whereas the parties agree. " * 40 + XSS}]})
    test = [long_input, *test[1:]]

    def scores(answer, golden: bool = True) -> ModelScores:
        def split(examples):
            scored = evaluate.score_answers(examples, [answer(i, e) for i, e in enumerate(examples)],
                                            prepared.schema, cfg.eval)
            return evaluate.SplitScores(metrics.aggregate([a.score for a in scored]), scored, token_ids=[])  # made-up answers
        return ModelScores(test=split(test), golden=split(prepared.golden) if golden else None)

    base = scores(lambda i, e: "I think the contract is about payment." if i % 3 else e.completion)
    tuned = scores(_tuned_answer)
    onnx = scores(_tuned_answer, golden=False)
    int4 = scores(lambda i, e: "{" if i == 1 else _tuned_answer(i, e), golden=False)  # one answer broken
    test_eval, golden_eval = compare(cfg, base, tuned, onnx)
    parity = Parity(greedy_match_rate=1.0, max_abs_logit_diff=3.2e-5, prompts=len(test), new_tokens=1517)
    speed = Speed(tokens_per_s=412.5, new_tokens=64, prompt_tokens=97, runs=3, threads=1)
    variants = {
        "fp32": VariantResult(folder="onnx", weights="fp32", evaluation=onnx.test.evaluation, parity=parity,
                              provider="CPUExecutionProvider", bytes=12_772_022, speed=speed),
        "int4": VariantResult(folder="onnx-int4", weights="int4 MatMul weights (block 32) over fp32",
                              evaluation=int4.test.evaluation, provider="CPUExecutionProvider", bytes=4_852_738,
                              parity=Parity(greedy_match_rate=0.91, max_abs_logit_diff=0.84, prompts=len(test),
                                            new_tokens=1522),
                              speed=speed.model_copy(update={"tokens_per_s": 455.0}))}
    gate_cfg = cfg.gate.model_copy(update={"variants": {"int4": VariantGate(max_drop={"schema_pass_rate": 0.02,
                                                                                       "score": 5})}})
    verdict = gate.decide(gate_cfg, test_eval, golden_eval, variants={name: v.evaluation for name, v in variants.items()})
    trials = [TrialOutcome(hparams=HParams(rank, lr, 3), backend="peft",
                           metrics={"eval_loss": 1.1 - i * 0.2, "schema_pass_rate": 0.6 + i * 0.1,
                                    "score": 60.0 + i * 9, "steps": 40.0}, history=_history(lr))
              for i, (rank, lr) in enumerate([(8, 2e-4), (16, 1e-3)])]
    trials.append(TrialOutcome(hparams=HParams(16, 5e-3, 3), error="RuntimeError: CUDA out of memory " + XSS))
    selection = select.pick_winner([t.metrics for t in trials], cfg.select.rule)
    result = DomainResult(
        name=cfg.name, status="published" if verdict.passed else "gated", trials=trials,
        winner=trials[selection.winner].hparams, test=test_eval, golden=golden_eval, gate=verdict,
        drift=Drift(adapter_base="full precision", merged_vs_onnx=parity, onnx_provider="CPUExecutionProvider",
                    adapter_vs_merged=Parity(greedy_match_rate=0.98, max_abs_logit_diff=0.0021, prompts=len(test),
                                             new_tokens=1532)),
        variants=variants,
        timings=FinishTimings(merge=21.4, base_eval=38.2, tuned_eval=35.9, merge_drift=17.3, onnx_export=64.0, onnx_load=3.1,
                              onnx_parity_eval=41.7, onnx_variants=12.9))  # report and publish end after the report is written
    manifest = prepared.manifest
    lineage = Lineage(run_id="20260101-0300", lorafleet_version="0.1.0", git_commit="6a41003", packages={"torch": "2.13.0"},
                      config=config_snapshot(cfg), config_sha256=config_sha256(cfg),
                      dataset_version=manifest.dataset_version, split_counts=manifest.counts,
                      golden_records=len(prepared.golden), seeds={"data": 17}, base_model="tiny",
                      base_model_sha256=None, winner=HParams(16, 1e-3, 3),
                      trial_count=3, backend="peft", merged_sha256=None)
    manifest.drops.append(Drop(id="0123456789abcdef", line=7, group="C-7", reason="not_json",
                               detail=f"answer is not valid JSON {XSS}"))
    manifest.drops_by_reason["not_json"] = 1
    near = RecordRef(id="fedcba9876543210", line=12, group=f"C-{XSS}", split="val")
    manifest.possible_leaks.append(NearPair(record=RecordRef(id="00ff", line=40, group="C-40", split="test"),
                                            earlier=near, jaccard=0.93, action="kept both"))
    manifest.cross_domain.append(CrossDomainMatch(record=RecordRef(id="11ee", line=3, group="C-3", split="train"),
                                                  domain="legal", other=near, jaccard=0.91))
    return report.DomainReport(run_id="20260101-0300", description=cfg.description, base_model=cfg.base_model,
                               result=result, selection=selection,
                               failing_examples=report.failing_examples(tuned.test.answers), data=manifest,
                               lineage=lineage)


def sample_summary() -> RunSummary:
    contracts = sample_report().result
    legal = contracts.model_copy(update={"name": "legal", "status": "published", "gate": gate.GateVerdict(checks=[])})
    broken = DomainResult.failed("broken", f"every trial failed: CUDA OOM {XSS}")
    return RunSummary.of("20260101-0300", "s3://bucket/lorafleet", 812.4,
                         {"contracts": contracts, "legal": legal, "broken": broken})


NIGHT = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)


def record_nights(storage: publish.Storage, domain: str, verdicts: list[str]) -> None:
    """One run a night from NIGHT on, run ids night-0, night-1..., each recording the sample summary's published
    result under the verdict given (an unchanged one matching night-0) in the domain's history."""
    result = sample_summary().domains["legal"]
    for i, verdict in enumerate(verdicts):
        night = result.model_copy(update={"status": verdict, "name": domain})
        if verdict == "unchanged":
            night = night.model_copy(update={"matches_run": "night-0", "trials": [], "timings": None})
        history.record_run(storage, f"night-{i}", {domain: night}, now=NIGHT + timedelta(days=i))


def context_report() -> report.DomainReport:
    """brand_captions (a domain asked with its brand's context), evaluated from made-up answers by the pipeline's own
    producers: the tuned model right on every other held-out record with its context, never without it."""
    cfg = load_domain(DOMAINS_DIR / "brand_captions.yaml")
    prepared = data.prepare(cfg)
    test = prepared.test[: cfg.eval.max_examples]
    other = json.dumps({"hashtags": ["#QuietLuxury"], "caption": f"x {XSS}"})  # a voice none of the test brands has

    def model(answers: list[str]) -> ModelScores:
        scored = evaluate.score_answers(test, answers, prepared.schema, cfg.eval, prepared.context)
        return ModelScores(test=evaluate.SplitScores(metrics.aggregate([a.score for a in scored]), scored, []),
                           golden=None)

    base, without = model([other] * len(test)), model([other] * len(test))
    tuned = model([e.completion if i % 2 else other for i, e in enumerate(test)])
    test_eval, _ = compare(cfg, base, tuned, None, without, prepared)
    result = DomainResult(name=cfg.name, status="gated", test=test_eval, gate=gate.decide(cfg.gate, test_eval))
    return report.DomainReport(run_id="20260101-0300", description=cfg.description, base_model=cfg.base_model,
                               result=result, data=prepared.manifest)
