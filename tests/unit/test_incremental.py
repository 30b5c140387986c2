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
    assert decide(CURRENT, None) == decide(CURRENT, None, forced=False)
    assert decide(CURRENT, None).retrain and decide(CURRENT, None).reason == "never published"


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
