"""The staged search end to end on the tiny model (real Ray Tune, the run's pipeline): medical goes round 0 -> 1 ->
2 and stops as round 2 improves on nothing, its winner from rounds 1-2, its report telling each round's rule and why the search
stopped; contracts' smoke trial misses the round-0 gate, so the domain ends failed with the verdict to fix the prompt
or the output constraints, and trains nothing more."""
import json

import pytest

from lorafleet.config import find_domain_files, parse_overrides
from lorafleet.pipeline import RunOptions, run
from tests.conftest import OPEN_GATE, rewrite_yaml

pytestmark = pytest.mark.integration


def _rounds(path, smoke_gate: float) -> None:
    rewrite_yaml(path, lambda raw: raw.update(sweep={
        "strategy": "rounds", "resources_per_trial": {"cpu": 1},
        "rounds": {"smoke_gate": smoke_gate, "smoke_steps": 4, "base_steps": 8, "max_rounds": 3}}))


def test_rounds_plan_the_trials_and_a_failed_smoke_gate_stops_the_domain(local_ray, small_base, domain_copy, tmp_path):
    _rounds(domain_copy("medical"), smoke_gate=0.0)
    _rounds(domain_copy("contracts"), smoke_gate=1.0)  # 4 steps teach the tiny model no schema
    sets = [f"base_model={small_base}", "train.eval_steps=4", "eval.max_examples=2", "eval.max_new_tokens=8",
            "export.onnx=false", *OPEN_GATE]
    summary = run(RunOptions(config_files=find_domain_files(str(tmp_path), ["medical", "contracts"]),
                             overrides=parse_overrides(sets), storage=str(tmp_path / "store"), run_id="staged",
                             work_dir=tmp_path / "work"))

    medical = summary.domains["medical"]
    assert medical.status == "published", medical.error
    assert [t.round for t in medical.trials] == [0, 1, 1, 1, 2, 2]
    assert sorted(t.hparams.max_steps for t in medical.trials if t.round == 1) == [6, 8, 12]
    assert all(t.metrics["steps"] == t.hparams.max_steps for t in medical.trials)  # each trained its round's steps
    assert medical.winner != medical.trials[0].hparams  # the smoke trial never wins
    # each trial's lineage: the same prompt and judged records, its own train settings as it trained
    assert len({(t.lineage.prompt_sha256, t.lineage.eval_set_version, t.lineage.dataset_version)
                for t in medical.trials}) == 1 and len(medical.trials[0].lineage.prompt_sha256) == 64
    assert all(t.lineage.train["max_steps"] == t.hparams.max_steps and t.lineage.train["max_seq_length"] ==
               t.hparams.max_seq_length for t in medical.trials)
    story = medical.search
    # 8 new tokens make no JSON: every round scores 0, so round 2 improves on round 1 by less than the margin
    assert [n.round for n in story.rounds] == [0, 1, 2] and "less than min_improvement 0.3" in story.stopped
    report = (tmp_path / "store" / "runs" / "staged" / "medical" / "report.md").read_text()
    for text in (story.rounds[2].why, f"The search stopped: {story.stopped}"):
        assert text.replace("<", "&lt;") in report  # Markdown without raw HTML

    contracts = summary.domains["contracts"]
    assert contracts.status == "failed" and len(contracts.trials) == 1 and contracts.search.fix_prompt
    assert contracts.error.startswith("staged search stopped: ") and "smoke" in contracts.error
    saved = json.loads((tmp_path / "store" / "runs" / "staged" / "summary.json").read_text())
    assert saved["domains"]["contracts"]["search"]["fix_prompt"] is True
