"""`ray job submit` against a Ray head this test starts (own temp dir and ports) and stops (only it).

Two good domains (messages and alpaca formats) and one bad config: the good ones publish, the run is
`partial`, the job fails, and nothing of the bad domain reaches storage."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import DOMAINS_DIR, REPO

pytestmark = pytest.mark.integration


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture
def ray_head(tmp_path):
    """A private single-node Ray cluster; yields the dashboard address for job submission."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "TMPDIR": str(tmp_path)}
    gcs, dash, client, node, obj, metrics, agent_http, agent_grpc, rt_env = _free_ports(9)
    temp_dir = Path("/tmp") / f"rayt{os.getpid()}"  # short: Ray's socket paths must stay under 107 bytes
    head = subprocess.Popen(
        [str(bin_dir / "ray"), "start", "--head", "--block", f"--temp-dir={temp_dir}", "--num-cpus=2",
         "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--node-manager-port={node}",
         f"--object-manager-port={obj}", f"--metrics-export-port={metrics}",
         f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
         f"--runtime-env-agent-port={rt_env}", "--min-worker-port=20000", "--max-worker-port=20999",
         "--disable-usage-stats"],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            probe = subprocess.run([str(bin_dir / "ray"), "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                break
            assert head.poll() is None, (tmp_path / "head.log").read_text()
            assert time.time() < deadline, f"Ray head not up: {probe.stderr[-2000:]}"
            time.sleep(2)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:  # `ray start --block` takes about 30 s to stop gracefully; the test keeps nothing it would save
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_nightly_job_publishes_good_domains_and_isolates_a_bad_one(ray_head, small_base, tmp_path):
    address, env = ray_head
    config_dir = tmp_path / "domains"
    config_dir.mkdir()
    for name in ("contracts", "story_summary"):
        shutil.copy(DOMAINS_DIR / f"{name}.yaml", config_dir)
        shutil.copytree(DOMAINS_DIR / name, config_dir / name)
    bad = yaml.safe_load((DOMAINS_DIR / "medical.yaml").read_text())
    bad.update(name="broken", unexpected_key=1)
    (config_dir / "broken.yaml").write_text(yaml.safe_dump(bad))
    storage = tmp_path / "store"
    cmd = [str(Path(sys.executable).parent / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
           "--", "python", "jobs/nightly.py", "--config-dir", str(config_dir), "--storage", str(storage),
           "--run-id", "itest", "--work-dir", str(tmp_path / "work"),
           "--set", f"base_model={small_base}", "--set", "train.max_steps=6", "--set", "train.eval_steps=3",
           "--set", "sweep.space.lora_rank=[4,8]", "--set", "eval.max_examples=4", "--set", "eval.max_new_tokens=24"]
    job = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    output = job.stdout + job.stderr
    assert job.returncode != 0, output  # a failed domain fails the job
    summary = json.loads((storage / "runs" / "itest" / "summary.json").read_text())
    assert summary["status"] == "partial", output
    assert summary["domains"]["broken"]["status"] == "failed"
    assert "broken.yaml: unexpected_key: Extra inputs are not permitted" in summary["domains"]["broken"]["error"]
    assert not (storage / "runs" / "itest" / "broken").exists()
    for name in ("contracts", "story_summary"):
        d = summary["domains"][name]
        assert d["status"] in ("published", "gated"), d
        assert len(d["trials"]) == 2 and all(t["metrics"]["eval_loss"] > 0 for t in d["trials"])
        assert d["winner"]["lora_rank"] in (4, 8)
        assert {"base", "tuned", "onnx", "delta"} <= set(d["test"]) and d["test"]["tuned"]["n"] == 4
        assert d["drift"]["merged_vs_onnx"]["greedy_match_rate"] >= 0.99
        published = storage / "runs" / "itest" / name
        manifest = json.loads((published / "manifest.json").read_text())
        keys = {o["key"] for o in manifest["objects"]}
        assert {"merged/model.safetensors", "onnx/onnx/model.onnx", "report.md", "report.json",
                "data/test.jsonl"} <= keys
        assert d["artifacts"]["onnx"] == str(published / "onnx")
    assert "summary:" in output and "partial" in output
