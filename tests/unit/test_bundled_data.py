"""The bundled synthetic domain datasets: size, schema validity, grounding and reproducibility."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
DOMAINS_DIR = CONFIGS / "domains"
SCRIPT = ROOT / "scripts" / "generate_domain_data.py"
CORPUS = ROOT / "src" / "lorafleet" / "tiny_base" / "corpus.txt"

# name -> (format, group key)
DOMAINS = {
    "contracts": ("messages", "contract_id"),
    "medical": ("conversations", "patient_id"),
    "financial": ("messages", "company_id"),
    "legal": ("conversations", "case_id"),
    "story_summary": ("alpaca", "source_video_id"),
    "brand_captions": ("alpaca", "brand"),
}
# domains asked with an entity's record from a context file beside their data
CONTEXT_FILES = {"brand_captions": "brands.json"}


def _records(name: str) -> list[dict]:
    lines = (DOMAINS_DIR / name / "data.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _input_answer(record: dict, fmt: str) -> tuple[str, str]:
    if fmt == "messages":
        user, assistant = record["messages"]
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        return user["content"], assistant["content"]
    if fmt == "conversations":
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        return human["value"], gpt["value"]
    assert record["instruction"]
    return record["input"], record["output"]


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_domain_has_enough_records(name: str) -> None:
    fmt, group_key = DOMAINS[name]
    records = _records(name)
    assert len(records) >= 300
    for record in records:
        assert record[group_key]
        _input_answer(record, fmt)
    groups = {record[group_key] for record in records}
    assert 10 <= len(groups) < len(records), "records must share group keys"


@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_answers_validate_against_schema(name: str) -> None:
    fmt, _ = DOMAINS[name]
    schema = json.loads((DOMAINS_DIR / name / "schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == set(schema["properties"])
    validator = Draft202012Validator(schema)
    for i, record in enumerate(_records(name)):
        _, answer = _input_answer(record, fmt)
        errors = [e.message for e in validator.iter_errors(json.loads(answer))]
        assert not errors, f"{name} record {i}: {errors}"


def test_story_evidence_is_verbatim() -> None:
    for i, record in enumerate(_records("story_summary")):
        answer = json.loads(record["output"])
        for quote in answer["evidence"]:
            assert quote in record["input"], f"record {i}: {quote!r} not in input"


@pytest.mark.parametrize("name", ["contracts", "medical", "financial", "legal"])
def test_answer_values_are_read_from_input(name: str) -> None:
    fmt, _ = DOMAINS[name]
    for record in _records(name):
        text, answer_text = _input_answer(record, fmt)
        answer = json.loads(answer_text)
        if name == "contracts":
            wanted = [*answer["parties"], f"{answer['amount']:,}", answer["currency"], str(answer["term_months"]),
                      answer["governing_law"]]
            assert text.index(answer["parties"][0]) < text.index(answer["parties"][1])
        elif name == "medical":
            wanted = [answer["diagnosis"], f"{answer['follow_up_days']} days"]
            wanted += [f"{m['name']} {m['dose']}" for m in answer["medications"]]
        elif name == "financial":
            wanted = [answer["company"], f"{answer['revenue']:,.1f} million", f"{abs(answer['yoy_change_pct']):.1f}%"]
        else:
            wanted = [answer["court"], *answer["statutes_cited"]]
        for value in wanted:
            assert value in text, f"{value!r} not in {text!r}"


def test_brand_captions_carry_their_brands_hashtags_and_name_the_product_discount_and_brand() -> None:
    """The hashtags come from the brand's record in brands.json only: the request names neither brand nor tone."""
    brands = {b["brand"]: b for b in json.loads((DOMAINS_DIR / "brand_captions" / "brands.json").read_text())["brands"]}
    assert len(brands) == 12
    used = set()
    for i, record in enumerate(_records("brand_captions")):
        brand, answer = brands[record["brand"]], json.loads(record["output"])
        used.add(record["brand"])
        assert answer["hashtags"] == brand["hashtags"], f"record {i}"
        product = record["input"].split("\n")[0].removeprefix("Product: ")
        discount = record["input"].split("\n")[1].removeprefix("Offer: ").split(" off ")[0]
        assert answer["caption"].endswith(f" {product} ลด {discount} ที่ {record['brand']}"), f"record {i}"
        assert not {record["brand"], *brand["tone"], *brand["hashtags"]} & set(record["input"].replace("\n", " ").split())
    assert used == set(brands)
    # brands of one voice (the first word of their tone) share its campaign tags; no two voices share a tag
    by_voice = {}
    for b in brands.values():
        assert by_voice.setdefault(b["tone"][0], b["hashtags"]) == b["hashtags"], b["brand"]
    tags = [t for ts in by_voice.values() for t in ts]
    assert len(by_voice) == 4 and len(tags) == len(set(tags))


def test_duplicates_are_exact_copies() -> None:
    for name in DOMAINS:
        lines = (DOMAINS_DIR / name / "data.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) - len(set(lines)) == 3, name


def test_corpus_does_not_contain_dataset_records() -> None:
    corpus = CORPUS.read_text(encoding="utf-8")
    docs = corpus.strip("\n").split("\n\n")
    assert len(docs) == 3000
    assert len(corpus.encode("utf-8")) < 1_500_000
    inputs = set()
    for name, (fmt, _) in DOMAINS.items():
        inputs.update(_input_answer(record, fmt)[0] for record in _records(name))
    for doc in docs:
        text, answer = doc.split("\n")
        json.loads(answer)
        assert text not in inputs


def test_generator_reproduces_bundled_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out-dir", str(tmp_path)], check=True, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    expected = [CORPUS.relative_to(ROOT)]
    for name in DOMAINS:
        expected += [Path(f"configs/domains/{name}.yaml"), Path(f"configs/domains/{name}/data.jsonl"),
                     Path(f"configs/domains/{name}/schema.json")]
        expected += [Path(f"configs/domains/{name}/{CONTEXT_FILES[name]}")] if name in CONTEXT_FILES else []
    assert generated == sorted(expected)
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), f"{rel} differs from the bundled file"


# ---- the annotated folktale set of the per-step pipeline example (configs/pipelines/folktale.yaml) ----------------

PIPELINES_DIR = CONFIGS / "pipelines"
FOLKTALE_SCRIPT = ROOT / "scripts" / "generate_folktale_data.py"
FOLKTALE_STEPS = {"character": lambda a: a["characters"], "relationship": lambda a: {"relationships": a["relationships"]},
                  "event": lambda a: {"action_category": a["action_category"], "event_type": a["event_type"]}}


def _folktales() -> list[dict]:
    lines = (PIPELINES_DIR / "folktale" / "annotated.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_folktales_are_annotated_scenes_of_chinese_and_vietnamese_tales() -> None:
    records = _folktales()
    assert len(records) == 120 and len({r["tale_id"] for r in records}) == 40
    assert {r["lang"] for r in records} == {"zh", "vi"}
    texts = " ".join(r["text"] for r in records)
    assert any(n in texts for n in ("织女", "牛郎", "木兰")) and any(n in texts for n in ("Tấm", "Thạch Sanh", "Sọ Dừa"))
    for r in records:
        a = r["annotations"]
        for name in [*a["characters"]["doers"], *a["characters"]["receivers"]]:
            assert name in r["text"]  # the answer is read from the scene
        assert a["action_category"] and a["event_type"]


@pytest.mark.parametrize("step", sorted(FOLKTALE_STEPS))
def test_folktale_step_answers_validate_against_their_schema(step: str) -> None:
    schema = json.loads((PIPELINES_DIR / "folktale" / f"{step}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    validator = Draft202012Validator(schema)
    for i, record in enumerate(_folktales()):
        errors = [e.message for e in validator.iter_errors(FOLKTALE_STEPS[step](record["annotations"]))]
        assert not errors, f"{step} record {i}: {errors}"


def test_folktale_generator_reproduces_bundled_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(FOLKTALE_SCRIPT), "--out-dir", str(tmp_path)], check=True, capture_output=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    expected = [Path("configs/pipelines/folktale/annotated.jsonl"),
                *(Path(f"configs/pipelines/folktale/{s}.schema.json") for s in FOLKTALE_STEPS)]
    assert generated == sorted(expected)
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (ROOT / rel).read_bytes(), f"{rel} differs from the bundled file"
