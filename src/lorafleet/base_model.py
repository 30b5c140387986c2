"""The embedded default base model, and resolution of any base model reference.

``base_model: tiny`` means a small Qwen2-style model built here, from nothing: a byte-level BPE
tokenizer trained with `tokenizers` on the bundled corpus, a ChatML chat template, and a short
causal-LM pretraining pass on the same corpus so that LoRA fine-tuning starts from a model that
has seen the languages and JSON, not from noise. It is built once and cached; the cache key
covers the corpus and every build setting, so a change rebuilds it.

``base_model: gguf:<file>`` (a .gguf path, or PACKAGE/FILE inside an installed Python package) is dequantized
once by transformers into the cache, keyed by the file's sha256; every stage then loads that folder.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from lorafleet.console import progress

DEFAULT_CORPUS = Path(__file__).resolve().parent / "tiny_base" / "corpus.txt"  # package data: in every install

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


@dataclass(frozen=True)
class TinySpec:
    """Everything that decides the tiny model's weights; part of its cache key."""

    vocab_size: int = 4096
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 6
    num_key_value_heads: int = 2
    max_position_embeddings: int = 1024
    pretrain_epochs: int = 3
    pretrain_seq_len: int = 256
    pretrain_batch_size: int = 16
    pretrain_lr: float = 3e-3
    seed: int = 1234


def cache_root() -> Path:
    return Path(os.environ.get("LORAFLEET_CACHE", Path.home() / ".cache" / "lorafleet"))


# Architecture of public Qwen2.5 checkpoints (their config.json), for random-init models of a real shape:
# throughput and memory depend on the shape, not on the weights.
QWEN25_SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, tie_word_embeddings=False),
}
QWEN25_VOCAB = 151936
RANDOM_PREFIX = "random:"
GGUF_PREFIX = "gguf:"
# Written into a folder dequantized from a GGUF file: the file's sha256 is the base weights' identity (lineage).
GGUF_SOURCE_MARKER = "lorafleet_gguf_source.json"


def resolve_base_model(ref: str) -> str:
    """A path or hub id that `from_pretrained` accepts. ``tiny`` builds (or reuses) the embedded model;
    ``random:<shape>`` (e.g. ``random:qwen2.5-1.5b``) a random-init model of that public architecture;
    ``gguf:<file>`` the GGUF model, dequantized."""
    if ref == "tiny":
        return str(ensure_tiny_base())
    if ref.startswith(RANDOM_PREFIX):
        return str(ensure_shaped_base(ref[len(RANDOM_PREFIX):]))
    if ref.startswith(GGUF_PREFIX):
        return str(ensure_gguf_base(locate_gguf(ref[len(GGUF_PREFIX):])))
    return ref


@dataclass(frozen=True)
class TokenCounter:
    """A base model's prompt and token count, as training sees them: ``prompt`` renders the messages with its chat
    template (the assistant's turn opened), ``count`` gives each text's number of tokens (no special tokens added)."""

    prompt: Callable[[list[dict[str, str]]], str]
    count: Callable[[list[str]], list[int]]


@functools.lru_cache(maxsize=4)
def token_counter(ref: str, trust_remote_code: bool = False) -> TokenCounter:
    """The base model's tokenizer alone, as cheaply as it comes (data preparation measures lengths with it): ``tiny``
    and ``random:`` bases share the embedded tokenizer, trained once on the corpus and cached (seconds; the tiny
    model's own copy when that is built), read with ``tokenizers`` and its template rendered as transformers renders
    it (``prompt.render_chat``), without importing transformers; ``gguf:`` the tokenizer the file holds (the
    dequantized folder's when cached; no weights are dequantized for it); anything else from its hub id or folder
    (tokenizer files only)."""
    if ref == "tiny" or ref.startswith(RANDOM_PREFIX):
        from tokenizers import Tokenizer

        from lorafleet.prompt import render_chat

        backend = Tokenizer.from_file(str(ensure_tiny_tokenizer() / "tokenizer.json"))
        special = {"eos_token": "<|im_end|>", "pad_token": "<|pad|>"}  # as build_tokenizer names them
        return TokenCounter(prompt=lambda messages: render_chat(CHAT_TEMPLATE, messages, special),
                            count=lambda texts: [len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False)])
    from transformers import AutoTokenizer

    from lorafleet.prompt import prompt_text

    if ref.startswith(GGUF_PREFIX):
        from lorafleet.lineage import sha256_file  # lineage imports this module

        gguf_file = locate_gguf(ref[len(GGUF_PREFIX):])
        cached = cache_root() / f"gguf-{sha256_file(gguf_file)[:16]}"
        tokenizer = (AutoTokenizer.from_pretrained(str(cached)) if (cached / "config.json").is_file() else
                     AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, trust_remote_code=False))
    else:
        tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's: ids without offsets, quicker

    def count(texts: list[str]) -> list[int]:
        if backend is not None:
            return [len(e.ids) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return TokenCounter(prompt=lambda messages: prompt_text(tokenizer, messages), count=count)


def ensure_tiny_tokenizer(spec: TinySpec = TinySpec(), corpus: Path = DEFAULT_CORPUS, root: Path | None = None) -> Path:
    """A folder with the embedded tokenizer (the one ``build_tiny_base`` and ``build_shaped_base`` train): the tiny
    base's own when it is built, else trained alone into the cache."""
    corpus_bytes = Path(corpus).read_bytes()
    tiny = Path(root or cache_root()) / f"tiny-base-{_tiny_key(spec, corpus_bytes)}"
    if (tiny / "config.json").is_file():
        return tiny
    key = hashlib.sha256(json.dumps({"vocab_size": spec.vocab_size}).encode() + corpus_bytes).hexdigest()[:16]

    return _build_once(Path(root or cache_root()), f"tiny-tokenizer-{key}", lambda out: build_tokenizer(
        corpus_documents(corpus_bytes.decode("utf-8")), spec.vocab_size).save_pretrained(out), done="tokenizer.json")


class GGUFError(ValueError):
    """A ``gguf:`` base model that cannot be used; the message names the file and why."""


def locate_gguf(spec: str, relative_to: Path = Path(".")) -> Path:
    """The file ``gguf:<spec>`` names: a path (relative ones from ``relative_to``, the YAML's folder), else
    PACKAGE/FILE inside an installed package, found without importing the package (it may import heavy things)."""
    path = Path(spec) if Path(spec).is_absolute() else relative_to / spec
    if path.is_file():
        return path.resolve()
    package, _, inside = spec.partition("/")
    if Path(spec).is_absolute() or not inside or not package.isidentifier():
        raise GGUFError(f"file not found: {path}")
    found = importlib.util.find_spec(package)  # a top-level name: finds it without importing it
    if found is None:
        raise GGUFError(f"file not found: {path}, and no installed package {package!r} to look in")
    folders = list(found.submodule_search_locations or [])
    for folder in folders:
        if (Path(folder) / inside).is_file():
            return (Path(folder) / inside).resolve()
    # the name may also be a folder beside the YAML that happens to be importable (anything on sys.path): say both
    raise GGUFError(f"file not found: {path}, nor as {inside} in package {package} ({', '.join(folders) or found.origin})")


def check_gguf(path: Path) -> str:
    """The architecture of a GGUF file, after checking that it is one and that transformers can dequantize it.
    Reads the header only (the reader maps the file, it does not load the tensors)."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (starts with {magic!r}, not b'GGUF')")
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise GGUFError(f"{path}: reading a GGUF base needs the gguf package: pip install 'lorafleet[smollm2]'") from exc
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES, read_field

    try:
        architecture = (read_field(GGUFReader(path), "general.architecture") or [None])[0]
    except (ValueError, IndexError, OSError) as exc:
        raise GGUFError(f"{path}: unreadable GGUF header: {exc}") from exc
    supported = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})  # sections, not architectures
    if architecture not in supported:
        raise GGUFError(f"{path}: architecture {architecture!r} cannot be dequantized by transformers; "
                        f"it can: {', '.join(supported)}")
    return architecture


def ensure_gguf_base(gguf_file: Path, root: Path | None = None) -> Path:
    """The GGUF model as a transformers folder (safetensors, config, tokenizer with its chat template), dequantized
    once into the cache under the file's sha256; safe to call from many processes."""
    from lorafleet.lineage import sha256_file  # lineage imports this module

    digest = sha256_file(gguf_file)
    return _build_once(Path(root or cache_root()), f"gguf-{digest[:16]}",
                       lambda out: build_gguf_base(gguf_file, digest, out))


def build_gguf_base(gguf_file: Path, digest: str, out_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # no model code to trust: check_gguf admits only the architectures transformers dequantizes itself
    model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, trust_remote_code=False)
    # transformers 4.57.6 gives a GGUF Llama tokenizer its bos token as eos and no pad token (integrations/ggml.py);
    # the model's generation config holds the GGUF's own ids. Evaluation pads batches, so no pad falls back to eos.
    special = model.generation_config
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(special.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(
        special.pad_token_id if special.pad_token_id is not None else special.eos_token_id)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / GGUF_SOURCE_MARKER).write_text(json.dumps({"gguf_file": str(gguf_file), "sha256": digest}, indent=2))
    del model
    return out_dir


def ensure_shaped_base(shape: str, root: Path | None = None) -> Path:
    """A random-init model with a Qwen2.5 architecture (real vocabulary size) and the embedded tokenizer,
    built once into the cache (bf16 safetensors)."""
    if shape not in QWEN25_SHAPES:
        raise ValueError(f"unknown model shape {shape!r}; known: {', '.join(sorted(QWEN25_SHAPES))}")
    return _build_once(Path(root or cache_root()), f"random-{shape}", lambda out: build_shaped_base(shape, out))


def build_shaped_base(shape: str, out_dir: Path, seed: int = 1234) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer(corpus_documents(DEFAULT_CORPUS.read_text(encoding="utf-8")), TinySpec().vocab_size)
    config = Qwen2Config(vocab_size=QWEN25_VOCAB, max_position_embeddings=32768, rope_theta=1000000.0,
                         rms_norm_eps=1e-6, use_sliding_window=False, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         torch_dtype="bfloat16", **QWEN25_SHAPES[shape])
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    del model
    return out_dir


def ensure_tiny_base(spec: TinySpec = TinySpec(), corpus: Path = DEFAULT_CORPUS,
                     root: Path | None = None) -> Path:
    """Build the tiny base model into the cache unless it is there; safe to call from many processes."""
    corpus_bytes = Path(corpus).read_bytes()
    return _build_once(Path(root or cache_root()), f"tiny-base-{_tiny_key(spec, corpus_bytes)}",
                       lambda out: build_tiny_base(out, spec, corpus_bytes.decode("utf-8")))


def _tiny_key(spec: TinySpec, corpus_bytes: bytes) -> str:
    return hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode() + corpus_bytes).hexdigest()[:16]


def _build_once(root: Path, name: str, build, done: str = "config.json") -> Path:
    """``root/name``, built by ``build(staging_dir)`` unless it is there (holds ``done``): under a file lock, so that
    concurrent trial processes build it once, and renamed into place whole, so that none sees half of it."""
    target = root / name
    if (target / done).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{name}.lock"):
        if not (target / done).is_file():
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
            try:
                build(staging)
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def corpus_documents(text: str) -> list[str]:
    """The corpus file holds documents separated by blank lines."""
    return [d.strip() for d in text.split("\n\n") if d.strip()]


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", unk_token=None,
        bos_token=None, model_input_names=["input_ids", "attention_mask"])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"  # decoder-only generation pads on the left
    return fast


def build_tiny_base(out_dir: Path, spec: TinySpec = TinySpec(), corpus_text: str | None = None) -> Path:
    """Train the tokenizer, init a Qwen2-style model and pretrain it briefly on the corpus."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    corpus_text = corpus_text if corpus_text is not None else DEFAULT_CORPUS.read_text(encoding="utf-8")
    documents = corpus_documents(corpus_text)
    tokenizer = build_tokenizer(documents, spec.vocab_size)
    torch.manual_seed(spec.seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True, rope_theta=10000.0, use_sliding_window=False,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32")
    model = Qwen2ForCausalLM(config)
    _pretrain(model, tokenizer, documents, spec)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "lorafleet_tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return out_dir


def _pretrain(model, tokenizer, documents: list[str], spec: TinySpec) -> None:
    """Plain next-token training on packed corpus blocks: a few minutes' worth of language for 2 CPU cores."""
    import torch

    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    stream: list[int] = []
    for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]:
        stream.extend(ids + [eot])
    n_blocks = len(stream) // spec.pretrain_seq_len
    blocks = torch.tensor(stream[: n_blocks * spec.pretrain_seq_len]).view(n_blocks, spec.pretrain_seq_len)
    steps_per_epoch = math.ceil(n_blocks / spec.pretrain_batch_size)
    total = steps_per_epoch * spec.pretrain_epochs
    optim = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=spec.pretrain_lr, total_steps=total, pct_start=0.1)
    order = random.Random(spec.seed)
    model.train()
    step = 0
    for epoch in range(spec.pretrain_epochs):
        perm = list(range(n_blocks))
        order.shuffle(perm)
        for start in range(0, n_blocks, spec.pretrain_batch_size):
            batch = blocks[perm[start:start + spec.pretrain_batch_size]]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            optim.zero_grad(set_to_none=True)
            step += 1
            if step % max(1, total // 5) == 0 or step == total:  # five lines over the few minutes it takes
                progress.info("tiny base pretraining: step %d/%d (epoch %d) loss %.3f", step, total, epoch + 1,
                              loss.item())
    model.eval()
