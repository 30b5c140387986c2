"""Governance with planted cases: paraphrased near-duplicates across splits, groups and domains, a bad quality label, an
ungrounded evidence quote, over-long records; each dropped or reported with its reason code."""
import json

import pytest

from lorafleet import data, evaluate, governance
from lorafleet.config import ConfigError, NearDuplicateConfig, load_domain
from lorafleet.data import DataError, Example, prepare
from tests.conftest import DOMAINS_DIR

ND = NearDuplicateConfig()


def _ex(i: int, group: str, text: str) -> Example:
    return Example(id=f"id{i}", group=group, prompt=[{"role": "user", "content": text}], completion="{}", line=i)


def paraphrase(text: str) -> str:
    """Reworded at its end (what is quoted from it stays verbatim): no longer the same text, still near it at 0.9."""
    return text + " Hết chuyện."


LONG = ("The parties agree that the supplier shall deliver the goods described in schedule A to the buyer's "
        "warehouse in Rotterdam no later than thirty days after the purchase order is confirmed in writing, and that "
        "the buyer shall pay the invoiced amount within sixty days of delivery by bank transfer to the account named "
        "in the invoice")


def test_shingles_ignore_case_punctuation_and_spacing_and_a_paraphrase_stays_near():
    shingles = governance.Shingler(ND)
    a, b = shingles(LONG), shingles(paraphrase(LONG))
    assert list(shingles("A  b, C d; e!")) == list(shingles("a b c d e")) and len(shingles("a b c d e")) == 1
    assert len(shingles("a b c d e f")) == 2 and len(shingles("")) == 0
    assert 0.9 <= governance.jaccard(a, b) < 1
    assert governance.normalise_text(LONG) != governance.normalise_text(paraphrase(LONG))  # not an exact copy
    # a word swapped mid-text moves five 5-word shingles: near at a lower threshold
    swapped = LONG.replace("warehouse", "depot")
    assert 0.8 <= governance.jaccard(a, shingles(swapped)) < 0.9
    kept, drops, _ = governance.drop_near_duplicates(
        {"train": [_ex(1, "g1", LONG), _ex(2, "g2", swapped)], "val": [], "test": []}, [], NearDuplicateConfig(threshold=0.7))
    assert [e.line for e in kept["train"]] == [1] and drops[0].reason == "near_duplicate"
    thai = governance.Shingler(NearDuplicateConfig(shingle_unit="characters", shingle_size=3))
    assert len(thai("กขคง")) == 2 and governance.jaccard(thai("กขคง"), thai("กขคจ")) == 1 / 3  # no spaces: characters


def test_near_duplicates_within_and_across_splits_and_groups():
    train_first, val_rec, test_rec = _ex(1, "g1", LONG), _ex(2, "g2", "alpha " + LONG), _ex(3, "g3", LONG + " omega")
    later_same_group = _ex(4, "g1", paraphrase(LONG))  # near train_first, its own group: a later copy
    near_val = _ex(5, "g5", paraphrase("alpha " + LONG))  # a training record near a validation record
    unrelated = _ex(6, "g6", "Something else entirely, about a different clause and parties.")
    golden = _ex(7, "g7", "Golden " + LONG + " beta gamma")
    splits = {"train": [train_first, later_same_group, near_val, unrelated], "val": [val_rec], "test": [test_rec]}
    kept, drops, pairs = governance.drop_near_duplicates(splits, [golden], ND)
    # val and test are near each other and near golden: evaluation records are never dropped for another split's
    assert kept["val"] == [val_rec] and kept["test"] == [test_rec]
    # every training record here but `unrelated` is near an evaluation record: dropped from train, never from eval
    assert kept["train"] == [unrelated]
    assert {(d.line, d.reason, d.split) for d in drops} == {(1, "cross_split_leak", "train"),
                                                           (4, "cross_split_leak", "train"),
                                                           (5, "cross_split_leak", "train")}
    assert "near val line 2 (group g2" in next(d.detail for d in drops if d.line == 5)
    # pairs across two groups are reported with both group ids; same-group pairs are not leakage
    groups = {(p.record.group, p.earlier.group) for p in pairs}
    assert ("g5", "g2") in groups and ("g3", "g2") in groups and all(a != b for a, b in groups)
    kept_both = next(p for p in pairs if p.record.group == "g3" and p.earlier.group == "g2")
    assert kept_both.action.startswith("kept both") and kept_both.record.split == "test"
    # within a split only (no evaluation record near): the later copy goes, whatever its group
    kept, drops, pairs = governance.drop_near_duplicates(
        {"train": [train_first, _ex(8, "g8", paraphrase(LONG)), unrelated], "val": [_ex(2, "g2", "a b c d e f")],
         "test": [_ex(9, "g9", "x y z")]}, [], ND)
    assert [e.line for e in kept["train"]] == [1, 6] and [(d.line, d.reason) for d in drops] == [(8, "near_duplicate")]
    assert [(p.record.group, p.earlier.group, p.action) for p in pairs] == [("g8", "g1", "later copy dropped from train")]


def _story_lines() -> list[dict]:
    lines = (DOMAINS_DIR / "story_summary" / "data.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _golden_record() -> dict:
    line = (DOMAINS_DIR / "story_summary" / "golden.jsonl").read_text(encoding="utf-8").splitlines()[0]
    return {**json.loads(line), "metadata": {"quality_label": "pass"}}


def _planted_story_domain(domain_copy) -> tuple:
    """story_summary with metadata on every record and planted records, each in a group that already exists (so
    the split by group is the bundled one): returns (config path, planted name -> (line, record), splits before)."""
    path = domain_copy("story_summary")
    before = prepare(load_domain(path))
    by_input = {}
    for split in data.SPLITS:
        for e in before.split(split):
            by_input[e.user_text.split("\n\n", 1)[1]] = (split, e)
    records = _story_lines()
    for r in records:
        r["metadata"] = {"quality_label": "pass", "schema_version": "2", "run_id": "qa-7"}
    split_of = {r["input"]: by_input[r["input"]] for r in records if r["input"] in by_input}
    pick = {split: next(r for r in records if split_of.get(r["input"], ("",))[0] == split) for split in data.SPLITS}
    train_groups = sorted({e.group for e in before.train} - {pick["train"]["source_video_id"]})
    test_groups = sorted({e.group for e in before.test} - {pick["val"]["source_video_id"]})

    def variant(source: dict, group: str, **changes) -> dict:
        return {**source, "source_video_id": group, "metadata": dict(source["metadata"]), **changes}

    answer = json.loads(pick["train"]["output"])
    planted = {
        # a training record near a test record (another group): dropped from train, the pair reported as leakage
        "near_test": variant(pick["test"], train_groups[0], input=paraphrase(pick["test"]["input"])),
        # a later near copy of a training record, in another training group: dropped from train
        "near_train": variant(pick["train"], train_groups[1], input=paraphrase(pick["train"]["input"])),
        # a test record near a validation record: both kept (evaluation), reported
        "near_val": variant(pick["val"], test_groups[0], input=paraphrase(pick["val"]["input"])),
        # a training record near a golden record
        "near_golden": variant(_golden_record(), train_groups[2], input=paraphrase(_golden_record()["input"])),
        "bad_label": variant(records[5], records[5]["source_video_id"],
                             metadata={**records[5]["metadata"], "quality_label": "reject"}),
        "ungrounded": variant(pick["train"], train_groups[3], output=json.dumps(
            {**answer, "evidence": ["Câu này không hề có trong câu chuyện."]}, ensure_ascii=False)),
        "truncated": variant(pick["train"], train_groups[4], input=" ".join([pick["train"]["input"]] * 3)),
        "too_long": variant(pick["train"], train_groups[5], input=" ".join([pick["train"]["input"]] * 8)),
    }
    # one record is a near-duplicate of nothing and carries no label field: dropped by the label filter
    del records[9]["metadata"]["quality_label"]
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    where = {}
    for name, record in planted.items():
        lines.append(json.dumps(record, ensure_ascii=False))
        where[name] = len(lines)
    (path.parent / "story_summary" / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, where, before


QUALITY = {"data": {"quality": {"keep_labels": ["pass"], "min_grounding": 1.0, "prompt_tokens": {"max": 600},
                                "drop_truncated": True}}}


def test_planted_records_are_dropped_or_reported_with_their_reasons(domain_copy, tmp_path):
    path, where, before = _planted_story_domain(domain_copy)
    prepared = prepare(load_domain(path, QUALITY), tmp_path / "out")
    m = prepared.manifest
    by_line = {d.line: d for d in m.drops}
    expected = {"near_test": ("cross_split_leak", "train"), "near_train": ("near_duplicate", "train"),
                "near_golden": ("cross_split_leak", "train"), "bad_label": ("quality_label", None),
                "ungrounded": ("ungrounded", None), "truncated": ("truncated", None), "too_long": ("too_long", None)}
    for name, (reason, split) in expected.items():
        drop = by_line[where[name]]
        assert (drop.reason, drop.split) == (reason, split), (name, drop)
    assert "near golden" in by_line[where["near_golden"]].detail
    assert by_line[10].reason == "quality_label" and "no quality_label" in by_line[10].detail
    assert "'reject' is not kept" in by_line[where["bad_label"]].detail
    assert "0% of its evidence items" in by_line[where["ungrounded"]].detail
    assert "over train.max_seq_length (384)" in by_line[where["truncated"]].detail
    assert "over data.quality.prompt_tokens.max (600)" in by_line[where["too_long"]].detail
    assert m.drops_by_reason == {"quality_label": 2, "ungrounded": 1, "exact_duplicate": 3, "too_long": 1,
                                 "truncated": 1, "cross_split_leak": 2, "near_duplicate": 1}
    # the test record near a validation record stays in test; the pairs across groups name both group ids
    assert where["near_val"] in {e.line for e in prepared.test}
    pairs = {(p.record.line, p.record.split, p.earlier.split): p for p in m.possible_leaks}
    assert (where["near_test"], "train", "test") in pairs and (where["near_train"], "train", "train") in pairs
    near_val = pairs[(where["near_val"], "test", "val")]
    assert near_val.record.group != near_val.earlier.group and near_val.jaccard >= 0.9
    # every drop is in drops.jsonl, beside the splits
    rows = [json.loads(line) for line in (tmp_path / "out" / "drops.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["reason"]) for r in rows] == [(d.id, d.reason) for d in m.drops]
    manifest = json.loads((tmp_path / "out" / "dataset_manifest.json").read_text(encoding="utf-8"))
    assert manifest["drops_by_reason"] == m.drops_by_reason and len(manifest["possible_leaks"]) == len(m.possible_leaks)
    # the label distribution per split, and the metadata kept into the splits' files and evaluation rows
    assert sum(m.labels["metadata.quality_label"]["train"].values()) == m.counts["train"]
    train_row = json.loads((tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert train_row["metadata"] == {"quality_label": "pass", "schema_version": "2", "run_id": "qa-7"}
    row = evaluate.score_answers(prepared.test[:1], [prepared.test[0].completion], prepared.schema,
                                 load_domain(path).eval)[0]
    assert row.metadata["run_id"] == "qa-7" and row.group == prepared.test[0].group
    # token lengths per split, the truncation point with them
    assert m.lengths.max_seq_length == 384 and m.lengths.truncated == {"train": 0, "val": 0, "test": 0}
    assert sum(m.lengths.total.counts["train"]) == m.counts["train"]
    # the filters off (the default): the near-duplicate and exact checks still drop what they find; the record whose
    # label was bad is an exact copy of its source, the one with a made-up quote asks what its source asks, and a
    # text repeated is near itself (a set of shingles: the repeats add only the few across each seam)
    m = prepare(load_domain(path)).manifest
    reasons = {name: next((d.reason for d in m.drops if d.line == line), None) for name, line in where.items()}
    assert reasons == {"near_test": "cross_split_leak", "near_train": "near_duplicate", "near_val": None,
                       "near_golden": "cross_split_leak", "bad_label": "exact_duplicate", "ungrounded": "near_duplicate",
                       "truncated": "near_duplicate", "too_long": "near_duplicate"}


def test_bundled_domains_lose_nothing_to_the_new_checks():
    for name in ("contracts", "medical", "financial", "legal", "story_summary"):
        m = prepare(load_domain(DOMAINS_DIR / f"{name}.yaml")).manifest
        assert m.drops_by_reason == {"exact_duplicate": 3} and m.possible_leaks == [], name
        assert m.near_duplicates == ND.model_dump() and m.lengths.truncated == {"train": 0, "val": 0, "test": 0}


def test_near_duplicates_off(domain_copy):
    path, where, _ = _planted_story_domain(domain_copy)
    m = prepare(load_domain(path, {"data": {"near_duplicates": None, "measure_tokens": False}})).manifest
    assert m.near_duplicates is None and m.lengths is None and m.possible_leaks == []
    assert m.drops_by_reason == {"exact_duplicate": 4}  # paraphrases are not exact copies; the relabelled record is


def test_cross_domain_near_duplicates_are_reported_in_each_domain_manifest(domain_copy, tmp_path):
    from lorafleet.pipeline import prepare_all

    legal_path, contracts_path = domain_copy("legal"), domain_copy("contracts")
    legal_test = prepare(load_domain(legal_path)).test[0]
    contracts = (contracts_path.parent / "contracts" / "data.jsonl")
    lines = contracts.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[0])  # its group stays in train; its answer passes the contracts schema
    record["messages"][0]["content"] = paraphrase(legal_test.user_text)
    contracts.write_text("\n".join([*lines, json.dumps(record)]) + "\n", encoding="utf-8")
    configs = {name: load_domain(p) for name, p in (("contracts", contracts_path), ("legal", legal_path))}
    plans, failed = prepare_all(configs, tmp_path / "work")
    assert not failed
    found = plans["contracts"].data.manifest.cross_domain
    assert [(c.record.line, c.domain, c.other.id, c.other.split) for c in found] == [(len(lines) + 1, "legal",
                                                                                    legal_test.id, "test")]
    assert plans["legal"].data.manifest.cross_domain == []
    written = json.loads((tmp_path / "work" / "contracts" / "data" / "dataset_manifest.json").read_text())
    assert written["cross_domain"][0]["domain"] == "legal"
    assert written["dataset_version"] == plans["contracts"].data.manifest.dataset_version  # a report, not a drop


def test_metadata_must_be_an_object_and_names_file_and_line(domain_copy):
    path = domain_copy("contracts")
    data_file = path.parent / "contracts" / "data.jsonl"
    lines = data_file.read_text().splitlines()
    record = json.loads(lines[1])
    record["metadata"] = ["pass"]
    lines[1] = json.dumps(record)
    data_file.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data.jsonl:2: field 'metadata' must be a JSON object, got list"):
        prepare(load_domain(path))


@pytest.mark.parametrize("overrides, message", [
    ({"data": {"quality": {"min_grounding": 0.5}}}, r"data.quality.min_grounding: needs .* eval.evidence_fields"),
    ({"data": {"measure_tokens": False, "quality": {"drop_truncated": True, "answer_tokens": {"max": 9}}}},
     r"data.quality.answer_tokens, data.quality.drop_truncated: counted in tokens, but data.measure_tokens is false"),
    ({"data": {"quality": {"prompt_tokens": {"min": 50, "max": 10}}}},
     r"data.quality.prompt_tokens: .*min \(50\) must be <= max \(10\)"),
    ({"data": {"near_duplicates": {"threshold": 1.5}}}, r"data.near_duplicates.threshold"),
    ({"data": {"quality": {"keep_labels": []}}}, r"data.quality.keep_labels"),
])
def test_governance_settings_that_cannot_work_are_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_domain(DOMAINS_DIR / "contracts.yaml", overrides)


def test_the_embedded_token_counter_counts_as_transformers_does():
    """tiny's lengths are measured without transformers (tokenizers and the template rendered as transformers does):
    the same prompt text and token counts as the tokenizer training uses."""
    from transformers import AutoTokenizer

    from lorafleet.base_model import ensure_tiny_tokenizer, token_counter
    from lorafleet.prompt import prompt_text

    tokenizer, counter = AutoTokenizer.from_pretrained(str(ensure_tiny_tokenizer())), token_counter("tiny")
    for name in ("contracts", "medical", "story_summary"):
        examples = prepare(load_domain(DOMAINS_DIR / f"{name}.yaml", {"data": {"measure_tokens": False}})).test[:5]
        prompts = [prompt_text(tokenizer, e.prompt) for e in examples]
        assert [counter.prompt(e.prompt) for e in examples] == prompts
        texts = [*prompts, *(e.completion for e in examples)]
        assert counter.count(texts) == [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
