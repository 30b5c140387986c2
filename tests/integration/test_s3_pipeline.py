"""The whole pipeline against S3 (moto server on 127.0.0.1): artifacts, Tune storage, summary, pointer,
verify, fetch; a rerun of the same run id publishes nothing twice; the canary secret leaks nowhere."""
import shutil

import pytest

from lorafleet import publish
from lorafleet.cli import main
from tests.conftest import CANARY_SECRET, DOMAINS_DIR, OPEN_GATE

pytestmark = pytest.mark.integration



def _run_args(tmp_path, domain: str, storage: str, run_id: str, base, *sets: str, also: tuple = ()) -> list[str]:
    """`lorafleet run` over copies of bundled domains, with a quick profile and an always-open gate
    (``base=None``: each domain's own base_model)."""
    config_dir = tmp_path / "domains"
    config_dir.mkdir()
    for name in (domain, *also):
        shutil.copy(DOMAINS_DIR / f"{name}.yaml", config_dir)
        shutil.copytree(DOMAINS_DIR / name, config_dir / name)
    quick = [*([f"base_model={base}"] if base else []), "train.max_steps=4", "train.eval_steps=2", *OPEN_GATE, *sets]
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


def test_rerun_resumes_the_sweep_from_s3_and_skips_leftover_trials_of_published_domains(
        s3_bucket, local_ray, small_base, tmp_path, capfd):
    """Attempt 1: medical publishes from one trial while its other trial fails (a rank too large to allocate);
    every legal trial fails (its base model is not there yet). Attempt 2 restores the sweep from S3: legal's
    trials run again and publish; medical's leftover errored trial is skipped, not run against a domain the
    rerun no longer trains (that was a KeyError)."""
    late_base = tmp_path / "late-base"
    args = _run_args(tmp_path, "medical", s3_bucket, "resume", None, "eval.max_examples=2", "eval.max_new_tokens=8",
                     also=("legal",))
    for name, edits in (("medical", [("lora_rank: [8, 16]", "lora_rank: [4, 1000000000]"),
                                     ("base_model: tiny", f"base_model: {small_base}")]),
                        ("legal", [("lora_rank: [8, 16]", "lora_rank: [4]"),
                                   ("base_model: tiny", f"base_model: {late_base}"),
                                   # nor a tokenizer to count tokens with: the trials are what find the base missing
                                   ("  format: conversations", "  format: conversations\n  measure_tokens: false")])):
        path = tmp_path / "domains" / f"{name}.yaml"
        for old, new in edits:
            assert old in path.read_text(), (name, old)
            path.write_text(path.read_text().replace(old, new))

    assert main(args) == 1  # legal failed: the run is partial
    storage = publish.Storage(s3_bucket)
    first = storage.read_json("runs/resume/summary.json")
    assert first["status"] == "partial" and "every trial failed" in first["domains"]["legal"]["error"]
    assert first["domains"]["medical"]["status"] == "published"
    assert [t["error"] is None for t in first["domains"]["medical"]["trials"]] == [True, False]
    manifest = storage.read_json("runs/resume/medical/manifest.json")
    capfd.readouterr()

    late_base.symlink_to(small_base)  # the transient cause is gone; no config changed
    assert main(args) == 0
    out = capfd.readouterr()
    printed = out.out + out.err
    assert "resuming the interrupted sweep sweep-1 for legal" in printed
    assert "[medical] trial" not in printed and "KeyError" not in printed
    second = storage.read_json("runs/resume/summary.json")
    assert second["status"] == "succeeded" and second["domains"]["legal"]["status"] == "published"
    assert second["domains"]["medical"]["resumed"] and storage.read_json("runs/resume/medical/manifest.json") == manifest
    assert publish.verify(f"{s3_bucket}/runs/resume") == []
