import json
import os
import random
from collections import Counter

import pytest

from lorafleet import metrics, publish, review
from lorafleet.cli import main
from lorafleet.config import ConfigError, GateConfig, load_domain
from lorafleet.gate import decide
from lorafleet.metrics import Delta, Evaluation, Metric, SplitEvaluation
from lorafleet.review import Pair, ReviewError
from tests.conftest import DOMAINS_DIR
from tests.review_sample import DOMAIN, RECORDS, blind_rater, export_and_rate, publish_run, read_rows, write_rows

RUN = "night-1"
HUMAN_GATE = {"human_min_improvement": 0.5, "require_review": True}


# ---- sampling and blinding --------------------------------------------------------------------------------------

def _pairs(better: int, tie: int, worse: int) -> list[Pair]:
    gains = [10.0] * better + [0.0] * tie + [-10.0] * worse
    return [Pair(id=f"r{i}", input="in", expected="{}", base="b", tuned="t", gain=g) for i, g in enumerate(gains)]


def test_the_sample_keeps_each_strata_share_is_seeded_and_capped_at_what_exists():
    pairs = _pairs(20, 10, 10)
    sample = review.stratified_sample(pairs, 8, random.Random(0))
    assert Counter(p.stratum for p in sample) == {"tuned better": 4, "tie": 2, "base better": 2}
    assert [p.id for p in sample] == [p.id for p in review.stratified_sample(pairs, 8, random.Random(0))]
    assert [p.id for p in sample] != [p.id for p in review.stratified_sample(pairs, 8, random.Random(1))]
    assert sorted(p.id for p in review.stratified_sample(pairs, 100, random.Random(0))) == sorted(p.id for p in pairs)
    # a small stratum still gets a record
    rare = review.stratified_sample(_pairs(38, 1, 1), 5, random.Random(0))
    assert Counter(p.stratum for p in rare) == {"tuned better": 3, "tie": 1, "base better": 1}


def test_answer_a_is_the_tuned_models_on_half_the_rows():
    assert Counter(review.blind(10, random.Random(3))) == {"tuned": 5, "base": 5}
    assert sorted(Counter(review.blind(9, random.Random(3))).values()) == [4, 5]


@pytest.fixture
def store(tmp_path):
    return str(tmp_path / "store")


@pytest.fixture
def published(tmp_path, store):
    return publish_run(tmp_path, store, RUN, HUMAN_GATE)


def _eval_rows(store, model):
    return {r["id"]: r for r in map(json.loads, (publish.Storage(store).read_bytes(
        f"runs/{RUN}/{DOMAIN}/eval/test-{model}.jsonl").decode().splitlines()))}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_the_reviewers_file_never_says_which_model_answered_the_key_does(published, store, tmp_path, suffix):
    out = tmp_path / f"review{suffix}"
    done = review.export(store, RUN, DOMAIN, 40, out)
    assert done.records == done.available == RECORDS  # --n capped at the evaluated records
    rows = read_rows(out)
    assert list(rows[0]) == list(review.COLUMNS)  # no model, score or stratum column
    assert all(r["rating_a"] in ("", None) and r["rating_b"] in ("", None) for r in rows)
    assert {(r["export_id"], r["run_id"], r["domain"]) for r in rows} == {(done.export_id, RUN, DOMAIN)}
    text = out.read_text(encoding="utf-8-sig")
    assert "tuned" not in text and '"score"' not in text and "tuned better" not in text
    key = publish.Storage(store).read_json(f"runs/{RUN}/{DOMAIN}/review/key-{done.export_id}.json")
    answers = {m: _eval_rows(store, m) for m in ("base", "tuned")}
    for row, k in zip(rows, key["rows"]):
        assert row["id"] == k["id"] and {k["answer_a"], k["answer_b"]} == {"base", "tuned"}
        assert row["answer_a"] == answers[k["answer_a"]][row["id"]]["got"]
        assert row["answer_b"] == answers[k["answer_b"]][row["id"]]["got"]
        assert row["expected"] == answers["tuned"][row["id"]]["expected"]
    assert Counter(k["answer_a"] for k in key["rows"]) == {"base": RECORDS // 2, "tuned": RECORDS // 2}
    assert sum(key["strata"].values()) == RECORDS and key["requested"] == 40
    with pytest.raises(ReviewError, match="exists already"):
        review.export(store, RUN, DOMAIN, 40, out)  # a filled-in file is never overwritten


def test_an_export_of_fewer_records_keeps_each_strata_share(published, store, tmp_path):
    pairs = review.pairs_of(*(list(_eval_rows(store, m).values()) for m in ("base", "tuned")))
    available = Counter(p.stratum for p in pairs)
    done = review.export(store, RUN, DOMAIN, 12, tmp_path / "few.jsonl", seed=7)
    assert done.records == 12 and done.strata == {s: review._allocate(dict(available), 12).get(s, 0)
                                                  for s in review.STRATA}
    assert all(abs(done.strata[s] - 12 * k / len(pairs)) < 1 for s, k in available.items())


def _exported_and_rated(store, tmp_path, suffix=".csv", rater=blind_rater):
    out = tmp_path / f"review{suffix}"
    done, rows = export_and_rate(store, RUN, out, rater)
    return out, done, rows


def _review_files(store):
    folder = publish.Storage(store).path(f"runs/{RUN}/{DOMAIN}/review")
    return sorted(p.split("-")[0] if p.startswith(("key-", "ratings-")) else p for p in os.listdir(folder))


EDITS = {
    "unknown id": (lambda rows: rows[0].update(id="no-such-record"),
                   ["row 2 (id no-such-record): unknown id", "1 exported record not in the file"]),
    "rating 0": (lambda rows: rows[1].update(rating_a=0), ["row 3 (id ", "rating_a 0: out of range (ratings go from 1 to 5)"]),
    "rating 6": (lambda rows: rows[2].update(rating_b=6), ["row 4 (id ", "rating_b 6: out of range"]),
    "rating x": (lambda rows: rows[0].update(rating_a="x"), ["row 2 (id ", "rating_a 'x': not a rating"]),
    "rating 3.5": (lambda rows: rows[0].update(rating_b="3.5"), ["row 2 (id ", "rating_b '3.5': not a rating"]),
    "missing rating": (lambda rows: rows[3].update(rating_b=""), ["row 5 (id ", "rating_b is empty"]),
    "duplicate row": (lambda rows: rows.append(dict(rows[0])),
                      [f"row {RECORDS + 2} (id ", "rated twice: this record is on row 2 too"]),
    "missing row": (lambda rows: rows.pop(), ["1 exported record not in the file"]),
    "wrong export id": (lambda rows: [r.update(export_id="20260101-000000-abcdef") for r in rows],
                        ["export_id 20260101-000000-abcdef: no such export of run night-1, domain contracts"]),
    "another domain": (lambda rows: [r.update(domain="legal") for r in rows], ["no such export of run night-1, domain legal"]),
    "two export ids": (lambda rows: rows[5].update(export_id="20260101-000000-abcdef"),
                       ["export_id differs between rows", "'20260101-000000-abcdef' on row 7"]),
}


@pytest.mark.parametrize("problem", list(EDITS))
def test_a_bad_file_is_refused_naming_file_and_row_and_nothing_is_written(published, store, tmp_path, problem):
    out, _, rows = _exported_and_rated(store, tmp_path)
    edit, messages = EDITS[problem]
    edit(rows)
    write_rows(out, rows)
    with pytest.raises(ReviewError) as caught:
        review.import_file(out, store)
    message = str(caught.value)
    assert message.startswith(f"{out}: "), message
    for expected in messages:
        assert expected in message, message
    assert _review_files(store) == ["key"]  # no ratings, no verdict, no report
    assert publish.latest_manifest(publish.Storage(store), DOMAIN) is None  # gated: not reviewed, not promoted


def test_every_problem_is_listed_at_once_in_jsonl_too(published, store, tmp_path):
    out, _, rows = _exported_and_rated(store, tmp_path, ".jsonl")
    rows[0]["rating_a"], rows[1]["rating_b"], rows[2]["rating_a"] = 0, True, None
    write_rows(out, rows)
    with pytest.raises(ReviewError) as caught:
        review.import_file(out, store)
    assert "3 problems" in str(caught.value)
    assert "line 1 (id" in str(caught.value) and "line 2 (id" in str(caught.value) and "line 3 (id" in str(caught.value)


# ---- the gate, decided with and without ratings -------------------------------------------------------------------

def _ratings(base, tuned):
    return metrics.rating_summary(base, tuned, samples=1000, seed=0, reviews=["e1"])


def _test_split():
    ev = Evaluation(n=30, metrics={"score": Metric(value=80.0, ci=(75.0, 85.0))})
    return SplitEvaluation(base=ev, tuned=ev, delta=Delta())


def test_without_human_improvement_configured_ratings_never_gate():
    verdict = decide(GateConfig(), _test_split(), human=_ratings([5] * 30, [1] * 30))
    assert verdict.passed and verdict.checks == []


def test_not_reviewed_blocks_only_where_the_config_requires_a_review():
    optional = decide(GateConfig(human_min_improvement=0.5), _test_split())
    assert optional.passed and optional.checks[0].name == "human rating gain > 0.5 (not reviewed)"
    assert "promotion does not wait" in optional.checks[0].detail
    required = decide(GateConfig(human_min_improvement=0.5, require_review=True), _test_split())
    assert required.failed == ["human rating gain > 0.5 (not reviewed)"] and required.checks[0].kind == "human"


def test_ratings_pass_when_the_intervals_lower_end_is_above_the_threshold():
    cfg = GateConfig(human_min_improvement=0.5, require_review=True)
    better = _ratings([2, 3] * 15, [4, 5] * 15)  # +2, every record
    check = decide(cfg, _test_split(), human=better).checks[0]
    assert check.passed and check.value == pytest.approx(2.0) and check.name == "human rating gain > 0.5"
    assert "tuned 4.50 vs base 2.50 on 30 records" in check.detail
    rng = random.Random(0)
    noisy = _ratings([rng.randint(1, 5) for _ in range(30)], [rng.randint(2, 5) for _ in range(30)])
    assert noisy.delta.value > 0 and noisy.delta.ci[0] < 0.5  # ahead on average, not surely by half a point
    assert not decide(cfg, _test_split(), human=noisy).passed
    few = decide(cfg, _test_split(), human=_ratings([2] * 5, [5] * 5)).checks[0]
    assert not few.passed and "only 5 records rated, gate.human_min_reviewed asks for 20" in few.detail
    assert decide(GateConfig(human_min_improvement=0.5, human_min_reviewed=5), _test_split(),
                  human=_ratings([2] * 5, [5] * 5)).passed


def test_rating_summary_is_a_paired_bootstrap():
    same = _ratings([3, 4, 5] * 4, [3, 4, 5] * 4)
    assert same.delta.value == 0 and same.delta.ci == (0.0, 0.0) and same.base.ci[0] < same.base.ci[1]
    with pytest.raises(ValueError, match="at least one"):
        metrics.rating_summary([], [])


@pytest.mark.parametrize("gate,message", [
    ({"require_review": True}, "require_review: waits for a review that human_min_improvement judges"),
    ({"human_min_reviewed": 10}, "human_min_reviewed: read only with human_min_improvement"),
    ({"human_min_improvement": -0.5}, "gate.human_min_improvement: Input should be greater than or equal to 0"),
    ({"human_min_improvement": 0.5, "require_review": "sometimes"}, "gate.require_review: Input should be a valid boolean"),
])
def test_the_human_gate_config_is_checked_at_load_time(gate, message):
    with pytest.raises(ConfigError, match="contracts.yaml") as caught:
        load_domain(DOMAINS_DIR / "contracts.yaml", {"gate": gate})
    assert message in str(caught.value)


# ---- the round trip through the command line ------------------------------------------------------------------------

def test_review_round_trip_moves_the_gate_and_promotes(published, store, tmp_path, capsys):
    storage = publish.Storage(store)
    assert published.status == "gated" and published.gate.failed == ["human rating gain > 0.5 (not reviewed)"]
    assert publish.latest_manifest(storage, DOMAIN) is None
    out = tmp_path / "contracts-review.csv"
    assert main(["review", "export", RUN, DOMAIN, "--n", "40", "--out", str(out), "--storage", store]) == 0
    printed = capsys.readouterr().out
    assert f"{RECORDS} of {RECORDS} test records" in printed and "--n 40 asked for more" in printed
    write_rows(out, [blind_rater(r) for r in read_rows(out)])
    assert main(["review", "import", str(out), "--storage", store]) == 0
    printed = capsys.readouterr().out
    assert f"imported: {RECORDS} records" in printed and "gate: PUBLISHED" in printed, printed
    assert f"latest.json -> run {RUN}: promoted by this review" in printed
    assert storage.read_json(publish.latest_key(DOMAIN))["run_id"] == RUN
    verdict = publish.read_review_verdict(storage, RUN, DOMAIN)
    assert verdict["status"] == "published" and verdict["status_at_run"] == "gated"
    assert verdict["ratings"]["n"] == RECORDS and verdict["ratings"]["delta"]["ci"][0] > 0.5
    ratings = storage.read_json(f"runs/{RUN}/{DOMAIN}/review/ratings-{verdict['reviews'][0]['export_id']}.json")
    assert {r["id"] for r in ratings["ratings"]} == {r["id"] for r in read_rows(out)}
    page = storage.read_bytes(f"runs/{RUN}/{DOMAIN}/review/report.html").decode()
    assert page.index('class="verdict v-published"') < page.index("<h2>Human review</h2>")
    assert 'class="human"' in page and "tuned − base" in page and "human rating gain &gt; 0.5" in page
    assert "## Human review" in storage.read_bytes(f"runs/{RUN}/{DOMAIN}/review/report.md").decode()
    assert publish.read_history(storage, DOMAIN)[0]["verdict"] == "published"
    assert main(["verify", f"{store}/runs/{RUN}/{DOMAIN}"]) == 0  # the manifest and its objects are untouched
    assert main(["verify", f"{store}/runs/{RUN}"]) == 0
    # the same file again: nothing new written, the verdict stands
    assert main(["review", "import", str(out), "--storage", store]) == 0
    assert "already imported (the same ratings)" in capsys.readouterr().out


def test_other_ratings_for_an_imported_export_need_replace(published, store, tmp_path, capsys):
    out, _, rows = _exported_and_rated(store, tmp_path)
    review.import_file(out, store)
    flipped = [{**r, "rating_a": r["rating_b"], "rating_b": r["rating_a"]} for r in rows]  # now the base wins
    write_rows(out, flipped)
    assert main(["review", "import", str(out), "--storage", store]) == 2
    err = capsys.readouterr().err
    assert "was imported on" in err and "nothing imported. --replace replaces them" in err
    done = review.import_file(out, store, replace=True)
    assert done.written and done.review.status == "gated" and done.review.ratings.delta.value < 0
    # promoted by the first import; the second does not move latest.json back, and says why
    assert publish.Storage(store).read_json(publish.latest_key(DOMAIN))["run_id"] == RUN
    assert "never moves a pointer back" in done.review.pointer and f"--force {DOMAIN}" in done.review.pointer


def test_a_review_the_base_wins_leaves_the_domain_gated(published, store, tmp_path):
    def prefers_the_wrong_answer(row):
        rated = blind_rater(row)
        return {**rated, "rating_a": 6 - rated["rating_a"], "rating_b": 6 - rated["rating_b"]}

    out, _, _ = _exported_and_rated(store, tmp_path, rater=prefers_the_wrong_answer)
    done = review.import_file(out, store)
    assert done.review.status == "gated" and done.review.gate.failed == ["human rating gain > 0.5"]
    assert done.review.pointer == "Not promoted: latest.json names no run yet."
    assert publish.latest_manifest(publish.Storage(store), DOMAIN) is None


def test_ratings_are_shown_but_do_not_gate_where_the_run_had_no_human_check(tmp_path, store):
    result = publish_run(tmp_path, store, RUN)  # no human_min_improvement: published and promoted by the run
    assert result.status == "published" and all(c.kind != "human" for c in result.gate.checks)
    out, _, _ = _exported_and_rated(store, tmp_path)
    done = review.import_file(out, store)
    assert done.review.status == "published" and done.review.ratings.n == RECORDS
    assert done.review.pointer == f"latest.json points at run {RUN} already."


def test_two_reviews_of_one_run_count_each_record_once(published, store, tmp_path):
    first, _, _ = _exported_and_rated(store, tmp_path, ".csv")
    review.import_file(first, store)
    second, _, _ = _exported_and_rated(store, tmp_path, ".jsonl")
    done = review.import_file(second, store)
    assert len(done.review.reviews) == 2 and done.review.ratings.n == RECORDS  # the same 24 records, twice
    assert len(done.review.ratings.reviews) == 2


def test_an_unchanged_night_keeps_the_gate_the_review_decided(published, store, tmp_path):
    from lorafleet import data
    from lorafleet.pipeline import unchanged_result
    from lorafleet.sweep import DomainPlan

    out, _, _ = _exported_and_rated(store, tmp_path)
    review.import_file(out, store)
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml")
    kept = unchanged_result(publish.Storage(store), DomainPlan(cfg, data.prepare(cfg)), RUN)
    assert kept.status == "unchanged" and kept.gate.passed and kept.gate.checks[-1].kind == "human"


def test_a_file_that_is_not_a_review_is_refused_before_storage_is_read(published, store, tmp_path):
    out, _, rows = _exported_and_rated(store, tmp_path)
    write_rows(out, [{k: v for k, v in r.items() if k != "rating_b"} for r in rows])
    with pytest.raises(ReviewError, match=r"review.csv: row 1 \(the header\): no column rating_b"):
        review.import_file(out, store)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a"}\nnot json\n[1]\n')
    with pytest.raises(ReviewError) as caught:
        review.import_file(broken, store)
    assert "line 2: not JSON" in str(caught.value) and "line 3: not a JSON object" in str(caught.value)
    write_rows(out, [{**r, "run_id": "../elsewhere"} for r in rows])
    with pytest.raises(ReviewError, match="review.csv: run id '../elsewhere' is not a safe storage key"):
        review.import_file(out, store)
    with pytest.raises(ReviewError, match=r"a review file is \.csv or \.jsonl"):
        review.import_file(tmp_path / "review.xlsx", store)
    assert _review_files(store) == ["key"]
