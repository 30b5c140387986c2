"""Evaluation: greedy answers on the test split, scored as JSON. Numbers only; no verdicts."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any

import jsonschema
from pydantic import BaseModel, ConfigDict

from lorafleet import metrics
from lorafleet.config import EvalConfig
from lorafleet.context import Context
from lorafleet.data import Example
from lorafleet.metrics import Evaluation, ExampleScore, Metric, MetricSpec
from lorafleet.prompt import prompt_text
from lorafleet.safe_weights import require_safetensors

log = logging.getLogger(__name__)


class ScoredAnswer(BaseModel):
    """What was asked, expected and answered for one example, and how the answer scored."""

    model_config = ConfigDict(frozen=True)
    id: str
    group: str = ""  # the record's group key value (its source)
    metadata: dict[str, Any] = {}  # the record's own metadata (schema_version, quality_label, run_id, ...)
    input: str
    expected: str
    got: str
    score: ExampleScore


def metric_spec(eval_cfg: EvalConfig) -> MetricSpec:
    return MetricSpec(number_tolerance=eval_cfg.number_tolerance, evidence_fields=tuple(eval_cfg.evidence_fields),
                      text_fields=tuple(eval_cfg.text_fields), score_weights=tuple(eval_cfg.score_weights.items()))


def score_answers(examples: list[Example], answers: list[str], schema: dict, eval_cfg: EvalConfig,
                  context: Context | None = None) -> list[ScoredAnswer]:
    """Each answer scored against its record (``context``: the domain's context file, whose grounding items each
    answer's ``context_grounding`` looks for)."""
    validator = jsonschema.Draft202012Validator(schema)
    spec = metric_spec(eval_cfg)
    return [ScoredAnswer(id=e.id, input=e.user_text, expected=e.completion, got=a, group=e.group, metadata=e.metadata,
                         score=metrics.score_example(a, e.completion, e.user_text, validator, spec,
                                                     _grounding_items(context, e)))
            for e, a in zip(examples, answers)]


def _grounding_items(context: Context | None, example: Example) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    if context is None or not context.grounding_fields or example.entity not in context.entities:
        return None
    return context.grounding_items(example.entity)


def model_device(model):
    """Where a model's inputs go: its device (an onnxruntime model's follows its execution provider)."""
    return getattr(model, "device", None) or "cpu"


def generation_settings(tokenizer, max_new_tokens: int) -> dict[str, Any]:
    """What every evaluation answer is generated with, over the model's own generation config: greedy, up to
    ``max_new_tokens``, ending at the tokenizer's EOS. A published model's generation_config.json holds the same."""
    return {"do_sample": False, "max_new_tokens": max_new_tokens, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}


def generate_token_ids(model, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int) -> list[list[int]]:
    """Greedy answers as token ids, batched with left padding, each up to and including its first EOS (the
    padding that ``generate`` puts after an answer that ended before its batch's longest is dropped). Works for a
    torch model and an ORTModelForCausalLM."""
    import torch

    tokenizer.padding_side = "left"
    eos, settings = tokenizer.eos_token_id, generation_settings(tokenizer, max_new_tokens)
    answers: list[list[int]] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        texts = [prompt_text(tokenizer, e.prompt) for e in batch]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {k: v.to(model_device(model)) for k, v in inputs.items()}
        with torch.inference_mode():
            out = model.generate(**inputs, **settings)
        for ids in out[:, inputs["input_ids"].shape[1]:].tolist():
            answers.append(ids[:ids.index(eos) + 1] if eos in ids else ids)
    return answers


def generate(model, tokenizer, examples: list[Example], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers as text (``generate_token_ids``, decoded)."""
    return tokenizer.batch_decode(generate_token_ids(model, tokenizer, examples, max_new_tokens, batch_size),
                                  skip_special_tokens=True)


def load_torch_model(path: str, adapter: str | None = None, load_in_4bit: bool = False, dtype: str = "fp32",
                     safetensors_only: bool = False, trust_remote_code: bool = False):
    """In ``dtype`` (``fp32``/``fp16``: the ONNX export's, so that the two are compared like with like), on the
    GPU when there is one; ``load_in_4bit`` loads the base as QLoRA trained it (NF4, bf16 compute);
    ``adapter`` applies a LoRA adapter unmerged (from the run's storage: safetensors only). ``safetensors_only``:
    ``path`` is a model lorafleet wrote (the merged model), refused if it holds a pickle file.
    ``trust_remote_code``: the domain's, for the base's own modelling code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": {"fp32": torch.float32, "fp16": torch.float16}[dtype],
                              "trust_remote_code": trust_remote_code}
    if safetensors_only:
        require_safetensors(path)
        kwargs["use_safetensors"] = True
    if adapter:
        require_safetensors(adapter)  # peft has no switch: it loads adapter_model.bin when there is no safetensors
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs |= {"dtype": torch.bfloat16, "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)}
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    return model, AutoTokenizer.from_pretrained(adapter or path, trust_remote_code=trust_remote_code)


def onnx_provider() -> str:
    """The onnxruntime execution provider to run on: CUDA where onnxruntime offers it (the onnxruntime-gpu build)
    and torch sees a GPU (a task without one has CUDA_VISIBLE_DEVICES empty), else the CPU."""
    import onnxruntime
    import torch

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and torch.cuda.is_available():
        return "CUDAExecutionProvider"
    return "CPUExecutionProvider"


def load_onnx_model(path: str, trust_remote_code: bool = False, provider: str | None = None):
    """onnxruntime on ``provider`` (default ``onnx_provider()``); the model's ``provider`` says which ran. On the CPU
    with as many threads as this process was given (Ray sets OMP_NUM_THREADS to a task's CPUs); by default each
    session starts a thread per core, and finishing tasks side by side contend. ``trust_remote_code``: the domain's,
    for the model's configuration and tokenizer code."""
    import onnxruntime
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0"))  # 0: onnxruntime's default
    model = ORTModelForCausalLM.from_pretrained(path, provider=provider or onnx_provider(), session_options=options,
                                                trust_remote_code=trust_remote_code)
    return model, AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def completion_loss(model, tokenizer, examples: list[Example]) -> dict[str, float]:
    """Mean cross-entropy of the reference answers given their prompts (teacher forcing, answer tokens only),
    and its perplexity. One example a forward pass: works for torch and onnxruntime models alike."""
    import torch

    total, tokens = 0.0, 0
    for e in examples:
        prompt_ids = tokenizer(prompt_text(tokenizer, e.prompt), add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(e.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.inference_mode():
            logits = torch.as_tensor(model(input_ids=ids.to(model_device(model)),
                                           attention_mask=torch.ones_like(ids).to(model_device(model))).logits)
        logits = logits.float().cpu()[0, len(prompt_ids) - 1:-1]
        total += torch.nn.functional.cross_entropy(logits, torch.tensor(answer_ids), reduction="sum").item()
        tokens += len(answer_ids)
    loss = total / tokens if tokens else float("nan")
    return {"eval_loss": loss, "perplexity": math.exp(loss) if loss < 50 else float("inf")}


@dataclass(frozen=True)
class SplitScores:
    """One model's answers to one split: scored and summarised, and as the token ids it generated (what parity
    compares with another model's)."""

    evaluation: Evaluation
    answers: list[ScoredAnswer]
    token_ids: list[list[int]]


def evaluate_model(model, tokenizer, examples: list[Example], schema: dict, eval_cfg: EvalConfig,
                   context: Context | None = None) -> SplitScores:
    """Greedy answers scored per example, summarised with 95 % bootstrap intervals (``metrics.aggregate``),
    plus eval loss and perplexity of the reference answers (``context``: the domain's context file)."""
    token_ids = generate_token_ids(model, tokenizer, examples, eval_cfg.max_new_tokens, eval_cfg.batch_size)
    answers = score_answers(examples, tokenizer.batch_decode(token_ids, skip_special_tokens=True), schema, eval_cfg,
                            context)
    evaluation = metrics.aggregate([a.score for a in answers], samples=eval_cfg.bootstrap_samples, seed=eval_cfg.seed)
    if examples:
        loss = {k: Metric(value=v) for k, v in completion_loss(model, tokenizer, examples).items()}
        evaluation = evaluation.model_copy(update={"metrics": {**evaluation.metrics, **loss}})
    return SplitScores(evaluation, answers, token_ids)
