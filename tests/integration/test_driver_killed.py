"""The job's driver SIGKILLed at any point, then the same run id rerun: every domain ends published (or gated)
exactly once, the pointer is right and `lorafleet verify` is clean. Each attempt is a real `lorafleet run`
process with its own local Ray (which dies with its driver)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lorafleet import publish
from tests.conftest import DOMAINS_DIR, OPEN_GATE

pytestmark = pytest.mark.integration

# a driver that dies by SIGKILL the moment the named function is called (for a point too short to hit by timing)
KILL_AT = """import os, signal, sys, importlib
module, name = sys.argv[1].rsplit(".", 1)
setattr(importlib.import_module(module), name, lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
from lorafleet.cli import main
raise SystemExit(main(sys.argv[2:]))
"""


def _args(tmp_path, base, *more_sets: str) -> list[str]:
    config_dir = tmp_path / "domains"
    config_dir.mkdir(exist_ok=True)
    shutil.copy(DOMAINS_DIR / "medical.yaml", config_dir)
    shutil.copytree(DOMAINS_DIR / "medical", config_dir / "medical", dirs_exist_ok=True)
    sets = [f"base_model={base}", "train.max_steps=6", "train.eval_steps=3", "eval.max_examples=3",
            "eval.max_new_tokens=16", *OPEN_GATE,
            "sweep.resources_per_trial.cpu=2",  # one trial at a time: a kill after the first finds the second running
            *more_sets]
    return ["run", "--config-dir", str(config_dir), "--storage", str(tmp_path / "store"), "--run-id", "night",
            "--work-dir", str(tmp_path / "work"), *[a for s in sets for a in ("--set", s)]]


def _env(tmp_path) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _kill_when_printed(args, tmp_path, marker: str, timeout: float = 600) -> str:
    """Start a driver; SIGKILL it as soon as it prints ``marker``; its output."""
    log = tmp_path / "attempt1.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorafleet", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(tmp_path), start_new_session=True)
        deadline = time.time() + timeout
        while marker not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _reap(proc)
    text = log.read_text()
    assert marker in text, text[-3000:]
    return text


def _reap(proc) -> None:
    """What the killed driver's Ray left behind (it dies with its driver; this only makes sure)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    time.sleep(2)


@pytest.mark.parametrize("kill_point", ["during the sweep", "during finishing", "between manifest and pointer"])
def test_rerun_after_the_driver_is_killed_finishes_the_run_exactly_once(kill_point, small_base, tmp_path):
    args = _args(tmp_path, small_base)
    storage = publish.Storage(str(tmp_path / "store"))
    if kill_point == "during the sweep":
        first = _kill_when_printed(args, tmp_path, "(1/2 trials)")
    elif kill_point == "during finishing":
        first = _kill_when_printed(args, tmp_path, "[medical] merged the adapter")
    else:
        proc = subprocess.run([sys.executable, "-c", KILL_AT, "lorafleet.publish.promote", *args], env=_env(tmp_path),
                              capture_output=True, text=True, timeout=600, start_new_session=True)
        first = proc.stdout + proc.stderr
        assert proc.returncode == -signal.SIGKILL, first[-3000:]
        assert publish.is_published(storage, "night", "medical")  # the manifest is there...
        assert not storage.exists(publish.latest_key("medical"))  # ...the pointer is not
    assert not storage.exists("runs/night/summary.json"), first[-3000:]

    rerun = subprocess.run([sys.executable, "-m", "lorafleet", *args], env=_env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    printed = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, printed[-3000:]
    summary = storage.read_json("runs/night/summary.json")
    assert summary["status"] == "succeeded" and summary["domains"]["medical"]["status"] == "published"
    assert storage.read_json(publish.latest_key("medical"))["run_id"] == "night"
    assert publish.verify(str(tmp_path / "store" / "runs" / "night")) == []
    manifest = storage.read_json("runs/night/medical/manifest.json")
    assert json.loads(storage.read_bytes("runs/night/medical/domain_summary.json"))["status"] == "published"
    if kill_point == "during the sweep":  # trials Tune had recorded as finished are kept, the others run again
        assert "resuming the interrupted sweep sweep-1" in printed, printed
    if kill_point == "between manifest and pointer":
        assert "already published by an earlier attempt" in printed and "trial" not in printed
    # a third attempt changes nothing
    again = subprocess.run([sys.executable, "-m", "lorafleet", *args], env=_env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and storage.read_json("runs/night/medical/manifest.json") == manifest


def _checkpoint_in_tune_state(store, run_id: str) -> bool:
    """Whether a trial has a Trainer checkpoint (not its final adapter) in the run's storage that Tune's saved
    experiment state names (what a rerun restores the trial from)."""
    experiment = store / "runs" / run_id / "tune" / "sweep-1"
    names = {p.parent.name for p in experiment.glob("*/checkpoint_*/trainer_state.json")}
    states = "".join(p.read_text() for p in experiment.glob("experiment_state-*.json"))
    return any(name in states for name in names)


def test_a_half_done_trial_resumes_from_its_checkpoint_after_the_driver_is_killed(small_base, tmp_path):
    args = _args(tmp_path, small_base, "train.max_steps=16", "train.eval_steps=8", "train.checkpoint_steps=2",
                 "sweep.space.lora_rank=[4]")
    store = tmp_path / "store"
    log = tmp_path / "attempt1.txt"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lorafleet", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(tmp_path), start_new_session=True)
        deadline = time.time() + 600
        while not _checkpoint_in_tune_state(store, "night") and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _reap(proc)
    assert _checkpoint_in_tune_state(store, "night") and proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]

    rerun = subprocess.run([sys.executable, "-m", "lorafleet", *args], env=_env(tmp_path), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    trial, = publish.Storage(str(store)).read_json("runs/night/summary.json")["domains"]["medical"]["trials"]
    assert trial["restarts"] == 1 and 0 < trial["resumed_from"][0] < 16, trial
