"""How many trials share a GPU when ``sweep.resources_per_trial.gpu: auto``.

A QLoRA trial of a small base holds a few GiB; an 80 GiB GPU runs many side by side. The number comes from a
peak-memory estimate (model shape, LoRA rank, batch, sequence length, checkpointing) checked by a short probe:
one real trial of two steps on a whole GPU, on the domain's longest training records and largest rank, whose
peak (PyTorch's reserved memory plus what the process holds outside it: CUDA context, cuBLAS workspace) is
what every trial is packed by. Probes are cached on the driver by everything that decides their result, so a
nightly run pays one only when the base, the training settings or the GPU model change.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lorafleet.config import TrainConfig
from lorafleet.console import progress
from lorafleet.data import Example

log = logging.getLogger(__name__)

GIB = 1024**3
# packed by the probe's peak plus a margin: allocator fragmentation differs from run to run, and a trial that
# runs out of memory costs more than a slot left empty
MARGIN = 1.15
# what no trial may take: another process's CUDA context, the finishing tasks' models in the meantime
USABLE = 0.92
CONTEXT_BYTES = 600 * 1024**2


class MemoryProbe(BaseModel):
    """A probe's measurement of one trial's peak GPU memory, and the GPU it ran on."""

    model_config = ConfigDict(frozen=True)
    peak_bytes: int
    estimate_bytes: int
    gpu_name: str
    gpu_total_bytes: int


@dataclass(frozen=True)
class PackedGpus:
    """The trials packed by a memory probe (``gpu: auto``): each such domain's GPU share a trial, and the GPU that
    all of them may hold at once (the cluster's GPUs less the share each keeps for finishing). Ray's resources alone
    would not keep that share: a next trial fits into it whenever no finishing task holds it, and then holds it while
    a finished domain waits."""

    shares: dict[str, float]
    budget: float


@dataclass(frozen=True)
class TrialShape:
    """What decides a trial's memory; domains with equal shapes share one probe."""

    base_model: str
    train: TrainConfig
    lora_rank: int
    trust_remote_code: bool = False  # how the probe loads the base

    @classmethod
    def of(cls, base_model: str, train: TrainConfig, ranks: list[int], trust_remote_code: bool = False) -> TrialShape:
        """The largest rank of a domain's space, and its train settings without those that do not change memory
        (schedule, seed, evaluation cadence), so domains that differ only there share a probe."""
        unrelated = {"warmup_ratio": 0.0, "weight_decay": 0.0, "seed": 0, "eval_steps": 1, "max_steps": None,
                     "lora_dropout": 0.0, "lora_alpha_ratio": 1.0}
        return cls(base_model=base_model, train=train.model_copy(update=unrelated), lora_rank=max(ranks),
                   trust_remote_code=trust_remote_code)

    def key(self, accelerator: str) -> str:
        fields = {"base_model": self.base_model, "train": self.train.model_dump(mode="json"), "rank": self.lora_rank,
                  "accelerator": accelerator}
        if self.trust_remote_code:  # a domain that did not opt in never shares a probe with one that did
            fields["trust_remote_code"] = True
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def checkpointing_mode(train: TrainConfig, model_config: dict, on_cuda: bool, gpu_total_bytes: int) -> bool | str:
    """``train.gradient_checkpointing`` resolved: ``auto`` recomputes activations only where they would crowd the
    GPU (a trial that needs over a quarter of it without checkpointing), offloading them (Unsloth's mode) then;
    a GPU with room to spare does not pay for recomputation or the copies to CPU memory."""
    if train.gradient_checkpointing != "auto":
        return train.gradient_checkpointing
    if not on_cuda:
        return False
    # rank 64: LoRA state is small next to activations at any usual rank
    full = estimate_trial_bytes(model_config, train, lora_rank=64, checkpointing=False)
    return False if full <= gpu_total_bytes / 4 else "offload"


def estimate_trial_bytes(model_config: dict, train: TrainConfig, lora_rank: int, checkpointing: bool | str) -> int:
    """A trial's peak GPU memory from the model's shape: the frozen base twice (the worker's cached copy and the
    trial's own), LoRA weights with their gradients and Adam state, activations of one micro-batch (all layers'
    without checkpointing, one layer's plus every layer's input with it), the logits and their gradient, and the
    CUDA context. Rough by design: the probe checks it."""
    hidden, inter = model_config["hidden_size"], model_config["intermediate_size"]
    layers, vocab = model_config["num_hidden_layers"], model_config["vocab_size"]
    heads = model_config["num_attention_heads"]
    kv = hidden * (model_config.get("num_key_value_heads") or heads) // heads
    linear_in_out = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden), (hidden, inter), (hidden, inter),
                     (inter, hidden)]
    layer_params = sum(i * o for i, o in linear_in_out)
    weight_bytes = 0.5 * 1.07 if train.load_in_4bit is not False else 2  # NF4 with its scales, else bf16
    embeddings = vocab * hidden * 2 * (1 if model_config.get("tie_word_embeddings", True) else 2)
    base = layers * layer_params * weight_bytes + embeddings
    lora = layers * sum(lora_rank * (i + o) for i, o in linear_in_out) * 16  # fp32 weight, gradient, two Adam moments
    tokens = train.batch_size * train.max_seq_length
    per_layer = tokens * (6 * hidden + 3 * inter) * 2  # bf16 inputs of the projections, norms and activation
    activations = per_layer + tokens * hidden * 2 * layers if checkpointing else per_layer * layers
    logits = tokens * vocab * 4 * 2
    return int(2 * base + lora + activations + logits + CONTEXT_BYTES)


def trials_per_gpu(peak_bytes: int, gpu_total_bytes: int, cpus_per_gpu: float, cpus_per_trial: float,
                   kept_for_finishing: float) -> tuple[int, int, int]:
    """How many trials one GPU runs at once: as many as its memory holds (less the share kept for a domain's
    finishing task, which then runs while others train) and its node's CPUs can drive, at least one.
    Returns (packed, memory allows, CPUs allow)."""
    by_memory = max(1, math.floor((USABLE - kept_for_finishing) * gpu_total_bytes / (peak_bytes * MARGIN)))
    by_cpus = max(1, math.floor(cpus_per_gpu / cpus_per_trial))
    return min(by_memory, by_cpus), by_memory, by_cpus


def gpu_fraction(trials: int, kept_for_finishing: float) -> float:
    """Ray's GPU share for one of ``trials`` on a GPU beside the finishing share, rounded down to Ray's precision
    so that they fit exactly."""
    return math.floor(10_000 * (1 - kept_for_finishing) / trials) / 10_000


def probe_examples(train_examples: list[Example], batch_size: int) -> list[Example]:
    """The longest records, two steps' worth: the worst batch the trial will see."""
    longest = sorted(train_examples, key=lambda e: len(e.user_text) + len(e.completion), reverse=True)
    return longest[:batch_size] * 2


def run_probe(shape: TrialShape, examples: list[Example]) -> MemoryProbe:
    """In a Ray task holding a whole GPU: two training steps of the real trial code, peak memory measured."""
    import tempfile

    import torch

    from lorafleet.base_model import resolve_base_model
    from lorafleet.train import HParams, train_trial

    torch.cuda.reset_peak_memory_stats()
    probe_cfg = shape.train.model_copy(update={"max_steps": 2, "eval_steps": 1000})
    with tempfile.TemporaryDirectory(prefix="lorafleet-probe-") as work_dir:
        train_trial(shape.base_model, probe_cfg, HParams(shape.lora_rank, 1e-4, 1), examples, examples[:1], work_dir,
                    trust_remote_code=shape.trust_remote_code)
    free, total = torch.cuda.mem_get_info()
    outside_pytorch = total - free - torch.cuda.memory_reserved()
    config = json.loads((Path(resolve_base_model(shape.base_model)) / "config.json").read_text())
    mode = checkpointing_mode(shape.train, config, True, total)
    return MemoryProbe(peak_bytes=torch.cuda.max_memory_reserved() + outside_pytorch,
                       estimate_bytes=estimate_trial_bytes(config, shape.train, shape.lora_rank, mode),
                       gpu_name=torch.cuda.get_device_name(), gpu_total_bytes=total)


@dataclass(frozen=True)
class PackingRequest:
    shape: TrialShape
    examples: list[Example]
    cpus_per_trial: float
    finishing_gpu: float  # eval.resources.gpu: kept free of trials


def pack(requests: dict[str, PackingRequest], cache_dir: Path) -> PackedGpus:
    """Each domain's GPU share per trial, and what the packed trials may hold at once; one probe per distinct
    trial shape (cached)."""
    import ray

    from lorafleet.cluster import Call, TaskFailure, TaskGroup
    from lorafleet.config import Resources

    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
    # Ray names the GPU model as a resource ("accelerator_type:H100"): a probe holds for that model only
    accelerator = next((k for k in sorted(resources) if k.startswith("accelerator_type:")), "")
    if not gpus:
        log.warning("sweep.resources_per_trial.gpu: auto, but the cluster has no GPU; the trials run on CPUs")
        return PackedGpus(dict.fromkeys(requests, 0.0), 0.0)
    keys = {name: r.shape.key(accelerator) for name, r in requests.items()}
    by_shape: dict[str, PackingRequest] = {}
    for name, request in requests.items():
        by_shape.setdefault(keys[name], request)
    cached = {key: _read_probe(cache_dir, key) for key in by_shape}
    missing = [key for key in by_shape if cached[key] is None]
    if missing:
        progress.info("packing: probing the peak GPU memory of %d trial shape(s) (two steps each, once)", len(missing))
    probes = TaskGroup()  # a GPU task's worker process exits after it (Ray's max_calls), Unsloth and base with it
    for key in missing:
        r = by_shape[key]
        probes.submit(key, run_probe, Call((r.shape, r.examples), Resources(cpu=r.cpus_per_trial, gpu=1)))
    for key, outcome in probes.results().items():
        if isinstance(outcome, TaskFailure):
            raise RuntimeError(f"sweep.resources_per_trial.gpu: auto: the memory probe failed: {outcome}")
        (cache_dir / f"{key}.json").parent.mkdir(parents=True, exist_ok=True)
        (cache_dir / f"{key}.json").write_text(outcome.model_dump_json())
        cached[key] = outcome
    shares = {}
    kept = max(r.finishing_gpu for r in requests.values())
    for key, request in by_shape.items():
        probe = cached[key]
        packed, by_memory, by_cpus = trials_per_gpu(probe.peak_bytes, probe.gpu_total_bytes, cpus / gpus,
                                                    request.cpus_per_trial, kept)
        shape = request.shape
        progress.info("packing: %s r%d, batch %d x %d tokens: peak %.1f GiB a trial (estimate %.1f) on %s -> %d "
                      "trials per GPU (memory allows %d, CPUs %d; %.0f %% kept for finishing)", shape.base_model,
                      shape.lora_rank, shape.train.batch_size, shape.train.max_seq_length, probe.peak_bytes / GIB,
                      probe.estimate_bytes / GIB, probe.gpu_name, packed, by_memory, by_cpus, 100 * kept)
        shares[key] = gpu_fraction(packed, kept)
    return PackedGpus({name: shares[keys[name]] for name in requests}, gpus * (1 - kept))


def _read_probe(cache_dir: Path, key: str) -> MemoryProbe | None:
    path = cache_dir / f"{key}.json"
    return MemoryProbe.model_validate_json(path.read_text()) if path.is_file() else None

