"""onnxruntime threads when several domains' finishing tasks run their ONNX checks side by side on one host,
measured in one run.

    python bench/onnx_threads.py [--base random:qwen2.5-1.5b] [--dtype fp16] [--procs 5] [--examples 8]
                                 [--tokens 32] [--json OUT]

Exports one model (the base itself stands in for a merged winner), then twice starts --procs processes at
once, each loading the ONNX model with ``evaluate.load_onnx_model`` and answering --examples contracts
prompts greedily (--tokens new tokens each, one prompt at a time), as a finishing task's ONNX evaluation does:
(a) without OMP_NUM_THREADS, so each onnxruntime session starts a thread per core (before 2026-11-22);
(b) with OMP_NUM_THREADS = cores // procs, which is what Ray gives a task with that many CPUs.
Prints each side's wall time, mean load and answer seconds per process, the ratio a/b, and the execution
provider the sessions ran on (threads matter on the CPU one; with onnxruntime-gpu and a visible GPU it is CUDA).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(onnx_dir: str, examples: int, tokens: int) -> None:
    from lorafleet import evaluate
    from lorafleet.config import load_domain
    from lorafleet.data import prepare

    started = time.perf_counter()
    model, tokenizer = evaluate.load_onnx_model(onnx_dir)
    loaded = time.perf_counter()
    cfg = load_domain(REPO / "configs" / "domains" / "contracts.yaml")
    evaluate.generate(model, tokenizer, prepare(cfg).test[:examples], tokens, batch_size=1)
    print(json.dumps({"load_s": loaded - started, "answer_s": time.perf_counter() - loaded, "provider": model.provider}))


def side(onnx_dir: Path, procs: int, threads: int | None, examples: int, tokens: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--worker", str(onnx_dir), "--examples", str(examples), "--tokens", str(tokens)]
    started = time.perf_counter()
    running = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outputs = [p.communicate()[0] for p in running]
    wall = time.perf_counter() - started
    if any(p.returncode for p in running):
        raise SystemExit(f"a worker failed (threads={threads})")
    rows = [json.loads(out.strip().splitlines()[-1]) for out in outputs]
    return {"threads_each": threads or "default (a thread per core)", "provider": rows[0]["provider"],
            "wall_s": round(wall, 1),
            "load_s": round(sum(r["load_s"] for r in rows) / procs, 1),
            "answer_s": round(sum(r["answer_s"] for r in rows) / procs, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="random:qwen2.5-1.5b")
    p.add_argument("--dtype", default="fp16", choices=["fp32", "fp16"])
    p.add_argument("--procs", type=int, default=5)
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--work", default="/tmp/lorafleet-onnx-threads")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.examples, args.tokens)

    from lorafleet import export
    from lorafleet.base_model import resolve_base_model

    started = time.perf_counter()
    onnx_dir = export.to_onnx(resolve_base_model(args.base), Path(args.work) / f"onnx-{args.dtype}", dtype=args.dtype)
    export_s = time.perf_counter() - started
    print(f"export {export_s:.1f} s", flush=True)
    cores = os.cpu_count() or 1
    rows = []
    for threads in (None, max(1, cores // args.procs)):  # each line printed as it is measured
        rows.append(side(onnx_dir, args.procs, threads, args.examples, args.tokens))
        row = rows[-1]
        print(f"{args.procs} processes at once on {row['provider']}, threads each {row['threads_each']}: wall {row['wall_s']} s "
              f"(per process: load {row['load_s']} s, answers {row['answer_s']} s)", flush=True)
    default, limited = rows
    result = {"base": args.base, "dtype": args.dtype, "cores": cores, "procs": args.procs, "examples": args.examples,
              "tokens": args.tokens, "export_s": round(export_s, 1), "default": default, "limited": limited,
              "ratio_default_over_limited": round(default["wall_s"] / limited["wall_s"], 2)}
    print(f"wall default / limited = {result['ratio_default_over_limited']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
