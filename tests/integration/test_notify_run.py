"""A real run tells its webhook: one domain trained, finished and published through the whole pipeline; the webhook
(127.0.0.1, answering 500) receives one message with the domain's verdict, its numbers and what changed since an
earlier publication planted in the storage, the run still succeeds, and the webhook's URL is in no log file of the
run or of Ray, nor in the storage."""
import json
import shutil
from pathlib import Path

import pytest

from lorafleet import __version__, lineage, publish
from lorafleet.cli import main
from lorafleet.config import load_domain, parse_overrides
from tests.conftest import DOMAINS_DIR, OPEN_GATE, WEBHOOK_CANARY

pytestmark = pytest.mark.integration

WEBHOOK_ENV = "LORAFLEET_TEST_WEBHOOK"


def _plant_earlier_publication(storage: publish.Storage, cfg) -> str:
    """medical's latest published run, as an earlier run left it: other data, train settings and base weights."""
    record = lineage.Lineage(
        run_id="earlier", lorafleet_version=__version__, git_commit=lineage.git_commit(),
        packages=lineage.package_versions(), config=lineage.config_snapshot(cfg), config_sha256=lineage.config_sha256(cfg),
        dataset_version="0" * 64, split_counts={}, golden_records=0, seeds={}, base_model=cfg.base_model,
        base_model_sha256="e" * 64, winner={"lora_rank": 4, "learning_rate": 1e-3, "epochs": 1}, trial_count=1,
        backend="peft", merged_sha256=None)
    manifest_key = f"{publish.domain_prefix('earlier', 'medical')}/{publish.MANIFEST}"
    storage.write_json(manifest_key, {"run_id": "earlier", "domain": "medical", "published_at": "2026-01-01T00:00:00+00:00",
                                      "status": "published", "lineage": record.model_dump(mode="json"), "objects": []})
    storage.write_json(publish.latest_key("medical"), {"domain": "medical", "run_id": "earlier", "manifest": manifest_key,
                                                       "published_at": "2026-01-01T00:00:00+00:00"})
    return manifest_key


def _files_holding(text: str, *folders: Path) -> list[Path]:
    return [path for folder in folders for path in folder.rglob("*")
            if path.is_file() and text.encode() in path.read_bytes()]


def test_a_run_tells_its_webhook_and_a_failing_webhook_does_not_fail_it(local_ray, small_base, webhook, tmp_path,
                                                                         monkeypatch):
    webhook.status = 500
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    config_dir, storage_dir, work_dir = tmp_path / "domains", tmp_path / "store", tmp_path / "work"
    config_dir.mkdir()
    shutil.copy(DOMAINS_DIR / "medical.yaml", config_dir)
    shutil.copytree(DOMAINS_DIR / "medical", config_dir / "medical")
    sets = [f"base_model={small_base}", "train.max_steps=4", "train.eval_steps=2", "sweep.space.lora_rank=[4]",
            "eval.max_examples=4", "eval.max_new_tokens=24", f"notify.webhook_env={WEBHOOK_ENV}", *OPEN_GATE]
    storage = publish.Storage(str(storage_dir))
    _plant_earlier_publication(storage, load_domain(config_dir / "medical.yaml", parse_overrides(
        [*sets, "train.max_steps=8"])))

    args = ["run", "--config-dir", str(config_dir), "--storage", str(storage_dir), "--run-id", "told",
            "--work-dir", str(work_dir), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0  # the webhook's 500 is a warning

    summary = storage.read_json("runs/told/summary.json")
    assert summary["status"] == "succeeded" and summary["domains"]["medical"]["status"] == "published"
    assert storage.read_json(publish.latest_key("medical"))["run_id"] == "told"  # moved after the earlier was read
    [message] = webhook.received
    assert message["text"].startswith("lorafleet run told: succeeded in ") and message["text"].endswith(", 1 published")
    headline, medical, links = (block["text"]["text"] for block in message["blocks"])
    assert medical.startswith(":white_check_mark: *medical*: PUBLISHED\njson_valid_rate ")
    current = publish.read_manifest(storage, "told", "medical")["lineage"]["dataset_version"]
    assert (f"changes: data changed (version 00000000 -&gt; {current[:8]}); config changed (train); base weights "
            "changed") in medical, medical
    assert f"report: `{storage_dir}/runs/told/medical/report.html`" in medical
    assert links == f"index: `{storage_dir}/runs/told/index.html`\nsummary: `{storage_dir}/runs/told/summary.json`"

    driver_log = (work_dir / "logs" / "driver.log").read_text()
    assert f"notify: the webhook in {WEBHOOK_ENV} failed; no message sent: HTTPError: HTTP Error 500" in driver_log
    assert _files_holding(WEBHOOK_CANARY, work_dir / "logs", local_ray, storage_dir) == []
    assert json.dumps(message).count(WEBHOOK_CANARY) == 0
