"""The contract a published model folder carries (the merged 16-bit model's and the ONNX export's): what a consumer
needs to ask the model exactly what training asked, without the domain config, and to check what it got.

    chat_template.jinja       the chat template; also inline in tokenizer_config.json, the only place transformers.js
                              reads it from
    generation_config.json    the evaluation's generation settings over the model's own: greedy, eval.max_new_tokens,
                              the EOS and pad ids evaluation passed
    output_schema.json        the JSON Schema every answer was scored against
    context.json              (a domain with context) the context file training and evaluation read: each record's
                              entity is looked up there and rendered into the system prompt
    genai_config.json         (ONNX) the graph and its KV cache described for onnxruntime-genai
    README.md                 the model card (Hugging Face style): numbers, gate verdict, how to call it
    lorafleet_model.json      all of it machine-readable, with the inputs, outputs and KV-cache layout and every other
                              file's bytes and sha256 (written last)

``render_prompt(folder, user_message)`` (with ``entity`` for a domain with context) builds the prompt from the folder
alone, through the same functions (``prompt.py``) that built the training and evaluation prompts."""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

import lorafleet
from lorafleet import report
from lorafleet.config import DomainConfig
from lorafleet.context import Context
from lorafleet.data import Example
from lorafleet.evaluate import generation_settings
from lorafleet.export import onnx_graph
from lorafleet.lineage import prompt_sha256, sha256_file
from lorafleet.prompt import CONTEXT_SEPARATOR, MessageFormat, prompt_messages, render_chat
from lorafleet.results import DomainResult

MODEL_JSON = "lorafleet_model.json"
CHAT_TEMPLATE = "chat_template.jinja"
OUTPUT_SCHEMA = "output_schema.json"
MODEL_CARD = "README.md"
GENAI_CONFIG = "genai_config.json"
CONTRACT_VERSION = 1
# greedy decoding ignores them; left at a base's sampling values they fail the config's own check when it is saved
SAMPLING_ONLY = ("temperature", "top_p", "top_k", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # what a model card's base_model may name

Kind = Literal["merged", "onnx"]


class TensorSpec(BaseModel):
    """One input or output of the model: its name, and (read from the ONNX graph) element type and shape, where a
    dimension is a number or the name of a dynamic axis."""

    model_config = ConfigDict(frozen=True)
    name: str
    dtype: str | None = None
    shape: list[int | str | None] | None = None


class KVCache(BaseModel):
    """The past key/value cache a generation step hands the next: one key and one value tensor per layer."""

    model_config = ConfigDict(frozen=True)
    num_layers: int
    num_kv_heads: int
    head_dim: int
    layout: list[str] = ["batch_size", "num_kv_heads", "sequence_length", "head_dim"]
    inputs: str | None = Field(None, description="The graph inputs of the cache, by layer (ONNX).")
    outputs: str | None = Field(None, description="The graph outputs of the updated cache, by layer (ONNX).")


class Quantization(BaseModel):
    """How a quantized ONNX variant's weights are stored, read from its graph."""

    model_config = ConfigDict(frozen=True)
    method: str = Field(description="The operator holding the quantized weights: MatMulNBits (onnxruntime contrib).")
    bits: int
    block_size: int = Field(description="Weights per block along the input dimension; each block has its own scale.")
    symmetric: bool = Field(description="False: each block also has a zero point.")
    matmuls: int = Field(description="MatMuls whose weight is quantized (projections and the LM head).")
    unquantized: str = Field(description="The dtype of every other weight (embedding, norms) and of the activations.")


class ContextSpec(BaseModel):
    """How a record's entity becomes part of the prompt (a domain with context): its record in ``file`` (the context
    file training and evaluation read, copied here), found by the record's ``key`` field, rendered through
    ``template`` (``prompt.render_context``) and appended to the system prompt after ``separator``."""

    model_config = ConfigDict(frozen=True)
    file: str = Field(description="The context file's copy in this folder (context.json or context.jsonl).")
    key: str = Field(description="The entity field every request carries (e.g. brand).")
    template: str
    separator: str = CONTEXT_SEPARATOR
    grounding_fields: list[str] = []
    sha256: str = Field(description="sha256 of the context file training read (the lineage's context_sha256).")
    entities: int


class FileEntry(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    bytes: int
    sha256: str


class PromptBuilder(BaseModel):
    """A pipeline step's prompt builder (``lorafleet.steps``): the function that made every user message in training
    and evaluation from an annotated record; serving code calls the same function (``lorafleet predict`` takes the
    message it built, as ``input``)."""

    model_config = ConfigDict(frozen=True)
    name: str = Field(description="module:function, as the pipeline file names it.")
    sha256: str = Field(description="sha256 of its source text (inspect.getsource): lorafleet.steps.builder_sha256.")


class ModelContract(BaseModel):
    """lorafleet_model.json: how to ask a published model, what it takes and gives, and which files make it."""

    model_config = ConfigDict(frozen=True)
    contract_version: int = CONTRACT_VERSION
    domain: str
    kind: Kind
    variant: str | None = Field(None, description="The ONNX variant (export.variants): fp32, fp16 (the export itself) "
                                "or int4 (built from it); None for the merged model.")
    dtype: str = Field(description="What the weights are: the merged model's torch dtype, the ONNX graph's logits "
                       "dtype, or int4 for a quantized variant (quantization says which weights).")
    quantization: Quantization | None = None
    description: str
    base_model: str
    run_id: str
    dataset_version: str
    lorafleet_version: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    kv_cache: KVCache | None
    system_prompt: str
    chat_template: str = Field(CHAT_TEMPLATE, description="The chat template's file (also inline in "
                               "tokenizer_config.json).")
    special_tokens: dict[str, str | list[str]] = Field(
        description="The tokenizer's special tokens (bos_token, eos_token, ...): variables of the chat template, as "
        "transformers passes them when it renders it.")
    prompt_sha256: str = Field(description="lineage.prompt_sha256 of the system prompt and chat template: the same "
                               "as every trial's lineage records.")
    message_format: MessageFormat
    generation: dict[str, Any] = Field(description="The arguments evaluation passed to generate (generation_config.json "
                                       "holds them over the model's own settings).")
    output_schema: str = OUTPUT_SCHEMA
    prompt_builder: PromptBuilder | None = Field(
        None, description="A pipeline step's prompt builder; null: the user message is the record's text.")
    context: ContextSpec | None = Field(None, description="A domain with context: how each request's entity is "
                                        "rendered into the system prompt, from which file.")
    files: list[FileEntry] = Field(description="Every other file of the folder, with its bytes and sha256.")


def read_contract(folder: str | Path) -> ModelContract:
    return ModelContract.model_validate_json((Path(folder) / MODEL_JSON).read_text(encoding="utf-8"))


def read_context(folder: str | Path, contract: ModelContract, path: str | Path | None = None) -> Context | None:
    """The context a folder's model is asked with: its published copy, or ``path`` (a newer file: entities added
    since, no retraining), read with the contract's key and template; None for a domain without context."""
    spec = contract.context
    if spec is None:
        return None
    from lorafleet.context import read_context as read

    return read(str(path or Path(folder) / spec.file), spec.key, spec.template, tuple(spec.grounding_fields))


def render_prompt(folder: str | Path, user_message: str, entity: str | None = None,
                  context: Context | None = None) -> str:
    """The prompt text for one user message, from a published folder alone (no transformers): its chat template,
    and the system prompt and special tokens its lorafleet_model.json holds; for a domain with context, ``entity``'s
    record (from the folder's context file, or ``context``) rendered into the system prompt."""
    contract = read_contract(folder)
    rendered = None
    if contract.context is not None:
        if entity is None:
            raise ValueError(f"{folder}: the model is asked with a {contract.context.key}'s context: name the entity")
        rendered = (context or read_context(folder, contract)).render(entity)
    return render_messages(folder, contract, prompt_messages(contract.system_prompt, user_message, rendered))


def render_messages(folder: str | Path, contract: ModelContract, messages: list[dict[str, str]]) -> str:
    """The prompt text for ``messages`` (the system prompt already first), as the folder's contract asks."""
    template = (Path(folder) / contract.chat_template).read_text(encoding="utf-8")
    return render_chat(template, messages, contract.special_tokens)


def write_contract(folder: str | Path, kind: Kind, cfg: DomainConfig, schema: dict[str, Any], result: DomainResult,
                   run_id: str, example: Example, *, variant: str | None = None,
                   context: Context | None = None) -> ModelContract:
    """Write the contract files into a model folder that holds the model's tokenizer (``example``: a test record the
    card shows the call with; ``variant``: an ONNX folder's, default export.dtype; ``context``: the context file
    training and evaluation read, for a domain with context, copied byte for byte); lorafleet_model.json last,
    listing the others' hashes."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=cfg.trust_remote_code)
    template = write_chat_template(folder, tokenizer.chat_template)
    settings = write_generation_config(folder, generation_settings(tokenizer, cfg.eval.max_new_tokens))
    (folder / OUTPUT_SCHEMA).write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    spec = None
    if cfg.context is not None:
        if context is None:
            raise ValueError(f"{cfg.name}: a domain with context publishes its context file: pass the one it read")
        (folder / context.published_name).write_bytes(context.data)
        spec = ContextSpec(file=context.published_name, key=cfg.context.key, template=cfg.context.template,
                           grounding_fields=list(cfg.context.grounding_fields), sha256=context.sha256,
                           entities=len(context.entities))
    inputs, outputs, kv_cache, dtype = (onnx_signature(folder) if kind == "onnx" else
                                        merged_signature(folder, tokenizer.model_input_names))
    quantization = None
    if kind == "onnx":
        write_genai_config(folder, kv_cache, outputs, settings, tokenizer.bos_token_id)
        variant, quantization = variant or cfg.export.dtype, onnx_quantization(folder, dtype)
        dtype = f"int{quantization.bits}" if quantization else dtype
    contract = ModelContract(
        domain=cfg.name, kind=kind, variant=variant, dtype=dtype, quantization=quantization,
        description=cfg.description, base_model=cfg.base_model,
        run_id=run_id, dataset_version=result.dataset_version or "", lorafleet_version=lorafleet.__version__,
        inputs=inputs, outputs=outputs, kv_cache=kv_cache, system_prompt=cfg.system_prompt,
        special_tokens=tokenizer.special_tokens_map,
        prompt_sha256=prompt_sha256(cfg.system_prompt, template, cfg.context_template),
        message_format=MessageFormat.of(cfg.data.format), generation=settings, prompt_builder=prompt_builder_of(cfg),
        context=spec, files=[])
    (folder / MODEL_CARD).write_text(model_card(contract, result, example), encoding="utf-8")
    contract = contract.model_copy(update={"files": file_entries(folder)})
    (folder / MODEL_JSON).write_text(contract.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return contract


def prompt_builder_of(cfg: DomainConfig) -> PromptBuilder | None:
    step = cfg.step
    if step is None or step.prompt is None or step.prompt_builder_sha256 is None:
        return None
    return PromptBuilder(name=step.prompt, sha256=step.prompt_builder_sha256)


def write_adapter_card(folder: str | Path, cfg: DomainConfig, result: DomainResult, base_sha256: str | None) -> None:
    """The published adapter folder, for multi-adapter servers: ``adapter_config.json`` names the base as the domain
    config does (PEFT wrote the path training loaded it from, a folder of the training machine), and README.md (PEFT's
    empty template until now) says which base weights it was trained on and how to serve it."""
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = cfg.base_model
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / MODEL_CARD).write_text(adapter_card(cfg, result, config, base_sha256), encoding="utf-8")


def adapter_card(cfg: DomainConfig, result: DomainResult, adapter: dict[str, Any], base_sha256: str | None) -> str:
    hub_id = HUB_ID_RE.fullmatch(cfg.base_model) is not None
    base = cfg.base_model if hub_id else "BASE"
    front = [*([f"base_model: {json.dumps(cfg.base_model)}"] if hub_id else []), "library_name: peft",
             "pipeline_tag: text-generation", "tags:", *(f"- {json.dumps(t)}" for t in ("lorafleet", "lora", cfg.name))]
    lines = ["---", *front, "---", "", f"# {cfg.name} (LoRA adapter)", "", cfg.description, "",
             "| | |", "| --- | --- |", *(f"| {k} | `{v}` |" for k, v in (
                 ("base model", cfg.base_model), ("base weights sha256", base_sha256 or "unknown"),
                 ("LoRA rank, alpha", f"{adapter.get('r')}, {adapter.get('lora_alpha')}"),
                 ("target modules", ", ".join(sorted(adapter.get("target_modules") or []))),
                 ("dataset version", result.dataset_version))), "",
             "## Verdict", "", _verdict(result), "", report.result_markdown(result),
             "## The base it needs", "", _base_note(cfg.base_model), "",
             "## Serving it", "",
             "Ask it as the merged and ONNX models are asked: the system prompt and chat template of this run "
             "(`chat_template.jinja` here; `../onnx/lorafleet_model.json` has the system prompt), greedy decoding.", "",
             "```python", "from peft import PeftModel", "from transformers import AutoModelForCausalLM", "",
             f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base!r}), \".\")  # this folder",
             "```", "",
             "Multi-adapter servers load it onto the base they serve, one adapter per domain:", "", "```bash",
             f"vllm serve {base} --enable-lora --max-lora-rank {adapter.get('r')} --lora-modules {cfg.name}=./adapter",
             f"lorax-launcher --model-id {base}   # then ask with adapter_id=./adapter, adapter_source=local",
             "```"]
    return "\n".join(lines).rstrip() + "\n"


def _base_note(base_model: str) -> str:
    from lorafleet.base_model import GGUF_PREFIX, RANDOM_PREFIX

    if base_model == "tiny":
        note = ("the embedded tiny base, which lorafleet builds itself (`lorafleet make-tiny-base DIR`); no server has it "
                "otherwise: the merged model beside this folder is the one to serve.")
    elif base_model.startswith(RANDOM_PREFIX):
        note = "a random-init model of a public shape, for throughput runs only: nothing to serve."
    elif base_model.startswith(GGUF_PREFIX):
        note = ("a GGUF file dequantized by transformers: serve the same dequantized weights (check their sha256) or "
                "the merged model beside this folder.")
    else:
        note = "the hub id or path the domain config names; check the served copy's weights against the sha256 above."
    return (f"`{base_model}`: {note} An adapter on other base weights answers differently from what the release "
            "gate measured.")


def write_chat_template(folder: Path, template: Any) -> str:
    """chat_template.jinja, and the same template inline in tokenizer_config.json (transformers saves only the file;
    transformers.js reads only the inline one)."""
    if not isinstance(template, str):
        raise ValueError(f"{folder}: the tokenizer's chat template is {type(template).__name__}, expected one template")
    (folder / CHAT_TEMPLATE).write_text(template, encoding="utf-8")
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return template


def write_generation_config(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """generation_config.json as evaluation generated: the folder's own (what the model loaded) updated with the
    evaluation's arguments, so that a bare ``model.generate(**inputs)`` answers as the evaluation did."""
    from transformers import GenerationConfig

    config = (GenerationConfig.from_pretrained(str(folder)) if (folder / "generation_config.json").is_file()
              else GenerationConfig())
    config.update(**settings)
    config._from_model_config = False  # else generate may rebuild it from config.json (transformers' legacy rule)
    default = GenerationConfig()
    for name in SAMPLING_ONLY:
        setattr(config, name, getattr(default, name))
    config.validate(strict=True)
    # the settings written out even where they are transformers' defaults: a reader sees greedy without knowing those
    (folder / "generation_config.json").write_text(json.dumps({**config.to_diff_dict(), **settings}, indent=2) + "\n",
                                                   encoding="utf-8")
    return settings


def write_genai_config(folder: Path, kv_cache: KVCache | None, outputs: list[TensorSpec], settings: dict[str, Any],
                       bos_token_id: int | None) -> None:
    """genai_config.json, for onnxruntime-genai: Optimum's graph as it is (its input and output names, the KV cache
    by layer, the vocabulary its logits span), the model's shape from config.json, greedy search as evaluation
    generated."""
    if kv_cache is None:
        raise ValueError(f"{onnx_graph(folder)}: no past_key_values inputs; onnxruntime-genai needs the KV cache")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    context = config.get("max_position_embeddings") or 2048
    decoder = {
        "session_options": {"provider_options": []},
        "filename": onnx_graph(folder).relative_to(folder).as_posix(),
        "head_size": kv_cache.head_dim, "hidden_size": config["hidden_size"],
        "num_attention_heads": config["num_attention_heads"], "num_key_value_heads": kv_cache.num_kv_heads,
        "num_hidden_layers": kv_cache.num_layers,
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value"}}
    eos, logits = settings["eos_token_id"], next(o for o in outputs if o.name == "logits")
    vocab = logits.shape[-1] if logits.shape and isinstance(logits.shape[-1], int) else config["vocab_size"]
    genai = {"model": {"type": config["model_type"], "bos_token_id": eos if bos_token_id is None else bos_token_id,
                       "eos_token_id": eos, "pad_token_id": settings["pad_token_id"], "context_length": context,
                       "vocab_size": vocab, "decoder": decoder},
             "search": {"do_sample": settings["do_sample"], "num_beams": 1, "max_length": context,
                        "past_present_share_buffer": False}}
    (folder / GENAI_CONFIG).write_text(json.dumps(genai, indent=2) + "\n", encoding="utf-8")


def onnx_signature(folder: Path) -> tuple[list[TensorSpec], list[TensorSpec], KVCache | None, str]:
    """Inputs, outputs, KV cache and dtype (the logits') of onnx/model.onnx, read from its graph (weights left on
    disk)."""
    import onnx

    graph = onnx.load(str(onnx_graph(folder)), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
        return TensorSpec(name=value.name, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                          shape=dims)

    inputs, outputs = [spec(v) for v in graph.input], [spec(v) for v in graph.output]
    past = [s for s in inputs if re.fullmatch(r"past_key_values\.\d+\.key", s.name)]
    kv_cache = None
    if past:
        shape = past[0].shape or []
        if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
            raise ValueError(f"{onnx_graph(folder)}: {past[0].name} has shape {shape}; expected [batch, kv heads, "
                             "sequence, head dim] with the heads and head dim fixed")
        kv_cache = KVCache(num_layers=len(past), num_kv_heads=shape[1], head_dim=shape[3],
                           inputs="past_key_values.{layer}.key, past_key_values.{layer}.value",
                           outputs="present.{layer}.key, present.{layer}.value")
    logits = next((s for s in outputs if s.name == "logits"), outputs[0])
    return inputs, outputs, kv_cache, logits.dtype or "unknown"


def onnx_quantization(folder: Path, unquantized: str) -> Quantization | None:
    """How onnx/model.onnx's MatMul weights are quantized (its MatMulNBits nodes' attributes), or None."""
    import onnx

    nodes = [n for n in onnx.load(str(onnx_graph(folder)), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    if not nodes:
        return None
    attributes = {tuple(sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute
                               if a.name in ("bits", "block_size"))) for n in nodes}
    if len(attributes) > 1:
        raise ValueError(f"{onnx_graph(folder)}: MatMulNBits nodes quantized differently: {sorted(attributes)}")
    settings = dict(attributes.pop())
    symmetric = not any(len(n.input) > 3 and n.input[3] for n in nodes)  # input 3: the blocks' zero points
    return Quantization(method="MatMulNBits", bits=settings["bits"], block_size=settings["block_size"],
                        symmetric=symmetric, matmuls=len(nodes), unquantized=unquantized)


def merged_signature(folder: Path, input_names: list[str]) -> tuple[list[TensorSpec], list[TensorSpec], KVCache | None,
                                                                    str]:
    """Inputs (the tokenizer's), outputs, KV cache and dtype of a transformers model, from its config.json."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    kv_cache = None
    if "num_hidden_layers" in config and "num_attention_heads" in config:
        heads = config["num_attention_heads"]
        kv_cache = KVCache(num_layers=config["num_hidden_layers"], num_kv_heads=config.get("num_key_value_heads") or heads,
                           head_dim=config.get("head_dim") or config["hidden_size"] // heads)
    dtype = config.get("dtype") or config.get("torch_dtype") or "unknown"
    return [TensorSpec(name=n) for n in input_names], [TensorSpec(name="logits")], kv_cache, dtype


def file_entries(folder: Path) -> list[FileEntry]:
    return [FileEntry(name=p.relative_to(folder).as_posix(), bytes=p.stat().st_size, sha256=sha256_file(p))
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MODEL_JSON]


# ---- the model card ------------------------------------------------------------------------------------

def model_card(contract: ModelContract, result: DomainResult, example: Example) -> str:
    """README.md: Hugging Face front matter, then what the model is, its numbers and gate verdict, and the exact call."""
    tags = ["lorafleet", "lora", "structured-output", "json", contract.domain,
            *(["onnx", contract.variant or contract.dtype] if contract.kind == "onnx" else [])]
    front = [*([f"base_model: {json.dumps(contract.base_model)}"] if HUB_ID_RE.fullmatch(contract.base_model) else []),
             f"library_name: {'optimum' if contract.kind == 'onnx' else 'transformers'}",
             "pipeline_tag: text-generation", "tags:", *(f"- {json.dumps(t)}" for t in tags)]
    weights = ("ONNX (Optimum text-generation-with-past, with KV cache)" if contract.kind == "onnx" else
               "merged 16-bit safetensors (LoRA adapter merged into the base)")
    if q := contract.quantization:
        weights += (f", {q.matmuls} MatMul weights {q.bits}-bit ({q.method}, blocks of {q.block_size}, "
                    f"{'symmetric' if q.symmetric else 'with zero points'}); embedding, norms and activations "
                    f"{q.unquantized}")
    else:
        weights += f", {contract.dtype}"
    facts = [("domain", contract.domain), ("weights", weights), ("base model", contract.base_model),
             ("run", contract.run_id), ("dataset version", contract.dataset_version),
             ("lorafleet", contract.lorafleet_version), ("prompt sha256", contract.prompt_sha256),
             *([("prompt builder", f"{contract.prompt_builder.name} (source sha256 {contract.prompt_builder.sha256})")]
               if contract.prompt_builder else [])]
    title = f"{contract.kind}, {contract.variant}" if contract.variant else contract.kind
    lines = ["---", *front, "---", "", f"# {contract.domain} ({title})", "", contract.description, "",
             "| | |", "| --- | --- |", *(f"| {k} | `{v}` |" for k, v in facts), "",
             "## Verdict", "", _verdict(result), "", report.result_markdown(result), *_training(result),
             "## Intended use", "", _intended_use(contract, result),
             "## How to call it", "", *_how_to_call(contract, example)]
    return "\n".join(lines).rstrip() + "\n"


def _training(result: DomainResult) -> list[str]:
    if result.winner is None:
        return []
    hparams = {k: v for k, v in asdict(result.winner).items() if v is not None}
    return ["## Training", "", f"The winning trial's LoRA hyperparameters, of {len(result.trials)} trials:", "",
            "| " + " | ".join(hparams) + " |", "|" + " --- |" * len(hparams),
            "| " + " | ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in hparams.values()) + " |", ""]


def _verdict(result: DomainResult) -> str:
    if result.gate is None:
        return "No release gate was applied."
    if result.gate.passed:
        return (f"PASSED: all {len(result.gate.checks)} release gate checks passed; the run makes it the domain's latest "
                "(unless a newer run already is).")
    return (f"GATED: failed release gate checks: {', '.join(result.gate.failed)}. The domain's latest pointer stays at "
            "an earlier run; this model is published for inspection, not for use.")


def _intended_use(contract: ModelContract, result: DomainResult) -> str:
    n = result.test.tuned.n if result.test else 0
    return (f"{contract.description} The input is one text like the domain's records; the answer is one JSON object "
            f"meant to follow `{contract.output_schema}`: validate every answer against it (the test metrics above, on "
            f"{n} held-out records, say how often answers did). Ask it exactly as below: the system prompt, one user "
            f"message ({_user_message_rule(contract.message_format)}) and greedy decoding up to "
            f"{contract.generation['max_new_tokens']} new tokens; other prompts and sampling were never evaluated. "
            f"{_context_rule(contract.context)}It is not a general assistant.\n")


def _context_rule(spec: ContextSpec | None) -> str:
    if spec is None:
        return ""
    return (f"Every request names its {spec.key}: that entity's record in `{spec.file}` (or a newer context file with "
            f"the same fields: a new {spec.key} needs no retraining), written through the template "
            f"{spec.template!r}, follows the system prompt after a blank line. ")


def _user_message_rule(fmt: MessageFormat) -> str:
    if fmt.user_message_without_input is None:
        return "the record's text as it is"
    return f"the instruction, a blank line, then the input: `{fmt.user_message!r}`"


def _builder_note(contract: ModelContract) -> list[str]:
    if contract.prompt_builder is None:
        return []
    module, _, function = contract.prompt_builder.name.partition(":")
    return [f"# training built every user message with {contract.prompt_builder.name}; build yours with it too:",
            f"# from {module} import {function}; USER_MESSAGE = {function}(annotated_record)"]


def _how_to_call(contract: ModelContract, example: Example) -> list[str]:
    load = (["from optimum.onnxruntime import ORTModelForCausalLM", "from transformers import AutoTokenizer", "",
             'folder = "."  # this folder', "tokenizer = AutoTokenizer.from_pretrained(folder)",
             "model = ORTModelForCausalLM.from_pretrained(folder)"] if contract.kind == "onnx" else
            ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             'folder = "."  # this folder', "tokenizer = AutoTokenizer.from_pretrained(folder)",
             "model = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True)"])
    settings = ", ".join(f"{k}={v!r}" for k, v in contract.generation.items())
    system = [f"SYSTEM_PROMPT = {contract.system_prompt!r}"]
    if contract.context is not None and example.context is not None:
        system = [f"CONTEXT = {example.context!r}  # {contract.context.key} {example.entity!r} in "
                  f"{contract.context.file}, through its template",
                  f"SYSTEM_PROMPT = {contract.system_prompt!r} + {contract.context.separator!r} + CONTEXT"]
    code = ["import json", *load, "", *system,
            f"USER_MESSAGE = {example.user_text!r}  # a test record", *_builder_note(contract), "",
            "messages = [{'role': 'system', 'content': SYSTEM_PROMPT}, {'role': 'user', 'content': USER_MESSAGE}]",
            "text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
            "inputs = tokenizer(text, return_tensors='pt', add_special_tokens=False)",
            f"output = model.generate(**inputs, {settings})",
            "answer = tokenizer.decode(output[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True)",
            "print(json.loads(answer))"]
    entity = f", entity={example.entity!r}" if contract.context is not None else ""
    named = (f" --entity {json.dumps(example.entity, ensure_ascii=False)} (or a {contract.context.key} field in each "
             "record of --file; --context FILE for a newer context file)" if contract.context is not None else "")
    predict = ([f"Or, with only `pip install lorafleet` (no torch): `lorafleet predict {contract.domain} --input "
                f"USER_MESSAGE`{named} answers as below and validates the answer against the schema.", ""]
               if contract.kind == "onnx" else [])
    return ["These settings are also in `generation_config.json`, so `model.generate(**inputs)` alone answers the "
            f"same. With lorafleet installed, `lorafleet.contract.render_prompt(folder, USER_MESSAGE{entity})` gives the "
            "same `text`, byte for byte the prompt training and evaluation used.", "", *predict, "```python", *code,
            "```", "",
            "The record's reference answer:", "", "```json", example.completion, "```"]
