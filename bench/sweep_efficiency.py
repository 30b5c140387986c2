"""Search strategies side by side in one command: the same domains swept by the full grid, by the grid under ASHA,
and by the staged rounds, each a whole run (sweep, winner, evaluation on the test split; no ONNX export), one after
another on the same Ray.

    python bench/sweep_efficiency.py [--domains contracts,medical] [--strategies grid,asha,rounds]
                                     [--ranks 4,8,16] [--learning-rates 5e-4,1e-3,2e-3] [--epochs 1,2]
                                     [--rounds-steps 80]
                                     [--profile configs/profiles/gpu.yaml] [--set key=value ...] [--out DIR]

The space: the ranks x the learning rates x the epochs (18 trials a domain by default, train.max_steps off so
epochs count). The grid trains each combination to its end. ASHA covers the same space with the ranks x the rates
(9 trials), each trained up to the most epochs unless it stops it first: how long a trial trains is what ASHA
decides (and a trial's learning rate decays over its epochs, so trials of different epoch counts cannot be compared
at equal steps); grace period --grace steps, reduction factor 3 (set train.eval_steps at most the grace period, so
that trials report at the first rung). Rounds: its defaults with the grid's middle
learning rate and rank, --rounds-steps as its base steps and --smoke-gate. --set applies to every strategy (e.g.
sweep.resources_per_trial.gpu=0.5).

Prints per domain and strategy: trials (finished / stopped early), trial-seconds (each trial's start to end, as the
driver saw it), GPU-hours (trial-seconds x the trial's GPU share) and CPU-core-hours, their ratio to the grid's, the
winner and its test score with its 95 % interval, and where it lies against the grid winner's interval; then each
strategy's wall time and how many domains reached the target (a winner not below the grid winner's interval, for at
most half the grid's GPU-hours, or CPU-core-hours where no GPU ran).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lorafleet.config import find_domain_files, load_overrides_file, merge_overrides, parse_overrides  # noqa: E402


def strategy_overrides(name: str, args: argparse.Namespace) -> dict:
    rates, epochs = [float(x) for x in args.learning_rates.split(",")], [int(x) for x in args.epochs.split(",")]
    ranks = [int(x) for x in args.ranks.split(",")]
    space = {"lora_rank": ranks, "learning_rate": rates, "epochs": epochs}
    grid = {"sweep": {"space": space, "search": "grid", "num_samples": 1}, "train": {"max_steps": None}}
    if name == "grid":
        return grid
    if name == "asha":  # the grid's ranks and rates, each trained up to the longest epoch count if ASHA lets it
        return merge_overrides(grid, {"sweep": {"space": {"epochs": [max(epochs)]}, "scheduler": "asha",
                                                "asha": {"grace_period": args.grace, "reduction_factor": 3}}})
    if name == "rounds":
        return {"train": {"max_steps": None}, "sweep": {"strategy": "rounds", "rounds": {
            "smoke_gate": args.smoke_gate, "base_learning_rate": rates[len(rates) // 2],
            "lora_rank": ranks[len(ranks) // 2], "base_steps": args.rounds_steps,
            "smoke_steps": max(args.rounds_steps // 4, 1)}}}
    raise SystemExit(f"unknown strategy {name}: grid, asha or rounds")


def trial_clock():
    """A Tune callback timing every trial from its start to its end, with its resources."""
    from ray.tune import Callback

    class TrialClock(Callback):
        def __init__(self):
            self.started, self.spans = {}, []  # spans: (domain, seconds, gpu share, cpus)

        def on_trial_start(self, iteration, trials, trial, **info):
            self.started.setdefault(trial.trial_id, time.time())

        def _ended(self, trial):
            if trial.trial_id in self.started:
                need = trial.placement_group_factory.required_resources
                self.spans.append((trial.config["trial"]["domain"], time.time() - self.started.pop(trial.trial_id),
                                   need.get("GPU", 0.0), need.get("CPU", 1.0)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._ended(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._ended(trial)

    return TrialClock()


def run_strategy(name: str, files, overrides: dict, out: Path) -> tuple[dict, dict, float]:
    from lorafleet.pipeline import RunOptions, run

    clock = trial_clock()
    started = time.time()
    summary = run(RunOptions(config_files=files, overrides=overrides, storage=str(out / "store"), run_id=name,
                             work_dir=out / "work" / name, tune_callbacks=(clock,)))
    wall = time.time() - started
    spent = defaultdict(lambda: {"trial_s": 0.0, "gpu_h": 0.0, "cpu_h": 0.0})
    for domain, seconds, gpu, cpus in clock.spans:
        spent[domain]["trial_s"] += seconds
        spent[domain]["gpu_h"] += seconds * gpu / 3600
        spent[domain]["cpu_h"] += seconds * cpus / 3600
    return json.loads(summary.model_dump_json()), dict(spent), wall


def score(domain: dict) -> tuple[float, list[float]] | None:
    test = domain.get("test")
    if not test:
        return None
    metric = test["tuned"]["metrics"].get("score")
    return (metric["value"], metric["ci"]) if metric else None


def where(s: tuple[float, list[float]] | None, grid: tuple[float, list[float]] | None) -> str:
    if s is None or grid is None:
        return "—"
    low, high = grid[1]
    return "within" if low <= s[0] <= high else ("above" if s[0] > high else "below")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default="contracts,financial,legal,medical,story_summary")
    parser.add_argument("--strategies", default="grid,asha,rounds")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--grace", type=int, default=10, help="ASHA's grace period in steps")
    parser.add_argument("--ranks", default="4,8,16")
    parser.add_argument("--learning-rates", default="5e-4,1e-3,2e-3")
    parser.add_argument("--epochs", default="1,2")
    parser.add_argument("--rounds-steps", type=int, default=80, help="rounds' base steps")
    parser.add_argument("--smoke-gate", type=float, default=0.9)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import ray

    from lorafleet import cluster, console

    out = Path(args.out or tempfile.mkdtemp(prefix="sweep-efficiency-"))
    profile = load_overrides_file(args.profile) if args.profile else {}
    sets = merge_overrides(parse_overrides(args.sets), {"export": {"onnx": False}})
    files = find_domain_files(str(REPO / "configs" / "domains"), args.domains.split(","))
    console.setup_driver(out / "logs")
    cluster.connect(None, include_dashboard=False, log_to_driver=True, logging_level=logging.ERROR, runtime_env={
        "worker_process_setup_hook": "lorafleet.console.setup_worker",
        "env_vars": {"TOKENIZERS_PARALLELISM": "false", console.LOG_DIR_VAR: str(out / "logs"),
                     "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}})
    results = {}
    try:
        for name in args.strategies.split(","):
            # the strategy's space over the profile (its train.max_steps would cut the epochs short), --set last
            overrides = merge_overrides(profile, strategy_overrides(name, args), sets)
            results[name] = run_strategy(name, files, overrides, out)
            print(f"{name}: {results[name][2]:.0f} s", flush=True)
            # after each strategy, so that a run cut short by a time limit still leaves what it measured
            (out / "results.json").write_text(json.dumps({k: list(v) for k, v in results.items()}, indent=1))
            (out / "table.md").write_text(table(results))
    finally:
        ray.shutdown()
    print(table(results))


def table(results: dict) -> str:
    grid_summary, grid_spent, _ = results.get("grid", ({"domains": {}}, {}, 0))
    lines = ["| domain | strategy | trials (finished / stopped early) | trial-s | GPU-h | CPU-core-h | cost vs grid | "
             "winner | test score (95 % CI) | vs grid's interval |", "|" + "---|" * 10]
    met = defaultdict(int)
    for domain in sorted(next(iter(results.values()))[0]["domains"]):
        grid_score = score(grid_summary["domains"].get(domain, {}))
        for name, (summary, spent, _) in results.items():
            d, cost = summary["domains"][domain], spent.get(domain, {"trial_s": 0, "gpu_h": 0, "cpu_h": 0})
            trials = d.get("trials", [])
            finished = sum(1 for t in trials if t.get("metrics") and not t.get("error")
                           and t.get("stopped_early_at") is None)
            early = sum(1 for t in trials if t.get("stopped_early_at") is not None)
            base = grid_spent.get(domain)
            key = "gpu_h" if base and base["gpu_h"] else "cpu_h"
            ratio = cost[key] / base[key] if base and base[key] else None
            s = score(d)
            winner = d.get("winner")
            label = (f"r{winner['lora_rank']} lr{winner['learning_rate']:g} e{winner['epochs']}"
                     + (f" s{winner['max_steps']}" if winner.get("max_steps") else "")) if winner else d["status"]
            position = where(s, grid_score) if name != "grid" else "—"
            if name != "grid" and position in ("within", "above") and ratio is not None and ratio <= 0.5:
                met[name] += 1
            lines.append(f"| {domain} | {name} | {len(trials)} ({finished} / {early}) | {cost['trial_s']:.0f} | "
                         f"{cost['gpu_h']:.3f} | {cost['cpu_h']:.3f} | "
                         f"{'—' if ratio is None else f'{ratio:.2f}×'} | {label} | "
                         f"{'—' if s is None else f'{s[0]:.1f} ({s[1][0]:.1f}–{s[1][1]:.1f})'} | {position} |")
    walls = ", ".join(f"{name} {wall:.0f} s" for name, (_, _, wall) in results.items())
    reached = ", ".join(f"{name} {met[name]}/{len(grid_summary['domains'])}" for name in results if name != "grid")
    return "\n".join(lines) + f"\n\nwall: {walls}\ndomains at the target (not below the grid winner's interval, " \
                              f"<= 0.5x its cost): {reached}\n"


if __name__ == "__main__":
    main()
