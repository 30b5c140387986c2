"""Size and CPU speed of a run's published ONNX variants, side by side, outside the run (the finishing tasks time them
while other domains' trials share the cores).

    python bench/onnx_variants.py STORAGE/runs/RUN_ID [--threads 1] [--tokens 64] [--rounds 3] [--json OUT]

For each domain of the run and each of its ONNX variant folders (onnx/, onnx-int4/...): the graph's bytes
(export.graph_bytes), and greedy tokens/s in onnxruntime on the CPU with --threads intra-op threads
(export.measure_speed: batch 1, --tokens new tokens after the prompt of the first test record the run evaluated,
prefill included, median of 3 runs after a warm-up). The variants take turns, --rounds times, and each one's best
round is kept, so that load from elsewhere on the machine is not charged to one variant more than another.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def measure(run_dir: Path, threads: int, tokens: int, rounds: int) -> list[dict]:
    os.environ["OMP_NUM_THREADS"] = str(threads)  # evaluate.load_onnx_model gives the session this many threads
    from lorafleet import contract, evaluate, export
    from lorafleet.data import Example
    from lorafleet.prompt import prompt_messages
    from lorafleet.results import DomainResult

    rows = []
    for summary in sorted(run_dir.glob("*/domain_summary.json")):
        result = DomainResult.from_json(json.loads(summary.read_text()))
        folders = {name: summary.parent / v.folder for name, v in result.variants.items()}
        if not folders:
            continue
        asked = json.loads((summary.parent / "eval" / "test-onnx.jsonl").read_text().splitlines()[0])["input"]
        system = contract.read_contract(next(iter(folders.values()))).system_prompt
        example = Example(id="bench", group="bench", prompt=prompt_messages(system, asked), completion="", line=0)
        models = {name: evaluate.load_onnx_model(str(folder), provider="CPUExecutionProvider")
                  for name, folder in folders.items()}
        best: dict[str, export.Speed] = {}
        for _ in range(rounds):
            for name, (model, tokenizer) in models.items():
                speed = export.measure_speed(model, tokenizer, example, new_tokens=tokens)
                if name not in best or speed.tokens_per_s > best[name].tokens_per_s:
                    best[name] = speed
        for name, folder in folders.items():
            v = result.variants[name]
            rows.append({"domain": result.name, "variant": name, "bytes": export.graph_bytes(folder),
                         "tokens_per_s": best[name].tokens_per_s, "prompt_tokens": best[name].prompt_tokens,
                         "new_tokens": tokens, "threads": threads,
                         "score": v.evaluation.value("score"), "schema_pass_rate": v.evaluation.value("schema_pass_rate"),
                         "greedy_vs_merged": v.parity.greedy_match_rate})
            print(f"{result.name:14} {name:5} {rows[-1]['bytes'] / 1e6:7.2f} MB  {rows[-1]['tokens_per_s']:7.1f} tokens/s "
                  f"(prompt {rows[-1]['prompt_tokens']} tokens)", flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="a local storage's runs/<run_id> folder")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = measure(args.run_dir, args.threads, args.tokens, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
