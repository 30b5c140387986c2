"""``lorafleet predict`` on a published ONNX model: it answers with Optimum's greedy tokens, and a fresh venv with only
the consumer install (no torch, Ray or transformers) answers a 100-record file, validates every answer and writes them
whole, while a malformed line, a missing domain, a run that does not exist and a tampered model file each stop it with
a clear error and nothing written."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lorafleet import contract, export, predict, publish
from lorafleet.config import load_domain
from lorafleet.data import prepare
from lorafleet.results import DomainResult
from tests.conftest import DOMAINS_DIR

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
RUN_ID, DOMAIN = "night-1", "contracts"


@pytest.fixture(scope="module")
def store(small_base, tmp_path_factory) -> Path:
    """A storage root where run night-1 published (and promoted) the contracts domain: small_base exported to ONNX and
    its int4 variant, with their contracts, as the pipeline writes them."""
    cfg = load_domain(DOMAINS_DIR / f"{DOMAIN}.yaml", {"base_model": str(small_base), "eval": {"max_new_tokens": 24}})
    prepared = prepare(cfg)
    work = tmp_path_factory.mktemp("published")
    export.to_onnx(small_base, work / "onnx")
    export.build_variant(work / "onnx", work / "onnx-int4", "int4")
    result = DomainResult(name=DOMAIN, status="published", dataset_version=prepared.manifest.dataset_version)
    for folder, variant in (("onnx", "fp32"), ("onnx-int4", "int4")):
        contract.write_contract(work / folder, "onnx", cfg, prepared.schema, result, RUN_ID, prepared.split("test")[0],
                                variant=variant)
    root = tmp_path_factory.mktemp("store")
    storage = publish.Storage(str(root))
    publish.publish_domain(storage, RUN_ID, DOMAIN, work, extra={"status": "published"})
    publish.promote(storage, RUN_ID, DOMAIN)
    return root


def test_predict_answers_with_optimums_greedy_tokens(store, tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    folder = predict.model_folder(str(store), DOMAIN, cache=tmp_path / "cache")
    model = predict.OnnxModel(folder)
    optimum, tokenizer = ORTModelForCausalLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(str(folder))
    for text in ("Termination on 30 days' notice. Governing law: Ontario.", "Trả lời bằng JSON."):
        turns = [{"role": "user", "content": text}]
        prompt = model.prompt(turns)
        assert prompt == contract.render_prompt(folder, text)
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        assert model.prompt_ids(prompt) == inputs["input_ids"][0].tolist()
        expected = optimum.generate(**inputs, **model.contract.generation)[0, inputs["input_ids"].shape[1]:].tolist()
        answer = model.generate(model.prompt_ids(prompt))
        assert answer == expected[:len(answer)] and len(answer) == 24  # small_base never says EOS this early
        assert model.decode(answer) == tokenizer.decode(answer, skip_special_tokens=True)


@pytest.fixture(scope="module")
def consumer_venv(tmp_path_factory) -> Path:
    """A fresh venv with lorafleet installed from a wheel of this tree, core dependencies only (from the registry)."""
    root = tmp_path_factory.mktemp("consumer")
    tree = root / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "wheels"), str(tree)], check=True, capture_output=True, timeout=300)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    wheel = next((root / "wheels").glob("lorafleet-*.whl"))
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def _predict(venv: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "lorafleet"), "predict", DOMAIN, *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=venv)


def test_the_consumer_install_answers_a_file_and_refuses_bad_input(store, consumer_venv, tmp_path):
    python = str(consumer_venv / "bin" / "python")
    for missing in ("torch", "ray", "transformers", "optimum", "datasets"):
        probe = subprocess.run([python, "-c", f"import {missing}"], capture_output=True, text=True)
        assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr, missing

    cfg = load_domain(DOMAINS_DIR / f"{DOMAIN}.yaml")
    lines = Path(cfg.data_path).read_text(encoding="utf-8").splitlines()
    records = [{"id": f"r{i}", "input": json.loads(line)["messages"][0]["content"]} for i, line in enumerate(lines[:60])]
    records += [json.loads(line) for line in lines[60:100]]  # the domain's own format, answers left out when asked
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps(r) + "\n" for r in records))
    cache, out = tmp_path / "cache", tmp_path / "answers" / "out.jsonl"
    done = _predict(consumer_venv, "--storage", str(store), "--file", str(requests), "--out", str(out),
                    "--cache", str(cache))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(60)] + [f"line-{i}" for i in range(61, 101)]
    invalid = [r for r in rows if not r["valid"]]
    assert all(r["errors"] for r in invalid) and all(not r["errors"] for r in rows if r["valid"])
    assert done.returncode == (1 if invalid else 0), done.stderr  # an untrained base: most answers are not JSON
    assert f"{len(rows)} answers, {len(rows) - len(invalid)} valid" in done.stderr
    # the answers are the model's: the same as the training environment's predict gives for the same folder
    model = predict.OnnxModel(predict.model_folder(str(store), DOMAIN, cache=cache))
    assert rows[0]["text"] == model.answer([{"role": "user", "content": records[0]["input"]}])

    verified = subprocess.run([str(consumer_venv / "bin" / "lorafleet"), "verify", f"{store}/runs/{RUN_ID}"],
                              capture_output=True, text=True, timeout=300)
    assert verified.returncode == 0 and "every object matches" in verified.stdout, verified.stderr  # also no torch

    def refused(expected: str, *args: str, cache_dir: Path = cache) -> None:
        target = tmp_path / "refused" / "out.jsonl"
        done = _predict(consumer_venv, "--storage", str(store), "--cache", str(cache_dir), *args,
                        *(["--out", str(target)] if "--file" in args else []))
        assert done.returncode == 2 and expected in done.stderr, done.stderr
        assert not target.parent.exists() or not any(target.parent.iterdir())  # nothing written, not even half

    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text('{"id": 1, "input": "fine"}\n{"id": 2, "input": \n')
    refused(f"{malformed}:2: Expecting value", "--file", str(malformed))
    refused("domain contracts has no published model", "--input", "x", "--storage", str(tmp_path / "empty"))
    refused("run night-9 did not publish domain contracts", "--input", "x", "--run", "night-9")
    refused("no ONNX variant 'int8'; published: fp32, int4", "--input", "x", "--variant", "int8")
    int4 = _predict(consumer_venv, "--storage", str(store), "--cache", str(cache), "--input", "x", "--variant", "int4")
    assert int4.returncode in (0, 1) and json.loads(int4.stdout)["text"], int4.stderr  # the int4 folder answers
    assert any(cache.rglob("onnx-int4/onnx/model.onnx"))

    cached_graph = next(p for p in cache.rglob("model.onnx") if p.parent.parent.name == "onnx")  # the export's
    cached_graph.write_bytes(cached_graph.read_bytes()[:-1] + b"\0")
    refused("onnx/model.onnx changed (sha256 differs)", "--input", "x")
    stored_graph = store / "runs" / RUN_ID / DOMAIN / "onnx" / "onnx" / "model.onnx"
    original = stored_graph.read_bytes()
    try:
        stored_graph.write_bytes(original[:-1] + b"\0")
        fresh = tmp_path / "fresh-cache"
        refused("onnx/onnx/model.onnx: sha256 differs from the manifest", "--input", "x", cache_dir=fresh)
        assert not any(fresh.rglob("model.onnx"))  # the refused model never reached the cache
    finally:
        stored_graph.write_bytes(original)


CAPTIONS = "brand_captions"


@pytest.fixture(scope="module")
def captions_store(small_base, tmp_path_factory) -> Path:
    """A storage root where run night-1 published brand_captions (a domain asked with its brand's record from
    brands.json): small_base exported to ONNX, with its contract and the context file's copy, as the pipeline writes it."""
    cfg = load_domain(DOMAINS_DIR / f"{CAPTIONS}.yaml", {"base_model": str(small_base), "eval": {"max_new_tokens": 8}})
    prepared = prepare(cfg)
    work = tmp_path_factory.mktemp("captions")
    export.to_onnx(small_base, work / "onnx")
    result = DomainResult(name=CAPTIONS, status="published", dataset_version=prepared.manifest.dataset_version)
    contract.write_contract(work / "onnx", "onnx", cfg, prepared.schema, result, RUN_ID, prepared.split("test")[0],
                            context=prepared.context)
    root = tmp_path_factory.mktemp("captions-store")
    storage = publish.Storage(str(root))
    publish.publish_domain(storage, RUN_ID, CAPTIONS, work, extra={"status": "published"})
    publish.promote(storage, RUN_ID, CAPTIONS)
    return root


def test_a_brand_added_to_the_context_file_is_answered_without_retraining(captions_store, tmp_path, capsys):
    """The published model knows the twelve brands of brands.json as it was; a thirteenth added to a newer copy
    (--context) is asked with its own record in the prompt and answered, with no retraining; without that copy the
    same request is refused, naming the request's file and line and the published context file."""
    from lorafleet import cli

    cache = tmp_path / "cache"
    folder = predict.model_folder(str(captions_store), CAPTIONS, cache=cache)
    published = json.loads((folder / "context.json").read_text(encoding="utf-8"))
    assert len(published["brands"]) == 12 and contract.read_contract(folder).context.entities == 12
    newer = dict(published, brands=[*published["brands"], {
        "brand": "NoodleNook", "industry": "noodle bar", "tone": ["playful", "loud"], "values": ["late nights"],
        "audience": "students 18-25", "hashtags": ["#NoodleNook", "#SlurpUp"]}])
    brands = tmp_path / "brands-v2.json"
    brands.write_text(json.dumps(newer, ensure_ascii=False, indent=2), encoding="utf-8")
    record = {"id": "new", "brand": "NoodleNook", "instruction": "Write a caption.",
              "input": "Product: tom yum noodles\nOffer: 20% off until 1/2"}
    requests = tmp_path / "in.jsonl"
    requests.write_text(json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(
        {"id": "known", "brand": "GlowLab", "instruction": "Write a caption.", "input": "Product: sunscreen"},
        ensure_ascii=False) + "\n", encoding="utf-8")
    base = ["predict", CAPTIONS, "--storage", str(captions_store), "--cache", str(cache)]

    out = tmp_path / "refused" / "out.jsonl"
    assert cli.main([*base, "--file", str(requests), "--out", str(out)]) == 2
    assert (f"{requests}:1: brand 'NoodleNook' is not in the context file {folder / 'context.json'}"
            in capsys.readouterr().err)
    assert not out.exists()

    out = tmp_path / "answers" / "out.jsonl"
    assert cli.main([*base, "--file", str(requests), "--out", str(out), "--context", str(brands)]) in (0, 1)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == ["new", "known"] and all(r["text"] for r in rows)
    model = predict.OnnxModel(folder, brands)
    request = predict.request_of(record, model.contract, 1, model.context)
    prompt = model.prompt(request.messages, request.context)
    assert model.contract.system_prompt + "\n\nBrand: NoodleNook\nTone: playful, loud\n" in prompt
    assert "Hashtags: #NoodleNook, #SlurpUp" in prompt
    assert rows[0]["text"] == model.answer(request.messages, request.context)  # the answer to that prompt

    assert cli.main([*base, "--context", str(brands), "--instruction", "Write a caption.", "--input", "Product: ramen",
                     "--entity", "NoodleNook"]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["text"]
