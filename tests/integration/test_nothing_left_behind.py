"""After a `lorafleet run` process ends, nothing of it is left running and it leaves no temp folders: every process
started by the run (its local Ray's servers, workers and trial actors) is gone within 30 s, and no scratch folder of
its trials or probes is left in its temp directory (Ray keeps its own session logs there)."""
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import DOMAINS_DIR, OPEN_GATE

pytestmark = pytest.mark.integration


def _processes_with(marker: str) -> list[str]:
    """Command lines of the live processes whose environment carries ``marker`` (inherited from the run)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160])
        except OSError:  # ended meanwhile, or not ours to read
            continue
    return found


def test_a_finished_run_leaves_no_process_and_no_temp_folder(small_base, tmp_path):
    config_dir = tmp_path / "domains"
    config_dir.mkdir()
    shutil.copy(DOMAINS_DIR / "medical.yaml", config_dir)
    shutil.copytree(DOMAINS_DIR / "medical", config_dir / "medical")
    sets = [f"base_model={small_base}", "train.max_steps=4", "train.eval_steps=2", "train.checkpoint_steps=2",
            "sweep.space.lora_rank=[4,8]", "eval.max_examples=2", "eval.max_new_tokens=8", *OPEN_GATE]
    temp = Path(tempfile.mkdtemp(prefix="lf", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    marker = f"LORAFLEET_LEFT_BEHIND_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "TMPDIR": str(temp), marker.split("=")[0]: marker.split("=")[1]}
    done = subprocess.run([sys.executable, "-m", "lorafleet", "run", "--config-dir", str(config_dir), "--storage",
                           str(tmp_path / "store"), "--work-dir", str(tmp_path / "work"),
                           *[a for s in sets for a in ("--set", s)]],
                          env=env, capture_output=True, text=True, timeout=600)
    try:
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        _assert_nothing_left(marker, temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _assert_nothing_left(marker: str, temp: Path) -> None:
    deadline = time.time() + 30
    while (left := _processes_with(marker)) and time.time() < deadline:
        time.sleep(1)
    assert left == [], left
    ours = list(temp.rglob("lorafleet-*"))  # trial and probe scratch (Ray keeps its session logs and locks)
    assert ours == [], ours
