"""What a lost trial worker costs, measured side by side in one run: the same trial four times in a row, one at a
time: a first one (a cold worker: imports, base load), one uninterrupted on the warm worker, one SIGKILLed right
after a checkpoint (the best case: the restart's own cost, a new worker's imports and load) and one killed one
evaluation before its next checkpoint (the worst case: the restart plus the steps since the checkpoint, almost one
interval). Seconds lost are against the uninterrupted warm trial.

    python bench/fault_cost.py [--steps 60] [--every 10] [--set train.backend=peft ...] [--profile configs/profiles/gpu.yaml]

Prints per trial: wall seconds (driver: trial start -> end), restarts, the step it resumed from, and the seconds
and steps lost against the uninterrupted trial. The bundled medical domain on the embedded tiny base by default.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from ray.tune import Callback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lorafleet import data, publish, sweep  # noqa: E402
from lorafleet.config import load_domain, load_overrides_file, merge_overrides, parse_overrides  # noqa: E402


class KillOnce(Callback):
    """SIGKILLs the worker of the n-th trial to start (0-based) at ``plan[n] = (step, on_checkpoint)``: once Tune
    recorded its checkpoint at that step, or as it reports its evaluation there; times every trial."""

    def __init__(self, plan: dict[int, tuple[int, bool]]):
        self.plan, self.order, self.started, self.wall, self.killed = plan, [], {}, {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id not in self.started:
            self.order.append(trial.trial_id)
            self.started[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "checkpoint_step" not in result:
            self._kill_at(trial, result, on_checkpoint=False)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):  # once Tune recorded the checkpoint
        self._kill_at(trial, trial.last_result, on_checkpoint=True)

    def _kill_at(self, trial, result: dict, on_checkpoint: bool) -> None:
        n = self.order.index(trial.trial_id)
        if self.plan.get(n) == (result.get("step"), on_checkpoint) and trial.trial_id not in self.killed:
            self.killed[trial.trial_id] = result["step"]
            os.kill(result["pid"], signal.SIGKILL)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.wall[trial.trial_id] = time.time() - self.started[trial.trial_id]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10, help="train.checkpoint_steps")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    import ray

    evaluate_every = args.every // 2
    middle = args.steps // 2 // args.every * args.every  # a checkpoint step near the middle
    overrides = merge_overrides(load_overrides_file(args.profile) if args.profile else {}, parse_overrides(args.sets))
    overrides = merge_overrides(overrides, {
        "train": {"max_steps": args.steps, "checkpoint_steps": args.every, "eval_steps": evaluate_every},
        "sweep": {"space": {"lora_rank": [8], "learning_rate": [2e-3], "epochs": [1]}, "num_samples": 4,
                  "resources_per_trial": {"cpu": 2}},  # one trial at a time
        "eval": {"max_examples": 2, "max_new_tokens": 8}})
    cfg = load_domain(REPO / "configs" / "domains" / "medical.yaml", overrides)
    plan = sweep.DomainPlan(cfg, data.prepare(cfg))
    # trial 2: killed once its checkpoint at `middle` is recorded; trial 3: at the evaluation one interval later, less
    # one evaluation (the checkpoint before it is `middle`)
    late = middle + args.every - evaluate_every
    killer = KillOnce({2: (middle, True), 3: (late, False)})
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"worker_process_setup_hook": "lorafleet.console.setup_worker"})
    from lorafleet.pipeline import ensure_base_models

    ensure_base_models({"medical": plan})
    with tempfile.TemporaryDirectory() as store:
        outcomes = sweep.run_sweep({"medical": plan}, publish.Storage(store), "faults", callbacks=[killer])["medical"]
    ray.shutdown()
    walls = [killer.wall[t] for t in killer.order]
    kills = ["none (first trial, cold worker)", "none (warm worker)", f"after checkpoint {middle}",
             f"at step {late}, before checkpoint {middle + args.every}"]
    by_restarts = sorted(outcomes, key=lambda o: o.restarts)  # the uninterrupted trials first, as in `kills`
    print(f"trial of {args.steps} steps, a checkpoint every {args.every}, on {cfg.base_model} "
          f"({by_restarts[0].backend})\n")
    print("| killed | wall s | restarts | resumed from | seconds lost | steps redone |\n|---|---|---|---|---|---|")
    redone = [0, 0, 0, args.every - evaluate_every]
    for kill, wall, outcome, steps in zip(kills, walls, by_restarts, redone, strict=True):
        print(f"| {kill} | {wall:.1f} | {outcome.restarts} | {outcome.resumed_from or '-'} | {wall - walls[1]:+.1f} | "
              f"{steps} |")

if __name__ == "__main__":
    main()
