"""GPU packing arithmetic (``gpu: auto``) and the checkpointing decision; the probe itself runs in tests/gpu."""
import pytest

from lorafleet import packing
from lorafleet.base_model import QWEN25_SHAPES, QWEN25_VOCAB
from lorafleet.config import ConfigError, TrainConfig, load_domain, parse_overrides

GIB = 1024**3
QWEN_1_5B = dict(QWEN25_SHAPES["qwen2.5-1.5b"], vocab_size=QWEN25_VOCAB, tie_word_embeddings=True)


def test_the_estimate_grows_with_what_a_trial_holds():
    train = TrainConfig(batch_size=8, max_seq_length=512)
    base = packing.estimate_trial_bytes(QWEN_1_5B, train, 16, checkpointing=False)
    assert packing.estimate_trial_bytes(QWEN_1_5B, train, 16, checkpointing="offload") < base
    assert packing.estimate_trial_bytes(QWEN_1_5B, train, 64, checkpointing=False) > base
    assert packing.estimate_trial_bytes(QWEN_1_5B, train.model_copy(update={"batch_size": 32}), 16, False) > 3 * base / 2
    assert 2 * GIB < base < 40 * GIB


def test_auto_checkpointing_is_off_where_the_gpu_has_room_and_on_cpus():
    train = TrainConfig(batch_size=8, max_seq_length=512)
    assert packing.checkpointing_mode(train, QWEN_1_5B, on_cuda=True, gpu_total_bytes=80 * GIB) is False
    assert packing.checkpointing_mode(train, QWEN_1_5B, on_cuda=True, gpu_total_bytes=24 * GIB) == "offload"
    assert packing.checkpointing_mode(train, QWEN_1_5B, on_cuda=False, gpu_total_bytes=0) is False
    explicit = train.model_copy(update={"gradient_checkpointing": True})
    assert packing.checkpointing_mode(explicit, QWEN_1_5B, on_cuda=True, gpu_total_bytes=80 * GIB) is True


@pytest.mark.parametrize(("peak_gib", "cpus_per_gpu", "cpus_per_trial", "kept", "expected"), [
    (5.0, 16, 1, 0.2, (10, 10, 16)),   # memory decides: (0.92 - 0.2) * 80 / (5 * 1.15)
    (5.0, 16, 2, 0.0, (8, 12, 8)),     # CPUs decide
    (90.0, 16, 2, 0.0, (1, 1, 8)),     # never fewer than one
])
def test_trials_per_gpu_take_the_tighter_of_memory_and_cpus(peak_gib, cpus_per_gpu, cpus_per_trial, kept, expected):
    assert packing.trials_per_gpu(int(peak_gib * GIB), 80 * GIB, cpus_per_gpu, cpus_per_trial, kept) == expected


def test_fractions_of_a_gpu_fit_beside_the_finishing_share():
    for trials in range(1, 17):
        for kept in (0.0, 0.2, 0.25):
            share = packing.gpu_fraction(trials, kept)
            assert trials * share + kept <= 1.0
            assert share == round(share, 4)  # Ray's precision


def test_domains_differing_only_in_schedule_share_one_probe():
    a = TrainConfig(batch_size=8, max_seq_length=512, eval_steps=10, seed=1, warmup_ratio=0.1)
    b = TrainConfig(batch_size=8, max_seq_length=512, eval_steps=25, seed=2)
    c = TrainConfig(batch_size=16, max_seq_length=512)
    key = packing.TrialShape.of("random:qwen2.5-1.5b", a, [8, 16]).key("accelerator_type:H100")
    assert packing.TrialShape.of("random:qwen2.5-1.5b", b, [16]).key("accelerator_type:H100") == key
    assert packing.TrialShape.of("random:qwen2.5-1.5b", b, [16]).key("accelerator_type:A100") != key
    assert packing.TrialShape.of("random:qwen2.5-1.5b", c, [16]).key("accelerator_type:H100") != key


def test_probe_examples_are_the_longest_records(domain_copy):
    from lorafleet import data

    prepared = data.prepare(load_domain(domain_copy("contracts")))
    chosen = packing.probe_examples(prepared.train, 4)
    size = [len(e.user_text) + len(e.completion) for e in chosen]
    assert len(chosen) == 8 and min(size) >= max(len(e.user_text) + len(e.completion) for e in prepared.train
                                                 if e not in chosen)


@pytest.mark.integration
def test_auto_on_a_cluster_without_gpus_trains_on_cpus(local_ray):
    request = packing.PackingRequest(packing.TrialShape.of("tiny", TrainConfig(), [8]), [], 1, 0.2)
    assert packing.pack({"a": request}, cache_dir=None) == packing.PackedGpus({"a": 0.0}, 0.0)


def test_gpu_auto_needs_the_finishing_tasks_resources(domain_copy):
    with pytest.raises(ConfigError, match=r"sweep.resources_per_trial.gpu: auto .* set eval.resources"):
        load_domain(domain_copy("contracts"), parse_overrides(["sweep.resources_per_trial.gpu=auto"]))
    cfg = load_domain(domain_copy("contracts"), parse_overrides(
        ["sweep.resources_per_trial.gpu=auto", "eval.resources.gpu=0.2", "train.gradient_checkpointing=offload"]))
    assert cfg.sweep.resources_per_trial.gpu == "auto" and cfg.finish_resources.gpu == 0.2
    with pytest.raises(ConfigError, match=r"sweep.resources_per_trial.gpu"):
        load_domain(domain_copy("contracts"), parse_overrides(["sweep.resources_per_trial.gpu=-1"]))
