"""The contract a published model folder carries: asked from the folder alone, the model gets byte for byte the prompt
training and evaluation gave it, for every bundled domain and data format; lorafleet_model.json, the generation
config and the model card say what the run measured; the manifest covers every contract file."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from lorafleet import contract, data, publish
from lorafleet.base_model import CHAT_TEMPLATE, DEFAULT_CORPUS, build_tokenizer, corpus_documents
from lorafleet.config import load_domain
from lorafleet.lineage import prompt_sha256
from lorafleet.prompt import prompt_messages
from lorafleet.results import DomainResult
from tests.conftest import DOMAINS_DIR
from tests.report_sample import sample_report

DOMAINS = sorted(p.stem for p in DOMAINS_DIR.glob("*.yaml"))
FORMATS = ("messages", "conversations", "alpaca")
# Qwen2.5's way: a default system prompt of its own when the messages bring none
QWEN_LIKE_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
TEMPLATES = {"tiny": CHAT_TEMPLATE, "qwen-like": QWEN_LIKE_TEMPLATE}
MODEL_CONFIG = {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "hidden_size": 64, "dtype": "float16"}


@pytest.fixture(scope="module", params=list(TEMPLATES))
def base_dir(request, tmp_path_factory) -> Path:
    """A base model's tokenizer as the tiny base builds it (fewer merges), with a chat template, and its config."""
    folder = tmp_path_factory.mktemp(f"base-{request.param}")
    tokenizer = build_tokenizer(corpus_documents(DEFAULT_CORPUS.read_text(encoding="utf-8")[:200_000]), 600)
    tokenizer.chat_template = TEMPLATES[request.param]
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps(MODEL_CONFIG))
    return folder


def _config(domain: str, data_format: str):
    cfg = load_domain(DOMAINS_DIR / f"{domain}.yaml")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"format": data_format})})


def _published(base_dir: Path, dest: Path, cfg, result: DomainResult | None = None, kind="merged") -> Path:
    """A model folder as the pipeline publishes it (the base's tokenizer and config stand in for the merged model's),
    with its contract, then moved away from where it was written."""
    written = dest.parent / f"{dest.name}-written"
    shutil.copytree(base_dir, written)
    schema = json.loads(Path(cfg.schema_path).read_text())
    result = result or DomainResult(name=cfg.name, status="published", dataset_version="d" * 64)
    contract.write_contract(written, kind, cfg, schema, result, "run-1", _any_example(cfg),
                            context=data.context_of(cfg))
    shutil.move(written, dest)
    return dest


def _any_example(cfg) -> data.Example:
    """A record of the domain's data, read in its own format (the card shows the call with one)."""
    return data.load_examples(load_domain(cfg.source_file))[0][0]


def _records(domain: str, data_format: str, group_key: str) -> list[tuple[dict, dict]]:
    """The domain's records in ``data_format``, each with the fields a consumer has of it: (record, fields)."""
    native = load_domain(DOMAINS_DIR / f"{domain}.yaml")
    out = []
    for i, (_, raw) in enumerate(list(data.read_records(native.data_path))[:6]):
        example = data.to_example(raw, native, 1)
        text, answer, group = example.user_text, example.completion, raw[group_key]
        if data_format == "messages":
            record = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}
            fields = {"input": text}
        elif data_format == "conversations":
            record = {"conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": answer}]}
            fields = {"input": text}
        elif native.data.format == "alpaca":
            record, fields = raw, {"instruction": raw["instruction"], "input": raw["input"]}
        else:  # an instruction and an input, or (every third record) an instruction alone
            instruction, given = (text, "") if i % 3 == 0 else (native.description, text)
            record = {"instruction": instruction, "input": given, "output": answer}
            fields = {"instruction": instruction, "input": given}
        out.append(({**record, group_key: group}, fields))
    return out


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("domain", DOMAINS)
def test_the_prompt_from_the_published_folder_alone_is_the_training_prompt(base_dir, tmp_path, domain, data_format):
    from transformers import AutoTokenizer

    cfg = _config(domain, data_format)
    folder = _published(base_dir, tmp_path / "published", cfg)
    trained_with = AutoTokenizer.from_pretrained(str(base_dir))  # the tokenizer training and evaluation used
    model = contract.read_contract(folder)
    inline = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    assert inline == (folder / "chat_template.jinja").read_text() == trained_with.chat_template
    records = _records(domain, data_format, cfg.data.group_key)
    for line, (record, fields) in enumerate(records, start=1):
        example = data.to_example(record, cfg, line)
        # what TRL tokenizes for the prompt of a training record, and what evaluation generates from
        training = trained_with.apply_chat_template(example.prompt, tokenize=False, add_generation_prompt=True)
        assert trained_with.apply_chat_template(example.prompt, add_generation_prompt=True) == \
            trained_with(training, add_special_tokens=False)["input_ids"]
        user_message = model.message_format.render_user(**fields)
        entity = record[model.context.key] if model.context else None  # a domain with context: the record's brand
        assert contract.render_prompt(folder, user_message, entity) == training
        # transformers.js renders the inline template
        inline_messages = prompt_messages(model.system_prompt, user_message, example.context)
        assert trained_with.apply_chat_template(inline_messages, chat_template=inline, tokenize=False,
                                                add_generation_prompt=True) == training
    assert len(records) == 6


def test_lorafleet_model_json_describes_the_merged_model_and_its_files(base_dir, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    cfg = load_domain(DOMAINS_DIR / "story_summary.yaml")
    GenerationConfig(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                     eos_token_id=[5, 6]).save_pretrained(tmp_path / "base-with-sampling")  # a chat base's defaults
    base = shutil.copytree(base_dir, tmp_path / "base")
    shutil.copy(tmp_path / "base-with-sampling" / "generation_config.json", base)
    folder = _published(base, tmp_path / "merged", cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = json.loads((folder / contract.MODEL_JSON).read_text())

    assert {k: model[k] for k in ("contract_version", "domain", "kind", "dtype", "system_prompt", "output_schema")} == {
        "contract_version": 1, "domain": "story_summary", "kind": "merged", "dtype": "float16",
        "system_prompt": cfg.system_prompt, "output_schema": "output_schema.json"}
    assert [i["name"] for i in model["inputs"]] == ["input_ids", "attention_mask"]
    assert model["kv_cache"] | {"layout": None} == {"num_layers": 2, "num_kv_heads": 2, "head_dim": 16, "layout": None,
                                                   "inputs": None, "outputs": None}
    assert model["prompt_sha256"] == prompt_sha256(cfg.system_prompt, tokenizer.chat_template)
    assert model["message_format"]["user_message"] == "{instruction}\n\n{input}"
    evaluation = {"do_sample": False, "max_new_tokens": cfg.eval.max_new_tokens, "eos_token_id": tokenizer.eos_token_id,
                  "pad_token_id": tokenizer.pad_token_id}
    assert model["generation"] == evaluation
    assert json.loads((folder / "generation_config.json").read_text()).items() >= evaluation.items()  # spelt out
    generation = GenerationConfig.from_pretrained(str(folder))  # what a bare model.generate(**inputs) uses
    assert not generation._from_model_config  # generate keeps it rather than rebuilding one from config.json
    assert {k: getattr(generation, k) for k in evaluation} == evaluation
    assert generation.repetition_penalty == 1.05  # evaluation generated with the base's own settings too
    assert (generation.temperature, generation.top_p, generation.top_k) == (1.0, 1.0, 50)  # unused by greedy
    assert json.loads((folder / "output_schema.json").read_text()) == json.loads(Path(cfg.schema_path).read_text())

    listed = {f["name"]: (f["bytes"], f["sha256"]) for f in model["files"]}
    on_disk = {p.name: (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
               for p in folder.iterdir() if p.name != contract.MODEL_JSON}
    assert listed == on_disk
    assert {"chat_template.jinja", "tokenizer_config.json", "generation_config.json", "output_schema.json",
            "README.md", "config.json"} <= set(listed)


def test_lorafleet_model_json_reads_inputs_outputs_and_the_kv_cache_from_the_onnx_graph(base_dir, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def value(name, elem, shape):
        return helper.make_tensor_value_info(name, elem, shape)

    past = [value(f"past_key_values.{i}.{kv}", TensorProto.FLOAT, ["batch_size", 2, "past_sequence_length", 16])
            for i in range(3) for kv in ("key", "value")]
    present = [value(f"present.{i}.{kv}", TensorProto.FLOAT, ["batch_size", 2, "total_sequence_length", 16])
               for i in range(3) for kv in ("key", "value")]
    ids = [value(n, TensorProto.INT64, ["batch_size", "sequence_length"])
           for n in ("input_ids", "attention_mask", "position_ids")]
    graph = helper.make_graph([], "decoder", [*ids, *past],
                              [value("logits", TensorProto.FLOAT, ["batch_size", "sequence_length", 600]), *present])
    base = shutil.copytree(base_dir, tmp_path / "export")
    (base / "onnx").mkdir()
    onnx.save(helper.make_model(graph), str(base / "onnx" / "model.onnx"))
    folder = _published(base, tmp_path / "onnx", load_domain(DOMAINS_DIR / "contracts.yaml"), kind="onnx")
    model = contract.read_contract(folder)

    assert (model.kind, model.dtype) == ("onnx", "float32")
    assert [i.name for i in model.inputs][:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert model.inputs[0].dtype == "int64" and model.inputs[0].shape == ["batch_size", "sequence_length"]
    assert model.outputs[0].name == "logits" and model.outputs[0].shape == ["batch_size", "sequence_length", 600]
    assert (model.kv_cache.num_layers, model.kv_cache.num_kv_heads, model.kv_cache.head_dim) == (3, 2, 16)
    assert model.kv_cache.inputs == "past_key_values.{layer}.key, past_key_values.{layer}.value"
    assert {"onnx/model.onnx", "genai_config.json"} <= {f.name for f in model.files}
    genai = json.loads((folder / "genai_config.json").read_text())
    decoder = genai["model"]["decoder"]
    assert (decoder["filename"], decoder["num_hidden_layers"], decoder["num_key_value_heads"], decoder["head_size"]) == \
        ("onnx/model.onnx", 3, 2, 16)
    assert decoder["inputs"]["past_key_names"] == "past_key_values.%d.key" and genai["search"]["do_sample"] is False
    card = (folder / "README.md").read_text()
    assert "library_name: optimum" in card and "ORTModelForCausalLM.from_pretrained(folder)" in card


def test_the_model_card_has_the_test_metrics_with_intervals_the_verdict_and_the_exact_call(base_dir, tmp_path):
    sample = sample_report().result  # the contracts domain, evaluated and gated by the pipeline's own producers
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml")
    folder = _published(base_dir, tmp_path / "merged", cfg, sample.model_copy(update={"dataset_version": "v" * 64}))
    card = (folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]

    assert "library_name: transformers" in front and "pipeline_tag: text-generation" in front
    assert "base_model" not in front  # the embedded tiny base is no hub model
    assert cfg.description in body and "v" * 64 in body and "run-1" in body
    verdict = "PASSED" if sample.gate.passed else "GATED: failed release gate checks: " + ", ".join(sample.gate.failed)
    assert verdict in body
    for check in sample.gate.checks:
        assert check.name.replace("&", "&amp;").replace("<", "&lt;") in body  # as the report escapes it
    tuned = sample.test.tuned.metrics["schema_pass_rate"]
    row = next(line for line in body.splitlines() if line.startswith("| schema_pass_rate |"))
    assert f"{tuned.value:.3f} [{tuned.ci[0]:.3f}, {tuned.ci[1]:.3f}]" in row
    assert f"| {sample.winner.lora_rank} | {sample.winner.learning_rate:g} | {sample.winner.epochs} |" in body

    code = body.split("```python\n")[1].split("```")[0]
    compile(code, "README.md", "exec")  # the call is Python as it stands
    assert repr(cfg.system_prompt) in code and f"max_new_tokens={cfg.eval.max_new_tokens}" in code
    assert "do_sample=False" in code and "add_generation_prompt=True" in code

    hub = contract.read_contract(folder).model_copy(update={"base_model": "Qwen/Qwen2.5-0.5B-Instruct"})
    assert 'base_model: "Qwen/Qwen2.5-0.5B-Instruct"' in contract.model_card(hub, sample, _any_example(cfg))


def test_the_manifest_covers_the_contract_files_so_a_changed_one_is_found(base_dir, tmp_path):
    domain = tmp_path / "domain"
    _published(base_dir, domain / "merged", load_domain(DOMAINS_DIR / "medical.yaml"))
    storage = publish.Storage(str(tmp_path / "store"))
    manifest = publish.publish_domain(storage, "run1", "medical", domain)
    objects = {o["key"]: o["sha256"] for o in manifest["objects"]}
    for name in ("lorafleet_model.json", "README.md", "chat_template.jinja", "tokenizer_config.json",
                 "generation_config.json", "output_schema.json"):
        assert objects[f"merged/{name}"] == hashlib.sha256((domain / "merged" / name).read_bytes()).hexdigest()
    storage.write_bytes("runs/run1/medical/merged/chat_template.jinja", b"{{ messages }}")
    assert publish.verify(f"{storage.uri}/runs/run1/medical") == [
        f"{storage.url('runs/run1/medical/merged/chat_template.jinja')}: 14 bytes, manifest says "
        f"{(domain / 'merged' / 'chat_template.jinja').stat().st_size}"]


@pytest.mark.parametrize("base_model, hub", [("tiny", False), ("Qwen/Qwen2.5-0.5B-Instruct", True)])
def test_the_adapter_names_its_base_as_the_config_does_and_says_how_to_serve_it(tmp_path, base_model, hub):
    """PEFT writes the path training loaded the base from (for tiny: the training machine's cache folder); the published
    adapter names the configured base instead, and its card gives the base weights' sha256 and the servers' calls."""
    sample = sample_report().result
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {"base_model": base_model})
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/root/.cache/lorafleet/tiny-base-0123", "r": 8, "lora_alpha": 16,
         "target_modules": ["v_proj", "q_proj"], "peft_type": "LORA"}))
    (tmp_path / "README.md").write_text("# Model Card for Model ID\n[More Information Needed]")
    contract.write_adapter_card(tmp_path, cfg, sample, "b" * 64)

    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == base_model and config["r"] == 8 and config["peft_type"] == "LORA"
    card = (tmp_path / "README.md").read_text()
    assert "More Information Needed" not in card and "b" * 64 in card and "q_proj, v_proj" in card
    assert ("base_model: \"Qwen/Qwen2.5-0.5B-Instruct\"" in card.split("---")[1]) is hub
    served = base_model if hub else "BASE"
    assert f"vllm serve {served} --enable-lora --max-lora-rank 8 --lora-modules contracts=./adapter" in card
    assert ("lorafleet make-tiny-base" in card) is (base_model == "tiny")
    compile(card.split("```python\n")[1].split("```")[0], "README.md", "exec")
