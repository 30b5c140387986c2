"""One fine-tuning trial: stock TRL SFTTrainer + LoRA. Knows nothing about Ray Tune.

Backends:
- ``unsloth``: Unsloth's FastLanguageModel (4-bit NF4 base, its gradient checkpointing); CUDA only.
- ``peft``: transformers + peft; on CUDA the base loads in 4-bit through bitsandbytes (QLoRA),
  on CPU in full precision (plain LoRA).
``auto`` picks unsloth when CUDA and the package are there, else peft.
Unsloth patches transformers/peft/trl process-wide when imported, so it is imported here only,
inside the trial's own worker process, and never by merge/export/evaluate.

A worker process runs trial after trial (Tune's ``reuse_actors``) and keeps the base model it loaded: each
trial trains a deep copy of it (a GPU-to-GPU copy, milliseconds), so the next trial skips the load and no
trial sees what another one trained.
"""
from __future__ import annotations

import copy
import gc
import importlib.util
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorafleet.base_model import resolve_base_model
from lorafleet.config import TrainConfig
from lorafleet.data import Example

log = logging.getLogger(__name__)

TRIAL_RECORD = "lorafleet_trial.json"  # beside a trained adapter: what produced it

# this process's loaded base: (what was loaded, (model, tokenizer)); one at a time, replaced when a trial of
# another base (or backend, precision, sequence length, trust_remote_code: a base loaded with the code it ships is
# never handed to a domain that did not opt in) comes
_loaded_base: tuple[tuple, tuple[Any, Any]] | None = None


@dataclass(frozen=True)
class HParams:
    """A trial's hyperparameters; ``max_steps`` and ``max_seq_length``, where a search sets them (the staged
    search's rounds), replace the domain's train settings for that trial."""

    lora_rank: int
    learning_rate: float
    epochs: int
    max_steps: int | None = None
    max_seq_length: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HParams:
        optional = {k: int(d[k]) for k in ("max_steps", "max_seq_length") if d.get(k) is not None}
        return cls(lora_rank=int(d["lora_rank"]), learning_rate=float(d["learning_rate"]), epochs=int(d["epochs"]),
                   **optional)

    @property
    def label(self) -> str:
        """How logs and trial folders name a trial: ``r16 lr0.002 e3`` (``r16 lr0.0002 e1 s200 L1024`` with steps
        and sequence length of its own)."""
        own = "".join(f" {p}{v}" for p, v in (("s", self.max_steps), ("L", self.max_seq_length)) if v is not None)
        return f"r{self.lora_rank} lr{self.learning_rate:g} e{self.epochs}{own}"

    def applied_to(self, train_cfg: TrainConfig) -> TrainConfig:
        """The domain's train settings as this trial trains: with its own max_steps and max_seq_length, if any."""
        own = {k: v for k, v in (("max_steps", self.max_steps), ("max_seq_length", self.max_seq_length))
               if v is not None}
        return train_cfg.model_copy(update=own) if own else train_cfg


@dataclass
class TrialResult:
    hparams: HParams
    backend: str
    load_in_4bit: bool
    adapter_dir: str
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def choose_backend(requested: str) -> str:
    if requested != "auto":
        if requested == "unsloth" and not cuda_available():
            raise RuntimeError("train.backend: unsloth needs a CUDA GPU; use backend: peft or auto on CPU")
        return requested
    if cuda_available() and importlib.util.find_spec("unsloth") is not None:
        return "unsloth"
    return "peft"


def _use_4bit(train_cfg: TrainConfig) -> bool:
    if train_cfg.load_in_4bit == "auto":
        return cuda_available()
    if train_cfg.load_in_4bit and not cuda_available():
        raise RuntimeError("train.load_in_4bit: true needs CUDA (bitsandbytes); use auto or false on CPU")
    return bool(train_cfg.load_in_4bit)


def _fresh_copy_of_base(loaded: tuple, load: Callable[[], tuple[Any, Any]]) -> tuple[Any, Any]:
    """A copy of this process's base (model and tokenizer together, so references between them hold), loading it
    first when the process holds none or another one."""
    global _loaded_base
    if _loaded_base is None or _loaded_base[0] != loaded:
        _loaded_base = None
        _free_memory()
        _loaded_base = (loaded, load())
    return copy.deepcopy(_loaded_base[1])


def _free_memory() -> None:
    """A trainer holds reference cycles (callbacks, accelerator): only a collection frees its model and optimizer
    before the CUDA cache is given back."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


UNSLOTH_CHECKPOINTING = {"offload": "unsloth", True: True, False: False}


def _load_unsloth(base_path: str, train_cfg: TrainConfig, hp: HParams, checkpointing: bool | str,
                  trust_remote_code: bool):
    from unsloth import FastLanguageModel  # imported here only (see module docstring)

    loaded = ("unsloth", base_path, _use_4bit(train_cfg), train_cfg.max_seq_length, trust_remote_code)
    model, tokenizer = _fresh_copy_of_base(loaded, lambda: FastLanguageModel.from_pretrained(
        model_name=base_path, max_seq_length=train_cfg.max_seq_length, dtype=None, load_in_4bit=_use_4bit(train_cfg),
        trust_remote_code=trust_remote_code))
    model = FastLanguageModel.get_peft_model(
        model, r=hp.lora_rank, lora_alpha=int(train_cfg.lora_alpha_ratio * hp.lora_rank),
        lora_dropout=train_cfg.lora_dropout,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing=UNSLOTH_CHECKPOINTING[checkpointing], random_state=train_cfg.seed, bias="none")
    _initialise_lora(model, train_cfg.seed)
    # the worker's previous trial switched Unsloth to inference for its validation answers; back to training
    FastLanguageModel.for_training(model)
    return model, tokenizer, None


def _initialise_lora(model, seed: int) -> None:
    """LoRA's initial weights drawn again, right after a seed: measured on an H100, a warm worker's first Unsloth
    trial started from other lora_A weights than its later ones (Unsloth draws random numbers between its own
    seeding and the adapter's initialisation on some calls); drawn here, every trial starts from the same."""
    from peft.tuners.lora.layer import LoraLayer
    from transformers import set_seed

    set_seed(seed)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.lora_A:
                module.reset_lora_parameters(adapter, init_lora_weights=True)


def _load_peft(base_path: str, train_cfg: TrainConfig, hp: HParams, trust_remote_code: bool):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if _use_4bit(train_cfg):
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True)
        kwargs["dtype"] = torch.bfloat16
    elif cuda_available():
        kwargs["dtype"] = torch.bfloat16
    else:
        kwargs["dtype"] = torch.float32
    loaded = ("peft", base_path, _use_4bit(train_cfg), str(kwargs["dtype"]), trust_remote_code)
    model, tokenizer = _fresh_copy_of_base(loaded, lambda: (
        AutoModelForCausalLM.from_pretrained(base_path, **kwargs),
        AutoTokenizer.from_pretrained(base_path, trust_remote_code=trust_remote_code)))
    lora = LoraConfig(r=hp.lora_rank, lora_alpha=int(train_cfg.lora_alpha_ratio * hp.lora_rank),
                      lora_dropout=train_cfg.lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    return model, tokenizer, lora


def _save_adapter(model, tokenizer, adapter_dir: Path, record: dict[str, Any]) -> Path:
    """The adapter and tokenizer, with what produced them beside (lorafleet_trial.json)."""
    model.save_pretrained(str(adapter_dir))
    tokenizer.save_pretrained(str(adapter_dir))
    (adapter_dir / TRIAL_RECORD).write_text(json.dumps(record, indent=2))
    return adapter_dir


def _sft_config(train_cfg: TrainConfig, hp: HParams, backend: str, checkpointing: bool | str, output_dir: Path):
    """The stock TRL arguments of one trial: evaluation every ``eval_steps`` (what Tune hears), a resumable
    checkpoint (``output_dir/checkpoint-<step>``: adapter, optimizer, scheduler, RNG states, trainer state) every
    ``checkpoint_steps`` and at the end, only the newest kept; no console progress."""
    from trl import SFTConfig

    on_cuda = cuda_available()
    every = train_cfg.checkpoint_steps
    saving = {"save_strategy": "steps", "save_steps": every, "save_total_limit": 1} if every else {"save_strategy": "no"}
    return SFTConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=train_cfg.batch_size,
        per_device_eval_batch_size=train_cfg.batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum,
        learning_rate=hp.learning_rate,
        num_train_epochs=hp.epochs,
        max_steps=train_cfg.max_steps or -1,
        max_length=train_cfg.max_seq_length,
        lr_scheduler_type="cosine",
        warmup_ratio=train_cfg.warmup_ratio,
        weight_decay=train_cfg.weight_decay,
        optim=train_cfg.optimizer,
        eval_strategy="steps",
        eval_steps=train_cfg.eval_steps,
        logging_steps=max(1, train_cfg.eval_steps // 4),
        **saving,
        report_to=[],
        seed=train_cfg.seed,
        use_cpu=not on_cuda,
        bf16=on_cuda,
        gradient_checkpointing=backend == "peft" and checkpointing is not False,  # Unsloth sets up its own
        dataloader_num_workers=0,
        dataset_num_proc=1,  # a few thousand records: a pool of processes per trial costs more than it saves
        disable_tqdm=True,
    )


def _check_answers_fit(records: int, kept: int, max_seq_length: int) -> None:
    """TRL drops a record whose answer train.max_seq_length cuts off entirely (its prompt fills the length)."""
    if kept == 0:
        raise ValueError(f"every one of the {records} training records' prompts fills train.max_seq_length "
                         f"({max_seq_length} tokens): no answer token is left to learn; raise train.max_seq_length")
    if kept < records:
        log.warning("%d of %d training records lost their whole answer to train.max_seq_length (%d tokens) and are "
                    "left out of training", records - kept, records, max_seq_length)


def _adapter_weights_in_bf16(model) -> None:
    """Unsloth's trainer casts the trainable (LoRA) weights to bf16 on a process's first trial only (TRL does so for
    every 4-bit base; Unsloth removes TRL's cast); measured on an H100: a warm worker's later trials kept float32
    adapters and, with 8-bit AdamW, ended 0.06 apart in lora_B from its first. Cast on every trial."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.bfloat16:
            param.data = param.data.to(torch.bfloat16)


def _checkpointing(train_cfg: TrainConfig, base_path: str) -> bool | str:
    from lorafleet.packing import checkpointing_mode

    on_cuda = cuda_available()
    gpu_total = 0
    if on_cuda:
        import torch

        gpu_total = torch.cuda.get_device_properties(0).total_memory
    model_config = json.loads((Path(base_path) / "config.json").read_text())
    return checkpointing_mode(train_cfg, model_config, on_cuda, gpu_total)


class TrialStopped(RuntimeError):
    """A trial stopped by a guard (train.divergence, train.timeout_minutes); its message is the trial's error in
    summary.json and the report."""


def _divergence_guard(factor: float | None):
    """A trainer callback stopping training at the first logged loss that is NaN/inf or above ``factor`` × the
    first logged loss; ``reason`` says which (None while training is sound)."""
    from transformers import TrainerCallback

    class DivergenceGuard(TrainerCallback):
        first: float | None = None
        reason: str | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            # a resumed trial compares with the first loss its earlier attempt logged (restored with the trainer state)
            self.first = next((row["loss"] for row in state.log_history if "loss" in row), None)

        def on_log(self, args, state, control, logs=None, **kwargs):
            loss = (logs or {}).get("loss")
            if loss is None or factor is None:
                return
            if self.first is None and math.isfinite(loss):
                self.first = loss
            if not math.isfinite(loss):
                self.reason = f"training loss became {loss} at step {state.global_step}"
            elif self.first is not None and loss > factor * self.first:
                self.reason = (f"training loss {loss:.4g} at step {state.global_step} exceeds train.divergence "
                               f"({factor:g}) x its first logged loss {self.first:.4g}")
            if self.reason:
                self.reason = f"diverged: {self.reason}"
                control.should_training_stop = True

    return DivergenceGuard()


def _timeout_guard(minutes: float | None, since: float):
    """A trainer callback stopping training after the first optimizer step that ends ``minutes`` after ``since``
    (the attempt's start)."""
    from transformers import TrainerCallback

    class TimeoutGuard(TrainerCallback):
        reason: str | None = None

        def on_step_end(self, args, state, control, **kwargs):
            if minutes is not None and time.perf_counter() - since > minutes * 60:
                self.reason = f"timed out: still training after train.timeout_minutes ({minutes:g}) at step " \
                              f"{state.global_step} of {state.max_steps}"
                control.should_training_stop = True

    return TimeoutGuard()


def _first_step_clock(since: float):
    """A trainer callback timing ``since`` (the trial's start) to the end of its first optimizer step: the fixed
    cost a trial pays before it trains."""
    from transformers import TrainerCallback

    class FirstStepClock(TrainerCallback):
        seconds = float("nan")

        def on_step_end(self, args, state, control, **kwargs):
            if math.isnan(self.seconds):
                self.seconds = time.perf_counter() - since

    return FirstStepClock()


def _final_evaluation(trainer) -> dict[str, float]:
    """The trained adapter's eval metrics: those of the evaluation the trainer ran at its last step (eval_steps
    dividing the steps), else a new one; the same numbers either way, without evaluating the same weights twice."""
    at_end = [row for row in trainer.state.log_history if "eval_loss" in row and row.get("step") == trainer.state.global_step]
    return at_end[-1] if at_end else trainer.evaluate()


OOM_RETRIES = 2  # halvings of the micro-batch before a trial that runs out of GPU memory gives up


def train_trial(base_model: str, train_cfg: TrainConfig, hp: HParams, train: list[Example],
                val: list[Example], out_dir: str | Path, callbacks: list | None = None,
                after_training: Callable[[Any, Any], dict[str, float]] | None = None,
                resume_from: str | Path | None = None, trust_remote_code: bool = False) -> TrialResult:
    """Fine-tune a LoRA adapter on ``train``; evaluate on ``val``; save the adapter to ``out_dir/adapter``.
    ``after_training(model, tokenizer)`` may add metrics from the trained model (e.g. generation quality);
    ``resume_from``: a checkpoint folder of an earlier attempt of this trial, to go on from;
    ``trust_remote_code``: the domain's, for the base's own modelling code.

    A trial that runs out of GPU memory is tried again with half the micro-batch and twice the accumulation (the
    same effective batch), at most ``OOM_RETRIES`` times; ``metrics["oom_retries"]`` counts them."""
    import torch

    train_cfg = hp.applied_to(train_cfg)
    retries = 0
    while True:
        try:
            result = _train_once(base_model, train_cfg, hp, train, val, out_dir, callbacks, after_training, resume_from,
                                 trust_remote_code)
            result.metrics.update(oom_retries=retries, micro_batch=train_cfg.batch_size)
            return result
        except torch.OutOfMemoryError:
            if retries == OOM_RETRIES or train_cfg.batch_size == 1:
                raise
            retries += 1
            smaller = train_cfg.model_copy(update={"batch_size": train_cfg.batch_size // 2,
                                                   "grad_accum": train_cfg.grad_accum * 2})
            log.warning("trial %s: out of GPU memory with micro-batch %d; again with %d x %d accumulation", hp.label,
                        train_cfg.batch_size, smaller.batch_size, smaller.grad_accum)
            train_cfg = smaller


def _train_once(base_model: str, train_cfg: TrainConfig, hp: HParams, train: list[Example], val: list[Example],
                out_dir: str | Path, callbacks: list | None, after_training: Callable[[Any, Any], dict[str, float]] | None,
                resume_from: str | Path | None, trust_remote_code: bool) -> TrialResult:
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import SFTTrainer

    out_dir = Path(out_dir)
    load_started = time.perf_counter()
    # the adapter's initialisation draws from the global RNGs before the Trainer seeds them: seeding here makes a
    # trial's adapter the same whether it is the first or the fifth trial its worker process runs
    set_seed(train_cfg.seed)
    backend = choose_backend(train_cfg.backend)
    base_path = resolve_base_model(base_model)
    checkpointing = _checkpointing(train_cfg, base_path)
    if backend == "unsloth":
        model, tokenizer, peft_config = _load_unsloth(base_path, train_cfg, hp, checkpointing, trust_remote_code)
    else:
        model, tokenizer, peft_config = _load_peft(base_path, train_cfg, hp, trust_remote_code)
    model_ready = time.perf_counter()
    first_step = _first_step_clock(load_started)
    guards = [_divergence_guard(train_cfg.divergence), _timeout_guard(train_cfg.timeout_minutes, load_started)]
    trainer = SFTTrainer(
        model=model, args=_sft_config(train_cfg, hp, backend, checkpointing, out_dir / "trainer"),
        processing_class=tokenizer, peft_config=peft_config,
        train_dataset=Dataset.from_list([e.as_trl() for e in train]),
        eval_dataset=Dataset.from_list([e.as_trl() for e in val]),
        callbacks=[first_step, *guards, *(callbacks or [])])
    _check_answers_fit(len(train), len(trainer.train_dataset), train_cfg.max_seq_length)
    if backend == "unsloth":
        _adapter_weights_in_bf16(trainer.model)
    trainer.remove_callback(PrinterCallback)  # per-step dicts on stdout; progress goes to Tune/callbacks instead
    started = time.perf_counter()
    load_seconds = started - load_started  # base model load (first trial of a process) or copy, trainer setup
    log.info("trial %s: base and LoRA ready in %.1f s (checkpointing %s), trainer in %.1f s%s", hp.label,
             model_ready - load_started, checkpointing, started - model_ready,
             f"; resuming from {resume_from}" if resume_from else "")
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        stopped = next((guard.reason for guard in guards if guard.reason), None)
        if stopped:
            raise TrialStopped(stopped)
    except BaseException:
        del trainer, model  # a retry (or the worker's next trial) must find the memory free
        _free_memory()
        raise
    final = _final_evaluation(trainer)
    seconds = time.perf_counter() - started
    extra: dict[str, float] = {}
    if after_training:
        if backend == "unsloth":
            from unsloth import FastLanguageModel

            FastLanguageModel.for_inference(trainer.model)  # Unsloth's generation path
        trainer.model.eval()
        extra = after_training(trainer.model, tokenizer)
    metrics = {"eval_loss": float(final["eval_loss"]), "train_seconds": seconds, "load_seconds": load_seconds,
               "first_step_seconds": first_step.seconds, "steps": trainer.state.global_step, **extra}
    history = [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in trainer.state.log_history]
    adapter_dir = _save_adapter(trainer.model, tokenizer, out_dir / "adapter", {
        "hparams": asdict(hp), "backend": backend, "load_in_4bit": _use_4bit(train_cfg), "base_model": base_model,
        "metrics": metrics})
    del trainer, model  # the worker goes on to its next trial; its base stays loaded
    _free_memory()
    return TrialResult(hparams=hp, backend=backend, load_in_4bit=_use_4bit(train_cfg), adapter_dir=str(adapter_dir),
                       metrics=metrics, history=history)
