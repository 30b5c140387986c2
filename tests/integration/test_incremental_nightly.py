"""Incremental nightly on real local Ray with a tiny model: two domains trained and published, then a second night on
the same storage finds both unchanged (no trials, no upload, pointers unmoved, seconds); one changed data line retrains
exactly that domain, and ``--force contracts`` retrains contracts though nothing changed. Every night lands in each
domain's history."""
import json
import time

import pytest

from lorafleet import publish, sweep
from lorafleet.cli import main
from lorafleet.results import RunSummary
from tests.conftest import OPEN_GATE

pytestmark = pytest.mark.integration

QUICK = [*OPEN_GATE, "train.max_steps=2", "train.eval_steps=2", "sweep.space.lora_rank=[4]", "sweep.space.epochs=[1]",
         "eval.max_examples=2", "eval.max_new_tokens=8", "export.onnx=false"]


def _change_one_line(path) -> None:
    """The first record's input gets one more sentence: the same schema, another dataset version."""
    first, rest = path.read_text().split("\n", 1)
    record = json.loads(first)
    record["conversations"][0]["value"] += " Reviewed again today."
    path.write_text(json.dumps(record) + "\n" + rest)


def test_unchanged_domains_are_skipped_and_a_changed_or_forced_one_retrained(local_ray, small_base, domain_copy,
                                                                             tmp_path, monkeypatch):
    for name in ("contracts", "medical"):
        domain_copy(name)
    store = tmp_path / "store"
    storage = publish.Storage(str(store))
    trained: dict[str, list[str]] = {}  # the domains each night's sweep trained
    real_run_sweep = sweep.run_sweep

    def run_sweep(plans, storage, run_id, **kwargs):
        trained[run_id] = sorted(plans)
        return real_run_sweep(plans, storage, run_id, **kwargs)

    monkeypatch.setattr(sweep, "run_sweep", run_sweep)
    seconds = {}

    def night(run_id: str, *extra: str) -> RunSummary:
        sets = [f"base_model={small_base}", *QUICK]
        started = time.perf_counter()
        assert main(["run", "--config-dir", str(tmp_path), "--storage", str(store), "--run-id", run_id,
                     "--work-dir", str(tmp_path / "work" / run_id), *[a for s in sets for a in ("--set", s)], *extra]) == 0
        seconds[run_id] = time.perf_counter() - started
        return RunSummary.from_json(storage.read_json(f"runs/{run_id}/summary.json"))

    def latest(domain: str) -> str:
        return storage.read_json(publish.latest_key(domain))["run_id"]

    def statuses(summary: RunSummary) -> dict[str, tuple[str, str | None]]:
        return {n: (d.status, d.matches_run) for n, d in summary.domains.items()}

    first = night("first")
    assert statuses(first) == {"contracts": ("published", None), "medical": ("published", None)}

    second = night("second")
    assert trained.keys() == {"first"}  # no sweep, no trial
    assert second.status == "succeeded"
    assert statuses(second) == {"contracts": ("unchanged", "first"), "medical": ("unchanged", "first")}
    contracts = second.domains["contracts"]
    assert contracts.artifacts.report == f"{store}/runs/first/contracts/report.html" and contracts.trials == []
    assert contracts.key_metrics == first.domains["contracts"].key_metrics  # the model that stays, as measured
    assert sorted(p.name for p in (store / "runs" / "second").iterdir()) == ["index.html", "summary.json"]  # no upload
    assert latest("contracts") == latest("medical") == "first"
    assert "UNCHANGED" in (store / "runs" / "second" / "index.html").read_text()
    assert seconds["second"] < 15, seconds  # seconds, where a night that trains takes 10-20 s here

    _change_one_line(tmp_path / "medical" / "data.jsonl")
    third = night("third")
    assert trained["third"] == ["medical"]
    assert statuses(third) == {"contracts": ("unchanged", "first"), "medical": ("published", None)}
    assert latest("medical") == "third" and latest("contracts") == "first"

    fourth = night("fourth", "--force", "contracts")
    assert trained["fourth"] == ["contracts"]
    assert statuses(fourth) == {"contracts": ("published", None), "medical": ("unchanged", "third")}
    assert latest("contracts") == "fourth"

    medical = [(e["run_id"], e["verdict"], e["matches_run"]) for e in publish.read_history(storage, "medical")]
    assert medical == [("first", "published", None), ("second", "unchanged", "first"), ("third", "published", None),
                       ("fourth", "unchanged", "third")]
    assert (store / "domains" / "medical" / "history.html").read_text().count('id="series-score"') == 1
    print(f"\nnight seconds: {json.dumps({k: round(v, 1) for k, v in seconds.items()})}; "
          f"summary seconds: first {first.seconds}, second {second.seconds}")
