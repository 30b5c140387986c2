import json
from pathlib import Path

import pytest

from lorafleet.config import load_domain
from lorafleet.data import DataError, Example, dataset_version, prepare, split_by_group, to_example
from lorafleet.governance import dedup_exact, drop_cross_split_leaks
from tests.conftest import DOMAINS_DIR


@pytest.fixture
def contracts_cfg():
    return load_domain(DOMAINS_DIR / "contracts.yaml")


def test_format_adapters_produce_the_same_example(contracts_cfg):
    answer = '{"a": 1}'
    records = {
        "messages": {"g": "1", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": answer}]},
        "conversations": {"g": "1", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": answer}]},
        "alpaca": {"g": "1", "instruction": "hi", "input": "", "output": answer},
    }
    examples = []
    for fmt, record in records.items():
        cfg = contracts_cfg.model_copy(update={"data": contracts_cfg.data.model_copy(update={"format": fmt,
                                                                                            "group_key": "g"})})
        examples.append(to_example(record, cfg, 1))
    assert len({(e.id, e.completion, json.dumps(e.prompt)) for e in examples}) == 1
    assert examples[0].prompt[0] == {"role": "system", "content": contracts_cfg.system_prompt}


def _domain_with_lines(domain_copy, lines: list[str]) -> Path:
    path = domain_copy("contracts")
    data = path.parent / "contracts" / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    return path


def _good_lines(n=2):
    return (DOMAINS_DIR / "contracts" / "data.jsonl").read_text().splitlines()[:n]


def test_line_that_is_not_json_names_file_and_line(domain_copy):
    path = _domain_with_lines(domain_copy, _good_lines() + ["{not json"])
    with pytest.raises(DataError, match=r"contracts/data.jsonl:3: not valid JSON"):
        prepare(load_domain(path))


def test_record_missing_a_field_names_line_and_field(domain_copy):
    record = json.loads(_good_lines(1)[0])
    del record["contract_id"]
    path = _domain_with_lines(domain_copy, _good_lines() + [json.dumps(record)])
    with pytest.raises(DataError, match=r"data.jsonl:3: missing field 'contract_id'"):
        prepare(load_domain(path))
    record = json.loads(_good_lines(1)[0])
    del record["messages"]
    path = _domain_with_lines(domain_copy, [json.dumps(record)])
    with pytest.raises(DataError, match=r"data.jsonl:1: missing field 'messages'"):
        prepare(load_domain(path))


def test_answer_not_matching_schema_is_dropped_with_reason(domain_copy, tmp_path):
    lines = (DOMAINS_DIR / "contracts" / "data.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["messages"][-1]["content"] = '{"clause_type": "payment"}'
    bad["messages"][0]["content"] += " (altered)"
    path = _domain_with_lines(domain_copy, lines + [json.dumps(bad)])
    prepared = prepare(load_domain(path), tmp_path / "out")
    drops = prepared.manifest.drops
    assert any(d.reason == "schema" and d.detail.startswith("answer fails the output schema") for d in drops)
    # the generator ships a few duplicates
    assert any(d.reason == "exact_duplicate" and d.detail.startswith("exact duplicate of line") for d in drops)
    assert prepared.manifest.drops_by_reason == {"schema": 1, "exact_duplicate": 3}
    assert (tmp_path / "out" / "test.jsonl").is_file()
    assert json.loads((tmp_path / "out" / "dataset_manifest.json").read_text())["counts"] == prepared.manifest.counts


def _ex(i, group, text="t"):
    return Example(id=f"id{i}", group=group, prompt=[{"role": "user", "content": f"{text}{i}"}], completion="{}", line=i)


def test_split_keeps_groups_whole_and_is_seeded():
    examples = [_ex(i, f"g{i % 40}") for i in range(200)]
    ratios = {"train": 0.8, "val": 0.1, "test": 0.1}
    a = split_by_group(examples, ratios, seed=7)
    groups = [{e.group for e in a[s]} for s in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert sum(len(a[s]) for s in a) == 200
    assert dataset_version(a) == dataset_version(split_by_group(list(reversed(examples)), ratios, seed=7))
    assert dataset_version(a) != dataset_version(split_by_group(examples, ratios, seed=8))


def test_dedup_and_leak_checks():
    a, b = _ex(1, "g1"), _ex(2, "g2")
    kept, drops = dedup_exact([a, b, a])
    assert kept == [a, b] and (drops[0].reason, drops[0].detail) == ("exact_duplicate", "exact duplicate of line 1")
    # the training copy of an evaluation prompt goes, never the evaluation record
    leak = Example(id="x", group="g9", prompt=[{"role": "user", "content": "  T1 "}], completion="{}", line=9)
    splits, drops = drop_cross_split_leaks({"train": [a], "val": [b], "test": [leak]})
    assert splits == {"train": [], "val": [b], "test": [leak]}
    assert (drops[0].line, drops[0].reason, drops[0].split) == (1, "cross_split_leak", "train")
    # a test prompt that is also a validation prompt is judged once, in val
    again = Example(id="y", group="g8", prompt=[{"role": "user", "content": "t2"}], completion="{}", line=10)
    splits, drops = drop_cross_split_leaks({"train": [], "val": [b], "test": [again]})
    assert splits["test"] == [] and (drops[0].line, drops[0].split) == (10, "test")


@pytest.mark.parametrize("name", ["contracts", "medical", "financial", "legal", "story_summary"])
def test_bundled_domains_prepare_deterministically(name):
    cfg = load_domain(DOMAINS_DIR / f"{name}.yaml")
    first, second = prepare(cfg), prepare(cfg)
    assert first.manifest.dataset_version == second.manifest.dataset_version
    assert min(first.manifest.counts.values()) >= 10
    train_groups = {e.group for e in first.train}
    assert not train_groups & {e.group for e in first.test}


def test_golden_set_is_loaded_and_a_bad_answer_names_file_and_line(domain_copy):
    path = domain_copy("medical")
    assert len(prepare(load_domain(path)).golden) == 12
    golden = path.parent / "medical" / "golden.jsonl"
    lines = golden.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[2])
    record["conversations"][-1]["value"] = json.dumps({"diagnosis": "flu"})  # misses required fields
    lines[2] = json.dumps(record, ensure_ascii=False)
    golden.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"golden\.jsonl:3: the answer breaks the schema: .*required"):
        prepare(load_domain(path))


def test_the_eval_set_version_changes_with_a_judged_record_and_not_with_a_training_one(domain_copy):
    from dataclasses import replace

    from lorafleet import data
    from lorafleet.config import load_domain

    prepared = data.prepare(load_domain(domain_copy("medical")))
    version = prepared.eval_set_version
    assert len(version) == 64 and version == data.prepare(load_domain(domain_copy("medical"))).eval_set_version
    prepared.train[0] = replace(prepared.train[0], completion="{}")
    assert prepared.eval_set_version == version
    prepared.test[0] = replace(prepared.test[0], completion="{}")
    assert prepared.eval_set_version != version
