"""Per-domain reports a person can read: report.json (the numbers) and report.md (the same, as prose)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorafleet.evaluate import METRIC_NAMES


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return str(value)


def render_markdown(report: dict[str, Any]) -> str:
    d = report["domain"]
    gate = report.get("gate") or {}
    verdict = {"published": "PUBLISHED", "gated": "GATED (not promoted)", "failed": "FAILED"}[d["status"]]
    lines = [f"# {d['name']}: {verdict}", "", d.get("description", ""), "",
             f"Run `{report['run_id']}` · base model `{d['base_model']}` · dataset version "
             f"`{report['data']['dataset_version'][:12]}`", ""]
    if d.get("error"):
        lines += [f"**Error:** {d['error']}", ""]
    if gate:
        lines += ["## Release gate", "", "| check | value | threshold | result |", "| --- | --- | --- | --- |"]
        lines += [f"| {c['name']} | {_fmt(c['value'])} | {_fmt(c['threshold'])} | {'pass' if c['passed'] else 'FAIL'} |"
                  for c in gate["checks"]]
        lines.append("")
    metrics = report.get("metrics") or {}
    if metrics:
        models = [m for m in ("base", "tuned", "onnx") if m in metrics]
        lines += ["## Test split", "", "| metric | " + " | ".join(models) + " |",
                  "| --- |" + " --- |" * len(models)]
        for name in (*METRIC_NAMES, "n"):
            lines.append(f"| {name} | " + " | ".join(_fmt(metrics[m][name]) for m in models) + " |")
        lines.append("")
    parity = report.get("onnx_parity")
    if parity:
        lines += ["## ONNX parity (PyTorch vs onnxruntime)", "",
                  f"Greedy token match {parity['greedy_match_rate']:.3f} over {parity['prompts']} prompts × "
                  f"{parity['new_tokens']} tokens; max |logit difference| {parity['max_abs_logit_diff']:.2e}.", ""]
    drift = report.get("merge_drift")
    if drift:
        lines += ["## Merge drift", "", f"The adapter on the {drift['adapter_base']} base (as trained) vs the merged "
                  "16-bit model, and the merged model vs its ONNX export, on the same prompts:", "",
                  "| comparison | greedy token match | max abs logit diff |", "| --- | --- | --- |"]
        for label, key in (("adapter vs merged", "adapter_vs_merged"), ("merged vs ONNX", "merged_vs_onnx")):
            if key in drift:
                lines.append(f"| {label} | {drift[key]['greedy_match_rate']:.3f} | {drift[key]['max_abs_logit_diff']:.2e} |")
        lines.append("")
    trials = report.get("trials") or []
    if trials:
        winner = report.get("winner")
        lines += ["## Sweep", "", "| lora_rank | learning_rate | epochs | eval_loss | steps | seconds | backend | winner |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in trials:
            h, m = t["hparams"], t["metrics"]
            lines.append(f"| {h['lora_rank']} | {h['learning_rate']:g} | {h['epochs']} | "
                         f"{_fmt(m.get('eval_loss', 'error'))} | {m.get('steps', '')} | {_fmt(m.get('train_seconds', ''))} "
                         f"| {m.get('backend', '')} | {'★' if h == winner else ''} |")
        lines.append("")
    data = report["data"]
    lines += ["## Data", "", f"Source `{data['source']}` ({data['format']}), {data['records_read']} records read, "
              f"split seed {data['seed']}.", "",
              "| split | records | groups |", "| --- | --- | --- |"]
    lines += [f"| {s} | {data['counts'][s]} | {data['groups'][s]} |" for s in ("train", "val", "test")]
    if data["drops"]:
        lines += ["", f"{len(data['drops'])} records dropped:", ""]
        lines += [f"- line {drop['line']}: {drop['reason']}" for drop in data["drops"][:20]]
    examples = report.get("failing_examples") or []
    if examples:
        lines += ["", "## Tuned model: answers that failed the schema", ""]
        for ex in examples:
            lines += [f"**Input:** {ex['input'][:300]}", "", f"- expected: `{ex['expected']}`",
                      f"- got: `{ex['got'][:300]}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_reports(report: dict[str, Any], out_dir: str | Path) -> None:
    out_dir = Path(out_dir)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
