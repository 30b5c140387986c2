import hashlib
import json

import pytest

from lorafleet import publish
from lorafleet.publish import PublishError, Storage, domain_prefix, publish_domain


def _artifacts(tmp_path):
    src = tmp_path / "src"
    (src / "onnx").mkdir(parents=True, exist_ok=True)
    (src / "onnx" / "model.onnx").write_bytes(b"\x00onnx" * 100)
    (src / "report.md").write_text("# report")
    return src


def test_publish_writes_every_object_then_manifest(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    manifest = publish_domain(storage, "run1", "contracts", _artifacts(tmp_path))
    stored = json.loads(storage.read_bytes("runs/run1/contracts/manifest.json"))
    assert stored == manifest
    assert {o["key"] for o in manifest["objects"]} == {"onnx/model.onnx", "report.md"}
    for obj in manifest["objects"]:
        data = storage.read_bytes(f"runs/run1/contracts/{obj['key']}")
        assert hashlib.sha256(data).hexdigest() == obj["sha256"] and len(data) == obj["bytes"]


def test_a_domain_is_published_once_per_run(tmp_path):
    storage = Storage(f"file://{tmp_path / 'store'}")
    publish_domain(storage, "run1", "contracts", _artifacts(tmp_path))
    with pytest.raises(PublishError, match="run run1, domain contracts: already published"):
        publish_domain(storage, "run1", "contracts", _artifacts(tmp_path))


@pytest.mark.parametrize("order", [["run-a", "run-b"], ["run-b", "run-a"]])
def test_runs_published_in_the_same_second_are_ordered_by_run_id(tmp_path, monkeypatch, order):
    storage = Storage(str(tmp_path / "store"))
    monkeypatch.setattr(publish, "_now", lambda: "2026-11-22T04:12:30+00:00")
    for run_id in ("run-a", "run-b"):
        publish_domain(storage, run_id, "contracts", _artifacts(tmp_path))
    moved = [publish.promote(storage, run_id, "contracts") for run_id in order]
    assert storage.read_json(publish.latest_key("contracts"))["run_id"] == "run-b"
    assert moved == ([True, True] if order[0] == "run-a" else [True, False])
    assert publish.promote(storage, "run-b", "contracts") is False  # already there


def test_promote_never_moves_the_pointer_back(tmp_path, monkeypatch):
    storage = Storage(str(tmp_path / "store"))
    for run_id, stamp in [("run-b", "2026-11-22T04:12:29+00:00"), ("run-a", "2026-11-22T04:12:31+00:00")]:
        monkeypatch.setattr(publish, "_now", lambda stamp=stamp: stamp)
        publish_domain(storage, run_id, "contracts", _artifacts(tmp_path))
    assert publish.promote(storage, "run-a", "contracts") is True
    assert publish.promote(storage, "run-b", "contracts") is False  # published earlier, though its run id sorts later
    assert storage.read_json(publish.latest_key("contracts"))["run_id"] == "run-a"


def test_latest_manifest_follows_the_pointer(tmp_path):
    storage = Storage(str(tmp_path / "store"))
    assert publish.latest_manifest(storage, "contracts") is None
    publish_domain(storage, "run1", "contracts", _artifacts(tmp_path), extra={"lineage": {"dataset_version": "d1"}})
    assert publish.latest_manifest(storage, "contracts") is None  # published, never promoted
    publish.promote(storage, "run1", "contracts")
    manifest = publish.latest_manifest(storage, "contracts")
    assert manifest["run_id"] == "run1" and manifest["lineage"] == {"dataset_version": "d1"}


@pytest.mark.parametrize("run_id,domain", [("run1", "../x"), ("run1", "a/b"), ("run1", ""), ("../r", "ok"),
                                           ("run1", "a\x00b")])
def test_unsafe_names_never_become_keys(run_id, domain):
    with pytest.raises(PublishError, match="is not a safe storage key"):
        domain_prefix(run_id, domain)
