"""The bundled per-step pipeline end to end on a tiny base: `lorafleet run --domains 'folktale.*'` trains, evaluates,
gates and publishes every step as its own domain, each with its own report, contract (a builder step's names its
prompt builder and source hash) and history; `lorafleet predict` answers a builder step from the message the
builder makes."""
import json
import shutil

import pytest

from lorafleet import contract, publish
from lorafleet.cli import main
from lorafleet.config import load_pipeline
from tests.conftest import DOMAINS_DIR, OPEN_GATE

pytestmark = pytest.mark.integration
PIPELINES_DIR = DOMAINS_DIR.parent / "pipelines"
STEPS = ["folktale.character", "folktale.event", "folktale.relationship"]


def test_every_step_of_the_folktale_pipeline_is_published_with_its_own_report(local_ray, small_base, tmp_path):
    (tmp_path / "domains").mkdir()
    shutil.copytree(PIPELINES_DIR, tmp_path / "pipelines", ignore=shutil.ignore_patterns("__pycache__"))
    storage_dir = tmp_path / "store"
    sets = [f"base_model={small_base}", "train.max_steps=4", "train.eval_steps=2", "eval.max_examples=4",
            "eval.max_new_tokens=24", *OPEN_GATE]
    args = ["run", "--config-dir", str(tmp_path / "domains"), "--domains", "folktale.*", "--storage", str(storage_dir),
            "--run-id", "steps-1", "--work-dir", str(tmp_path / "work"), *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 0

    summary = json.loads((storage_dir / "runs" / "steps-1" / "summary.json").read_text())
    assert sorted(summary["domains"]) == STEPS
    configs = load_pipeline(tmp_path / "pipelines" / "folktale.yaml")
    for name in STEPS:
        assert summary["domains"][name]["status"] == "published", summary["domains"][name]
        assert summary["domains"][name]["golden"]["tuned"]["n"] == 12  # the hand-written scenes, mapped by this step
        domain_dir = storage_dir / "runs" / "steps-1" / name
        for report in ("report.json", "report.md", "report.html"):
            assert (domain_dir / report).is_file()
        assert json.loads((domain_dir / "report.json").read_text())["result"]["name"] == name
        assert json.loads((storage_dir / "domains" / name / "latest.json").read_text())["run_id"] == "steps-1"
        assert (storage_dir / "domains" / name / "history.json").is_file()
        onnx = contract.read_contract(domain_dir / "onnx")
        step = configs[name].step
        assert onnx.domain == name and onnx.system_prompt == configs[name].system_prompt
        if step.prompt:
            assert onnx.prompt_builder == contract.PromptBuilder(name=step.prompt, sha256=step.prompt_builder_sha256)
        else:
            assert onnx.prompt_builder is None
        lineage = json.loads((domain_dir / "report.json").read_text())["lineage"]
        assert lineage["config"]["step"]["target"] == step.target  # the mapping is in the lineage (and config hash)
    assert publish.verify(f"{storage_dir}/runs/steps-1") == []

    # serving a builder step: the same builder makes the message, predict answers it
    import folktale_prompts

    record = json.loads((tmp_path / "pipelines" / "folktale" / "annotated.jsonl").read_text().splitlines()[0])
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"id": "t0", "input": folktale_prompts.build_event_prompt(record)}) + "\n")
    out = tmp_path / "answers.jsonl"
    code = main(["predict", "folktale.event", "--file", str(requests), "--out", str(out), "--storage", str(storage_dir),
                 "--cache", str(tmp_path / "cache")])
    assert code in (0, 1) and json.loads(out.read_text().splitlines()[0])["id"] == "t0"
