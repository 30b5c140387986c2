"""The human review round trip against a real S3-compatible server (moto on 127.0.0.1) with real s3fs: the key and the
ratings created with If-None-Match, the ratings replaced with If-Match, the review folder listed."""
import pytest

from lorafleet import publish, review
from tests.review_sample import DOMAIN, RECORDS, export_and_rate, publish_run, read_rows, write_rows

pytestmark = pytest.mark.integration


def test_review_round_trip_on_s3_promotes_and_replace_decides_again(tmp_path, s3_bucket):
    publish_run(tmp_path, s3_bucket, "night-1", {"human_min_improvement": 0.5, "require_review": True})
    storage = publish.Storage(s3_bucket)
    assert publish.latest_manifest(storage, DOMAIN) is None  # gated: not reviewed
    out = tmp_path / "review.jsonl"
    export_and_rate(s3_bucket, "night-1", out)
    done = review.import_file(out, s3_bucket)
    assert done.written and done.review.status == "published" and done.review.ratings.n == RECORDS
    assert storage.read_json(publish.latest_key(DOMAIN))["run_id"] == "night-1"
    assert [r["export_id"] for r in publish.list_ratings(storage, "night-1", DOMAIN)] == [done.export_id]
    assert not review.import_file(out, s3_bucket).written  # the same ratings: nothing written
    write_rows(out, [{**r, "rating_a": r["rating_b"], "rating_b": r["rating_a"]} for r in read_rows(out)])
    with pytest.raises(review.ReviewError, match="--replace replaces them"):
        review.import_file(out, s3_bucket)
    again = review.import_file(out, s3_bucket, replace=True)
    assert again.written and again.review.status == "gated" and "never moves a pointer back" in again.review.pointer
    assert publish.read_review_verdict(storage, "night-1", DOMAIN)["status"] == "gated"
    assert publish.verify(f"{s3_bucket}/runs/night-1/{DOMAIN}") == []
