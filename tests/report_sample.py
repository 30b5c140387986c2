"""A realistic domain report dict (the shape report.py renders), built by hand for the report tests."""
from __future__ import annotations

import copy
import math

XSS = "<script>alert('x')</script>"


def _eval(n: int, base: float, fields: dict[str, float]) -> dict:
    def m(v: float) -> dict:
        return {"value": v, "ci": [max(0.0, v - 0.06), min(1.0, v + 0.05)]}

    return {"n": n,
            "metrics": {"json_valid_rate": m(min(1.0, base + 0.1)), "schema_pass_rate": m(base),
                        "field_accuracy": m(base - 0.05),
                        "score": {"value": base * 100, "ci": [base * 90, base * 100 + 4]},
                        "chrf": m(base - 0.1), "eval_loss": {"value": 2.0 - base, "ci": None},
                        "perplexity": {"value": math.exp(2.0 - base), "ci": None}},
            "fields": {f: m(v) for f, v in fields.items()}}


def _delta(tuned: dict, base: dict) -> dict:
    def d(a: dict, b: dict) -> dict:
        diff = a["value"] - b["value"]
        return {"value": diff, "ci": [diff - 0.04, diff + 0.04]}

    out = {k: d(tuned["metrics"][k], base["metrics"][k]) for k in tuned["metrics"]}
    out["fields"] = {f: d(tuned["fields"][f], base["fields"][f]) for f in tuned["fields"]}
    return out


def _history(lr: float, steps: int = 40) -> list[dict]:
    rows = []
    for step in range(5, steps + 1, 5):
        rows.append({"step": step, "loss": 3.0 * math.exp(-lr * 400 * step / steps) + 0.4, "learning_rate": lr,
                     "epoch": step / steps})
        if step % 10 == 0:
            rows.append({"step": step, "eval_loss": 3.2 * math.exp(-lr * 350 * step / steps) + 0.5})
    return rows


def sample_report() -> dict:
    base_t = _eval(120, 0.42, {"party": 0.55, "amount": 0.40, "date": 0.61})
    tuned_t = _eval(120, 0.78, {"party": 0.91, "amount": 0.64, "date": 0.88})
    onnx_t = copy.deepcopy(tuned_t)
    base_g = _eval(30, 0.40, {"party": 0.50, "amount": 0.35, "date": 0.60})
    tuned_g = _eval(30, 0.70, {"party": 0.85, "amount": 0.55, "date": 0.80})
    hp = [(8, 2e-4, 2), (16, 1e-3, 2), (16, 5e-3, 1)]
    trials = [{"hparams": {"lora_rank": r, "learning_rate": lr, "epochs": ep},
               "metrics": {"eval_loss": 1.1 - i * 0.2, "score": 60.0 + i * 9, "steps": 40, "train_seconds": 12.5,
                           "backend": "peft"},
               "error": None, "history": _history(lr), "winner": i == 1} for i, (r, lr, ep) in enumerate(hp)]
    trials[2]["metrics"]["score"] = 72.0  # lower than the winner's: the rule is on score
    return {
        "run_id": "20260101-0300-abc123",
        "domain": {"name": "contracts", "description": f"Extract parties and amounts from contracts {XSS}",
                   "base_model": "tiny", "status": "gated", "error": None},
        "gate": {"passed": False, "checks": [
            {"name": "schema_pass_rate >= 0.6", "kind": "absolute", "value": 0.78, "threshold": 0.6, "passed": True,
             "detail": "tuned 0.780 [0.720, 0.830]"},
            {"name": "not_below_base score", "kind": "not_below_base", "value": 36.0, "threshold": 0.0, "passed": True,
             "detail": "delta lower bound 32.0 >= 0"},
            {"name": "field amount >= 0.75", "kind": "field_regression", "value": 0.64, "threshold": 0.75,
             "passed": False, "detail": "amount accuracy 0.640 below 0.75"},
            {"name": "golden score", "kind": "golden", "value": None, "threshold": 50.0, "passed": True,
             "detail": "no golden score for base"}]},
        "evaluation": {"test": {"base": base_t, "tuned": tuned_t, "onnx": onnx_t, "delta": _delta(tuned_t, base_t)},
                       "golden": {"base": base_g, "tuned": tuned_g, "delta": _delta(tuned_g, base_g)}},
        "failing_examples": [
            {"field": "amount", "examples": [
                {"id": "c-17", "input": "This agreement between ACME and Globex " * 30 + XSS,
                 "expected": '{"amount": 1200.5}', "got": '{"amount": "1,200"}'},
                {"id": "c-42", "input": "Short contract.", "expected": '{"amount": 9}', "got": "not json ```"}]},
            {"field": "date", "examples": [{"id": "c-3", "input": "Signed 1 Jan 2025.",
                                            "expected": '{"date": "2025-01-01"}', "got": '{"date": "2025-1-1"}'}]}],
        "trials": trials,
        "selection": {"rule": ["score:max", "eval_loss:min"],
                      "explanation": "trial 1 has the highest score (69.0); eval_loss breaks ties."},
        "onnx_parity": {"greedy_match": 1.0, "max_abs_logit_diff": 3.2e-5, "prompts": 8, "new_tokens": 16},
        "merge_drift": {"adapter_base": "full precision",
                        "adapter_vs_merged": {"greedy_match": 0.98, "max_abs_logit_diff": 0.0021},
                        "merged_vs_onnx": {"greedy_match": 1.0, "max_abs_logit_diff": 3.2e-5}},
        "data": {"dataset_version": "9f1c2e7ab0d4", "records_read": 412,
                 "counts": {"train": 300, "val": 40, "test": 60},
                 "drops": [{"line": 7, "reason": f"invalid JSON {XSS}"}, {"line": 90, "reason": "duplicate"}],
                 "source": "configs/domains/contracts/data.jsonl", "seed": 13},
        "lineage": {"run_id": "20260101-0300-abc123", "git_commit": "6a41003", "config_sha256": "ab" * 32,
                    "packages": {"torch": "2.13.0", "transformers": "4.57.6"}, "dataset_version": "9f1c2e7ab0d4",
                    "base_model": "tiny", "winner": {"lora_rank": 16, "learning_rate": 1e-3, "epochs": 2},
                    "backend": "peft"},
    }


def sample_summary() -> dict:
    return {"run_id": "20260101-0300-abc123", "status": "partial", "seconds": 812.4, "storage": "s3://bucket/lorafleet",
            "domains": {
                "contracts": {"status": "gated", "error": None, "gate": sample_report()["gate"],
                              "key_metrics": {"score": 78.0, "schema_pass_rate": 0.78},
                              "report_href": "contracts/report.html"},
                "legal": {"status": "published", "error": None, "gate": {"passed": True, "checks": []},
                          "key_metrics": {"score": 81.2, "schema_pass_rate": 0.81}, "report_href": "legal/report.html"},
                "broken": {"status": "failed", "error": f"every trial failed: CUDA OOM {XSS}", "gate": None,
                           "key_metrics": {}, "report_href": None}}}
