import hashlib
import json

import pytest

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


@pytest.mark.parametrize("run_id,domain", [("run1", "../x"), ("run1", "a/b"), ("run1", ""), ("../r", "ok"),
                                           ("run1", "a\x00b")])
def test_unsafe_names_never_become_keys(run_id, domain):
    with pytest.raises(PublishError, match="is not a safe storage key"):
        domain_prefix(run_id, domain)
