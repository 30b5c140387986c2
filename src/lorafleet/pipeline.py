"""The recipe: configs -> data -> the domains whose inputs changed since their latest published run -> one sweep for
them all, and per domain, as soon as its own trials are done (while other domains still train), its finishing as a Ray
task: winner, merge, evaluation, drift and ONNX parity, gate, the model folders' contract, report, publish -> once every
domain is finished: latest pointers -> each domain's history -> run summary -> a message to each webhook the configs
name. Read top to bottom."""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pydantic

from lorafleet import (
    contract,
    evaluate,
    export,
    gate,
    history,
    incremental,
    lineage,
    merge,
    metrics,
    notify,
    publish,
    report,
    select,
    sweep,
)
from lorafleet import data as data_mod
from lorafleet.base_model import GGUF_PREFIX, ensure_tiny_base, resolve_base_model
from lorafleet.cluster import Call, TaskFailure, TaskGroup
from lorafleet.config import ConfigError, DomainConfig, chooses, load_file
from lorafleet.console import progress
from lorafleet.data import Example
from lorafleet.evaluate import SplitScores
from lorafleet.export import Drift
from lorafleet.metrics import SplitEvaluation
from lorafleet.results import Artifacts, DomainResult, FinishTimings, RunSummary, SearchStory, TrialOutcome, VariantResult
from lorafleet.sweep import DomainPlan

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class RunOptions:
    config_files: list[Path]
    overrides: dict[str, Any]
    storage: str
    run_id: str
    work_dir: Path
    verbose: bool = False
    tune_callbacks: tuple = ()  # more Tune callbacks for the sweep (e.g. a team's experiment tracker)
    force: Literal["all"] | frozenset[str] = frozenset()  # domains retrained even if unchanged since published
    domains: list[str] | None = None  # names or globs choosing a pipeline file's steps (config.chooses); None: all

    def forced(self, domain: str) -> bool:
        return self.force == "all" or (bool(self.force) and chooses(sorted(self.force), domain))  # names or globs


@dataclass(frozen=True)
class FinishContext:
    """What every domain's finishing task needs besides its own plan and trials."""

    run_id: str
    storage: str
    work_dir: Path
    git_commit: str | None


def run(opts: RunOptions) -> RunSummary:
    """The whole job. Needs a connected Ray (``ray.init`` done by the caller)."""
    started = time.time()
    storage = publish.Storage(opts.storage)
    configs, results = load_configs(opts.config_files, opts.overrides, opts.domains)
    plans, failed = prepare_all(configs, opts.work_dir)
    results |= failed
    kept = resume_published(storage, opts.run_id, list(plans))
    results |= kept
    plans = {name: plan for name, plan in plans.items() if name not in kept}
    ensure_base_models(plans)
    unchanged = unchanged_since_published(storage, plans, opts.forced)
    results |= unchanged
    plans = {name: plan for name, plan in plans.items() if name not in unchanged}
    if plans:
        finishing = Finishing(plans, FinishContext(opts.run_id, opts.storage, opts.work_dir, lineage.git_commit()))
        sweep.run_sweep(plans, storage, opts.run_id, verbose=opts.verbose, callbacks=list(opts.tune_callbacks),
                        on_domain_trained=finishing.start)
        results |= finishing.results()
    changes = changes_since_last_publication(storage, opts.run_id, results, configs)  # before any pointer moves
    promote_passed(storage, opts.run_id, results)
    history.record_run(storage, opts.run_id, results)
    summary = write_run_summary(storage, opts.run_id, results, time.time() - started)
    tell_people(summary, configs, changes)
    return summary


# ---- before training ---------------------------------------------------------------------------------

def load_configs(files: list[Path], overrides: dict[str, Any], domains: list[str] | None = None,
                 ) -> tuple[dict[str, DomainConfig], dict[str, DomainResult]]:
    """Every config that validates, and a failed result per file that does not (named by the file's stem) or per
    pipeline step that does not (named by its domain). A pipeline file gives the steps ``domains`` choose
    (``config.chooses``; None: all)."""
    configs: dict[str, DomainConfig] = {}
    failed: dict[str, DomainResult] = {}
    for path in files:
        try:
            loaded = load_file(path, overrides, domains)
        except ConfigError as exc:
            failed[path.stem] = DomainResult.failed(path.stem, str(exc))
            continue
        for name, cfg in loaded.items():
            if isinstance(cfg, ConfigError):
                failed[name] = DomainResult.failed(name, str(cfg))
            elif cfg.name in configs:
                key = name if cfg.step is not None else path.stem
                failed[key] = DomainResult.failed(
                    key, f"{path}: name {cfg.name!r} is already used by {configs[cfg.name].source_file}")
            else:
                configs[cfg.name] = cfg
    for result in failed.values():
        log.error("[%s] %s", result.name, result.error)
    return configs, failed


def prepare_all(configs: dict[str, DomainConfig], work_dir: Path) -> tuple[dict[str, DomainPlan], dict[str, DomainResult]]:
    plans, failed = {}, {}
    for name, cfg in configs.items():
        try:
            prepared = data_mod.prepare(cfg, work_dir / name / "data")
        except (data_mod.DataError, OSError) as exc:
            log.error("[%s] %s", name, exc)
            failed[name] = DomainResult.failed(name, str(exc))
            continue
        m = prepared.manifest
        reasons = ", ".join(f"{code} {n}" for code, n in m.drops_by_reason.items())
        progress.info("[%s] data: %d records -> train %d / val %d / test %d, %d dropped%s, version %s", name,
                      m.records_read, m.counts["train"], m.counts["val"], m.counts["test"], len(m.drops),
                      f" ({reasons})" if reasons else "", m.dataset_version[:12])
        plans[name] = DomainPlan(cfg, prepared)
    flag_cross_domain(plans, work_dir)
    return plans, failed


def flag_cross_domain(plans: dict[str, DomainPlan], work_dir: Path) -> None:
    """Training records near another domain's evaluation records, into each domain's manifest (a report, not a
    drop: the dataset version stays), rewritten in its data folder."""
    prepared = {name: plan.data for name, plan in plans.items()}
    data_mod.flag_cross_domain(prepared, {name: plan.cfg for name, plan in plans.items()})
    for name, data in prepared.items():
        if data.manifest.cross_domain:
            log.warning("[%s] %d training records are near other domains' evaluation records (%s)", name,
                        len(data.manifest.cross_domain),
                        ", ".join(sorted({m.domain for m in data.manifest.cross_domain})))
        data_mod.write_manifest(data, work_dir / name / "data")


def resume_published(storage: publish.Storage, run_id: str, names: list[str]) -> dict[str, DomainResult]:
    """The domains an earlier attempt of this run already published, as that attempt recorded them."""
    kept = {}
    for name in names:
        if publish.is_published(storage, run_id, name):
            progress.info("[%s] already published by an earlier attempt of run %s; kept as it is", name, run_id)
            result = DomainResult.from_json(publish.read_domain_summary(storage, run_id, name))
            kept[name] = result.model_copy(update={"resumed": True})
    return kept


def ensure_base_models(plans: dict[str, DomainPlan]) -> None:
    """Build the embedded base and dequantize GGUF bases once, here, rather than in every trial at once."""
    if any(p.cfg.base_model == "tiny" for p in plans.values()):
        progress.info("base model: building or reusing the embedded tiny model")
        ensure_tiny_base()
    for ref in sorted({p.cfg.base_model_ref for p in plans.values() if p.cfg.base_model.startswith(GGUF_PREFIX)}):
        progress.info("base model: dequantizing (or reusing the cached) %s", ref)
        resolve_base_model(ref)


def unchanged_since_published(storage: publish.Storage, plans: dict[str, DomainPlan],
                              forced: Callable[[str], bool]) -> dict[str, DomainResult]:
    """The domains made from the same inputs (config, data, base weights, lorafleet version) as their latest
    published run, unless forced: not trained or uploaded again, and the pointer stays at that run."""
    unchanged = {}
    for name, plan in plans.items():
        inputs = lineage.Inputs.of(plan.cfg, plan.data.manifest.dataset_version, resolve_base_model(plan.cfg.base_model_ref))
        decision = incremental.decide(inputs, latest_published(storage, name), forced(name))
        if decision.retrain:
            progress.info("[%s] to train: %s", name, decision.reason)
            continue
        progress.info("[%s] unchanged, not retrained: %s", name, decision.reason)
        unchanged[name] = unchanged_result(storage, plan, decision.matches_run)
    return unchanged


def latest_published(storage: publish.Storage, name: str) -> incremental.Published | None:
    """The domain's latest published run and its lineage's inputs; None when there is none, or when latest.json names
    no manifest with such a lineage (then the domain retrains, and its new run is what the next night compares with)."""
    try:
        manifest = publish.latest_manifest(storage, name)
        return incremental.Published.of(manifest) if manifest else None
    except (KeyError, FileNotFoundError, pydantic.ValidationError) as exc:
        log.warning("[%s] %s names no manifest with a lineage to compare with (%s: %s)", name,
                    storage.url(publish.latest_key(name)), type(exc).__name__, exc)
        return None


def unchanged_result(storage: publish.Storage, plan: DomainPlan, run_id: str) -> DomainResult:
    """The published run's winner, evaluations and gate (its model is the one that stays; the gate as a human review
    decided it later, if one did), linked to its objects."""
    published = DomainResult.from_json(publish.read_domain_summary(storage, run_id, plan.cfg.name))
    return DomainResult(name=plan.cfg.name, status="unchanged", matches_run=run_id,
                        dataset_version=plan.data.manifest.dataset_version, winner=published.winner,
                        test=published.test, golden=published.golden, variants=published.variants,
                        gate=reviewed_gate(storage, run_id, plan.cfg.name) or published.gate,
                        artifacts=artifact_uris(storage, run_id, plan.cfg))


def reviewed_gate(storage: publish.Storage, run_id: str, name: str) -> gate.GateVerdict | None:
    """The gate a human review of the run's domain decided (``lorafleet review import``), None if none did; a verdict
    that does not read is a warning, and the run's own gate stands."""
    try:
        reviewed = publish.read_review_verdict(storage, run_id, name)
        return gate.GateVerdict.model_validate(reviewed["gate"]) if reviewed else None
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: bad JSON, pydantic's ValidationError
        log.warning("[%s] run %s's review verdict is left out (%s: %s)", name, run_id, type(exc).__name__, exc)
        return None


# ---- after each domain's training: one Ray task per domain -----------------------------------------------

class Finishing:
    """Each domain finished as its own Ray task, started as soon as its trials are done, side by side with
    the other domains' trials and finishing tasks; ``results`` waits for them all."""

    def __init__(self, plans: dict[str, DomainPlan], context: FinishContext):
        self.plans, self.context = plans, context
        self.trials: dict[str, list[TrialOutcome]] = {}  # of each domain whose trials are done
        self.failed: dict[str, DomainResult] = {}  # domains without a finished trial: nothing to finish
        self.tasks = TaskGroup()

    def start(self, name: str, trials: list[TrialOutcome], story: SearchStory | None = None) -> None:
        """The sweep's ``on_domain_trained``: in the driver, as the domain's last trial ended (``story``: how its
        staged search went, for that strategy)."""
        self.trials[name] = trials
        if not any(t.candidate for t in trials):
            version = self.plans[name].data.manifest.dataset_version
            if story is not None and story.fix_prompt:  # the staged search stopped at its round-0 gate
                error = f"staged search stopped: {story.stopped}"
            else:
                causes = "; ".join(dict.fromkeys(t.ended_how or "no result" for t in trials)) or "no trial ran"
                error = f"every trial failed: {causes}"  # each cause once
            self.failed[name] = DomainResult.failed(name, error, trials, version).model_copy(update={"search": story})
            log.error("[%s] %s", name, error)
            return
        training = len(self.plans) - len(self.trials)
        meanwhile = {0: "", 1: " while 1 domain still trains"}.get(training, f" while {training} domains still train")
        progress.info("[%s] trials done; finishing%s", name, meanwhile)
        # on the kind of node the trials used, unless the config says otherwise
        plan = self.plans[name]
        self.tasks.submit(name, finish_domain, Call((plan, trials, self.context, story), plan.cfg.finish_resources))

    def results(self) -> dict[str, DomainResult]:
        """Every domain's result, once all finishing tasks ended."""
        results = dict(self.failed)
        for name, outcome in self.tasks.results().items():
            if isinstance(outcome, TaskFailure):
                log.error("[%s] failed after training: %s", name, outcome)
                outcome = DomainResult.failed(name, f"failed after training: {outcome}", self.trials[name],
                                              self.plans[name].data.manifest.dataset_version)
            else:
                progress.info("[%s] %s: %s", name, outcome.status.upper(), outcome.artifacts.report)
            results[name] = outcome
        return results


def finish_domain(plan: DomainPlan, trials: list[TrialOutcome], context: FinishContext,
                  story: SearchStory | None = None) -> DomainResult:
    """Winner -> merge -> evaluate -> drift and ONNX parity -> gate -> result -> the model folders' contract and the
    report -> publish, each phase timed (``story``: how the domain's staged search went, for its report)."""
    cfg, out, base_path = plan.cfg, context.work_dir / plan.cfg.name, resolve_base_model(plan.cfg.base_model_ref)
    selection, watch = choose_winner(cfg, trials), Stopwatch()
    winner = trials[selection.winner]
    with watch("merge"):
        adapter_dir, merged_dir = merge_winner(cfg, winner, out)
    with watch("base_eval"):
        base = score_model(plan, "base", *evaluate.load_torch_model(
            base_path, dtype=cfg.export.dtype, trust_remote_code=cfg.trust_remote_code), out / "eval")
    with watch("tuned_eval"):
        tuned_model, tokenizer = evaluate.load_torch_model(str(merged_dir), dtype=cfg.export.dtype, safetensors_only=True,
                                                           trust_remote_code=cfg.trust_remote_code)
        tuned = score_model(plan, "tuned", tuned_model, tokenizer, out / "eval")
    no_context = None
    if plan.data.context is not None:
        with watch("context_eval"):
            no_context = score_model(plan, "tuned-no-context", tuned_model, tokenizer, out / "eval", golden=False,
                                     with_context=False)
    with watch("merge_drift"):
        drift = measure_merge_drift(plan, base_path, winner, adapter_dir, tuned_model, tokenizer, tuned.test)
    onnx, drift, variants = (export_and_score(plan, merged_dir, tuned_model, tokenizer, tuned.test, drift, out, watch)
                             if cfg.export.onnx else (None, drift, {}))
    test, golden = compare(cfg, base, tuned, onnx, no_context, plan.data)
    verdict = gate.decide(cfg.gate, test, golden,
                          variants={name: v.evaluation for name, v in variants.items()} if cfg.export.onnx else None)
    result = DomainResult(name=cfg.name, status="published" if verdict.passed else "gated",
                          dataset_version=plan.data.manifest.dataset_version, trials=trials, winner=winner.hparams,
                          test=test, golden=golden, drift=drift, variants=variants, gate=verdict,
                          artifacts=artifact_uris(publish.Storage(context.storage), context.run_id, cfg),
                          timings=FinishTimings(**watch.seconds), search=story)
    progress.info("[%s] gate: %s", cfg.name, "passed" if verdict.passed else f"GATED ({', '.join(verdict.failed)})")
    with watch("report"):
        record = lineage_record(context, plan, base_path, winner, len(trials), merged_dir)
        write_model_contracts(context, plan, result, record, out)
        write_domain_report(context, plan, result, selection, tuned, record, out)
    with watch("publish"):
        publish_domain(context, cfg.name, result, record, out)
    return result.model_copy(update={"timings": FinishTimings(**watch.seconds)})


class Stopwatch:
    """Seconds per phase of a recipe: ``with watch("merge"): ...`` times the phase "merge"."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.seconds[phase] = round(time.perf_counter() - started, 2)


@dataclass(frozen=True)
class ModelScores:
    """One model's answers and metrics on the test split and (not for ONNX) the golden set."""

    test: SplitScores
    golden: SplitScores | None


def choose_winner(cfg: DomainConfig, trials: list[TrialOutcome]) -> select.Selection:
    selection = select.pick_winner([t.metrics if t.candidate else None for t in trials], cfg.select.rule)
    progress.info("[%s] winner %s: %s", cfg.name, trials[selection.winner].hparams.label,
                  "; ".join(selection.notes) or "the only finished trial")
    return selection


def merge_winner(cfg: DomainConfig, winner: TrialOutcome, out: Path) -> tuple[Path, Path]:
    """The winner's adapter (from the run's storage) and the 16-bit merge, with the config that produced it
    beside the weights (litgpt keeps hyperparameters.yaml the same way)."""
    adapter_dir = out / "adapter"
    shutil.rmtree(adapter_dir, ignore_errors=True)
    winner.checkpoint.to_directory(str(adapter_dir))
    merged_dir = merge.merge_16bit(cfg.base_model_ref, adapter_dir, out / "merged", snapshot={"winner": asdict(winner.hparams)},
                                   trust_remote_code=cfg.trust_remote_code)
    (merged_dir / "lorafleet_config.json").write_text(json.dumps(lineage.config_snapshot(cfg), indent=2))
    progress.info("[%s] merged the adapter into the 16-bit base", cfg.name)
    return adapter_dir, merged_dir


def evaluated_test(plan: DomainPlan) -> list[Example]:
    """The test records every model answers, and parity compares models on: the first eval.max_examples (all
    without it)."""
    return plan.data.test[: plan.cfg.eval.max_examples]


def score_model(plan: DomainPlan, kind: str, model, tokenizer, eval_dir: Path, golden: bool = True,
                with_context: bool = True) -> ModelScores:
    """Answer and score the test split (and the golden set); every answer goes to eval/<split>-<kind>.jsonl.
    ``with_context`` false: each record asked with its context taken out of the system prompt (a domain with
    context; its answers are still scored against the record's entity)."""
    cfg = plan.cfg
    splits = {"test": evaluated_test(plan), "golden": plan.data.golden if golden else []}
    if not with_context:
        splits = {name: [e.without_context() for e in examples] for name, examples in splits.items()}
    scores = {}
    eval_dir.mkdir(parents=True, exist_ok=True)
    for split, examples in splits.items():
        if not examples:
            continue
        scores[split] = evaluate.evaluate_model(model, tokenizer, examples, plan.data.schema, cfg.eval,
                                                plan.data.context)
        (eval_dir / f"{split}-{kind}.jsonl").write_text(
            "".join(json.dumps(a.model_dump(), ensure_ascii=False) + "\n" for a in scores[split].answers), encoding="utf-8")
    shown = ", ".join(f"{k} {v:.3f}" for k in metrics.KEY_METRICS
                      if (v := scores["test"].evaluation.value(k)) is not None)
    (progress if not kind.startswith("onnx") else log).info(
        "[%s] %s model on %s: %s", cfg.name, kind, " + ".join(f"{len(s.answers)} {n}" for n, s in scores.items()), shown)
    return ModelScores(test=scores["test"], golden=scores.get("golden"))


def measure_merge_drift(plan: DomainPlan, base_path: str, winner: TrialOutcome, adapter_dir: Path, merged_model,
                        tokenizer, merged: SplitScores) -> Drift:
    """The adapter on the base as it was trained (4-bit for QLoRA) vs the merged 16-bit model, on the test records
    the merged model answered in its evaluation (``merged``: those answers, reused)."""
    adapted, _ = evaluate.load_torch_model(base_path, adapter=str(adapter_dir), load_in_4bit=winner.load_in_4bit,
                                           trust_remote_code=plan.cfg.trust_remote_code)
    examples, eval_cfg = evaluated_test(plan), plan.cfg.eval
    answers = evaluate.generate_token_ids(adapted, tokenizer, examples, eval_cfg.max_new_tokens, eval_cfg.batch_size)
    parity = export.check_parity(adapted, merged_model, tokenizer, examples, answers, merged.token_ids)
    log.info("[%s] merge drift: %s", plan.cfg.name, parity)
    return Drift(adapter_base="4-bit NF4" if winner.load_in_4bit else "full precision", adapter_vs_merged=parity)


def export_and_score(plan: DomainPlan, merged_dir: Path, tuned_model, tokenizer, tuned: SplitScores, drift: Drift,
                     out: Path, watch: Stopwatch) -> tuple[ModelScores, Drift, dict[str, VariantResult]]:
    """ONNX export (in the evaluation's precision), its test answers, and its parity with the merged PyTorch
    model on them (``tuned``: the merged model's test answers); then the variants (export.variants): the export's
    size and speed, and each variant built from it, scored the same way, sized and timed."""
    with watch("onnx_export"):
        onnx_dir = export.to_onnx(merged_dir, out / "onnx", dtype=plan.cfg.export.dtype,
                                  trust_remote_code=plan.cfg.trust_remote_code)
    with watch("onnx_load"):
        onnx_model, onnx_tokenizer = evaluate.load_onnx_model(str(onnx_dir), trust_remote_code=plan.cfg.trust_remote_code)
    with watch("onnx_parity_eval"):
        scores = score_model(plan, "onnx", onnx_model, onnx_tokenizer, out / "eval", golden=False)
        parity = export.check_parity(tuned_model, onnx_model, tokenizer, evaluated_test(plan), tuned.token_ids,
                                     scores.test.token_ids)
    progress.info("[%s] exported to ONNX (%s): parity with PyTorch %s; score %.1f", plan.cfg.name, onnx_model.provider,
                  parity, scores.test.evaluation.value("score") or 0.0)
    with watch("onnx_variants"):
        variants = score_variants(plan, onnx_dir, onnx_model, onnx_tokenizer, scores.test, parity, tuned_model,
                                  tokenizer, tuned, out)
    return scores, drift.model_copy(update={"merged_vs_onnx": parity, "onnx_provider": onnx_model.provider}), variants


def score_variants(plan: DomainPlan, export_dir: Path, export_model, export_tokenizer, export_scores: SplitScores,
                   export_parity: export.Parity, tuned_model, tokenizer, tuned: SplitScores,
                   out: Path) -> dict[str, VariantResult]:
    """Every ONNX variant, the export itself first (its scores and parity given): each further one built from the
    export into its own folder, loaded, its test answers scored and compared with the merged model's (``tuned``);
    each one's size and tokens/s on the CPU."""
    cfg = plan.cfg
    primary, *derived = cfg.export.variants
    variants = {primary: variant_result(plan, primary, export_dir, export_model, export_tokenizer, export_scores,
                                        export_parity)}
    for variant in derived:
        folder = export.build_variant(export_dir, out / export.variant_folder(variant, primary), variant,
                                      cfg.export.int4_block_size)
        model, variant_tokenizer = evaluate.load_onnx_model(str(folder), trust_remote_code=cfg.trust_remote_code)
        scores = score_model(plan, f"onnx-{variant}", model, variant_tokenizer, out / "eval", golden=False)
        parity = export.check_parity(tuned_model, model, tokenizer, evaluated_test(plan), tuned.token_ids,
                                     scores.test.token_ids)
        variants[variant] = variant_result(plan, variant, folder, model, variant_tokenizer, scores.test, parity)
    progress.info("[%s] ONNX variants (size, CPU tokens/s, score, greedy agreement with PyTorch): %s", cfg.name, "; ".join(
        f"{name} {v.bytes / 1e6:.1f} MB, {v.speed.tokens_per_s:.0f} tokens/s, score {v.evaluation.value('score') or 0.0:.1f}, "
        f"greedy {v.parity.greedy_match_rate:.2f}" for name, v in variants.items()))
    return variants


def variant_result(plan: DomainPlan, variant: str, folder: Path, model, tokenizer, scores: SplitScores,
                   parity: export.Parity) -> VariantResult:
    """A variant's record: its scores and parity, its graph's bytes, and its speed on the CPU (in a CPU session of its
    own when it was evaluated on a GPU)."""
    cfg = plan.cfg
    cpu_model = model
    if model.provider != "CPUExecutionProvider":
        cpu_model, _ = evaluate.load_onnx_model(str(folder), trust_remote_code=cfg.trust_remote_code,
                                                provider="CPUExecutionProvider")
    return VariantResult(folder=folder.name, weights=export.variant_weights(variant, cfg.export.dtype,
                                                                           cfg.export.int4_block_size),
                         evaluation=scores.evaluation, parity=parity, provider=model.provider,
                         bytes=export.graph_bytes(folder),
                         speed=export.measure_speed(cpu_model, tokenizer, evaluated_test(plan)[0]))


def compare(cfg: DomainConfig, base: ModelScores, tuned: ModelScores, onnx: ModelScores | None,
            no_context: ModelScores | None = None,
            data: data_mod.PreparedData | None = None) -> tuple[SplitEvaluation, SplitEvaluation | None]:
    """Test split and golden set: base vs tuned (paired delta) vs ONNX; for a domain with context, on the test split
    also the tuned model with its context vs the same model without (paired gain; ``data``: which entities training
    saw)."""
    def delta(b: SplitScores, t: SplitScores) -> metrics.Delta:
        return metrics.paired_delta([a.score for a in b.answers], [a.score for a in t.answers],
                                    samples=cfg.eval.bootstrap_samples, seed=cfg.eval.seed)

    def split(b: SplitScores, t: SplitScores, o: SplitScores | None) -> SplitEvaluation:
        return SplitEvaluation(base=b.evaluation, tuned=t.evaluation, delta=delta(b, t), onnx=o.evaluation if o else None)

    golden = split(base.golden, tuned.golden, None) if base.golden and tuned.golden else None
    test = split(base.test, tuned.test, onnx.test if onnx else None)
    if no_context is not None and cfg.context is not None:
        asked = sorted({e.entity for e in (data.test[: cfg.eval.max_examples] if data else []) if e.entity is not None})
        seen = {e.entity for e in data.train} if data else set()
        test = test.model_copy(update={"context": metrics.ContextEvaluation(
            key=cfg.context.key, entities=asked, unseen=[e for e in asked if e not in seen],
            without=no_context.test.evaluation, gain=delta(no_context.test, tuned.test))})
    return test, golden


def artifact_uris(storage: publish.Storage, run_id: str, cfg: DomainConfig) -> Artifacts:
    prefix = publish.domain_prefix(run_id, cfg.name)
    return Artifacts(adapter=storage.url(f"{prefix}/adapter"), merged=storage.url(f"{prefix}/merged"),
                     onnx=storage.url(f"{prefix}/onnx") if cfg.export.onnx else None,
                     report=storage.url(f"{prefix}/report.html"), data=storage.url(f"{prefix}/data"))


def lineage_record(context: FinishContext, plan: DomainPlan, base_path: str, winner: TrialOutcome, trial_count: int,
                   merged_dir: Path) -> lineage.Lineage:
    cfg, manifest = plan.cfg, plan.data.manifest
    return lineage.Lineage(
        run_id=context.run_id, git_commit=context.git_commit, packages=lineage.package_versions(),
        config=lineage.config_snapshot(cfg), **lineage.Inputs.of(cfg, manifest.dataset_version, base_path).model_dump(),
        split_counts=manifest.counts, golden_records=len(plan.data.golden),
        seeds={"data": cfg.data.seed, "train": cfg.train.seed, "sweep": cfg.sweep.seed, "eval": cfg.eval.seed},
        base_model=cfg.base_model, winner=winner.hparams, trial_count=trial_count, backend=winner.backend,
        merged_sha256=lineage.weights_sha256(merged_dir),
        context_sha256=plan.data.context.sha256 if plan.data.context else None)


def write_model_contracts(context: FinishContext, plan: DomainPlan, result: DomainResult, record: lineage.Lineage,
                          out: Path) -> None:
    """Beside each model's weights (the merged model's, each ONNX variant's), what a consumer needs to ask it exactly
    what training asked (``contract``); the adapter's config names the base as the domain config does, its card the
    base weights' sha256."""
    cfg, example = plan.cfg, evaluated_test(plan)[0]
    contract.write_contract(out / "merged", "merged", cfg, plan.data.schema, result, context.run_id, example,
                            context=plan.data.context)
    for variant, v in result.variants.items():
        contract.write_contract(out / v.folder, "onnx", cfg, plan.data.schema, result, context.run_id, example,
                                variant=variant, context=plan.data.context)
    contract.write_adapter_card(out / "adapter", cfg, result, record.base_model_sha256)


def write_domain_report(context: FinishContext, plan: DomainPlan, result: DomainResult, selection: select.Selection,
                        tuned: ModelScores, record: lineage.Lineage, out: Path) -> None:
    report.write_reports(report.DomainReport(
        run_id=context.run_id, description=plan.cfg.description, base_model=plan.cfg.base_model, result=result,
        selection=selection, failing_examples=report.failing_examples(tuned.test.answers),
        data=plan.data.manifest, lineage=record), out)


def publish_domain(context: FinishContext, name: str, result: DomainResult, record: lineage.Lineage, out: Path) -> None:
    """Upload the domain's folder (manifest last), then drop the scratch weights: storage holds verified
    copies now, and scratch copies would pile up night after night. The pointer moves in the driver."""
    (out / publish.DOMAIN_SUMMARY).write_text(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    publish.publish_domain(publish.Storage(context.storage), context.run_id, name, out,
                           extra={"status": result.status, "lineage": record.model_dump(mode="json")})
    for weights in dict.fromkeys([out / "merged", out / "onnx", *(out / v.folder for v in result.variants.values())]):
        shutil.rmtree(weights, ignore_errors=True)


# ---- the run's end -------------------------------------------------------------------------------------

def promote_passed(storage: publish.Storage, run_id: str, results: dict[str, DomainResult]) -> None:
    """Point each domain whose gate passed at this run (also one kept from an earlier attempt that stopped
    between its manifest and its pointer)."""
    for name, result in results.items():
        if result.status != "published":
            continue
        try:
            if publish.promote(storage, run_id, name):
                progress.info("[%s] latest -> run %s", name, run_id)
        except publish.PublishError as exc:  # published and verified; a rerun of the run id moves it
            log.error("[%s] latest.json not moved: %s", name, exc)


def write_run_summary(storage: publish.Storage, run_id: str, results: dict[str, DomainResult],
                      seconds: float) -> RunSummary:
    """index.html, then summary.json last: a run with a summary is a finished run."""
    summary = RunSummary.of(run_id, storage.uri, seconds, results)
    summary = summary.model_copy(update={
        "index_uri": publish.write_run_file(storage, run_id, "index.html", report.render_index(summary)),
        "summary_uri": publish.summary_url(storage, run_id)})
    publish.write_summary(storage, run_id, summary.to_json())
    return summary


# ---- telling people -----------------------------------------------------------------------------------

def changes_since_last_publication(storage: publish.Storage, run_id: str, results: dict[str, DomainResult],
                                   configs: dict[str, DomainConfig]) -> dict[str, list[str]]:
    """For each domain this run published (passed or gated) whose config names a webhook: what changed since the
    domain's latest promoted run, from the two manifests' lineage. Read before this run moves any pointer."""
    changes = {}
    for name in results:
        cfg = configs.get(name)
        if cfg is None or not cfg.notify.webhook_env or not publish.is_published(storage, run_id, name):
            continue
        latest = publish.latest_manifest(storage, name)
        if latest is not None and latest["run_id"] == run_id:
            continue  # an earlier attempt of this run promoted it already: nothing to compare with
        try:
            current = lineage.Lineage.model_validate(publish.read_manifest(storage, run_id, name)["lineage"])
            previous = lineage.Lineage.model_validate(latest["lineage"]) if latest else None
        except (KeyError, pydantic.ValidationError) as exc:  # a manifest written by a lorafleet that recorded less
            log.warning("[%s] notify: what changed since run %s is left out: its lineage is in an older form (%s)",
                        name, latest["run_id"] if latest else "-", type(exc).__name__)
            continue
        changes[name] = notify.what_changed(previous, current)
    return changes


def tell_people(summary: RunSummary, configs: dict[str, DomainConfig], changes: dict[str, list[str]]) -> None:
    """One message per webhook variable the configs name, on the domains naming it (and those whose config did not
    load); a webhook that fails is a warning, never the run's failure."""
    webhook_of = {name: cfg.notify.webhook_env for name, cfg in configs.items()}
    for webhook_env, domains in notify.audiences(webhook_of, summary.domains).items():
        notify.send(webhook_env, notify.build_message(summary, domains, changes))
