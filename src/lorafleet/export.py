"""ONNX export with Hugging Face Optimum, and a parity check of the ONNX model against PyTorch."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.data import Example
from lorafleet.evaluate import model_device
from lorafleet.prompt import prompt_text
from lorafleet.safe_weights import require_safetensors

log = logging.getLogger(__name__)

MARKER = "lorafleet_export.json"


class Parity(BaseModel):
    """How closely two models agree on the same prompts: their greedy answers token by token, and the largest
    difference between their logits on the prompts."""

    model_config = ConfigDict(frozen=True)
    greedy_match_rate: float = Field(description="Share of answer positions where both models chose the same token, "
                                     "over each prompt's longer answer (positions a shorter answer lacks differ).")
    max_abs_logit_diff: float = Field(description="Largest absolute logit difference over the prompts' positions "
                                      "(one forward pass per prompt, no cache).")
    prompts: int = Field(description="Prompts compared: the test records the evaluation answers (its first "
                         "eval.max_examples).")
    new_tokens: int = Field(description="Answer tokens compared, summed over the prompts (each prompt's longer "
                            "answer, at most eval.max_new_tokens): greedy_match_rate's denominator.")

    def __str__(self) -> str:
        return f"greedy {self.greedy_match_rate:.2f} over {self.new_tokens} tokens, max logit diff {self.max_abs_logit_diff:.3g}"


class Drift(BaseModel):
    """What merging and exporting changed: the adapter on the base as trained (4-bit for QLoRA) vs the merged
    16-bit model, and the merged model vs its ONNX export."""

    model_config = ConfigDict(frozen=True)
    adapter_base: str
    adapter_vs_merged: Parity
    merged_vs_onnx: Parity | None = None
    onnx_provider: str | None = Field(None, description="The onnxruntime execution provider the ONNX model ran on.")


GRAPH_FOLDER = "onnx"  # the graph (and its external data) under onnx/: where transformers.js looks; Optimum finds it


def onnx_graph(folder: str | Path) -> Path:
    """The ONNX graph of an exported model folder (config and tokenizer beside ``onnx/``)."""
    return Path(folder) / GRAPH_FOLDER / "model.onnx"


def to_onnx(merged_dir: str | Path, out_dir: str | Path, dtype: str = "fp32", trust_remote_code: bool = False) -> Path:
    """``text-generation-with-past`` export (decoder with KV cache) of the merged model (safetensors only), loadable
    by Optimum's ORTModelForCausalLM and transformers.js alike (the graph in ``onnx/``). ``trust_remote_code``: the
    domain's, for the base's own modelling code.

    ``dtype``: ``fp32`` exports on the CPU; ``fp16`` on the GPU (Optimum exports fp16 on CUDA only), at
    half the size. ``no_post_process``: Optimum's post-processing de-duplicates tied weights in memory and
    fails on models over protobuf's 2 GB limit; without it the export works at every size (see
    docs/anchors), at the cost of storing the tied embedding twice.
    """
    import torch

    out_dir = Path(out_dir)
    marker = out_dir / MARKER
    if onnx_graph(out_dir).is_file() and marker.is_file() and json.loads(marker.read_text()) == {"dtype": dtype}:
        log.info("export: %s already holds a %s export; skipping", out_dir, dtype)
        return out_dir
    if dtype == "fp16" and not torch.cuda.is_available():
        raise RuntimeError("export.dtype: fp16 needs a CUDA GPU where the domain is finished (Optimum exports "
                           "fp16 on CUDA only); use fp32, or give the finishing task a GPU (eval.resources.gpu)")
    require_safetensors(merged_dir)
    from optimum.exporters.onnx import main_export

    with warnings.catch_warnings():  # the tracer warns on every data-dependent branch; parity is checked below
        warnings.simplefilter("ignore")
        main_export(str(merged_dir), output=str(out_dir), task="text-generation-with-past",
                    device="cuda" if dtype == "fp16" else "cpu", dtype=dtype, trust_remote_code=trust_remote_code,
                    no_post_process=True, do_validation=False, local_files_only=True)
    graph_dir = onnx_graph(out_dir).parent
    graph_dir.mkdir(exist_ok=True)
    for part in out_dir.glob("model.onnx*"):  # the graph and its external data, which it names relative to itself
        part.replace(graph_dir / part.name)
    marker.write_text(json.dumps({"dtype": dtype}))
    return out_dir


def check_parity(model_a, model_b, tokenizer, examples: list[Example], answers_a: list[list[int]],
                 answers_b: list[list[int]]) -> Parity:
    """How closely two models agree (PyTorch vs onnxruntime, adapter vs merged...) on ``examples``: their greedy
    answers to them (generated token ids, e.g. the evaluation's: ``evaluate.SplitScores.token_ids``) compared
    position by position, and the largest absolute difference between their logits on the prompts."""
    if not len(examples) == len(answers_a) == len(answers_b):
        raise ValueError(f"{len(examples)} prompts, but {len(answers_a)} and {len(answers_b)} answers")
    rate, compared = greedy_agreement(answers_a, answers_b)
    max_diff = max((max_logit_diff(model_a, model_b, tokenizer, e) for e in examples), default=0.0)
    return Parity(greedy_match_rate=rate, max_abs_logit_diff=max_diff, prompts=len(examples), new_tokens=compared)


def greedy_agreement(answers_a: list[list[int]], answers_b: list[list[int]]) -> tuple[float, int]:
    """The share of answer positions where two models chose the same token, over each prompt's longer answer (so
    an answer that ends early or runs on counts against agreement), and how many positions that is."""
    matched = sum(a == b for answer_a, answer_b in zip(answers_a, answers_b) for a, b in zip(answer_a, answer_b))
    compared = sum(max(len(a), len(b)) for a, b in zip(answers_a, answers_b))
    return (matched / compared if compared else 0.0), compared


def max_logit_diff(model_a, model_b, tokenizer, example: Example) -> float:
    """The largest absolute difference between two models' logits on one prompt (one forward pass each, no cache)."""
    import torch

    inputs = tokenizer(prompt_text(tokenizer, example.prompt), return_tensors="pt", add_special_tokens=False)
    logits = []
    for model in (model_a, model_b):
        with torch.inference_mode():
            output = model(**{k: v.to(model_device(model)) for k, v in inputs.items()})
        logits.append(torch.as_tensor(output.logits).float().cpu())
    return (logits[0] - logits[1]).abs().max().item()
