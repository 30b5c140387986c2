"""The same fleet workload three ways on the GPUs given, ratios printed from one run.

    python bench/fleet_modes.py --gpus 0 --out DIR [--modes sequential,fixed,packed] [--domains 8]
                                [--fixed-domains 8] [--sequential-domains 1] [--sequential-trials 4]
                                [--set train.batch_size=16 ...]
    python bench/fleet_modes.py --compare DIR      # the table again, from DIR/*.json

Workload: ``--domains`` domains cycled from the bundled configs with the GPU profile (configs/profiles/gpu.yaml:
random-init Qwen2.5-1.5B-shaped base, Unsloth QLoRA, batch 8) and a 2x2 grid (rank 8/16 x learning rate 2e-3/1e-3),
one full epoch per trial (no step cap) and the validation answers a trial gives for selection. Modes:

- ``sequential``: one trial at a time, each a fresh Python process (a loop over LLaMA-Factory or Axolotl runs);
  trial settings as ``fixed``. A rate, so it may run a subset (``--sequential-domains``).
- ``fixed``: lorafleet before its warm workers (2026-11-24): Ray Tune, a fresh worker process per trial,
  ``gpu: 0.5`` a trial, cpu 2, Unsloth's offloaded gradient checkpointing (``--fixed-domains`` may run a subset).
- ``packed``: lorafleet now: warm workers (reuse_actors) with the base kept loaded, ``gpu: auto`` (probe-measured
  packing; its probe is timed apart, as a nightly run finds it cached), cpu 1, checkpointing auto.

Per mode: wall, trials per GPU-hour, per-trial fixed cost (trial start -> end of its first optimizer step; for
Tune modes from the driver starting the trial, for sequential from spawning the process), GPU busy (nvidia-smi
utilisation sampled every 0.5 s) and memory held, winner eval_loss per domain. Each mode runs in its own process
(its own Ray), results in DIR/<mode>.json; the table compares what DIR holds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_scaling import PROFILE, REPO, device_name, gpu_fractions, sample_gpus, trial_clock, workload  # noqa: E402

GRID = {"lora_rank": [8, 16], "learning_rate": [2e-3, 1e-3], "epochs": [1]}
COMMON = {"train": {"max_steps": None}, "sweep": {"space": GRID, "search": "grid"}}
# the modes before warm workers also train as lorafleet did then: Unsloth's default optimizer (8-bit AdamW)
MODES = {
    "sequential": {"train": {"gradient_checkpointing": "offload", "optimizer": "adamw_8bit"}},
    "fixed": {"train": {"gradient_checkpointing": "offload", "optimizer": "adamw_8bit"},
              "sweep": {"resources_per_trial": {"cpu": 2, "gpu": 0.5}, "reuse_workers": False}},
    "packed": {"train": {"gradient_checkpointing": "auto"},
               "sweep": {"resources_per_trial": {"cpu": 1, "gpu": "auto"}, "reuse_workers": True}},
}


def overrides(mode: str) -> dict:
    from lorafleet.config import merge_overrides, parse_overrides

    return merge_overrides(COMMON, MODES[mode], parse_overrides(SETTINGS))


SETTINGS: list[str] = []  # --set KEY=VALUE, for every mode (a variant of the workload, e.g. train.batch_size=16)


def run_tune_mode(mode: str, gpus: str, n_domains: int, scratch: Path) -> dict:
    import ray

    from lorafleet.base_model import resolve_base_model
    from lorafleet.publish import Storage
    from lorafleet.sweep import run_sweep, trial_gpu_shares

    plans = workload(n_domains, scratch / "work", PROFILE, overrides(mode))
    resolve_base_model(next(iter(plans.values())).cfg.base_model)
    ray.init(num_gpus=len(gpus.split(",")), include_dashboard=False, _temp_dir=str(scratch / "ray"))
    probe_started = time.time()
    trial_gpu_shares(plans)  # the packing probe (cached on disk), timed apart from the sweep
    probe_seconds = time.time() - probe_started
    clock = trial_clock()
    samples = scratch / "nvidia-smi.csv"
    sampler = sample_gpus(gpus, samples)
    started = time.time()
    outcomes = run_sweep(plans, Storage(str(scratch / "store")), mode, callbacks=[clock])
    ended = time.time()
    sampler.terminate()
    ray.shutdown()
    trials = []
    for domain, per_domain in outcomes.items():
        for t in per_domain:
            trials.append({"domain": domain, "label": t.hparams.label, "metrics": t.metrics, "error": t.error})
    fixed, seen = [], set()
    for trial_id in sorted(clock.started, key=clock.started.get):
        result = clock.results.get(trial_id)
        if result and "first_step_seconds" in result:
            reused = result["pid"] in seen
            seen.add(result["pid"])
            fixed.append({"seconds": result["started_at"] + result["first_step_seconds"] - clock.started[trial_id],
                          "reused_worker": reused})
    spans = [(clock.started[t], clock.ended[t]) for t in clock.started if t in clock.ended]
    concurrent = max(sum(1 for s, e in spans if s <= moment < e) for moment, _ in spans) if spans else 0
    return {**summarize(mode, gpus, trials, fixed, ended - started, probe_seconds, samples, started, ended),
            "most_trials_at_once": concurrent}


def run_sequential(gpus: str, n_domains: int, scratch: Path, max_trials: int) -> dict:
    """Each trial a fresh process, one after another."""
    from lorafleet.sweep import trial_hparams

    plans = workload(n_domains, scratch / "work", PROFILE, overrides("sequential"))
    samples = scratch / "nvidia-smi.csv"
    sampler = sample_gpus(gpus, samples)
    started = time.time()
    trials, fixed = [], []
    for name, plan in plans.items():
        for hp in trial_hparams(plan.cfg)[:max_trials]:
            spec = scratch / f"{name}-{hp.label.replace(' ', '-')}.json"
            spec.write_text(json.dumps({"config": str(plan.cfg.source_file), "name": name,
                                        "overrides": overrides("sequential"), "hparams": vars(hp),
                                        "work": str(scratch / "trials" / spec.stem)}))
            spawned = time.time()
            proc = subprocess.run([sys.executable, __file__, "--one-trial", str(spec)], capture_output=True, text=True,
                                  env={**os.environ, "CUDA_VISIBLE_DEVICES": gpus.split(",")[0]})
            if proc.returncode != 0:
                trials.append({"domain": name, "label": hp.label, "metrics": {}, "error": proc.stderr[-2000:]})
                continue
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            trials.append({"domain": name, "label": hp.label, "metrics": out["metrics"], "error": None})
            fixed.append({"seconds": out["first_step_at"] - spawned, "reused_worker": False})
    ended = time.time()
    sampler.terminate()
    return summarize("sequential", gpus, trials, fixed, ended - started, 0.0, samples, started, ended)


def one_trial(spec_path: Path) -> None:
    """The sequential mode's child: prepare the domain's data, train one trial, print its metrics."""
    from lorafleet import data
    from lorafleet.config import load_domain, load_overrides_file, merge_overrides
    from lorafleet.sweep import DomainPlan, validation_metrics
    from lorafleet.train import HParams, train_trial

    spec = json.loads(spec_path.read_text())
    cfg = load_domain(Path(spec["config"]), merge_overrides(load_overrides_file(PROFILE),
                                                            {**spec["overrides"], "name": spec["name"]}))
    plan = DomainPlan(cfg, data.prepare(cfg, Path(spec["work"]) / "data"))
    hp = HParams.from_dict(spec["hparams"])
    entered = time.time()
    result = train_trial(cfg.base_model, cfg.train, hp, plan.data.train, plan.data.val, spec["work"],
                         after_training=lambda m, t: validation_metrics(plan, m, t, hp.label))
    print(json.dumps({"metrics": result.metrics, "first_step_at": entered + result.metrics["first_step_seconds"]}))


def summarize(mode: str, gpus: str, trials: list[dict], fixed: list[dict], wall: float, probe_seconds: float,
              samples: Path, started: float, ended: float) -> dict:
    n_gpus = len(gpus.split(","))
    ok = [t for t in trials if t["metrics"]]
    winners: dict[str, float] = {}
    for t in ok:
        winners[t["domain"]] = min(winners.get(t["domain"], float("inf")), t["metrics"]["eval_loss"])
    later = [f["seconds"] for f in fixed if f["reused_worker"]] or [f["seconds"] for f in fixed[1:]]
    gpu = gpu_fractions(samples, started, ended)
    return {
        "mode": mode, "settings": SETTINGS, "gpus": n_gpus, "device": device_name(gpus),
        "trials": len(trials), "trials_ok": len(ok),
        "wall_seconds": round(wall, 1), "probe_seconds": round(probe_seconds, 1),
        "trials_per_gpu_hour": len(ok) / (wall / 3600 * n_gpus),
        "fixed_cost_seconds": {"first": round(fixed[0]["seconds"], 1) if fixed else None,
                               "median_after_first": round(statistics.median(later), 1) if later else None,
                               "max_after_first": round(max(later), 1) if later else None},
        "steps_per_trial": statistics.mean(t["metrics"]["steps"] for t in ok) if ok else None,
        "busy": statistics.mean(g["busy"] for g in gpu.values()) if gpu else None,
        "memory_held_gib": max((g["max_memory_mib"] for g in gpu.values()), default=0) / 1024,
        "winner_eval_loss": {d: round(v, 4) for d, v in sorted(winners.items())},
        "errors": [t["error"][-300:] for t in trials if t["error"]],
    }


def compare(out_dir: Path) -> None:
    runs = {json.loads(p.read_text())["mode"]: json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))}
    print(f"{'mode':<11} {'trials':>6} {'wall s':>7} {'trials/GPU-h':>12} {'fixed s (1st / later)':>22} {'busy':>5} "
          f"{'mem GiB':>7} {'steps':>5}")
    for mode in ("sequential", "fixed", "packed"):
        r = runs.get(mode)
        if r:
            f = r["fixed_cost_seconds"]
            print(f"{mode:<11} {r['trials_ok']:>6} {r['wall_seconds']:>7.0f} {r['trials_per_gpu_hour']:>12.1f} "
                  f"{f['first']!s:>10} / {f['median_after_first']!s:>9} {r['busy'] or 0:>5.2f} "
                  f"{r['memory_held_gib']:>7.1f} {r['steps_per_trial'] or 0:>5.0f}")
    if "packed" in runs:
        for base in ("sequential", "fixed"):
            if base in runs:
                print(f"packed / {base}: {runs['packed']['trials_per_gpu_hour'] / runs[base]['trials_per_gpu_hour']:.2f}x "
                      "trials per GPU-hour")
    for mode, r in runs.items():
        print(f"{mode} winners' eval_loss: {r['winner_eval_loss']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", default="0")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--modes", default="sequential,fixed,packed")
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--fixed-domains", type=int, help="domains the fixed mode runs (default --domains)")
    parser.add_argument("--sequential-domains", type=int, default=1)
    parser.add_argument("--sequential-trials", type=int, default=4, help="trials of each domain the sequential mode runs")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # one mode in this process (the parent's child)
    parser.add_argument("--one-trial", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--compare", type=Path)
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every mode's domains, e.g. train.batch_size=16")
    args = parser.parse_args()
    SETTINGS.extend(args.settings)
    sys.path.insert(0, str(REPO / "src"))
    if args.compare:
        compare(args.compare)
    elif args.one_trial:
        one_trial(args.one_trial)
    elif args.mode:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpus  # Ray counts, and hands trials, only these GPUs
        scratch = Path(tempfile.mkdtemp(prefix=f"lf-{args.mode}-"))
        domains = {"sequential": args.sequential_domains, "fixed": args.fixed_domains or args.domains}.get(
            args.mode, args.domains)
        result = (run_sequential(args.gpus, domains, scratch, args.sequential_trials) if args.mode == "sequential"
                  else run_tune_mode(args.mode, args.gpus, domains, scratch))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.mode}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    else:
        if not args.out:
            parser.error("--out is needed to measure")
        for mode in args.modes.split(","):
            child = [sys.executable, __file__, "--mode", mode, "--gpus", args.gpus, "--out", str(args.out),
                     "--domains", str(args.domains), "--sequential-domains", str(args.sequential_domains),
                     "--sequential-trials", str(args.sequential_trials)]
            if args.fixed_domains:
                child += ["--fixed-domains", str(args.fixed_domains)]
            child += [f"--set={setting}" for setting in args.settings]
            print(f"== {mode}", flush=True)
            subprocess.run(child, check=False)
        compare(args.out)


if __name__ == "__main__":
    main()
