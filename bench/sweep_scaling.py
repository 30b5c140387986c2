"""How lorafleet's multi-domain sweep scales with GPUs: the sweep stage alone, on the GPUs it is given.

    python bench/sweep_scaling.py --gpus 0,1 --json OUT.json [--domains 8] [--trials 4]

Workload: ``--domains`` domains cycled from the bundled configs (copies get a suffix), each with the GPU
profile (configs/profiles/gpu.yaml: random-init Qwen2.5-1.5B-shaped base, Unsloth QLoRA, gpu 0.5 a trial)
and a 2x2 grid (rank 8/16 x learning rate 2e-3/1e-3) = 4 trials. Data is prepared on the driver before the
clock starts; the base model is built before it too (as a nightly run would find it in its cache).

Measured: wall time of ``run_sweep``; trial-seconds (each trial from Tune starting it to its completion,
taken by a Tune callback on the driver); per trial the time inside ``train_trial`` spent loading (backend
import, 4-bit base load, trainer setup) and training, the rest being worker start-up; per GPU, sampled by
``nvidia-smi`` every 0.5 s over the sweep, the mean utilisation (busy fraction) and the fraction of samples
in which some trial held memory on it (occupied fraction). Run it once per GPU count; compare the JSONs
with ``--compare A.json B.json ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "configs" / "domains"
PROFILE = REPO / "configs" / "profiles" / "gpu.yaml"
GRID = {"lora_rank": [8, 16], "learning_rate": [2e-3, 1e-3], "epochs": [3]}


def workload(n_domains: int, work_dir: Path, profile_path: Path, extra: dict | None = None):
    from lorafleet.config import find_domain_files, load_domain, load_overrides_file, merge_overrides
    from lorafleet.pipeline import prepare_all

    files = find_domain_files(BUNDLED)
    profile = merge_overrides(load_overrides_file(profile_path), extra or {"sweep": {"space": GRID, "search": "grid"}})
    configs = {}
    for i in range(n_domains):
        path = files[i % len(files)]
        name = path.stem if i < len(files) else f"{path.stem}_{i // len(files) + 1}"
        configs[name] = load_domain(path, merge_overrides(profile, {"name": name}))
    plans, failed = prepare_all(configs, work_dir)
    if failed:
        raise SystemExit(f"data preparation failed: {[r.error for r in failed.values()]}")
    return plans


def trial_clock():
    """A Tune callback recording when the driver started and finished each trial (wall clock), and each trial's
    last reported result."""
    from ray.tune import Callback

    class TrialClock(Callback):
        def __init__(self):
            self.started: dict[str, float] = {}
            self.ended: dict[str, float] = {}
            self.results: dict[str, dict] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.setdefault(trial.trial_id, time.time())

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.results[trial.trial_id] = result

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.ended[trial.trial_id] = time.time()

        on_trial_error = on_trial_complete

    return TrialClock()


def sample_gpus(gpus: str, out: Path) -> subprocess.Popen | None:
    if shutil.which("nvidia-smi") is None:
        return None
    return subprocess.Popen(
        ["nvidia-smi", "-i", gpus, "--query-gpu=timestamp,index,utilization.gpu,memory.used",
         "--format=csv,noheader,nounits", "-lms", "500"], stdout=out.open("w"), stderr=subprocess.DEVNULL)


def device_name(gpus: str) -> str:
    return subprocess.run(["nvidia-smi", "-i", gpus.split(",")[0], "--query-gpu=name", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()


def gpu_fractions(samples: Path, start: float, end: float) -> dict[str, dict[str, float]]:
    from datetime import datetime

    per_gpu: dict[str, list[tuple[float, float]]] = {}
    for line in samples.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4 or not parts[2].isdigit():
            continue
        ts = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
        if start <= ts <= end:
            per_gpu.setdefault(parts[1], []).append((float(parts[2]), float(parts[3])))
    fractions = {}
    for gpu, rows in sorted(per_gpu.items()):
        idle_mem = min(m for _, m in rows)
        fractions[gpu] = {"busy": sum(u for u, _ in rows) / 100 / len(rows),
                          "occupied": sum(m > idle_mem + 1024 for _, m in rows) / len(rows), "samples": len(rows),
                          "max_memory_mib": max(m for _, m in rows)}
    return fractions


def measure(gpus: str, n_domains: int, out_json: Path, profile: Path = PROFILE) -> dict:
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus  # Ray counts, and hands trials, only these GPUs
    import ray

    from lorafleet.base_model import resolve_base_model
    from lorafleet.publish import Storage
    from lorafleet.sweep import run_sweep

    n_gpus = len(gpus.split(","))
    scratch = Path(tempfile.mkdtemp(prefix="lfscale"))
    plans = workload(n_domains, scratch / "work", profile)
    resolve_base_model(next(iter(plans.values())).cfg.base_model)
    ray.init(num_gpus=n_gpus, include_dashboard=False, _temp_dir=str(scratch / "ray"))
    clock = trial_clock()
    samples = scratch / "nvidia-smi.csv"
    sampler = sample_gpus(gpus, samples)
    started = time.time()
    outcomes = run_sweep(plans, Storage(str(scratch / "store")), "bench", callbacks=[clock])
    ended = time.time()
    if sampler:
        sampler.terminate()
    ray.shutdown()

    trials = [o for per_domain in outcomes.values() for o in per_domain]
    ok = [o for o in trials if o.metrics]
    order = sorted((t for t in clock.ended if t in clock.started), key=clock.started.get)
    spans = [clock.ended[t] - clock.started[t] for t in order]
    load = sum(o.metrics.get("load_seconds", 0) for o in ok)
    train = sum(o.metrics.get("train_seconds", 0) for o in ok)
    result = {
        "gpus": n_gpus, "cuda_visible_devices": gpus, "domains": len(plans), "trials": len(trials),
        "trials_ok": len(ok), "sweep_seconds": ended - started, "trial_seconds": sum(spans),
        "mean_trial_seconds": sum(spans) / len(spans) if spans else None,
        "phase_seconds": {"load": load, "train": train, "worker_start_and_rest": sum(spans) - load - train},
        "trial_spans": [round(s, 1) for s in spans],  # in start order: a warm worker's later trials skip start-up
        "gpu": gpu_fractions(samples, started, ended) if sampler else {},
        "device": device_name(gpus) if sampler else "no nvidia-smi",
        "errors": [o.error for o in trials if o.error],
    }
    out_json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


def compare(paths: list[Path]) -> None:
    """Speed-up is in trials per second against the 1-GPU run, so a 1-GPU run of part of the workload (same
    trials per domain, fewer domains) still serves as the base. Slot use: trial-seconds / (slots x wall)."""
    runs = sorted((json.loads(p.read_text()) for p in paths), key=lambda r: r["gpus"])
    rate = {r["gpus"]: r["trials_ok"] / r["sweep_seconds"] for r in runs}
    print(f"{'GPUs':>4} {'trials':>6} {'sweep s':>8} {'trial-s':>8} {'speed-up':>8} {'effic.':>7} {'slot use':>8} "
          f"{'busy':>5} {'occupied':>8} {'start s':>8} {'load s':>7} {'train s':>8}")
    for r in runs:
        speedup = rate[r["gpus"]] / rate[1] if 1 in rate else float("nan")
        slots = r["gpus"] * 2  # gpu: 0.5 a trial
        busy = sum(g["busy"] for g in r["gpu"].values()) / max(1, len(r["gpu"]))
        occupied = sum(g["occupied"] for g in r["gpu"].values()) / max(1, len(r["gpu"]))
        n = max(1, r["trials_ok"])
        ph = r["phase_seconds"]
        print(f"{r['gpus']:>4} {r['trials_ok']:>6} {r['sweep_seconds']:>8.0f} {r['trial_seconds']:>8.0f} {speedup:>8.2f} "
              f"{speedup / r['gpus']:>7.2f} {r['trial_seconds'] / (slots * r['sweep_seconds']):>8.2f} {busy:>5.2f} "
              f"{occupied:>8.2f} {ph['worker_start_and_rest'] / n:>8.1f} {ph['load'] / n:>7.1f} {ph['train'] / n:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", help="CUDA device indices to use, e.g. 0,1")
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, default=PROFILE, help="overrides applied to every domain")
    parser.add_argument("--compare", nargs="+", type=Path, help="print the scaling table of earlier --json files")
    args = parser.parse_args()
    if args.compare:
        compare(args.compare)
        return
    if not args.gpus or not args.json:
        parser.error("--gpus and --json are needed to measure")
    sys.path.insert(0, str(REPO / "src"))
    measure(args.gpus, args.domains, args.json, args.profile)


if __name__ == "__main__":
    main()
