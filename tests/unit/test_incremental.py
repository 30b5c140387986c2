"""incremental.decide: a domain is retrained when any of its four inputs differs from its latest published run's, when
it was never published, or when forced; otherwise it is unchanged and matches that run."""
import pytest

from lorafleet.incremental import Published, decide
from lorafleet.lineage import Inputs

CURRENT = Inputs(config_sha256="c1", dataset_version="d1", base_model_sha256="w1", lorafleet_version="0.1.0")


def _published(**changes) -> Published:
    return Published(run_id="20261125-020000", inputs=CURRENT.model_copy(update=changes))


def test_all_four_equal_is_unchanged_and_matches_the_published_run():
    decision = decide(CURRENT, _published())
    assert not decision.retrain and decision.matches_run == "20261125-020000"


@pytest.mark.parametrize("field", ["config_sha256", "dataset_version", "base_model_sha256", "lorafleet_version"])
def test_any_input_changed_retrains_and_says_which(field):
    decision = decide(CURRENT, _published(**{field: "other"}))
    assert decision.retrain and decision.matches_run is None
    assert decision.reason == f"{field} changed since run 20261125-020000"


def test_never_published_retrains():
    decision = decide(CURRENT, None)
    assert decision.retrain and decision.reason == "no published run to compare with" and decision.matches_run is None


def test_forced_retrains_an_unchanged_domain():
    decision = decide(CURRENT, _published(), forced=True)
    assert decision.retrain and decision.reason == "forced (--force)"


def test_base_weights_that_cannot_be_hashed_are_never_taken_as_unchanged():
    hub = CURRENT.model_copy(update={"base_model_sha256": None})  # a hub id not on disk: its weights may change
    assert decide(hub, _published(base_model_sha256=None)).retrain


def test_published_reads_the_manifests_lineage():
    manifest = {"run_id": "r1", "lineage": {**CURRENT.model_dump(), "winner": {"lora_rank": 8}, "packages": {}}}
    assert Published.of(manifest) == Published(run_id="r1", inputs=CURRENT)


def test_inputs_of_the_same_domain_are_equal_wherever_its_files_are(domain_copy, tmp_path):
    from lorafleet import data
    from lorafleet.config import load_domain
    from tests.conftest import DOMAINS_DIR

    base = tmp_path / "base"
    base.mkdir()
    (base / "model.safetensors").write_bytes(b"weights")

    def inputs(path):
        cfg = load_domain(path, {"train": {"max_steps": 5}})
        return Inputs.of(cfg, data.prepare(cfg).manifest.dataset_version, str(base))

    bundled, copied = inputs(DOMAINS_DIR / "legal.yaml"), inputs(domain_copy("legal"))
    assert bundled == copied and bundled.base_model_sha256 is not None


def test_a_pointer_without_a_readable_manifest_is_no_published_run_to_compare_with(tmp_path, caplog):
    from lorafleet import publish
    from lorafleet.pipeline import latest_published

    storage = publish.Storage(str(tmp_path))
    assert latest_published(storage, "legal") is None  # never promoted
    storage.write_json(publish.latest_key("legal"), {"run_id": "hand-written", "domain": "legal"})
    assert latest_published(storage, "legal") is None
    storage.write_json(publish.latest_key("legal"), {"run_id": "gone", "manifest": "runs/gone/legal/manifest.json"})
    assert latest_published(storage, "legal") is None  # its manifest was deleted
    missing_key, missing_file = (r.getMessage() for r in caplog.records)
    assert "latest.json names no manifest" in missing_key and "KeyError: 'manifest'" in missing_key
    assert "FileNotFoundError" in missing_file
    storage.write_json("runs/r1/legal/manifest.json", {"run_id": "r1", "lineage": CURRENT.model_dump()})
    storage.write_json(publish.latest_key("legal"), {"run_id": "r1", "manifest": "runs/r1/legal/manifest.json"})
    assert latest_published(storage, "legal") == Published(run_id="r1", inputs=CURRENT)
