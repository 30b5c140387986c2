"""``lorafleet run | validate | report | history | verify | fetch | predict | data diff | review | make-tiny-base``
(also ``python -m lorafleet``)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Literal

from lorafleet import console
from lorafleet.config import ConfigError, find_domain_files, load_overrides_file, merge_overrides, parse_overrides

DEFAULT_CONFIG_DIR = "configs/domains"
DEFAULT_STORAGE = "./artifacts"
FORCE_ALL = "all"


def _add_domain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, help="folder of domain YAML files")
    p.add_argument("--pipeline-dir", default=None,
                   help="folder of pipeline YAML files, whose steps are domains (default: 'pipelines' beside "
                        "--config-dir, when it exists)")
    p.add_argument("--domains", default="",
                   help="comma-separated domain names or globs: a domain file's name, a pipeline step "
                        "(folktale.character), 'folktale.*' or a pipeline's name for all its steps (default: all)")
    p.add_argument("--profile", default=None,
                   help="YAML file of overrides for every chosen domain (e.g. configs/profiles/gpu.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field for every chosen domain, e.g. train.max_steps=20 (YAML value)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorafleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fine-tune, export, evaluate and publish the chosen domains")
    _add_domain_args(run)
    run.add_argument("--storage", default=DEFAULT_STORAGE, help="local folder, file:// or s3:// URI")
    run.add_argument("--run-id", default=None, help="default: UTC time, e.g. 20261122-051000")
    run.add_argument("--address", default=None,
                     help="Ray address ('auto' joins a running cluster); default: a local Ray listening on 127.0.0.1 only")
    run.add_argument("--work-dir", default=None, help="local scratch folder (default: ~/.cache/lorafleet/work/RUN_ID)")
    run.add_argument("--verbose", action="store_true",
                     help="also show Ray's and the libraries' own output (default: in log files under WORK_DIR/logs)")
    run.add_argument("--force", nargs="?", const=FORCE_ALL, default=None, metavar="a,b",
                     help="retrain every domain (or the named ones) even if config, data, base weights and lorafleet "
                          "version equal its latest published run's")
    val = sub.add_parser("validate", help="check configs and data without training")
    _add_domain_args(val)
    tiny = sub.add_parser("make-tiny-base", help="build the embedded tiny base model into DIR")
    tiny.add_argument("dir")
    ver = sub.add_parser("verify", help="re-hash a published run's or domain's objects against their manifests")
    ver.add_argument("uri", help="<storage>/runs/<run_id> or <storage>/runs/<run_id>/<domain>")
    rep = sub.add_parser("report", help="print a run's per-domain verdicts and key numbers")
    rep.add_argument("uri", help="<storage>/runs/<run_id>")
    hist = sub.add_parser("history", help="print a domain's runs across nights, newest first")
    hist.add_argument("domain")
    hist.add_argument("--storage", default=DEFAULT_STORAGE)
    fetch = sub.add_parser("fetch", help="download a domain's ONNX model (default: latest), verifying hashes")
    fetch.add_argument("domain")
    fetch.add_argument("dest", help="new folder to create")
    fetch.add_argument("--storage", default=DEFAULT_STORAGE)
    fetch.add_argument("--run", dest="run_id", default=None, help="a run id instead of latest")
    fetch.add_argument("--artifact", default="onnx",
                       help="onnx (the export), onnx-VARIANT (e.g. onnx-int4), merged or adapter")
    pred = sub.add_parser("predict", help="answer with a domain's published ONNX model (onnxruntime only: no torch)")
    pred.add_argument("domain")
    asked = pred.add_mutually_exclusive_group(required=True)
    asked.add_argument("--input", help="one input text; its answer row is printed")
    asked.add_argument("--file", help='JSONL of {"id", "input"} records or records in the domain\'s data format')
    pred.add_argument("--instruction", help="with --input on a domain of alpaca records: the instruction")
    pred.add_argument("--entity", help="with --input on a domain with context: the entity whose context it is asked "
                      "with (e.g. the brand); --file records carry it in their own field")
    pred.add_argument("--context", dest="context_file", default=None, metavar="FILE",
                      help="a domain with context: this context file instead of the one the model was published with "
                           "(a newer one: entities added since need no retraining)")
    pred.add_argument("--out", help="with --file: where the answer rows go (JSONL, written whole at the end)")
    pred.add_argument("--storage", default=DEFAULT_STORAGE)
    pred.add_argument("--run", dest="run_id", default=None, help="a run id instead of latest")
    pred.add_argument("--variant", default=None, help="an ONNX variant the run published (default: the primary export)")
    pred.add_argument("--cache", default=None, help="where fetched models are kept (default: ~/.cache/lorafleet/models)")
    data = sub.add_parser("data", help="a domain's published datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    diff = data_sub.add_parser("diff", help="records added, removed and changed between two runs' data of a domain "
                                            "(exit 0: the same, 1: they differ)")
    diff.add_argument("run_a", metavar="RUN_A")
    diff.add_argument("run_b", metavar="RUN_B")
    diff.add_argument("domain", metavar="DOMAIN")
    diff.add_argument("--storage", default=DEFAULT_STORAGE)
    diff.add_argument("--limit", type=int, default=10, help="records listed of each kind (default: 10)")
    rev = sub.add_parser("review", help="human review of a run's domain: export answers to rate blind, import the ratings")
    rsub = rev.add_subparsers(dest="review_command", required=True)
    rexp = rsub.add_parser("export", help="a stratified sample of the run's test records with the base and the tuned "
                           "answer as A and B (shuffled), to rate 1-5; which is which goes to storage only")
    rexp.add_argument("run_id", metavar="RUN")
    rexp.add_argument("domain")
    rexp.add_argument("--n", type=int, default=40, help="records to rate (at most the run's evaluated test records)")
    rexp.add_argument("--out", required=True, help="the reviewer's file to create: .csv or .jsonl")
    rexp.add_argument("--seed", type=int, default=0, help="the sample's and the A/B order's seed")
    rexp.add_argument("--storage", default=DEFAULT_STORAGE)
    rimp = rsub.add_parser("import", help="validate a filled-in review file, record its ratings beside the run and "
                           "decide the domain's gate again (promoting it if it passes now)")
    rimp.add_argument("file")
    rimp.add_argument("--storage", default=DEFAULT_STORAGE)
    rimp.add_argument("--replace", action="store_true",
                      help="replace the ratings of an export imported before with other ones")
    return parser


def _overrides(args) -> dict:
    profile = load_overrides_file(args.profile) if args.profile else {}
    return merge_overrides(profile, parse_overrides(args.overrides))


def _storage_uri(raw: str) -> str:
    """A URI as given, or a local folder made absolute (Ray workers do not share our cwd)."""
    return raw if "://" in raw else str(Path(raw).resolve())


def _chosen(args) -> list[str] | None:
    return [d for d in args.domains.split(",") if d] or None


def _pipeline_dir(args) -> Path:
    return Path(args.pipeline_dir) if args.pipeline_dir else Path(args.config_dir).parent / "pipelines"


def _domain_files(args):
    return find_domain_files(args.config_dir, _chosen(args), _pipeline_dir(args))


def _force(args) -> Literal["all"] | frozenset[str]:
    """``--force``: every domain; ``--force a,b``: those (each must have a domain file, like ``--domains``)."""
    if args.force is None:
        return frozenset()
    if args.force == FORCE_ALL:
        return "all"
    names = [d for d in args.force.split(",") if d]
    find_domain_files(args.config_dir, names, _pipeline_dir(args))  # a misspelt name is an error, not a silent skip
    return frozenset(names)


def cmd_validate(args) -> int:
    from lorafleet import data as data_mod
    from lorafleet.pipeline import load_configs

    configs, failed = load_configs(_domain_files(args), _overrides(args), _chosen(args))
    errors = {name: result.error for name, result in failed.items()}
    for name, cfg in configs.items():
        try:
            prepared = data_mod.prepare(cfg)
            m = prepared.manifest
            print(f"ok   {name}: {m.records_read} records, train/val/test {m.counts['train']}/{m.counts['val']}/"
                  f"{m.counts['test']}, {len(m.drops)} dropped, dataset {m.dataset_version[:12]}, "
                  f"golden {len(prepared.golden)}")
        except (data_mod.DataError, OSError) as exc:
            errors[name] = str(exc)
    for name, error in errors.items():
        print(f"FAIL {name}: {error}")
    return 1 if errors else 0


def cmd_run(args) -> int:
    import ray

    from lorafleet.base_model import cache_root
    from lorafleet.cluster import connect
    from lorafleet.pipeline import RunOptions, new_run_id, run

    run_id = args.run_id or new_run_id()
    storage = _storage_uri(args.storage)
    work_dir = Path(args.work_dir) if args.work_dir else cache_root() / "work" / run_id
    opts = RunOptions(config_files=_domain_files(args), overrides=_overrides(args),
                      storage=storage, run_id=run_id, work_dir=work_dir.resolve(), verbose=args.verbose,
                      force=_force(args), domains=_chosen(args))
    log_dir = opts.work_dir / "logs"
    console.setup_driver(log_dir, verbose=args.verbose)
    print(f"run {run_id}: storage {storage}\nfull logs: {log_dir}", file=sys.stderr)
    if not ray.is_initialized():
        env_vars = {"TOKENIZERS_PARALLELISM": "false", console.LOG_DIR_VAR: str(log_dir),
                    **({console.VERBOSE_VAR: "1"} if args.verbose else {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})}
        connect(args.address, include_dashboard=False, log_to_driver=True,
                logging_level=logging.INFO if args.verbose else logging.ERROR,
                runtime_env={"worker_process_setup_hook": "lorafleet.console.setup_worker", "env_vars": env_vars})
    summary = run(opts)
    print_summary(summary)
    print(f"full logs: {log_dir}")
    return 0 if summary.status == "succeeded" else 1


def cmd_verify(args) -> int:
    from lorafleet.publish import verify

    problems = verify(args.uri)
    for p in problems:
        print(f"FAIL {p}")
    print("ok: every object matches its manifest" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_fetch(args) -> int:
    from lorafleet.publish import fetch

    print(fetch(_storage_uri(args.storage), args.domain, args.dest, run_id=args.run_id, artifact=args.artifact))
    return 0


def cmd_predict(args) -> int:
    """Exit 0: every answer valid; 1: some failed the schema (each row says why); 2: nothing answered."""
    from lorafleet import predict

    if args.file and not args.out:
        raise predict.PredictError("--file needs --out")
    if args.out and not args.file:
        raise predict.PredictError("--out goes with --file (--input prints its answer)")
    folder = predict.model_folder(_storage_uri(args.storage), args.domain, args.run_id, args.variant, args.cache)
    model = predict.OnnxModel(folder, args.context_file)
    if args.input is not None:
        record = {"input": args.input, **({"instruction": args.instruction} if args.instruction is not None else {})}
        if model.contract.message_format.data_format == "alpaca" and args.instruction is None:
            raise predict.PredictError(f"--input: domain {args.domain} asks with an instruction and an input (its "
                                       "records are alpaca's): give --instruction too")
        spec = model.contract.context
        if spec is not None:
            if args.entity is None:
                raise predict.PredictError(f"--input: domain {args.domain} is asked with a {spec.key}'s context: "
                                           f"give --entity (the {spec.key})")
            record[spec.key] = args.entity
        elif args.entity is not None:
            raise predict.PredictError(f"--entity: domain {args.domain} is asked without context")
        try:
            request = predict.request_of(record, model.contract, context=model.context)
        except ValueError as exc:
            raise predict.PredictError(f"--entity: {exc}") from None
        answer = predict.answer_all(model, [request])[0]
        print(json.dumps(answer.row(), ensure_ascii=False))
        return 0 if answer.valid else 1
    requests = predict.read_requests(args.file, model.contract, model.context)
    print(f"predict {args.domain}: {len(requests)} records, model {folder}", file=sys.stderr)
    answers = predict.answer_all(model, requests, progress=predict.show_progress)
    predict.write_answers(args.out, answers)
    failed = sum(not a.valid for a in answers)
    print(f"{args.out}: {len(answers)} answers, {len(answers) - failed} valid, {failed} failed the output schema",
          file=sys.stderr)
    return 1 if failed else 0


def cmd_data_diff(args) -> int:
    """Exit 0: the two runs published the same records; 1: they differ (listed)."""
    from lorafleet import dataset_diff
    from lorafleet.publish import PublishError, Storage, read_published_data

    storage = Storage(_storage_uri(args.storage))
    versions = []
    for run_id in (args.run_a, args.run_b):
        files = read_published_data(storage, run_id, args.domain)
        where = f"run {run_id}, domain {args.domain}: data/"
        try:
            manifest = json.loads(files.get("dataset_manifest.json", b"{}"))
            versions.append((dataset_diff.rows(files, where), manifest))
        except (dataset_diff.DiffError, json.JSONDecodeError) as exc:
            raise PublishError(str(exc) if isinstance(exc, dataset_diff.DiffError)
                               else f"{where}dataset_manifest.json: not JSON") from exc
    (rows_a, manifest_a), (rows_b, manifest_b) = versions
    diff = dataset_diff.compare(rows_a, rows_b)
    print(dataset_diff.render(diff, f"{args.domain}: run {args.run_a}", f"run {args.run_b}", manifest_a, manifest_b,
                              limit=args.limit))
    return 0 if diff.same else 1
def cmd_review(args) -> int:
    """Exit 0 once exported or imported (whatever the gate decided: the output says); 2 for a bad file or run."""
    from lorafleet import review

    storage = _storage_uri(args.storage)
    if args.review_command == "export":
        done = review.export(storage, args.run_id, args.domain, args.n, args.out, seed=args.seed)
        strata = ", ".join(f"{s} {k}" for s, k in done.strata.items() if k)
        capped = f"; --n {args.n} asked for more than the {done.available} the run evaluated" if args.n > done.available else ""
        print(f"export {done.export_id}: {done.records} of {done.available} test records ({strata}{capped}) -> {done.out}")
        print(f"key (which answer is which model's; not for the reviewer): {done.key_uri}")
        print(f"rate answer A and answer B of every row from 1 (unusable) to 5 (right and complete) in rating_a and "
              f"rating_b, then: lorafleet review import {done.out} --storage {args.storage}")
        return 0
    done = review.import_file(args.file, storage, replace=args.replace)
    r = done.review
    print(f"{'imported' if done.written else 'already imported (the same ratings)'}: {done.records} records of export "
          f"{done.export_id} (run {done.run_id}, domain {done.domain}) -> {done.ratings_uri}")
    print(f"human rating: {review.describe(r.ratings)}")
    n = len(r.gate.checks)
    checks = f"failed: {', '.join(r.gate.failed)}" if r.gate.failed else f"{n} check{'s' * (n != 1)} passed"
    print(f"gate: {r.status.upper()} ({checks}; at the run: {r.status_at_run})")
    print(r.pointer)
    print(f"report: {done.report_uri}")
    return 0


def cmd_report(args) -> int:
    from lorafleet.publish import read_run_summary
    from lorafleet.results import RunSummary

    print_summary(RunSummary.from_json(read_run_summary(_storage_uri(args.uri))))
    return 0


def cmd_history(args) -> int:
    from lorafleet import history
    from lorafleet.publish import PublishError, Storage, history_key, read_history

    storage = Storage(_storage_uri(args.storage))
    runs = history.entries(read_history(storage, args.domain))
    if not runs:
        raise PublishError(f"{storage.url(history_key(args.domain))}: no history for domain {args.domain}")
    print(f"{args.domain}: {len(runs)} run{'s' * (len(runs) != 1)}, newest first")
    print(history.table(runs))
    print(f"page: {storage.url(history_key(args.domain, 'history.html'))}")
    return 0


def print_summary(summary) -> None:
    from lorafleet.report import summary_table

    print(f"\nrun {summary.run_id}: {summary.status} in {summary.seconds:.0f}s")
    print(summary_table(summary))
    for name, d in summary.domains.items():
        if d.artifacts is not None:
            print(f"  {name}: {d.artifacts.report}")
    print(f"summary: {summary.summary_uri}")
    if summary.index_uri:
        print(f"index:   {summary.index_uri}")


def main(argv: list[str] | None = None) -> int:
    console.setup_driver()
    args = build_parser().parse_args(argv)
    from lorafleet.predict import PredictError
    from lorafleet.publish import PublishError
    from lorafleet.review import ReviewError

    try:
        if args.command == "validate":
            return cmd_validate(args)
        if args.command == "run":
            return cmd_run(args)
        if args.command == "verify":
            return cmd_verify(args)
        if args.command == "fetch":
            return cmd_fetch(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "history":
            return cmd_history(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "data":
            return cmd_data_diff(args)
        if args.command == "review":
            return cmd_review(args)
        from lorafleet.base_model import TinySpec, build_tiny_base

        print(build_tiny_base(Path(args.dir), TinySpec()))
        return 0
    except (ConfigError, PublishError, PredictError, ReviewError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
