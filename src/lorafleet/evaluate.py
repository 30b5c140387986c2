"""Evaluation: greedy answers on the test split, scored as JSON. Numbers only; no verdicts."""
from __future__ import annotations

import json
import logging
import math
import unicodedata
from typing import Any, Callable

import jsonschema

from lorafleet.data import Example

log = logging.getLogger(__name__)

METRIC_NAMES = ("json_valid_rate", "schema_pass_rate", "field_accuracy")


def _norm(value: Any) -> Any:
    """Normalise a field value so that formatting differences do not count as errors."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return round(float(value), 6)
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFKC", value).casefold().split())
    if isinstance(value, list):
        return sorted((json.dumps(_norm(v), sort_keys=True, ensure_ascii=False) for v in value))
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in sorted(value.items())}
    return value


def parse_answer(text: str) -> Any:
    """The model's answer as JSON, or None. Tolerates nothing but surrounding whitespace."""
    try:
        return json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None


def score(predictions: list[str], references: list[str], schema: dict) -> dict[str, float]:
    """json_valid_rate, schema_pass_rate, field_accuracy (mean exact match of top-level fields) and n."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    validator = jsonschema.Draft202012Validator(schema)
    valid = passed = 0
    field_scores = []
    for pred_text, ref_text in zip(predictions, references):
        ref = json.loads(ref_text)
        pred = parse_answer(pred_text)
        is_json = pred is not None
        valid += is_json
        passed += is_json and validator.is_valid(pred)
        if isinstance(ref, dict) and ref:
            got = pred if isinstance(pred, dict) else {}
            hits = sum(k in got and _norm(got[k]) == _norm(v) for k, v in ref.items())
            field_scores.append(hits / len(ref))
    n = len(references)
    return {
        "json_valid_rate": valid / n if n else 0.0,
        "schema_pass_rate": passed / n if n else 0.0,
        "field_accuracy": sum(field_scores) / len(field_scores) if field_scores else 0.0,
        "n": n,
    }


def model_device(model):
    """Where a model's inputs go: a torch model's device; onnxruntime models take CPU tensors."""
    return getattr(model, "device", None) or "cpu"


def generate(model, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int,
             progress: Callable[[int, int], None] | None = None) -> list[str]:
    """Greedy answers, batched with left padding. Works for a torch model and an ORTModelForCausalLM."""
    import torch

    tokenizer.padding_side = "left"
    answers: list[str] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(e.prompt, tokenize=False, add_generation_prompt=True) for e in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {k: v.to(model_device(model)) for k, v in inputs.items()}
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        answers.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
        if progress:
            progress(min(start + batch_size, len(examples)), len(examples))
    return answers


def load_torch_model(path: str, adapter: str | None = None, load_in_4bit: bool = False):
    """fp32 (on the GPU when there is one, so that it matches the fp32 ONNX export); ``load_in_4bit``
    loads the base as QLoRA trained it (NF4, bf16 compute); ``adapter`` applies a LoRA adapter unmerged."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs = {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, AutoTokenizer.from_pretrained(adapter or path)


def load_onnx_model(path: str):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    return ORTModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def evaluate_model(model, tokenizer, examples: list[Example], schema: dict, max_new_tokens: int,
                   batch_size: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics plus the per-example rows (prompt, expected, got) for reports."""
    answers = generate(model, tokenizer, examples, max_new_tokens, batch_size)
    metrics = score(answers, [e.completion for e in examples], schema)
    rows = [{"id": e.id, "input": e.user_text, "expected": e.completion, "got": a} for e, a in zip(examples, answers)]
    return metrics, rows


def is_finite_metrics(metrics: dict[str, float]) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
