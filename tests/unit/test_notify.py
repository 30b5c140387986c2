"""The run's message: built from a RunSummary made by the pipeline's own producers (tests/report_sample.py), and
sent to a webhook on 127.0.0.1 that answers, fails, refuses or hangs; the URL is never logged."""
import json
import logging

import pytest

from lorafleet import notify, pipeline
from lorafleet.config import load_domain
from lorafleet.results import Artifacts
from tests.conftest import DOMAINS_DIR, WEBHOOK_CANARY, closed_port
from tests.report_sample import sample_report, sample_summary

WEBHOOK_ENV = "LORAFLEET_TEST_WEBHOOK"


def _summary():
    """contracts gated, legal published, broken failed, and a status this module has never heard of."""
    summary = sample_summary()
    artifacts = Artifacts(adapter="a", merged="m", onnx="o", report="s3://bucket/lorafleet/runs/r/contracts/report.html",
                          data="d")
    domains = {**summary.domains,
               "contracts": summary.domains["contracts"].model_copy(update={"artifacts": artifacts}),
               "steady": summary.domains["legal"].model_copy(update={"name": "steady", "status": "unchanged"})}
    return summary.model_copy(update={"domains": domains, "index_uri": "s3://bucket/lorafleet/runs/r/index.html",
                                      "summary_uri": "https://storage.example/lorafleet/runs/r/summary.json"})


def _texts(message):
    return [block["text"]["text"] for block in message["blocks"]]


def test_the_message_has_every_domains_verdict_numbers_changes_and_links():
    summary = _summary()
    changes = {"contracts": ["data changed (version a1b2c3d4 -> c3d4e5f6)", "config changed (train)"]}
    message = notify.build_message(summary, ["broken", "contracts", "legal", "steady"], changes)
    assert json.loads(json.dumps(message)) == message  # what is posted
    assert message["text"].startswith(f"lorafleet run {summary.run_id}: partial in 13 min 32 s, ")
    assert "1 failed, 1 gated, 1 published, 1 unchanged" in message["text"]
    headline, broken, contracts, legal, steady, links = _texts(message)
    assert all(block["type"] == "section" and block["text"]["type"] == "mrkdwn" for block in message["blocks"])
    assert broken.startswith(":x: *broken*: FAILED") and "error: every trial failed: CUDA OOM &lt;script&gt;" in broken
    assert contracts.startswith(":no_entry: *contracts*: GATED") and "failed checks: score gain &gt;= 25" in contracts
    metrics = summary.domains["contracts"].key_metrics
    assert f"schema_pass_rate {metrics['schema_pass_rate']:.2f}" in contracts
    assert f"score gain {metrics['score gain']:+.1f}" in contracts and f"score {metrics['score']:.1f}" in contracts
    assert "changes: data changed (version a1b2c3d4 -&gt; c3d4e5f6); config changed (train)" in contracts
    assert "report: `s3://bucket/lorafleet/runs/r/contracts/report.html`" in contracts
    assert legal.startswith(":white_check_mark: *legal*: PUBLISHED") and "changes" not in legal
    assert steady.startswith(":information_source: *steady*: UNCHANGED")  # any status, shown as it is
    assert "index: `s3://bucket/lorafleet/runs/r/index.html`" in links
    assert "summary: <https://storage.example/lorafleet/runs/r/summary.json|summary.json>" in links
    assert "<script>" not in json.dumps(message)


def test_a_message_stays_within_slacks_limits_however_many_domains():
    summary = _summary()
    many = {f"d{i:03d}": summary.domains["broken"].model_copy(update={"name": f"d{i:03d}", "error": "x" * 5000})
            for i in range(80)}
    message = notify.build_message(summary.model_copy(update={"domains": many}), list(many), {})
    texts = _texts(message)
    assert len(texts) == notify.MAX_BLOCKS and all(len(t) <= notify.SECTION_CHARS for t in texts)
    assert texts[-2] == "... and 33 more domains: see the run index" and texts[-1].startswith("index: ")
    assert "x" * notify.ERROR_CHARS + "..." in texts[1] and "x" * (notify.ERROR_CHARS + 1) not in texts[1]


def test_what_changed_since_the_last_published_run_is_read_from_the_two_lineages():
    previous = sample_report().lineage
    assert notify.what_changed(None, previous) == ["first publication"]
    assert notify.what_changed(previous, previous) == [f"same data, config, base weights and code as run {previous.run_id}"]
    config = {**previous.config, "train": {**previous.config["train"], "max_steps": 7}, "base_model": "smollm2"}
    current = previous.model_copy(update={
        "dataset_version": "c3d4e5f6" + "0" * 56, "config": config, "base_model": "smollm2",
        "git_commit": "0123456789abcdef", "packages": {"torch": "2.14.0", "peft": "0.22.0"}})
    assert notify.what_changed(previous, current) == [
        f"data changed (version {previous.dataset_version[:8]} -> c3d4e5f6)",
        "config changed (train)",  # base_model is said once, below
        "base model changed (tiny -> smollm2)",
        "lorafleet changed (0.1.0 6a41003 -> 0.1.0 01234567)",
        "packages changed (peft none -> 0.22.0, torch 2.13.0 -> 2.14.0)"]
    reweighted = previous.model_copy(update={"base_model_sha256": "f" * 64})
    assert notify.what_changed(previous, reweighted) == ["base weights changed"]


def test_domains_naming_one_variable_share_a_message_and_every_message_tells_of_configs_that_did_not_load():
    webhook_of = {"contracts": "TEAM_A", "legal": "TEAM_A", "medical": "TEAM_B", "quiet": None}
    domains = ["broken", "contracts", "legal", "medical", "quiet"]  # broken: its YAML did not load
    assert notify.audiences(webhook_of, domains) == {"TEAM_A": ["broken", "contracts", "legal"],
                                                     "TEAM_B": ["broken", "medical"]}
    assert notify.audiences({"quiet": None}, domains) == {}


def test_a_message_is_posted_as_json_to_the_url_in_the_variable(webhook, monkeypatch):
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    message = {"text": "hello", "blocks": []}
    assert notify.send(WEBHOOK_ENV, message) is True
    assert webhook.received == [message]


def _failed_without_the_url(caplog, url: str, problem: str) -> None:
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and WEBHOOK_ENV in warnings[0] and problem in warnings[0], warnings
    assert url not in caplog.text and WEBHOOK_CANARY not in caplog.text and "/services/" not in caplog.text


@pytest.mark.parametrize("status", [500, 404])
def test_a_webhook_answering_an_http_error_is_a_warning_without_the_url(webhook, monkeypatch, caplog, status):
    webhook.status = status
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    assert notify.send(WEBHOOK_ENV, {"text": "x"}) is False
    assert len(webhook.received) == 1
    _failed_without_the_url(caplog, webhook.url, f"HTTP Error {status}")


def test_a_webhook_that_hangs_is_given_up_after_the_timeout(webhook, monkeypatch, caplog):
    webhook.delay = 3
    monkeypatch.setenv(WEBHOOK_ENV, webhook.url)
    assert notify.send(WEBHOOK_ENV, {"text": "x"}, timeout=0.3) is False
    _failed_without_the_url(caplog, webhook.url, "timed out")


@pytest.mark.parametrize("value, problem", [
    (f"http://127.0.0.1:{closed_port()}/services/T0/B0/{WEBHOOK_CANARY}", "Connection refused"),
    (f"http://no-such-host.invalid/services/T0/B0/{WEBHOOK_CANARY}", "URLError"),
    (f"file:///etc/{WEBHOOK_CANARY}", "does not hold an http(s) URL"),
    ("", "is not set")])
def test_an_unusable_webhook_is_a_warning_without_the_url(monkeypatch, caplog, value, problem):
    monkeypatch.setenv(WEBHOOK_ENV, value)
    assert notify.send(WEBHOOK_ENV, {"text": "x"}) is False
    _failed_without_the_url(caplog, value or "never", problem)


def test_the_runs_notify_step_sends_one_message_per_webhook_and_never_fails(webhook, monkeypatch, caplog):
    """pipeline.tell_people on a finished run's summary: the domains naming the working webhook get their message;
    the one naming a closed port's costs a warning, not the run."""
    summary = _summary()
    monkeypatch.setenv("TEAM_A_WEBHOOK", webhook.url)
    monkeypatch.setenv("TEAM_B_WEBHOOK", f"http://127.0.0.1:{closed_port()}/services/{WEBHOOK_CANARY}")
    configs = {name: load_domain(DOMAINS_DIR / f"{name}.yaml", {"notify": {"webhook_env": env}})
               for name, env in (("contracts", "TEAM_A_WEBHOOK"), ("legal", "TEAM_B_WEBHOOK"))}
    pipeline.tell_people(summary, configs, {"contracts": ["first publication"]})
    [message] = webhook.received
    names = [t.split("*")[1] for t in _texts(message)[1:-1]]
    assert names == ["broken", "contracts", "steady"]  # broken and steady: no config loaded for them here
    assert "changes: first publication" in _texts(message)[2]
    assert "TEAM_B_WEBHOOK" in caplog.text and WEBHOOK_CANARY not in caplog.text


def test_what_changed_is_read_for_each_told_domain_this_run_published(tmp_path, caplog):
    """pipeline.changes_since_last_publication on a storage holding this run's manifests and earlier ones."""
    from lorafleet import publish

    storage = publish.Storage(str(tmp_path / "store"))
    record = sample_report().lineage.model_dump(mode="json")

    def publish_manifest(run_id: str, domain: str, **extra) -> None:
        key = f"{publish.domain_prefix(run_id, domain)}/{publish.MANIFEST}"
        storage.write_json(key, {"run_id": run_id, "domain": domain, "published_at": "2026-01-01T00:00:00+00:00",
                                 "objects": [], **extra})
        if run_id != "now":
            storage.write_json(publish.latest_key(domain), {"domain": domain, "run_id": run_id, "manifest": key})

    for domain in ("first", "older", "again", "quiet"):
        publish_manifest("now", domain, lineage=record)
    publish_manifest("before", "older")  # a manifest without lineage
    storage.write_json(publish.latest_key("again"), {"domain": "again", "run_id": "now",
                                                     "manifest": "runs/now/again/manifest.json"})  # an earlier attempt
    told = {"notify": {"webhook_env": WEBHOOK_ENV}}
    configs = {name: load_domain(DOMAINS_DIR / "contracts.yaml", {**told, "name": name})
               for name in ("first", "older", "again", "failed")}
    configs["quiet"] = load_domain(DOMAINS_DIR / "contracts.yaml", {"name": "quiet"})
    results = {name: sample_summary().domains["legal"].model_copy(update={"name": name}) for name in configs}

    assert pipeline.changes_since_last_publication(storage, "now", results, configs) == {
        "first": ["first publication"]}  # failed: no manifest; quiet: no webhook; again: already this run's
    assert "[older] notify: what changed since run before is left out: its lineage is in an older form (KeyError)" \
        in caplog.text
