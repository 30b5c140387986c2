"""ONNX export with Hugging Face Optimum, and a parity check of the ONNX model against PyTorch."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from lorafleet.data import Example

log = logging.getLogger(__name__)


def to_onnx(merged_dir: str | Path, out_dir: str | Path) -> Path:
    """``text-generation-with-past`` export (decoder with KV cache), loadable by ORTModelForCausalLM.

    ``no_post_process``: Optimum's post-processing de-duplicates tied weights in memory and fails
    on models over protobuf's 2 GB limit; without it the export works at every size (see
    docs/anchors), at the cost of storing the tied embedding twice.
    """
    from optimum.exporters.onnx import main_export

    out_dir = Path(out_dir)
    if (out_dir / "model.onnx").is_file() and (out_dir / "config.json").is_file():
        log.info("export: %s already exported; skipping", out_dir)
        return out_dir
    with warnings.catch_warnings():  # the tracer warns on every data-dependent branch; parity is checked below
        warnings.simplefilter("ignore")
        main_export(str(merged_dir), output=str(out_dir), task="text-generation-with-past", device="cpu",
                    no_post_process=True, do_validation=False, local_files_only=True)
    return out_dir


def check_parity(torch_model, onnx_model, tokenizer, examples: list[Example], new_tokens: int = 32) -> dict[str, Any]:
    """Greedy token agreement over ``new_tokens`` generated tokens per prompt, and the largest absolute
    difference between the two models' logits on the prompts (one forward pass, no cache)."""
    import torch

    matched = total = 0
    max_diff = 0.0
    for e in examples:
        text = tokenizer.apply_chat_template(e.prompt, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            pt_logits = torch_model(**inputs).logits
            ort_logits = onnx_model(**inputs).logits
            max_diff = max(max_diff, (pt_logits.float() - torch.as_tensor(ort_logits).float()).abs().max().item())
            kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                          pad_token_id=tokenizer.pad_token_id)
            pt_ids = torch_model.generate(**inputs, **kwargs)[0, inputs["input_ids"].shape[1]:]
            ort_ids = onnx_model.generate(**inputs, **kwargs)[0, inputs["input_ids"].shape[1]:]
        n = min(len(pt_ids), len(ort_ids))
        matched += int((pt_ids[:n] == ort_ids[:n]).sum())
        total += max(len(pt_ids), len(ort_ids))
    return {"greedy_match_rate": matched / total if total else 0.0, "max_abs_logit_diff": max_diff,
            "prompts": len(examples), "new_tokens": new_tokens}
