"""``lorafleet data diff``: two runs' published data of a domain, with records planted as added, removed and
changed (an edited answer; a record moved to another group and split)."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from lorafleet import dataset_diff
from lorafleet.cli import main
from lorafleet.config import load_domain
from lorafleet.data import prepare
from lorafleet.publish import Storage, publish_domain


def _publish(storage: Storage, run_id: str, yaml_path: Path, work: Path):
    prepared = prepare(load_domain(yaml_path), work / run_id / "contracts" / "data")
    publish_domain(storage, run_id, "contracts", work / run_id / "contracts")
    return prepared


def _plant(data: Path, prepared) -> dict[str, str]:
    """Edit the domain's JSONL: one record removed, one added, one answer edited, one record moved from its group
    (which keeps others) to a group of another split. Every group stays, so no other record changes split.
    Returns the planted records' ids in run A."""
    lines = data.read_text(encoding="utf-8").splitlines()
    ids = Counter(e.id for e in prepared.train)
    train = [e for e in prepared.train if ids[e.id] == 1]  # no exact duplicate elsewhere
    sizes = Counter(e.group for e in prepared.train)
    removed, edited, moved = [e for e in train if sizes[e.group] >= 4][:3]
    test_group = prepared.test[0].group

    record = json.loads(lines[edited.line - 1])
    answer = json.loads(record["messages"][1]["content"])
    answer["term_months"] += 1
    record["messages"][1]["content"] = json.dumps(answer)
    lines[edited.line - 1] = json.dumps(record)

    record = json.loads(lines[moved.line - 1])
    record["contract_id"] = test_group
    lines[moved.line - 1] = json.dumps(record)

    added = json.loads(lines[removed.line - 1])
    added["messages"][0]["content"] += " Both parties signed an addendum."
    lines[removed.line - 1] = json.dumps(added)  # the removed record's place (its group keeps others)
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"removed": removed.id, "edited": edited.id, "moved": moved.id, "moved_group": moved.group,
            "test_group": test_group}


@pytest.fixture
def two_runs(domain_copy, tmp_path):
    storage = Storage(str(tmp_path / "store"))
    yaml_path = domain_copy("contracts")
    before = _publish(storage, "run-a", yaml_path, tmp_path / "work")
    planted = _plant(yaml_path.parent / "contracts" / "data.jsonl", before)
    after = _publish(storage, "run-b", yaml_path, tmp_path / "work")
    return storage, before, after, planted


def test_planted_records_are_found(two_runs, capsys):
    storage, before, after, planted = two_runs
    assert main(["data", "diff", "run-a", "run-b", "contracts", "--storage", storage.uri]) == 1
    out = capsys.readouterr().out
    n = sum(before.manifest.counts.values())
    assert f"contracts: run run-a -> run run-b\ndataset {before.manifest.dataset_version[:12]} (train/val/test " \
           f"{before.manifest.counts['train']}/" in out
    assert f"1 added, 1 removed, 2 changed, {n - 3} unchanged" in out
    added = (set(e.id for e in after.train) - set(e.id for e in before.train)) - {
        e.id for e in after.train if e.user_text in {x.user_text for x in before.train}}
    assert len(added) == 1
    assert f"added:\n  + {added.pop()}  train  group " in out
    assert f"removed:\n  - {planted['removed']}  train  group " in out
    new_id = next(e.id for e in after.train if e.user_text == next(
        x.user_text for x in before.train if x.id == planted["edited"]))
    assert f"  ~ {planted['edited']} -> {new_id}  train  answer  " in out
    assert f"  ~ {planted['moved']}  test  split train -> test, group {planted['moved_group']} -> " \
           f"{planted['test_group']}  " in out


def test_the_same_data_is_no_difference(two_runs, capsys):
    storage, before, *_ = two_runs
    assert main(["data", "diff", "run-a", "run-a", "contracts", "--storage", storage.uri]) == 0
    assert f"0 added, 0 removed, 0 changed, {sum(before.manifest.counts.values())} unchanged" in capsys.readouterr().out


@pytest.mark.parametrize("args,problem", [
    (["run-x", "run-b", "contracts"], r"store/runs/run-x: no run run-x in this storage"),
    (["run-a", "run-b", "legal"], r"run run-a did not publish domain legal \(no .*runs/run-a/legal/manifest.json"),
    (["run-a", "../b", "contracts"], r"run id '../b' is not a safe storage key"),
])
def test_an_unknown_run_or_domain_exits_2(two_runs, capsys, args, problem):
    storage, *_ = two_runs
    assert main(["data", "diff", *args, "--storage", storage.uri]) == 2
    assert re.search(problem, capsys.readouterr().err)


def test_the_listing_is_cut_at_the_limit():
    def row(i, split="train", answer="{}"):
        return dataset_diff.Row(split, f"id{i}", "g", [{"role": "user", "content": f"q{i}"}], answer)

    diff = dataset_diff.compare([row(i) for i in range(5)], [row(i, answer='{"a": 1}') for i in range(3, 8)])
    assert (len(diff.added), len(diff.removed), len(diff.changed), diff.unchanged) == (3, 3, 2, 0)
    text = dataset_diff.render(diff, "a", "b", {}, {}, limit=2)
    assert text.count("  + ") == 2 and "  ... and 1 more" in text and "~ id3 -> id3" not in text
