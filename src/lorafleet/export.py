"""ONNX export with Hugging Face Optimum, the smaller variants built from it (int4), a parity check of an ONNX model
against PyTorch, and its size and speed."""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import time
import warnings
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from lorafleet.data import Example
from lorafleet.evaluate import generation_settings, model_device
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
EXTERNAL_DATA = "model.onnx_data"  # Optimum's name for a big graph's weights file, the one transformers.js looks for


def onnx_graph(folder: str | Path) -> Path:
    """The ONNX graph of an exported model folder (config and tokenizer beside ``onnx/``)."""
    return Path(folder) / GRAPH_FOLDER / "model.onnx"


def graph_bytes(folder: str | Path) -> int:
    """What a model folder's graph weighs: ``onnx/``'s files, the graph and its external data (the tokenizer and
    config beside it, the same for every variant, are left out)."""
    return sum(p.stat().st_size for p in onnx_graph(folder).parent.iterdir() if p.is_file())


def variant_folder(variant: str, primary: str) -> str:
    """A domain's folder of an ONNX variant: onnx/ for the export itself (``primary``), onnx-<variant>/ for one built
    from it."""
    return "onnx" if variant == primary else f"onnx-{variant}"


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


def variant_weights(variant: str, export_dtype: str, int4_block_size: int) -> str:
    """What a variant's weights are, in a few words."""
    return f"int4 MatMul weights (block {int4_block_size}) over {export_dtype}" if variant == "int4" else variant


def build_variant(export_dir: str | Path, out_dir: str | Path, variant: str, int4_block_size: int = 32) -> Path:
    """``variant`` of the exported model in ``export_dir`` (``to_onnx``'s folder), in ``out_dir`` with the same layout:
    its config, tokenizer and generation config copied, its graph in ``onnx/``. ``int4``: every MatMul with a
    constant weight (the attention and MLP projections and the LM head) becomes onnxruntime's MatMulNBits, its weight
    4-bit in blocks of ``int4_block_size`` along the input dimension, each block with its scale and zero point
    (asymmetric, round to nearest; no calibration data); the embedding, norms and activations stay in the export's
    precision. onnxruntime runs it on the CPU from fp32 and fp16 exports alike. Skips a folder that already holds
    the same variant of the same export."""
    if variant != "int4":
        raise ValueError(f"export variant {variant!r}: only int4 is built from an export (fp32 and fp16 are exported, "
                         "export.dtype)")
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    marker = out_dir / MARKER
    wanted = {"variant": variant, "int4_block_size": int4_block_size,
              "from": json.loads((export_dir / MARKER).read_text())}
    if onnx_graph(out_dir).is_file() and marker.is_file() and json.loads(marker.read_text()) == wanted:
        log.info("export: %s already holds this %s variant; skipping", out_dir, variant)
        return out_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    top_level_only = {GRAPH_FOLDER, MARKER}
    shutil.copytree(export_dir, out_dir, ignore=lambda folder, names: top_level_only & set(names)
                    if Path(folder) == export_dir else set())
    quantize_int4(onnx_graph(export_dir), onnx_graph(out_dir), int4_block_size)
    marker.write_text(json.dumps(wanted))
    return out_dir


def quantize_int4(source: Path, dest: Path, block_size: int) -> None:
    """``source``'s MatMul weights 4-bit (``MatMulNBitsQuantizer``) into ``dest``; its weights go to one external data
    file beside it where ``source``'s did (a graph over protobuf's 2 GB; Optimum's layout), else into the graph."""
    import onnx

    quantizer_cls = _matmul_nbits_quantizer()
    external = any(p.name != source.name for p in source.parent.iterdir() if p.is_file())
    model = onnx.load(str(source))  # its external data too: the quantizer reads the weights
    quantizer = quantizer_cls(model, bits=4, block_size=block_size, is_symmetric=False)
    quantizer.process()
    quantized = sum(n.op_type == "MatMulNBits" for n in quantizer.model.model.graph.node)
    if not quantized:
        raise RuntimeError(f"{source}: no MatMul with a constant weight to quantize to int4")
    quantizer.model.topological_sort()
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(quantizer.model.model, str(dest), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=EXTERNAL_DATA)
    log.info("export: int4 variant: %d MatMul weights quantized, block %d, %s", quantized, block_size, dest)


def _matmul_nbits_quantizer():
    """onnxruntime's MatMulNBitsQuantizer, its import's side effects undone: it calls ``logging.basicConfig`` (INFO,
    on a process whose logging is not configured yet) and logs a line per node at INFO."""
    root_handlers = list(logging.root.handlers)
    root_level = logging.root.level
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    for handler in logging.root.handlers[:]:
        if handler not in root_handlers:
            logging.root.removeHandler(handler)
    logging.root.setLevel(root_level)
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.WARNING)
    return MatMulNBitsQuantizer


class Speed(BaseModel):
    """Greedy decoding speed of an ONNX model in onnxruntime on the CPU: one prompt (batch 1), its prefill and
    ``new_tokens`` tokens generated with the KV cache by Optimum's ``generate``, wall time; the median of ``runs``
    timed runs after a warm-up."""

    model_config = ConfigDict(frozen=True)
    tokens_per_s: float = Field(description="new_tokens / the median run's seconds (prefill included).")
    new_tokens: int
    prompt_tokens: int
    runs: int
    threads: int | None = Field(description="onnxruntime's intra-op threads (the task's CPUs); None: its default, "
                                "one per physical core.")

    def __str__(self) -> str:
        return f"{self.tokens_per_s:.1f} tokens/s ({self.new_tokens} new after a {self.prompt_tokens}-token prompt)"


SPEED_NEW_TOKENS, SPEED_RUNS = 64, 3


def measure_speed(model, tokenizer, example: Example, new_tokens: int = SPEED_NEW_TOKENS,
                  runs: int = SPEED_RUNS) -> Speed:
    """``Speed`` of an ORTModelForCausalLM on the CPU, asked ``example``'s prompt: exactly ``new_tokens`` new tokens
    each run (the end of the answer is not allowed before them, so every variant decodes as many)."""
    import torch

    if getattr(model, "provider", None) != "CPUExecutionProvider":
        raise ValueError(f"speed is measured on the CPU; this model runs on {getattr(model, 'provider', 'torch')}")
    inputs = tokenizer(prompt_text(tokenizer, example.prompt), return_tensors="pt", add_special_tokens=False)
    prompt_tokens = inputs["input_ids"].shape[1]
    settings = {**generation_settings(tokenizer, new_tokens), "min_new_tokens": new_tokens}
    seconds = []
    with torch.inference_mode():
        model.generate(**inputs, **{**settings, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        for _ in range(runs):
            started = time.perf_counter()
            out = model.generate(**inputs, **settings)
            seconds.append(time.perf_counter() - started)
            if out.shape[1] - prompt_tokens != new_tokens:
                raise RuntimeError(f"speed: generated {out.shape[1] - prompt_tokens} tokens, asked {new_tokens}")
    threads = model.session.get_session_options().intra_op_num_threads or None
    return Speed(tokens_per_s=round(new_tokens / statistics.median(seconds), 2), new_tokens=new_tokens,
                 prompt_tokens=prompt_tokens, runs=runs, threads=threads)


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
