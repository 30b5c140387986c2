"""CUDA-only: Unsloth trials through Ray Tune, GPU memory given back per trial, QLoRA merge drift.
Run on a GPU host: ``pytest -m gpu tests/gpu``."""
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from lorafleet import evaluate, export, merge
from lorafleet.config import load_domain
from lorafleet.data import prepare
from lorafleet.publish import Storage
from lorafleet.sweep import DomainPlan, run_sweep
from tests.conftest import DOMAINS_DIR

pytestmark = pytest.mark.gpu
BASE = "random:qwen2.5-0.5b"


def gpu_used_mib() -> int:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[0])


@pytest.fixture(scope="module")
def ray_gpu():
    import ray

    temp = Path("/tmp") / f"raygpu{os.getpid()}"
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, _temp_dir=str(temp),
             runtime_env={"worker_process_setup_hook": "lorafleet.console.setup_worker"})
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def six_trials(ray_gpu, tmp_path_factory):
    """Six trials in a row on one GPU, run by one warm worker process. The driver reads nvidia-smi as each
    trial completes: what the worker holds between trials (its CUDA context and allocator), which must not
    grow trial after trial."""
    from ray.tune import Callback

    baseline, after_each, spans, started = gpu_used_mib(), [], [], {}

    class MemoryAfterEachTrial(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            started[trial.trial_id] = time.time()

        def on_trial_complete(self, iteration, trials, trial, **info):
            after_each.append(gpu_used_mib())
            spans.append(round(time.time() - started[trial.trial_id], 1))

    # QLoRA through transformers+peft+bitsandbytes, six ranks on one GPU: one warm worker runs them in turn
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {
        "base_model": BASE, "train": {"max_steps": 3, "eval_steps": 3, "max_seq_length": 256, "backend": "peft"},
        "eval": {"max_examples": 2, "max_new_tokens": 8},  # the validation answers each trial gives: kept short
        "sweep": {"space": {"lora_rank": [4, 8, 16, 32, 64, 128]}, "resources_per_trial": {"cpu": 1, "gpu": 1}}})
    plan = DomainPlan(cfg, prepare(cfg))
    outcomes = run_sweep({"contracts": plan}, Storage(str(tmp_path_factory.mktemp("store"))), "gpu",
                         callbacks=[MemoryAfterEachTrial()])["contracts"]
    print(f"trial spans {spans} s; load_seconds {[round(o.metrics['load_seconds'], 1) for o in outcomes]}")
    return outcomes, baseline, after_each


@pytest.fixture(scope="module")
def unsloth_trials(ray_gpu, tmp_path_factory):
    """The same Unsloth trial three times on one warm worker: the first loads the 4-bit base, the others train
    a copy of the one it keeps."""
    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {
        "base_model": BASE, "train": {"max_steps": 4, "eval_steps": 4, "max_seq_length": 256},
        "eval": {"max_examples": 4, "max_new_tokens": 16},  # validation answers through Unsloth's inference path
        "sweep": {"space": {"lora_rank": [16]}, "num_samples": 3, "resources_per_trial": {"cpu": 1, "gpu": 1}}})
    plan = DomainPlan(cfg, prepare(cfg))
    outcomes = run_sweep({"contracts": plan}, Storage(str(tmp_path_factory.mktemp("store"))), "unsloth")["contracts"]
    print("unsloth trials on one worker: load_seconds", [round(o.metrics.get("load_seconds", -1), 1) for o in outcomes],
          "first_step_seconds", [round(o.metrics.get("first_step_seconds", -1), 1) for o in outcomes])
    return plan, outcomes


@pytest.fixture(scope="module")
def unsloth_trial(unsloth_trials):
    plan, outcomes = unsloth_trials
    return plan, outcomes[0]


def test_six_trials_on_a_warm_worker_hold_no_more_memory_than_after_the_first(six_trials):
    outcomes, baseline, after_each = six_trials
    print(f"baseline {baseline} MiB, after each trial: {after_each}")
    assert len(outcomes) == 6 and all(o.error is None for o in outcomes)
    assert {o.backend for o in outcomes} == {"peft"} and all(o.load_in_4bit for o in outcomes)
    assert len(after_each) == 6
    assert all(used <= after_each[0] + 200 for used in after_each), (baseline, after_each)


def test_auto_backend_on_cuda_is_unsloth_with_a_4bit_base(unsloth_trial):
    _, outcome = unsloth_trial
    assert outcome.error is None, outcome.error
    assert outcome.backend == "unsloth" and outcome.load_in_4bit
    assert "schema_pass_rate" in outcome.metrics  # the validation answers came through for_inference


def test_a_warm_unsloth_worker_trains_the_same_adapter_from_its_kept_base(unsloth_trials, tmp_path):
    """Trial 1 of a worker (Unsloth's first call in the process) against trials 2 and 3 (copies of its kept base):
    each layer's learned update B·A the same within noise. Adam turns any noise in a near-zero gradient into a step
    of ±lr, so single weights are a poor measure. Measured on an H100 2026-11-25, 4 steps: B·A within 1.1 % (median
    0.5 %) with fused AdamW (the default); 7.7 % (0.7 %) with 8-bit AdamW, whose quantized second moments amplify
    that noise; bf16 adapters on the first trial and float32 on the others (fixed) left lora_B 0.06 apart."""
    from safetensors.torch import load_file

    _, outcomes = unsloth_trials
    assert [o.error for o in outcomes] == [None] * 3
    adapters = []
    for i, outcome in enumerate(outcomes):
        outcome.checkpoint.to_directory(str(tmp_path / f"a{i}"))
        adapters.append(load_file(tmp_path / f"a{i}" / "adapter_model.safetensors"))
    import torch

    assert [{t.dtype for t in a.values()} for a in adapters] == [{torch.bfloat16}] * 3  # the first trial's dtype too

    def update(adapter, a_key):
        return adapter[a_key.replace("lora_A", "lora_B")].float() @ adapter[a_key].float()

    a_keys = [k for k in adapters[0] if "lora_A" in k]
    for i in (1, 2):
        assert adapters[i].keys() == adapters[0].keys()
        relative = [float((update(adapters[i], k) - update(adapters[0], k)).norm() / update(adapters[0], k).norm())
                    for k in a_keys]
        print(f"trial {i + 1} vs 1: B·A differs by {max(relative):.4f} at most, {sorted(relative)[len(relative) // 2]:.4f}"
              " median (relative Frobenius norm)")
        assert max(relative) < 0.05 and sorted(relative)[len(relative) // 2] < 0.02
    losses = [o.metrics["eval_loss"] for o in outcomes]
    assert max(losses) - min(losses) < 1e-3 * max(losses), losses


def _updates(outcome, folder: Path) -> dict:
    """Each layer's learned update B·A of a trial's adapter."""
    from safetensors.torch import load_file

    outcome.checkpoint.to_directory(str(folder))
    adapter = load_file(folder / "adapter_model.safetensors")
    return {k: adapter[k.replace("lora_A", "lora_B")].float() @ adapter[k].float() for k in adapter if "lora_A" in k}


def test_a_killed_unsloth_trial_resumes_from_its_checkpoint_on_the_gpu(ray_gpu, tmp_path):
    """Two Unsloth trials of the same hyperparameters; the second's worker is SIGKILLed once Tune recorded its
    checkpoint at step 6 of 12; it goes on from there and ends with the first one's adapter (B·A within the same
    bounds as a warm worker's trials) and eval loss."""
    from tests.integration.test_trial_checkpoints import _killer

    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {
        "base_model": BASE, "train": {"max_steps": 12, "eval_steps": 6, "max_seq_length": 256, "checkpoint_steps": 3},
        "eval": {"max_examples": 2, "max_new_tokens": 8},
        "sweep": {"space": {"lora_rank": [16]}, "num_samples": 2, "resources_per_trial": {"cpu": 1, "gpu": 1}}})
    killer = _killer({1: 6})
    outcomes = run_sweep({"contracts": DomainPlan(cfg, prepare(cfg))}, Storage(str(tmp_path / "store")), "resume",
                         callbacks=[killer])["contracts"]
    assert [o.error for o in outcomes] == [None, None] and list(killer.killed.values()) == [6]
    first, resumed = sorted(outcomes, key=lambda o: o.restarts)
    assert (resumed.restarts, resumed.resumed_from, resumed.backend) == (1, [6], "unsloth")
    expected, got = _updates(first, tmp_path / "a"), _updates(resumed, tmp_path / "b")
    relative = sorted(float((got[k] - expected[k]).norm() / expected[k].norm()) for k in expected)
    print(f"resumed vs uninterrupted: B·A differs by {relative[-1]:.4f} at most, {relative[len(relative) // 2]:.4f} "
          f"median; eval_loss {resumed.metrics['eval_loss']:.4f} vs {first.metrics['eval_loss']:.4f}")
    assert relative[-1] < 0.05 and relative[len(relative) // 2] < 0.02
    assert abs(resumed.metrics["eval_loss"] - first.metrics["eval_loss"]) < 1e-2 * first.metrics["eval_loss"]


def test_trials_asha_stops_give_their_gpu_memory_back_to_the_next_trial(ray_gpu, tmp_path):
    """Five Unsloth trials in turn on one warm worker under ASHA: the three that learn nothing (lr 1e-9) are stopped
    at a rung before the end; the worker goes on to the next trial (the same process), and GPU memory after the last
    trial is within 200 MiB of after the first: a stopped trial's adapter and optimizer were freed."""
    from ray.tune import Callback

    after_each, pids = [], set()

    class Memory(Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            pids.add(result["pid"])

        def on_trial_complete(self, iteration, trials, trial, **info):
            after_each.append(gpu_used_mib())

    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {
        "base_model": BASE, "train": {"max_steps": 12, "eval_steps": 4, "max_seq_length": 256},
        "eval": {"max_examples": 2, "max_new_tokens": 8},
        "sweep": {"space": {"lora_rank": [16], "learning_rate": [2e-3, 1e-9, 1e-9, 1e-9, 2e-3]},
                  "resources_per_trial": {"cpu": 1, "gpu": 1},
                  "scheduler": "asha", "asha": {"grace_period": 4, "reduction_factor": 2}}})
    outcomes = run_sweep({"contracts": DomainPlan(cfg, prepare(cfg))}, Storage(str(tmp_path / "store")), "asha",
                         callbacks=[Memory()])["contracts"]
    print(f"after each trial: {after_each} MiB; stopped at {[o.stopped_early_at for o in outcomes]}")
    # a trial that ties the rung's cutoff goes on (ASHA stops only worse ones): a third 1e-9 trial, level with the
    # two before it at step 4, is stopped at step 8 (seen on the H100)
    stopped = [o.stopped_early_at for o in outcomes]
    assert stopped[0] is None and stopped[-1] is None and all(at in (4, 8) for at in stopped[1:4]), stopped
    assert outcomes[0].finished and outcomes[-1].finished and outcomes[-1].backend == "unsloth"
    assert len(pids) == 1 and len(after_each) == 5
    assert after_each[-1] <= after_each[0] + 200, after_each


def test_gpu_auto_packs_by_a_probe_whose_estimate_is_near(ray_gpu, tmp_path):
    """The probe runs as a Ray task (Unsloth is imported by workers only) on the whole GPU."""
    import json

    import ray

    from lorafleet import packing
    from lorafleet.config import TrainConfig

    cfg = load_domain(DOMAINS_DIR / "contracts.yaml", {"base_model": BASE})
    train = TrainConfig(max_seq_length=512, batch_size=8)
    request = packing.PackingRequest(packing.TrialShape.of(BASE, train, [16]),
                                     packing.probe_examples(prepare(cfg).train, train.batch_size), 1, 0.2)
    packed = packing.pack({"contracts": request}, cache_dir=tmp_path)
    shares = packed.shares
    probe = packing.MemoryProbe.model_validate(json.loads(next(tmp_path.glob("*.json")).read_text()))
    print(f"probe: peak {probe.peak_bytes / 2**30:.2f} GiB, estimate {probe.estimate_bytes / 2**30:.2f} GiB "
          f"on {probe.gpu_name}; GPU share a trial {shares['contracts']}")
    assert 0.3 * 2**30 < probe.peak_bytes < 0.5 * probe.gpu_total_bytes
    assert probe.estimate_bytes / 4 < probe.peak_bytes < probe.estimate_bytes * 4
    assert 0 < shares["contracts"] <= 0.8 and packing.pack({"contracts": request}, cache_dir=tmp_path) == packed
    assert packed.budget == pytest.approx(0.8 * ray.cluster_resources()["GPU"])  # finishing's share kept free


def test_qlora_merge_is_16bit_and_its_drift_is_measured(unsloth_trial, tmp_path):
    import torch

    plan, outcome = unsloth_trial
    outcomes = [outcome]
    adapter = tmp_path / "adapter"
    outcomes[0].checkpoint.to_directory(str(adapter))
    merged_dir = merge.merge_16bit(BASE, adapter, tmp_path / "merged")
    merged, tokenizer = evaluate.load_torch_model(str(merged_dir))
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32  # not a 4-bit layer
    adapted, _ = evaluate.load_torch_model(merge.resolve_base_model(BASE), adapter=str(adapter), load_in_4bit=True)
    examples = plan.data.test[:4]
    answers = [evaluate.generate_token_ids(m, tokenizer, examples, max_new_tokens=16, batch_size=4) for m in (adapted, merged)]
    drift = export.check_parity(adapted, merged, tokenizer, examples, *answers)
    print(f"QLoRA merge drift (adapter on NF4 base vs merged 16-bit): {drift}")
    assert drift.prompts == 4 and 0.0 < drift.max_abs_logit_diff < 50.0


def test_fp16_onnx_export_on_cuda_matches_fp16_pytorch(unsloth_trial, tmp_path):
    """export.dtype fp16 (the GPU profile's): exported on the GPU at half the size, run by onnxruntime, and
    compared with the merged model in fp16 PyTorch, teacher-forced logits and greedy tokens."""
    import json

    plan, outcome = unsloth_trial
    adapter = tmp_path / "adapter"
    outcome.checkpoint.to_directory(str(adapter))
    merged_dir = merge.merge_16bit(BASE, adapter, tmp_path / "merged")
    onnx_dir = export.to_onnx(merged_dir, tmp_path / "onnx", dtype="fp16")
    assert json.loads((onnx_dir / "lorafleet_export.json").read_text()) == {"dtype": "fp16"}
    onnx_bytes = sum(p.stat().st_size for p in export.onnx_graph(onnx_dir).parent.glob("model.onnx*"))
    merged_bytes = (merged_dir / "model.safetensors").stat().st_size
    onnx_model, _ = evaluate.load_onnx_model(str(onnx_dir))
    torch_model, tokenizer = evaluate.load_torch_model(str(merged_dir), dtype="fp16")
    examples = plan.data.test[:4]
    answers = [evaluate.generate_token_ids(m, tokenizer, examples, max_new_tokens=16, batch_size=4)
               for m in (torch_model, onnx_model)]
    parity = export.check_parity(torch_model, onnx_model, tokenizer, examples, *answers)
    print(f"fp16 ONNX: {onnx_bytes / 2**30:.2f} GiB (merged fp16 safetensors {merged_bytes / 2**30:.2f} GiB); "
          f"parity vs fp16 PyTorch: {parity}")
    # fp16 weights: the ONNX files are about the merged fp16 size (plus the tied embedding stored twice),
    # not fp32's double
    assert onnx_bytes < 1.5 * merged_bytes
    assert parity.max_abs_logit_diff < 0.1 and parity.greedy_match_rate >= 0.5, parity
