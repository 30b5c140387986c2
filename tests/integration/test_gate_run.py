"""Acceptance of the release gate end to end: a run with a deliberately useless override (learning rate
1e-9) trains nothing, so the bundled gate must refuse it: the domain ends `gated`, the failing checks are
named in the summary, the reports and `lorafleet report`, artifacts are kept, and `latest.json` stays put."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from lorafleet import contract, predict, publish
from lorafleet.cli import main
from lorafleet.config import load_domain
from lorafleet.results import FinishTimings
from tests.conftest import DOMAINS_DIR

pytestmark = pytest.mark.integration
JS_CONSUMER = Path(__file__).resolve().parents[1] / "js"


@pytest.fixture(scope="module")
def js_consumer(tmp_path_factory):
    """tests/js with transformers.js installed from the npm registry (scripts off: onnxruntime-node's binaries come in
    its package)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs Node and npm")
    folder = tmp_path_factory.mktemp("js-consumer")
    for name in ("package.json", "greedy.mjs"):
        shutil.copy(JS_CONSUMER / name, folder)
    subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=folder, check=True,
                   capture_output=True, timeout=600)
    return folder



def test_useless_override_ends_gated_with_named_checks_and_pointer_unmoved(local_ray, small_base, tmp_path, capsys,
                                                                          js_consumer):
    config_dir = tmp_path / "domains"
    config_dir.mkdir()
    shutil.copy(DOMAINS_DIR / "medical.yaml", config_dir)
    shutil.copytree(DOMAINS_DIR / "medical", config_dir / "medical")
    storage_dir = tmp_path / "store"
    storage = publish.Storage(str(storage_dir))
    earlier = {"run_id": "an-earlier-run", "domain": "medical"}
    storage.write_json(publish.latest_key("medical"), earlier)  # what consumers follow today

    sets = [f"base_model={small_base}", "train.max_steps=4", "train.eval_steps=2", "sweep.space.lora_rank=[4]",
            "sweep.space.learning_rate=[1e-9]", "eval.max_examples=4", "eval.max_new_tokens=24"]
    args = ["run", "--config-dir", str(config_dir), "--storage", str(storage_dir), "--run-id", "useless",
            "--work-dir", str(tmp_path / "work"), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0  # a gated domain is a normal outcome, not a failed job

    entry = storage.read_json("runs/useless/summary.json")["domains"]["medical"]
    assert entry["status"] == "gated"
    assert set(entry["timings"]) == set(FinishTimings.model_fields)  # every finishing phase, timed
    timings = dict(entry["timings"])
    assert timings.pop("context_eval") is None  # medical has no context to take out
    assert all(seconds is not None and seconds >= 0 for seconds in timings.values())
    failed = [c["name"] for c in entry["gate"]["checks"] if not c["passed"]]
    assert "score gain >= 25" in failed and "schema_pass_rate >= 0.6" in failed, entry["gate"]
    assert storage.read_json(publish.latest_key("medical")) == earlier  # the pointer did not move
    assert publish.verify(f"{storage_dir}/runs/useless") == []  # artifacts and reports are kept, whole
    published_onnx = storage_dir / "runs" / "useless" / "medical" / "onnx"
    assert (published_onnx / "onnx" / "model.onnx").is_file()  # where transformers.js looks
    assert json.loads((published_onnx / "lorafleet_export.json").read_text()) == {"dtype": "fp32"}
    published_int4 = published_onnx.parent / "onnx-int4"  # the bundled int4 variant, in the same layout
    assert (published_int4 / "onnx" / "model.onnx").is_file()
    assert json.loads((published_int4 / "lorafleet_export.json").read_text()) == {
        "variant": "int4", "int4_block_size": 32, "from": {"dtype": "fp32"}}
    variants = entry["variants"]
    assert list(variants) == ["fp32", "int4"] and variants["int4"]["folder"] == "onnx-int4"
    assert variants["int4"]["bytes"] < 0.6 * variants["fp32"]["bytes"]
    assert all(v["evaluation"]["n"] == 4 and v["parity"]["prompts"] == 4 and v["speed"]["tokens_per_s"] > 0
               and v["speed"]["new_tokens"] == 64 for v in variants.values())
    assert variants["fp32"]["evaluation"] == entry["test"]["onnx"]  # the export's numbers, as test.onnx has them
    assert any(c["kind"] == "variant" and c["name"].startswith("int4 ") for c in entry["gate"]["checks"])
    scratch = tmp_path / "work" / "medical"  # once published, the scratch copies of the weights are gone
    assert (scratch / "report.md").is_file() and not (scratch / "merged").exists() and not (scratch / "onnx").exists()
    assert not (scratch / "onnx-int4").exists() and (scratch / "eval" / "test-onnx-int4.jsonl").is_file()

    domain_dir = storage_dir / "runs" / "useless" / "medical"
    markdown = (domain_dir / "report.md").read_text()
    assert markdown.startswith("# GATED") and "score gain >= 25" in markdown.splitlines()[0]
    assert "## ONNX variants" in markdown and "| int4 | onnx-int4 | int4 MatMul weights (block 32) over fp32 |" in markdown
    html = (domain_dir / "report.html").read_text()
    assert "score gain &gt;= 25" in html and html.count("<svg") >= 3
    report = json.loads((domain_dir / "report.json").read_text())
    assert {"base", "tuned", "onnx", "delta"} <= set(report["result"]["test"])
    assert report["result"]["golden"]["tuned"]["n"] == 12  # the golden set is scored every run
    assert report["result"]["drift"]["onnx_provider"] == "CPUExecutionProvider"  # the finishing task has no GPU
    assert report["result"]["drift"]["merged_vs_onnx"]["prompts"] == 4  # the evaluated test records (max_examples)
    assert report["result"]["timings"]["onnx_export"] is not None and report["result"]["timings"]["publish"] is None
    messages = _published_folders_carry_their_contract(domain_dir, config_dir / "medical.yaml", small_base)
    for folder in ("onnx", "onnx-int4"):
        _transformers_js_and_onnxruntime_genai_answer_as_optimum(js_consumer, domain_dir / folder, messages)
    index = (storage_dir / "runs" / "useless" / "index.html").read_text()
    assert 'href="medical/report.html"' in index and "GATED" in index

    capsys.readouterr()
    assert main(["report", f"{storage_dir}/runs/useless"]) == 0
    printed = capsys.readouterr().out
    line = next(row for row in printed.splitlines() if row.startswith("medical"))
    assert "GATED" in line and "score gain >= 25" in line


def _published_folders_carry_their_contract(domain_dir, config_file, base):
    """Both model folders hold the contract files, the manifest lists them, their prompt is the trials', and the prompt
    rendered from the ONNX folder alone is the one the evaluation asked the test record with."""
    from transformers import AutoTokenizer

    cfg = load_domain(config_file)
    listed = {o["key"] for o in json.loads((domain_dir / "manifest.json").read_text())["objects"]}
    for folder, kind, variant in (("merged", "merged", None), ("onnx", "onnx", "fp32"), ("onnx-int4", "onnx", "int4")):
        model = contract.read_contract(domain_dir / folder)
        assert (model.kind, model.variant, model.system_prompt, model.generation["max_new_tokens"]) == (
            kind, variant, cfg.system_prompt, 24)
        assert {f"{folder}/{f.name}" for f in model.files} | {f"{folder}/lorafleet_model.json"} <= listed
        assert {"chat_template.jinja", "output_schema.json", "README.md", "generation_config.json"} <= \
            {f.name for f in model.files}
        assert "GATED: failed release gate checks" in (domain_dir / folder / "README.md").read_text()
    assert contract.read_contract(domain_dir / "onnx-int4").quantization.bits == 4
    adapter = json.loads((domain_dir / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base)  # as the run configured it (--set base_model=PATH)
    assert "## Serving it" in (domain_dir / "adapter" / "README.md").read_text()
    from peft import PeftModel  # the published adapter loads onto the base it names
    from transformers import AutoModelForCausalLM

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(adapter["base_model_name_or_path"]),
                                        str(domain_dir / "adapter"))
    assert adapted.peft_config["default"].r == 4  # the run's sweep.space.lora_rank
    trials = json.loads((domain_dir / "domain_summary.json").read_text())["trials"]
    assert {t["lineage"]["prompt_sha256"] for t in trials} == {model.prompt_sha256}  # as the trials were asked
    kv_cache = contract.read_contract(domain_dir / "onnx").kv_cache
    assert (kv_cache.num_layers, kv_cache.num_kv_heads, kv_cache.head_dim) == (2, 2, 16)  # small_base's
    asked = json.loads((domain_dir / "eval" / "test-onnx.jsonl").read_text().splitlines()[0])["input"]
    messages = [{"role": "system", "content": cfg.system_prompt}, {"role": "user", "content": asked}]
    evaluation_prompt = AutoTokenizer.from_pretrained(str(base)).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)
    assert contract.render_prompt(domain_dir / "onnx", asked) == evaluation_prompt
    return messages


def _transformers_js_and_onnxruntime_genai_answer_as_optimum(js_consumer, folder, messages):
    """transformers.js (Node, offline), onnxruntime-genai (its genai_config.json) and lorafleet predict load the
    published ONNX folder as it is and answer greedily with the same tokens as Optimum's ORTModelForCausalLM;
    transformers.js and predict render the prompt from the folder's own template."""
    import onnxruntime_genai as og
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    optimum = ORTModelForCausalLM.from_pretrained(str(folder)).generate(**inputs, max_new_tokens=16, do_sample=False)
    expected = optimum[0, len(prompt_ids):].tolist()

    done = subprocess.run(["node", "greedy.mjs", str(folder), json.dumps(messages), "16"], cwd=js_consumer,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    js = json.loads(done.stdout.strip().splitlines()[-1])
    assert js["prompt"] == prompt and js["tokens"] == expected

    model = og.Model(str(folder))
    assert og.Tokenizer(model).encode(prompt).tolist() == prompt_ids
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + 16, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt_ids)
    genai = []
    while not generator.is_done():
        generator.generate_next_token()
        genai.append(int(generator.get_next_tokens()[0]))
    assert genai == expected

    ours = predict.OnnxModel(folder)  # lorafleet predict: onnxruntime, tokenizers and jinja only
    assert ours.prompt(messages[1:]) == prompt and ours.prompt_ids(prompt) == prompt_ids
    assert ours.generate(prompt_ids)[:16] == expected
