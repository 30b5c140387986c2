"""Data governance of one domain at scale: ``data.prepare`` on N records of the bundled size, every check on.

    python bench/governance.py [--records 100000] [--domain story_summary] [--repeat 1] [--json OUT]

Writes N records of the domain with the bundled generator (scripts/generate_domain_data.py, other seeds), each with a
metadata object (a quality label: 1 % "reject"), plus planted cases: 1 % paraphrased copies (two words added at the
end) of earlier records, under other groups, and 0.5 % records whose input is repeated four times (past
train.max_seq_length). Then, each in a fresh process (so that its peak memory is its own), prepares the domain:

  (a) every check: near-duplicates (the defaults: Jaccard 0.9, 5-word shingles, 128 permutations), quality labels,
      grounding (story_summary quotes its evidence), token bounds and drop_truncated, token lengths for the report;
  (b) the same without near-duplicates (data.near_duplicates: null);
  (c) the checks there were before: answers, exact duplicates, exact leaks (near_duplicates: null, measure_tokens:
      false, no quality filter).

Prints each side's seconds per stage (reading, answers, quality, tokens, split, exact leaks, near-duplicates,
manifest) and in all, wall clock and CPU (all threads: the tokenizer encodes on every core), the load average
around it (the machine may be shared), peak memory (RSS), the drops by reason, and the ratios a/b and a/c. Times
include the tokenizer's loading (from the cache) but not the data's generation.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOMAINS = REPO / "configs" / "domains"
SIDES = {"a": "every check", "b": "no near-duplicates", "c": "the checks before governance's part of issue 17"}
QUALITY = {"keep_labels": ["pass"], "prompt_tokens": {"min": 8, "max": 2048}, "answer_tokens": {"max": 512},
           "drop_truncated": True}


def _generator():
    spec = importlib.util.spec_from_file_location("generate_domain_data", REPO / "scripts" / "generate_domain_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_domain(domain: str, records: int, out: Path) -> Path:
    """The domain's YAML, schema and golden set beside N generated records (with planted cases); the YAML's path."""
    gen = _generator()
    rng = random.Random(20261206)
    examples = gen.generate_examples(domain, rng, records)
    lines = []
    for i, (group, text, answer) in enumerate(examples):
        record = gen.make_record(domain, group, text, answer)
        record["metadata"] = {"quality_label": "reject" if i % 100 == 37 else "pass", "schema_version": "2",
                              "run_id": f"bench-{i // 1000}"}
        if i % 100 == 55 and i > 1000:  # a paraphrased copy of an earlier record, under this record's group
            _, source_text, source_answer = examples[rng.randrange(i)]
            record = {**gen.make_record(domain, group, source_text + " Hết chuyện.", source_answer),
                      "metadata": record["metadata"]}
        elif i % 200 == 77:  # its input four times: past train.max_seq_length
            record = {**gen.make_record(domain, group, " ".join([text] * 4), answer), "metadata": record["metadata"]}
        lines.append(json.dumps(record, ensure_ascii=False))
    folder = out / domain
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for name in ("schema.json", "golden.jsonl"):
        shutil.copy(DOMAINS / domain / name, folder / name)
    shutil.copy(DOMAINS / f"{domain}.yaml", out / f"{domain}.yaml")
    return out / f"{domain}.yaml"


def measure(config: Path, side: str) -> dict:
    """In this process: prepare the domain as ``side`` says, timing each stage."""
    from lorafleet import data, governance
    from lorafleet.config import load_domain

    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def timed(module, name: str, stage: str) -> None:
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
                cpu[stage] = cpu.get(stage, 0.0) + time.process_time() - cpu_started
        setattr(module, name, wrapper)

    for module, name, stage in [
            (data, "load_examples", "read"), (governance, "drop_invalid_answers", "answers"),
            (governance, "drop_by_label", "quality"), (governance, "drop_ungrounded", "quality"),
            (governance, "dedup_exact", "exact duplicates"), (data, "token_counter", "tokens"),
            (governance, "measure_tokens", "tokens"), (governance, "drop_by_length", "tokens"),
            (data, "split_by_group", "split"), (data, "load_golden", "golden"),
            (governance, "drop_cross_split_leaks", "exact leaks"), (governance, "drop_near_duplicates", "near-duplicates"),
            (data, "length_summary", "manifest"), (data, "label_counts", "manifest"), (data, "dataset_version", "manifest")]:
        timed(module, name, stage)
    cfg = load_domain(config)
    evidence = {"min_grounding": 1.0} if cfg.eval.evidence_fields else {}
    overrides = {"a": {"data": {"quality": {**QUALITY, **evidence}}},
                 "b": {"data": {"quality": {**QUALITY, **evidence}, "near_duplicates": None}},
                 "c": {"data": {"near_duplicates": None, "measure_tokens": False}}}[side]
    cfg = load_domain(config, overrides)
    started, cpu_started, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    prepared = data.prepare(cfg)
    total, total_cpu = time.perf_counter() - started, time.process_time() - cpu_started
    m = prepared.manifest
    return {"side": side, "what": SIDES[side], "seconds": round(total, 2), "cpu_seconds": round(total_cpu, 2),
            "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1),
            "stages": {k: round(v, 2) for k, v in seconds.items()},
            "stages_cpu": {k: round(v, 2) for k, v in cpu.items()}, "records_read": m.records_read,
            "counts": m.counts, "drops_by_reason": m.drops_by_reason, "possible_leaks": len(m.possible_leaks),
            "truncated_kept": m.lengths.truncated if m.lengths else None,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--domain", default="story_summary")
    parser.add_argument("--repeat", type=int, default=1, help="run each side this many times, keep the fastest "
                        "(a shared machine's load comes and goes)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--measure", nargs=2, metavar=("CONFIG", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure[0]), args.measure[1])))
        return
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-governance-") as tmp:
        started = time.perf_counter()
        config = write_domain(args.domain, args.records, Path(tmp))
        print(f"{args.records} {args.domain} records written in {time.perf_counter() - started:.1f} s "
              f"({(Path(tmp) / args.domain / 'data.jsonl').stat().st_size / 1e6:.0f} MB)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
        results = {}
        for _ in range(args.repeat):
            for side in SIDES:
                done = subprocess.run([sys.executable, __file__, "--measure", str(config), side], env=env, check=True,
                                      capture_output=True, text=True)
                run = json.loads(done.stdout.strip().splitlines()[-1])
                if side not in results or run["seconds"] < results[side]["seconds"]:
                    results[side] = run
    for side, r in results.items():
        print(f"\n({side}) {r['what']}: {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s of CPU), peak RSS "
              f"{r['peak_rss_mb']} MB, {r['cpus']} CPUs, load average {r['load_before']} -> {r['load_after']}")
        print("  stages, s (CPU s): " + ", ".join(f"{k} {v:.1f} ({r['stages_cpu'][k]:.1f})"
                                                 for k, v in r["stages"].items()))
        print(f"  kept {r['counts']}; dropped {r['drops_by_reason']}; possible leaks {r['possible_leaks']}")
    for key, what in (("seconds", "wall clock"), ("cpu_seconds", "CPU")):
        a, b, c = (results[s][key] for s in "abc")
        print(f"ratios ({what}): a/b {a / b:.2f} (near-duplicates), a/c {a / c:.2f} (and token lengths, quality)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
