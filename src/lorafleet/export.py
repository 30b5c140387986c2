"""ONNX export with Hugging Face Optimum, and a parity check of the ONNX model against PyTorch."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lorafleet.data import Example
from lorafleet.evaluate import model_device

log = logging.getLogger(__name__)

MARKER = "lorafleet_export.json"


class Parity(BaseModel):
    """How closely two models agree: greedy token agreement and the largest logit difference."""

    model_config = ConfigDict(frozen=True)
    greedy_match_rate: float
    max_abs_logit_diff: float
    prompts: int
    new_tokens: int

    def __str__(self) -> str:
        return f"greedy {self.greedy_match_rate:.2f}, max logit diff {self.max_abs_logit_diff:.3g}"


class Drift(BaseModel):
    """What merging and exporting changed: the adapter on the base as trained (4-bit for QLoRA) vs the merged
    16-bit model, and the merged model vs its ONNX export."""

    model_config = ConfigDict(frozen=True)
    adapter_base: str
    adapter_vs_merged: Parity
    merged_vs_onnx: Parity | None = None


def to_onnx(merged_dir: str | Path, out_dir: str | Path, dtype: str = "fp32") -> Path:
    """``text-generation-with-past`` export (decoder with KV cache), loadable by ORTModelForCausalLM.

    ``dtype``: ``fp32`` exports on the CPU; ``fp16`` on the GPU (Optimum exports fp16 on CUDA only), at
    half the size. ``no_post_process``: Optimum's post-processing de-duplicates tied weights in memory and
    fails on models over protobuf's 2 GB limit; without it the export works at every size (see
    docs/anchors), at the cost of storing the tied embedding twice.
    """
    import torch

    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if (out_dir / "model.onnx").is_file() and marker.is_file() and json.loads(marker.read_text()) == {"dtype": dtype}:
        log.info("export: %s already holds a %s export; skipping", out_dir, dtype)
        return out_dir
    if dtype == "fp16" and not torch.cuda.is_available():
        raise RuntimeError("export.dtype: fp16 needs a CUDA GPU where the domain is finished (Optimum exports "
                           "fp16 on CUDA only); use fp32, or give the finishing task a GPU (eval.resources.gpu)")
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():  # the tracer warns on every data-dependent branch; parity is checked below
        warnings.simplefilter("ignore")
        main_export(str(merged_dir), output=str(out_dir), task="text-generation-with-past",
                    device="cuda" if dtype == "fp16" else "cpu", dtype=dtype,
                    no_post_process=True, do_validation=False, local_files_only=True)
    marker.write_text(json.dumps({"dtype": dtype}))
    return out_dir


def check_parity(model_a, model_b, tokenizer, examples: list[Example], new_tokens: int = 32) -> Parity:
    """How closely two models agree (PyTorch vs onnxruntime, adapter vs merged...): greedy token agreement
    over ``new_tokens`` generated tokens per prompt, and the largest absolute difference between their
    logits on the prompts (one forward pass, no cache)."""
    import torch

    matched = total = 0
    max_diff = 0.0
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tokenizer.pad_token_id)
    for e in examples:
        text = tokenizer.apply_chat_template(e.prompt, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        n_prompt = inputs["input_ids"].shape[1]
        logits, generated = [], []
        for model in (model_a, model_b):
            on_device = {k: v.to(model_device(model)) for k, v in inputs.items()}
            with torch.inference_mode():
                logits.append(torch.as_tensor(model(**on_device).logits).float().cpu())
                generated.append(model.generate(**on_device, **kwargs)[0, n_prompt:].cpu())
        max_diff = max(max_diff, (logits[0] - logits[1]).abs().max().item())
        n = min(len(generated[0]), len(generated[1]))
        matched += int((generated[0][:n] == generated[1][:n]).sum())
        total += max(len(generated[0]), len(generated[1]))
    return Parity(greedy_match_rate=matched / total if total else 0.0, max_abs_logit_diff=max_diff,
                  prompts=len(examples), new_tokens=new_tokens)
