"""QLoRA training throughput on one CUDA GPU, measured side by side in one run.

    python bench/gpu_throughput.py [--shapes qwen2.5-1.5b,qwen2.5-7b] [--steps 12] [--json OUT]

For each random-init model shape (built from its public config, no hub), three variants with the same
LoRA (r=16 on all 7 projections), NF4 base, bf16 compute, batch and sequence length:
  (a) lorafleet's train_trial with the Unsloth backend (TRL SFTTrainer, as the pipeline runs it),
  (b) a bare Unsloth loop, (c) transformers + peft + bitsandbytes (sdpa, gradient checkpointing).
Each variant runs in its own process (Unsloth patches libraries process-wide). tokens/s is the mean over
steps 4..N; peak memory is torch.cuda.max_memory_allocated. Prints ratios a/b, a/c and a's fraction of the
bf16 roofline (6·N FLOPs a token).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BATCH = {"qwen2.5-0.5b": 4, "qwen2.5-1.5b": 4, "qwen2.5-7b": 2}
SEQ = 2048
ROOFLINE_FLOPS = float(os.environ.get("BF16_FLOPS", 798e12))  # measured bf16 matmul rate of the H100 here


def _random_batch(vocab: int, batch: int, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (batch, SEQ), generator=g)
    return {"input_ids": ids.cuda(), "attention_mask": torch.ones_like(ids).cuda(), "labels": ids.cuda()}


def _loop(model, steps: int, vocab: int, batch: int) -> list[float]:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=2e-4)
    times = []
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**_random_batch(vocab, batch, step)).loss
        loss.backward()
        optim.step()
        optim.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def worker_unsloth_bare(base: str, steps: int, batch: int) -> list[float]:
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(model_name=base, max_seq_length=SEQ, dtype=None, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS,
                                             use_gradient_checkpointing="unsloth", random_state=0, bias="none")
    FastLanguageModel.for_training(model)
    return _loop(model, steps, model.config.vocab_size, batch)


def worker_hf_bnb(base: str, steps: int, batch: int) -> list[float]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    model = AutoModelForCausalLM.from_pretrained(
        base, attn_implementation="sdpa", dtype=torch.bfloat16, device_map={"": 0},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, task_type="CAUSAL_LM"))
    model.train()  # gradient checkpointing is active in training mode only
    return _loop(model, steps, model.config.vocab_size, batch)


def worker_lorafleet(base: str, steps: int, batch: int, **train_settings) -> list[float]:
    import random

    import torch
    from transformers import TrainerCallback

    from lorafleet.config import TrainConfig
    from lorafleet.data import Example
    from lorafleet.train import HParams, train_trial

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times, self._start = [], None

        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)

    rng = random.Random(0)
    words = [f"w{i}" for i in range(3000)]

    def example(i: int) -> Example:  # a short prompt and an answer longer than SEQ tokens: every row is full
        answer = " ".join(rng.choice(words) for _ in range(SEQ * 2))
        return Example(id=str(i), group=str(i), prompt=[{"role": "user", "content": "go"}], completion=answer, line=i)

    examples = [example(i) for i in range(batch * (steps + 2))]
    timer = StepTimer()
    cfg = TrainConfig(max_seq_length=SEQ, batch_size=batch, max_steps=steps, backend="unsloth", eval_steps=10**6,
                      warmup_ratio=0.0, **train_settings)
    train_trial(base, cfg, HParams(lora_rank=16, learning_rate=2e-4, epochs=1), examples, examples[:batch],
                f"/tmp/bench-lorafleet-{os.getpid()}", callbacks=[timer])
    return timer.times


WORKERS = {"lorafleet": worker_lorafleet, "unsloth": worker_unsloth_bare, "hf_bnb": worker_hf_bnb}


def run_worker(variant: str, base: str, steps: int, batch: int) -> None:
    import torch

    from lorafleet.config import parse_overrides

    name, _, settings = variant.partition(":")  # e.g. lorafleet:optimizer=adamw_torch_fused+gradient_checkpointing=offload
    times = WORKERS[name](base, steps, batch, **parse_overrides([kv for kv in settings.split("+") if kv]))
    measured = times[3:] if len(times) > 4 else times
    print("RESULT " + json.dumps({
        "variant": variant, "steps": len(times), "step_seconds": sum(measured) / len(measured),
        "tokens_per_s": batch * SEQ / (sum(measured) / len(measured)),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30}), flush=True)


def param_count(base: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="qwen2.5-1.5b,qwen2.5-7b")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--variants", default="lorafleet,unsloth,hf_bnb",
                        help="lorafleet:KEY=VALUE+... runs lorafleet with those train settings as a further variant")
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args.worker, args.base, args.steps, args.batch)

    from lorafleet.base_model import ensure_shaped_base

    rows = []
    for shape in args.shapes.split(","):
        base = str(ensure_shaped_base(shape))
        n_params = param_count(base)
        results = {}
        for variant in args.variants.split(","):
            started = time.time()
            proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--base", base, "--steps",
                                   str(args.steps), "--batch", str(BATCH[shape])], capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"{shape} {variant}: FAILED\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}", flush=True)
                continue
            results[variant] = json.loads(line[len("RESULT "):])
            results[variant]["wall_s"] = round(time.time() - started, 1)
            print(f"{shape} {variant}: {results[variant]}", flush=True)
        row = {"shape": shape, "params": n_params, "batch": BATCH[shape], "seq": SEQ, "results": results}
        if "lorafleet" in results:
            a = results["lorafleet"]["tokens_per_s"]
            row["roofline_fraction_a"] = a * 6 * n_params / ROOFLINE_FLOPS
            for other in ("unsloth", "hf_bnb"):
                if other in results:
                    row[f"a_over_{other}"] = a / results[other]["tokens_per_s"]
        rows.append(row)

    import torch

    print(f"\nGPU: {torch.cuda.get_device_name(0)}; batch x {SEQ} tokens, LoRA r=16 on 7 projections, NF4 base")
    print("| shape | params | variant | tokens/s | peak GiB |")
    print("| --- | --- | --- | --- | --- |")
    for row in rows:
        for variant, r in row["results"].items():
            print(f"| {row['shape']} | {row['params'] / 1e9:.2f} B | {variant} | {r['tokens_per_s']:,.0f} | "
                  f"{r['peak_gib']:.1f} |")
    for row in rows:
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k.startswith(("a_over", "roofline")))
        print(f"{row['shape']}: {ratios}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
