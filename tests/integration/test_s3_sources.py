"""A domain's data read from s3:// shards on a real S3-compatible server (moto on 127.0.0.1, real s3fs), and
``lorafleet data diff`` against runs published there."""
from __future__ import annotations

import json

import pytest
import s3fs

from lorafleet.cli import main
from lorafleet.config import load_domain
from lorafleet.data import DataError, prepare
from lorafleet.publish import Storage, publish_domain
from tests.conftest import DOMAINS_DIR, rewrite_yaml

pytestmark = pytest.mark.integration


def _upload_shards(bucket_uri: str, name: str) -> str:
    """The bundled JSONL in three shards under <bucket_uri>/<name>/; a glob that names them."""
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    lines = (DOMAINS_DIR / name / "data.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    for i in range(3):
        fs.pipe_file(f"{bucket_uri}/{name}/part-{i}.jsonl", "".join(lines[i::3]).encode("utf-8"))
    fs.pipe_file(f"{bucket_uri}/{name}/README.md", b"not a shard")
    return f"{bucket_uri}/{name}/part-*.jsonl"


def test_a_domain_reads_its_data_from_s3_shards(s3_bucket, domain_copy):
    expected = prepare(load_domain(DOMAINS_DIR / "legal.yaml")).manifest
    glob = _upload_shards(s3_bucket, "legal")
    path = rewrite_yaml(domain_copy("legal"), lambda raw: raw["data"].update(path=glob))
    got = prepare(load_domain(path)).manifest
    assert (got.dataset_version, got.records_read, got.counts) == (expected.dataset_version, expected.records_read,
                                                                   expected.counts)
    assert got.source == glob

    rewrite_yaml(path, lambda raw: raw["data"].update(path=f"{s3_bucket}/legal/shard-*.jsonl"))
    with pytest.raises(DataError, match=rf"{s3_bucket}/legal/shard-\*.jsonl: no file matches"):
        prepare(load_domain(path))  # a remote glob is expanded when read: still before any training

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(f"{s3_bucket}/legal/part-1.jsonl", fs.cat_file(f"{s3_bucket}/legal/part-1.jsonl") + b"{oops\n")
    rewrite_yaml(path, lambda raw: raw["data"].update(path=glob))
    with pytest.raises(DataError, match=rf"{s3_bucket}/legal/part-1.jsonl:122: not valid JSON"):
        prepare(load_domain(path))


def test_data_diff_reads_runs_published_to_s3(s3_bucket, domain_copy, tmp_path, capsys):
    storage = Storage(s3_bucket)
    path = domain_copy("medical")
    data = path.parent / "medical" / "data.jsonl"
    for run_id in ("run-a", "run-b"):
        prepare(load_domain(path), tmp_path / run_id / "data")
        publish_domain(storage, run_id, "medical", tmp_path / run_id)
        lines = data.read_text(encoding="utf-8").splitlines()
        record, other = json.loads(lines[0]), json.loads(lines[200])  # a new note: two patients' notes in one
        record["conversations"][0]["value"] += " " + other["conversations"][0]["value"]
        data.write_text("\n".join([*lines, json.dumps(record, ensure_ascii=False)]) + "\n", encoding="utf-8")
    assert main(["data", "diff", "run-a", "run-b", "medical", "--storage", s3_bucket]) == 1
    assert "1 added, 0 removed, 0 changed" in capsys.readouterr().out
    assert main(["data", "diff", "run-a", "run-c", "medical", "--storage", s3_bucket]) == 2
    assert f"{s3_bucket}/runs/run-c: no run run-c in this storage" in capsys.readouterr().err
