"""The whole pipeline against S3 (moto server on 127.0.0.1): artifacts, Tune storage, summary, pointer,
verify, fetch; a rerun of the same run id publishes nothing twice; the canary secret leaks nowhere."""
import shutil

import pytest

from lorafleet import publish
from lorafleet.cli import main
from tests.conftest import CANARY_SECRET, DOMAINS_DIR

pytestmark = pytest.mark.integration



def _run_args(tmp_path, domain: str, storage: str, run_id: str, base, *sets: str) -> list[str]:
    """`lorafleet run` over a copy of one bundled domain, with a quick profile and an always-open gate."""
    config_dir = tmp_path / "domains"
    config_dir.mkdir()
    shutil.copy(DOMAINS_DIR / f"{domain}.yaml", config_dir)
    shutil.copytree(DOMAINS_DIR / domain, config_dir / domain)
    quick = [f"base_model={base}", "train.max_steps=4", "train.eval_steps=2", "gate.min.schema_pass_rate=0",
             "gate.min.json_valid_rate=0", "gate.not_below_base=[]", "gate.min_improvement.score=-100",
             "gate.max_field_regression=1", "gate.golden_min.schema_pass_rate=0", *sets]
    return ["run", "--config-dir", str(config_dir), "--storage", storage, "--run-id", run_id,
            "--work-dir", str(tmp_path / "work"), *[arg for s in quick for arg in ("--set", s)]]


def test_run_publishes_to_s3_and_rerun_is_a_no_op(s3_bucket, local_ray, small_base, tmp_path, capfd, caplog):
    import s3fs
    from optimum.onnxruntime import ORTModelForCausalLM

    args = _run_args(tmp_path, "medical", s3_bucket, "s3run", small_base, "sweep.space.lora_rank=[4,8]",
                     "eval.max_examples=3", "eval.max_new_tokens=16")
    assert main(args) == 0
    storage = publish.Storage(s3_bucket)
    summary = storage.read_json("runs/s3run/summary.json")
    entry = summary["domains"]["medical"]
    assert summary["status"] == "succeeded" and entry["status"] == "published"
    assert entry["artifacts"]["onnx"] == f"{s3_bucket}/runs/s3run/medical/onnx"
    assert storage.read_json(publish.latest_key("medical"))["run_id"] == "s3run"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    tune_files = fs.find(storage.path("runs/s3run/tune"))
    assert any("checkpoint_" in f and f.endswith("adapter_model.safetensors") for f in tune_files)

    manifest = storage.read_json("runs/s3run/medical/manifest.json")
    lineage = manifest["lineage"]
    assert lineage["trial_count"] == 2 and lineage["backend"] == "peft" and lineage["winner"] == entry["winner"]
    assert len(lineage["base_model_sha256"]) == 64 and len(lineage["config_sha256"]) == 64
    assert set(lineage["packages"]) >= {"torch", "transformers", "peft", "trl", "optimum", "onnxruntime", "ray"}
    assert publish.verify(f"{s3_bucket}/runs/s3run") == []
    assert main(["verify", f"{s3_bucket}/runs/s3run/medical"]) == 0

    onnx_dir = publish.fetch(s3_bucket, "medical", tmp_path / "consumer" / "medical")
    assert ORTModelForCausalLM.from_pretrained(onnx_dir) is not None
    assert main(["fetch", "medical", str(tmp_path / "consumer2"), "--storage", s3_bucket, "--run", "s3run"]) == 0

    # the rerun of the same run id: nothing retrained, nothing uploaded again
    assert main(args) == 0
    assert storage.read_json("runs/s3run/medical/manifest.json") == manifest
    out = capfd.readouterr()
    printed = out.out + out.err + caplog.text  # driver log records go to caplog, workers' to stderr
    assert "already published by an earlier attempt of run s3run" in printed

    # the canary secret is in no object, summary, manifest, report, and in nothing printed
    for key in fs.find(storage.path("")):
        assert CANARY_SECRET.encode() not in fs.cat_file(key), key
    assert CANARY_SECRET not in printed
    for path in local_ray.rglob("*"):
        if path.is_file() and path.suffix in (".log", ".out", ".err", ".json", ".txt"):
            assert CANARY_SECRET not in path.read_text(errors="ignore"), path


def test_rerun_resumes_the_sweep_from_s3_and_finishes_the_failed_domain(s3_bucket, local_ray, small_base, tmp_path,
                                                                         capfd, caplog):
    args = _run_args(tmp_path, "legal", s3_bucket, "resume", small_base, "sweep.space.lora_rank=[4]",
                     "eval.max_examples=2", "eval.max_new_tokens=8")
    # first attempt: every trial fails (its base model is not there), nothing is published
    assert main(args + ["--set", f"base_model={tmp_path / 'no-such-base'}"]) == 1
    storage = publish.Storage(s3_bucket)
    first = storage.read_json("runs/resume/summary.json")
    assert first["status"] == "failed" and "every trial failed" in first["domains"]["legal"]["error"]
    assert not publish.is_published(storage, "resume", "legal")
    assert not storage.exists(publish.latest_key("legal"))
    # the rerun restores the sweep from S3, re-runs the errored trial, and publishes
    assert main(args) == 0
    out = capfd.readouterr()
    assert "resuming the interrupted sweep" in out.out + out.err + caplog.text
    second = storage.read_json("runs/resume/summary.json")
    assert second["status"] == "succeeded" and second["domains"]["legal"]["status"] == "published"
    assert storage.read_json(publish.latest_key("legal"))["run_id"] == "resume"
