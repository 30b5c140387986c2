"""The recipe: configs -> data -> one sweep for every domain -> per domain: winner, merge, ONNX,
evaluation, gate, report, publish -> run summary. Read top to bottom."""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorafleet import data as data_mod
from lorafleet import __version__, evaluate, export, gate, lineage, merge, metrics, publish, report, select, sweep
from lorafleet.base_model import ensure_tiny_base, resolve_base_model
from lorafleet.config import ConfigError, DomainConfig, load_domain

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


@dataclass
class RunOptions:
    config_files: list[Path]
    overrides: dict[str, Any]
    storage: str
    run_id: str
    work_dir: Path


def _failed(error: str) -> dict[str, Any]:
    return {"status": "failed", "error": error, "trials": [], "winner": None, "metrics": {},
            "onnx_parity": None, "merge_drift": None, "gate": None, "artifacts": {}}


def load_configs(files: list[Path], overrides: dict[str, Any]) -> tuple[dict[str, DomainConfig], dict[str, str]]:
    """Every config that validates, and an error per file that does not (keyed by the file's stem)."""
    configs, errors = {}, {}
    for path in files:
        try:
            cfg = load_domain(path, overrides)
        except ConfigError as exc:
            errors[path.stem] = str(exc)
            continue
        if cfg.name in configs:
            errors[path.stem] = f"{path}: name {cfg.name!r} is already used by {configs[cfg.name].source_file}"
            continue
        configs[cfg.name] = cfg
    return configs, errors


def prepare_all(configs: dict[str, DomainConfig], work_dir: Path) -> tuple[dict[str, sweep.DomainPlan], dict[str, str]]:
    plans, errors = {}, {}
    for name, cfg in configs.items():
        try:
            prepared = data_mod.prepare(cfg, work_dir / name / "data")
        except (data_mod.DataError, OSError) as exc:
            errors[name] = str(exc)
            continue
        m = prepared.manifest
        log.info("[%s] data: %d records -> train %d / val %d / test %d, %d dropped, version %s", name,
                 m.records_read, m.counts["train"], m.counts["val"], m.counts["test"], len(m.drops),
                 m.dataset_version[:12])
        plans[name] = sweep.DomainPlan(cfg, prepared)
    return plans, errors


def finish_domain(plan: sweep.DomainPlan, outcomes: list[sweep.TrialOutcome], run_id: str, storage_uri: str,
                  work_dir: Path, git_commit: str | None = None) -> dict[str, Any]:
    """Winner -> merge -> evaluate (base, tuned, ONNX; test split and golden set) -> gate -> report ->
    publish, for one domain (a Ray task)."""
    cfg, prepared = plan.cfg, plan.data
    name = cfg.name
    out = work_dir / name
    base_path = resolve_base_model(cfg.base_model)
    trials = [{"hparams": o.hparams, "metrics": o.metrics, **({"error": o.error} if o.error else {})}
              for o in outcomes]
    winner_index, selection_notes = select.pick_winner(trials, cfg.select.rule)
    winner = outcomes[winner_index]
    log.info("[%s] 1/5 winner %s: %s", name, winner.hparams, "; ".join(selection_notes) or "the only trial")

    adapter_dir = out / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    winner.checkpoint.to_directory(str(adapter_dir))
    log.info("[%s] 2/5 merging the adapter into the 16-bit base", name)
    merged_dir = merge.merge_16bit(cfg.base_model, adapter_dir, out / "merged", snapshot={"winner": winner.hparams})
    # the config that produced these weights travels with them (litgpt keeps hyperparameters.yaml the same way)
    (merged_dir / "lorafleet_config.json").write_text(json.dumps(lineage.config_snapshot(cfg), indent=2))

    splits = {"test": prepared.test[: cfg.eval.max_examples] if cfg.eval.max_examples else prepared.test,
              "golden": prepared.golden}
    evaluation: dict[str, dict[str, Any]] = {split: {} for split, examples in splits.items() if examples}
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)

    def run_eval(kind: str, model, tokenizer, split_names=("test", "golden")) -> None:
        for split in split_names:
            if split not in evaluation:
                continue
            log.info("[%s] 3/5 evaluating the %s model on %d %s records", name, kind, len(splits[split]), split)
            evaluation[split][kind], rows[split, kind] = evaluate.evaluate_model(
                model, tokenizer, splits[split], prepared.schema, cfg.eval)
            with open(eval_dir / f"{split}-{kind}.jsonl", "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[split, kind])
            shown = evaluate.values(evaluation[split][kind])
            log.info("[%s] %s %s: %s", name, kind, split,
                     ", ".join(f"{k} {shown[k]:.3f}" for k in evaluate.KEY_METRICS if k in shown))

    test = splits["test"]
    dtype = cfg.export.dtype  # PyTorch models in the ONNX export's precision: parity compares like with like
    run_eval("base", *evaluate.load_torch_model(base_path, dtype=dtype))
    tuned_model, tokenizer = evaluate.load_torch_model(str(merged_dir), dtype=dtype)
    run_eval("tuned", tuned_model, tokenizer)
    # merge drift: the adapter on the base as it was trained (4-bit for QLoRA) vs the merged 16-bit model
    quantized = winner.metrics.get("load_in_4bit", False)
    adapted, _ = evaluate.load_torch_model(base_path, adapter=str(adapter_dir), load_in_4bit=bool(quantized))
    drift = {"adapter_base": "4-bit NF4" if quantized else "full precision",
             "adapter_vs_merged": export.check_parity(adapted, tuned_model, tokenizer, test[:8])}
    del adapted
    log.info("[%s] merge drift: %s", name, drift)
    parity = None
    if cfg.export.onnx:
        log.info("[%s] 4/5 exporting to ONNX", name)
        onnx_dir = export.to_onnx(merged_dir, out / "onnx", dtype=dtype)
        onnx_model, onnx_tokenizer = evaluate.load_onnx_model(str(onnx_dir))
        parity = export.check_parity(tuned_model, onnx_model, tokenizer, test[:8])
        drift["merged_vs_onnx"] = parity
        log.info("[%s] ONNX parity: %s", name, parity)
        run_eval("onnx", onnx_model, onnx_tokenizer, split_names=("test",))
    for split in evaluation:
        evaluation[split]["delta"] = metrics.paired_delta(
            rows[split, "base"], rows[split, "tuned"], samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed)

    verdict = gate.decide(cfg.gate, evaluation["test"]["tuned"], evaluation["test"]["base"],
                          evaluation["test"]["delta"], evaluation.get("golden", {}).get("tuned"))
    status = "published" if verdict["passed"] else "gated"
    failed_checks = [c["name"] for c in verdict["checks"] if not c["passed"]]
    log.info("[%s] 5/5 gate: %s%s", name, status, f" (failed: {', '.join(failed_checks)})" if failed_checks else "")
    record = {
        "run_id": run_id, "lorafleet_version": __version__, "git_commit": git_commit,
        "packages": lineage.package_versions(), "config": lineage.config_snapshot(cfg),
        "config_sha256": lineage.config_sha256(cfg), "dataset_version": prepared.manifest.dataset_version,
        "split_counts": prepared.manifest.counts, "golden_records": len(prepared.golden),
        "seeds": {"data": cfg.data.seed, "train": cfg.train.seed, "sweep": cfg.sweep.seed, "eval": cfg.eval.seed},
        "base_model": cfg.base_model, "base_model_sha256": lineage.weights_sha256(base_path),
        "winner": winner.hparams, "trial_count": len(outcomes), "backend": winner.metrics.get("backend"),
        "merged_sha256": lineage.weights_sha256(merged_dir),
    }
    storage = publish.Storage(storage_uri)
    prefix = publish.domain_prefix(run_id, name)
    artifacts = {"adapter": storage.url(f"{prefix}/adapter"), "merged": storage.url(f"{prefix}/merged"),
                 "onnx": storage.url(f"{prefix}/onnx") if cfg.export.onnx else None,
                 "report": storage.url(f"{prefix}/report.html"), "data": storage.url(f"{prefix}/data")}
    domain_summary = {
        "status": status, "error": None, "trials": trials, "winner": winner.hparams,
        "metrics": {kind: {**evaluate.values(e), "n": e["n"]} for kind, e in evaluation["test"].items() if kind != "delta"},
        "golden_metrics": {kind: {**evaluate.values(e), "n": e["n"]} for kind, e in evaluation.get("golden", {}).items()
                           if kind != "delta"} or None,
        "key_metrics": _key_metrics(evaluation),
        "onnx_parity": parity, "merge_drift": drift, "gate": verdict, "artifacts": artifacts}
    report.write_reports({
        "run_id": run_id,
        "domain": {"name": name, "description": cfg.description, "base_model": cfg.base_model, "status": status,
                   "error": None},
        "gate": verdict, "evaluation": {"test": evaluation["test"], "golden": evaluation.get("golden")},
        "failing_examples": _failing_examples(rows["test", "tuned"]),
        "trials": [{**t, "error": o.error, "history": o.history, "winner": i == winner_index}
                   for i, (t, o) in enumerate(zip(trials, outcomes))],
        "selection": {"rule": select.describe(cfg.select.rule), "explanation": "; ".join(selection_notes),
                      "ranked_by": next((k.metric for k in cfg.select.rule if k.threshold is None), None)},
        "onnx_parity": parity, "merge_drift": drift, "data": asdict(prepared.manifest), "lineage": record,
    }, out)
    (out / publish.DOMAIN_SUMMARY).write_text(json.dumps(domain_summary, indent=2, ensure_ascii=False))
    publish.publish_domain(storage, run_id, name, out, extra={"status": status, "lineage": record})
    # the storage holds verified copies now: the scratch copies of the weights would pile up night after night
    for weights in (merged_dir, out / "onnx"):
        shutil.rmtree(weights, ignore_errors=True)
    if status == "published":
        publish.promote(storage, run_id, name)
    return domain_summary


def _key_metrics(evaluation: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The few numbers the run index shows for a domain."""
    test = evaluation["test"]
    tuned = evaluate.values(test["tuned"])
    keys = {k: tuned[k] for k in ("schema_pass_rate", "field_accuracy", "score") if k in tuned}
    if "score" in test["delta"]:
        keys["score gain"] = test["delta"]["score"]["value"]
    if "golden" in evaluation:
        keys["golden score"] = evaluate.values(evaluation["golden"]["tuned"]).get("score")
    return keys


def _failing_examples(rows: list[dict[str, Any]], per_field: int = 3) -> list[dict[str, Any]]:
    """For the tuned model's worst fields, a few test examples it got wrong."""
    return [{"field": f, "examples": [{k: r[k] for k in ("id", "input", "expected", "got")}
                                      for r in rows if r["fields"].get(f, 0.0) < 1.0][:per_field]}
            for f in metrics.worst_fields(rows)]


def resume_published(storage: publish.Storage, run_id: str, name: str) -> dict[str, Any] | None:
    """A domain an earlier attempt of this run already published: its summary entry, with the latest
    pointer moved if that attempt stopped between manifest and pointer. None when not published."""
    if not publish.is_published(storage, run_id, name):
        return None
    entry = publish.read_domain_summary(storage, run_id, name)
    if entry["status"] == "published":
        publish.promote(storage, run_id, name)
    return entry


def run(opts: RunOptions) -> dict[str, Any]:
    """The whole job. Needs a connected Ray (``ray.init`` done by the caller)."""
    import ray

    started = time.time()
    storage = publish.Storage(opts.storage)
    domains: dict[str, dict[str, Any]] = {}

    configs, errors = load_configs(opts.config_files, opts.overrides)
    plans, data_errors = prepare_all(configs, opts.work_dir)
    for name, error in {**errors, **data_errors}.items():
        log.error("[%s] %s", name, error)
        domains[name] = _failed(error)
    for name in list(plans):
        entry = resume_published(storage, opts.run_id, name)
        if entry is not None:
            log.info("[%s] already published by an earlier attempt of run %s; kept as it is", name, opts.run_id)
            domains[name] = entry
            del plans[name]

    if plans:
        for ref in sorted({p.cfg.base_model for p in plans.values()}):
            if ref == "tiny":
                log.info("base model: building or reusing the embedded tiny model")
                ensure_tiny_base()
        tune_path, tune_fs = storage.tune_location(opts.run_id)
        outcomes = sweep.run_sweep(plans, storage_path=tune_path, name="sweep", storage_filesystem=tune_fs)
        commit = lineage.git_commit()
        finish = ray.remote(finish_domain)
        pending = {}
        for name, plan in plans.items():
            ok = [o for o in outcomes[name] if o.metrics and o.checkpoint is not None]
            if not ok:
                errs = "; ".join(o.error or "no result" for o in outcomes[name])
                domains[name] = {**_failed(f"every trial failed: {errs}"),
                                 "trials": [{"hparams": o.hparams, "metrics": {}, "error": o.error}
                                            for o in outcomes[name]]}
                continue
            # merge/evaluate on the kind of node the trials used, unless the config says otherwise
            res = plan.cfg.eval.resources or plan.cfg.sweep.resources_per_trial
            pending[name] = finish.options(num_cpus=res.cpu, num_gpus=res.gpu, max_retries=0).remote(
                plan, outcomes[name], opts.run_id, opts.storage, opts.work_dir, commit)
        for name, ref in pending.items():
            try:
                domains[name] = ray.get(ref)
            except Exception as exc:  # one domain's failure must not sink the others
                cause = getattr(exc, "cause", None) or exc
                log.error("[%s] failed after training: %s", name, cause)
                domains[name] = _failed(f"{type(cause).__name__}: {cause}")

    failed = sum(d["status"] == "failed" for d in domains.values())
    status = "succeeded" if failed == 0 else ("failed" if failed == len(domains) else "partial")
    summary = {"run_id": opts.run_id, "status": status, "seconds": round(time.time() - started, 1),
               "storage": opts.storage, "domains": dict(sorted(domains.items()))}
    index = report.render_index({**summary, "domains": {
        name: {**d, "report_href": f"{name}/report.html" if d["status"] != "failed" else None}
        for name, d in summary["domains"].items()}})
    summary["index_uri"] = publish.write_run_file(storage, opts.run_id, "index.html", index)
    summary["summary_uri"] = publish.summary_url(storage, opts.run_id)
    publish.write_summary(storage, opts.run_id, summary)  # last: a run with a summary is a finished run
    return summary
