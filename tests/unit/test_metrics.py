import json
import unicodedata

import jsonschema
import pytest

from lorafleet.metrics import (
    Evaluation,
    ExampleScore,
    Metric,
    MetricSpec,
    _WordTokenizer,
    aggregate,
    bootstrap_ci,
    paired_delta,
    score_example,
    worst_fields,
)

ANY = jsonschema.Draft202012Validator({})
STRICT = jsonschema.Draft202012Validator(
    {"type": "object", "required": ["name", "amount"], "additionalProperties": False,
     "properties": {"name": {"type": "string"}, "amount": {"type": "number"}}})
SPEC = MetricSpec()
CONTRACT_VI = "Bên A cam kết thanh toán 50 triệu đồng cho Bên B trước ngày 30/6/2025."


def fields(ref: dict, pred, spec: MetricSpec = SPEC) -> dict:
    pred_text = pred if isinstance(pred, str) else json.dumps(pred, ensure_ascii=False)
    return score_example(pred_text, json.dumps(ref, ensure_ascii=False), "", ANY, spec).fields


def test_strings_are_normalised_for_case_nfkc_and_whitespace():
    ref = {"a": "Nguyễn Văn An", "b": "ＡＢＣ １２３", "c": "Hà Nội", "d": "x", "e": "1"}
    pred = {"a": "  NGUYỄN   văn\tan ", "b": "abc 123", "c": unicodedata.normalize("NFD", "hà nội"),
            "d": "y", "e": 1}
    assert fields(ref, pred) == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0, "e": 0.0}


def test_numbers_within_relative_tolerance():
    ref = {"in": 100, "out": 100, "zero": 0, "tiny": 0, "float": 2.5, "not_bool": 1, "as_str": 7, "missing": 1}
    pred = {"in": 100.5, "out": 102, "zero": 0.0, "tiny": 0.001, "float": 2.5, "not_bool": True, "as_str": "7"}
    assert fields(ref, pred) == {"in": 1.0, "out": 0.0, "zero": 1.0, "tiny": 0.0, "float": 1.0,
                                 "not_bool": 0.0, "as_str": 0.0, "missing": 0.0}
    assert fields({"x": 100}, {"x": 102}, MetricSpec(number_tolerance=0.05)) == {"x": 1.0}


def test_bools_and_null_by_equality():
    got = fields({"t": True, "f": False, "n": None, "z": False}, {"t": True, "f": 0, "n": None, "z": True})
    assert got == {"t": 1.0, "f": 0.0, "n": 1.0, "z": 0.0}


def test_lists_are_scored_as_set_f1():
    ref = {"abc": ["a", "b", "c"], "norm": ["Hà Nội", "Huế"], "both_empty": [], "pred_empty": ["a"],
           "ref_empty": [], "dicts": [{"k": "A", "v": 1}], "not_list": ["a"]}
    pred = {"abc": ["a", "b", "d"], "norm": [" HUẾ", "hà  nội", "huế"], "both_empty": [], "pred_empty": [],
            "ref_empty": ["a"], "dicts": [{"v": 1.0, "k": "a"}], "not_list": "a"}
    got = fields(ref, pred)
    assert got["abc"] == pytest.approx(2 / 3)  # P = 2/3, R = 2/3
    assert got["norm"] == 1.0 and got["both_empty"] == 1.0 and got["dicts"] == 1.0
    assert got["pred_empty"] == got["ref_empty"] == got["not_list"] == 0.0
    assert fields({"x": ["a", "b"]}, {"x": ["a"]})["x"] == pytest.approx(2 * 1 / 3)  # P = 1, R = 1/2


def test_nested_dict_is_fraction_of_reference_keys_recursively():
    ref = {"addr": {"city": "Hà Nội", "zip": 100000, "geo": {"lat": 21.03, "lon": 105.85}}}
    pred = {"addr": {"city": "hà nội", "zip": 999, "geo": {"lat": 21.03}, "extra": 1}}
    assert fields(ref, pred)["addr"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert fields(ref, {"addr": "Hà Nội"})["addr"] == 0.0
    assert fields({"d": {}}, {"d": {}})["d"] == 1.0


def test_invalid_json_row_gives_zeros():
    spec = MetricSpec(evidence_fields=("quotes",), text_fields=("summary",))
    ref = json.dumps({"name": "A", "amount": 5, "quotes": ["Bên A"], "summary": "tóm tắt"}, ensure_ascii=False)
    for bad in ['{"name": "A", "amount": 5', '```json\n{"name": "A", "amount": 5}\n```', ""]:
        row = score_example(bad, ref, CONTRACT_VI, STRICT, spec)
        assert row.json_valid == row.schema_pass == row.field_accuracy == row.score == 0.0
        assert set(row.fields.values()) == {0.0}
        assert row.chrf == row.rouge_l == 0.0 and row.grounding is None
    assert score_example('  {"name": "A", "amount": 5}\n', '{"name": "A", "amount": 5}', "", STRICT,
                         SPEC).score == 100.0


def test_schema_failure_keeps_field_credit():
    row = score_example('{"name": "A", "amount": 5, "extra": 1}', '{"name": "A", "amount": 5}', "", STRICT, SPEC)
    assert (row.json_valid, row.schema_pass, row.field_accuracy) == (1.0, 0.0, 1.0)
    assert row.score == pytest.approx(100 * (0.2 + 0.5))
    row = score_example('{"name": "A", "amount": "5"}', '{"name": "A", "amount": 5}', "", STRICT, SPEC)
    assert (row.schema_pass, row.fields) == (0.0, {"name": 1.0, "amount": 0.0})


def grounding(pred: dict, fields=("quotes", "source")) -> float | None:
    return score_example(json.dumps(pred, ensure_ascii=False), "{}", CONTRACT_VI, ANY,
                         MetricSpec(evidence_fields=fields)).grounding


def test_grounding_with_vietnamese_text():
    verbatim, paraphrase = "cam kết thanh toán 50 triệu đồng", "hứa trả năm mươi triệu đồng"
    assert grounding({"quotes": [verbatim]}) == 1.0
    assert grounding({"quotes": [paraphrase]}) == 0.0
    assert grounding({"quotes": [verbatim, paraphrase]}) == 0.5
    assert grounding({"quotes": ["cam  kết\nthanh toán", unicodedata.normalize("NFD", "trước ngày 30/6")]}) == 1.0
    assert grounding({"quotes": ["CAM KẾT thanh toán"]}) == 0.0  # case-sensitive
    assert grounding({"source": "Bên B", "quotes": [paraphrase]}) == 0.5  # single string field counts too
    assert grounding({"quotes": [verbatim], "other": [paraphrase]}) == 1.0  # only the spec's fields
    for nothing in ({}, {"quotes": []}, {"quotes": ["", "  ", 3]}, {"quotes": None}):
        assert grounding(nothing) is None
    assert score_example("not json", "{}", CONTRACT_VI, ANY, MetricSpec(evidence_fields=("quotes",))).grounding is None


def text_scores(pred, ref: str) -> tuple[float, float]:
    row = score_example(json.dumps({"summary": pred}, ensure_ascii=False), json.dumps({"summary": ref}), "", ANY,
                        MetricSpec(text_fields=("summary",)))
    return row.chrf, row.rouge_l


def test_chrf_and_rouge_l():
    vi = "Bên A thanh toán năm mươi triệu đồng trước ngày ba mươi tháng sáu"
    assert text_scores(vi, vi) == pytest.approx((1.0, 1.0))
    chrf, rouge = text_scores("xyz qrs", "abc def")
    assert chrf == pytest.approx(0.0, abs=0.05) and rouge == 0.0
    chrf, rouge = text_scores("Bên B trả năm mươi triệu đồng trước ngày ba mươi", vi)
    assert 0.2 < chrf < 1.0 and 0.2 < rouge < 1.0
    # Thai vowel and tone marks are combining marks: the tokenizer must keep them inside the word (NFKC form).
    thai = ["ผู้เช่า", "ต้อง", "ชำระ", "ค่าเช่า"]
    assert _WordTokenizer().tokenize("ผู้เช่า ต้อง ชำระ, ค่าเช่า!") == [unicodedata.normalize("NFKC", w) for w in thai]
    chrf, rouge = text_scores("ผู้เช่า ต้อง จ่าย ค่าเช่า", "ผู้เช่า ต้อง ชำระ ค่าเช่า")
    assert rouge == pytest.approx(0.75) and 0.0 < chrf < 1.0  # LCS 3 of 4 tokens each side
    assert text_scores(None, vi) == (0.0, 0.0)
    # reference values from sacrebleu's CHRF() and rouge-score's RougeScorer(["rougeL"]) with the same tokenizer
    chrf, rouge = text_scores("Cô bé chia sẻ bánh với bạn.", "Cô bé biết chia sẻ bánh cho bạn bè.")
    assert chrf == pytest.approx(0.43830, abs=1e-3) and rouge == pytest.approx(0.75)
    row = score_example("{}", json.dumps({"summary": vi}), "", ANY, MetricSpec(text_fields=("summary", "title")))
    assert row.chrf == row.rouge_l == 0.0
    assert score_example("{}", "{}", "", ANY, SPEC).chrf is None


def test_score_formula_hand_computed():
    row = score_example('{"name": "A", "amount": 9}', '{"name": "a", "amount": 5}', "", STRICT, SPEC)
    assert row.field_accuracy == 0.5
    assert row.score == pytest.approx(100 * (0.2 * 1 + 0.3 * 1 + 0.5 * 0.5))  # 75 points
    spec = MetricSpec(evidence_fields=("q",), score_weights=(("field_accuracy", 3), ("grounding", 1)))
    row = score_example('{"name": "A", "q": ["Bên A", "Bên C"]}', '{"name": "A", "amount": 5}', CONTRACT_VI, ANY,
                        spec)
    assert row.score == pytest.approx(100 * (3 * 0.5 + 1 * 0.5) / 4)
    row = score_example('{"name": "A"}', '{"name": "A", "amount": 5}', CONTRACT_VI, ANY, spec)
    assert row.grounding is None and row.score == pytest.approx(50.0)  # grounding left out, renormalised
    with pytest.raises(ValueError):
        MetricSpec(score_weights=(("bleu", 1.0),))


def test_bootstrap_ci_contains_mean_is_deterministic_and_narrows():
    small = [0.9, 0.1, 0.8, 0.75, 0.2, 0.95, 0.3, 1.0, 0.6, 0.7]
    lo, hi = bootstrap_ci(small)
    assert lo <= sum(small) / len(small) <= hi and lo < hi
    assert bootstrap_ci(small) == (lo, hi) and bootstrap_ci(small, seed=0) == (lo, hi)
    assert bootstrap_ci(small, seed=1) != (lo, hi)
    big_lo, big_hi = bootstrap_ci(small * 50)
    assert big_lo <= 0.63 <= big_hi and big_hi - big_lo < (hi - lo) / 3
    assert bootstrap_ci([0.5, None, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError):
        bootstrap_ci([])


def rows_for(preds: list[str], refs: list[str], spec: MetricSpec = SPEC) -> list:
    return [score_example(p, r, CONTRACT_VI, STRICT, spec) for p, r in zip(preds, refs)]


REFS = [json.dumps({"name": f"n{i}", "amount": i}) for i in range(40)]
GOOD = [json.dumps({"name": f"N{i}", "amount": i}) for i in range(40)]
POOR = [json.dumps({"name": f"n{i}", "amount": i + 10}) if i % 3 == 0 else "oops" for i in range(40)]


def test_paired_delta():
    base, tuned = rows_for(POOR, REFS), rows_for(GOOD, REFS)
    same = paired_delta(base, base)
    assert set(same.metrics) == {"json_valid_rate", "schema_pass_rate", "field_accuracy", "score"}
    for d in [*same.metrics.values(), *same.fields.values()]:
        assert d == Metric(value=0.0, ci=(0.0, 0.0))
    better = paired_delta(base, tuned)
    assert better.metrics["score"].value > 50 and better.metrics["score"].ci[0] > 0
    assert better.metrics["field_accuracy"].ci[0] > 0 and better.fields["amount"].ci[0] > 0
    assert better.fields["name"].value == pytest.approx(1 - 14 / 40)
    assert paired_delta(base, tuned) == better
    with pytest.raises(ValueError):
        paired_delta(base, tuned[:-1])


def test_aggregate():
    assert aggregate([]) == Evaluation(n=0)
    spec = MetricSpec(evidence_fields=("q",))
    rows = rows_for(['{"name": "n0", "amount": 0, "q": ["Bên A"]}', '{"name": "x", "amount": 1}', "oops"],
                    REFS[:3], spec)
    rows[2] = rows[2].model_copy(update={"fields": {"name": 0.0}})  # an example lacking a field counts 0 for it
    out = aggregate(rows)
    assert out.n == 3
    assert set(out.metrics) == {"json_valid_rate", "schema_pass_rate", "field_accuracy", "score", "grounding"}
    assert out.value("json_valid_rate") == pytest.approx(2 / 3)
    assert out.metrics["grounding"] == Metric(value=1.0, ci=(1.0, 1.0))  # only the example with evidence
    assert out.fields["amount"].value == pytest.approx(2 / 3)
    assert out.fields["name"].value == pytest.approx(1 / 3)
    lo, hi = out.metrics["score"].ci
    assert lo <= out.value("score") <= hi
    assert out.metrics["json_valid_rate"].ci == bootstrap_ci([r.json_valid for r in rows])
    assert aggregate(rows) == out
    json.dumps(out.model_dump(mode="json"))


def test_worst_fields_lowest_mean_ties_by_name():
    def score(fields):
        return ExampleScore(json_valid=1, schema_pass=1, fields=fields, field_accuracy=0)

    rows = [score({"a": 1.0, "b": 0.5, "c": 0.5, "d": 0.0}), score({"a": 1.0, "b": 0.5, "c": 0.5})]
    assert worst_fields(rows) == ["d", "b", "c"]
    assert worst_fields(rows, k=1) == ["d"] and worst_fields([]) == []
