"""``lorafleet predict``: answer records with a domain's published ONNX model, asked exactly as training asked.

The consumer's side of a run, on onnxruntime, ``tokenizers`` and jinja alone (no torch, Ray or transformers: the
slim install, ``pip install lorafleet``, has only these):

1. resolve the domain's published run (``latest.json``, or the run named) and the ONNX folder of the variant asked
   for, and bring it once into a local cache, each file checked against the run's manifest; a cached copy is checked
   again on every use, and a file that no longer matches is refused, never answered from;
2. read every input record first (``{"id", "input"}`` or the domain's own data format), so a malformed line stops
   the command before any answer, naming file and line;
3. render each prompt from the folder's contract (system prompt, chat template, special tokens; for a domain with
   context, the record's entity looked up in the folder's context file, or in a newer one ``--context`` names, and
   rendered into the system prompt), generate greedily with the graph's KV cache, up to the contract's
   ``max_new_tokens`` and stop tokens;
4. validate each answer against the folder's output schema as evaluation does, and write all rows at once.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafleet import export, publish
from lorafleet.base_model import cache_root
from lorafleet.context import Context, ContextError
from lorafleet.contract import MODEL_JSON, ModelContract, read_context, read_contract, render_messages
from lorafleet.export import onnx_graph
from lorafleet.lineage import sha256_file
from lorafleet.metrics import parse_answer
from lorafleet.prompt import record_turns, with_system_prompt

PRIMARY = "onnx"  # the primary ONNX export's folder; another variant's is onnx-<variant>
PROGRESS_EVERY_S = 5.0


class PredictError(ValueError):
    """The command cannot answer: bad input, no such model, a model that fails its checks. Nothing is written."""


@dataclass(frozen=True)
class Request:
    id: Any
    line: int | None
    messages: list[dict[str, str]]
    context: str | None = None  # a domain with context: the record's entity, rendered


@dataclass(frozen=True)
class Answer:
    id: Any
    text: str
    output: Any
    errors: list[str]

    @property
    def valid(self) -> bool:
        return not self.errors

    def row(self) -> dict[str, Any]:
        return {"id": self.id, "valid": self.valid, "output": self.output, "errors": self.errors, "text": self.text}


# ---- the model: fetched once, checked on every use ----------------------------------------------------------------

def model_folder(storage_uri: str, domain: str, run_id: str | None = None, variant: str | None = None,
                 cache: str | Path | None = None) -> Path:
    """The local folder of the domain's published ONNX model (``variant``: default the primary export), fetched
    into ``cache`` if not there yet, its files matching the run's manifest."""
    storage = publish.Storage(storage_uri)
    if run_id is None:
        if not storage.exists(publish.latest_key(domain)):
            raise PredictError(f"{storage.url(publish.latest_key(domain))}: domain {domain} has no published model "
                               "(never promoted, or misspelt)")
        run_id = storage.read_json(publish.latest_key(domain))["run_id"]
    prefix = publish.domain_prefix(run_id, domain)
    if not storage.exists(f"{prefix}/{publish.MANIFEST}"):
        raise PredictError(f"{storage.url(prefix)}: run {run_id} did not publish domain {domain} (no manifest)")
    objects = publish.read_manifest(storage, run_id, domain)["objects"]
    artifact = variant_folder(storage, prefix, objects, variant)
    wanted = {o["key"][len(artifact) + 1:]: o for o in objects if o["key"].startswith(f"{artifact}/")}
    root = Path(cache) if cache else cache_root() / "models"
    folder = root / hashlib.sha256(storage.uri.encode()).hexdigest()[:16] / run_id / domain / artifact
    if not folder.exists():
        try:  # fetch checks every object's sha256 as it downloads: a copy it makes needs no second check
            return publish.fetch(storage.uri, domain, folder, run_id=run_id, artifact=artifact)
        except publish.VerifyError as exc:
            raise PredictError(f"refused: {exc}") from None
        except OSError:
            if not folder.exists():  # another predict fetched the same model at the same time: check its copy
                raise
    changed = changed_files(folder, wanted)
    if changed:
        raise PredictError(f"refused: {folder} no longer matches the manifest of run {run_id} ({'; '.join(changed)}); "
                           "remove the folder to fetch the model again")
    return folder


def variant_folder(storage: publish.Storage, prefix: str, objects: list[dict[str, Any]], variant: str | None) -> str:
    """The published folder of an ONNX variant (``export.variant_folder``: ``onnx`` for the export itself,
    ``onnx-<variant>`` for one built from it); None: the export itself."""
    folders = {o["key"].split("/")[0] for o in objects}
    if PRIMARY not in folders:
        raise PredictError(f"{storage.url(prefix)}: no ONNX model published (export.onnx was off)")
    primary = storage.read_json(f"{prefix}/{PRIMARY}/{MODEL_JSON}")["variant"]
    folder = PRIMARY if variant is None else export.variant_folder(variant, primary)
    if folder not in folders:
        known = sorted(f.removeprefix(f"{PRIMARY}-") if f != PRIMARY else primary
                       for f in folders if f == PRIMARY or f.startswith(f"{PRIMARY}-"))
        raise PredictError(f"{storage.url(prefix)}: no ONNX variant {variant!r}; published: {', '.join(known)}")
    return folder


def changed_files(folder: Path, wanted: dict[str, dict[str, Any]]) -> list[str]:
    """How a fetched folder differs from the manifest's objects (name -> bytes, sha256): changed, missing or extra
    files (the fetch's own ``lorafleet_source.json`` aside)."""
    problems = []
    for name, obj in sorted(wanted.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} missing")
        elif path.stat().st_size != obj["bytes"] or sha256_file(path) != obj["sha256"]:
            problems.append(f"{name} changed (sha256 differs)")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    problems += [f"{name} not in the manifest" for name in sorted(present - set(wanted) - {publish.FETCH_RECORD})]
    return problems


class OnnxModel:
    """A published ONNX folder on onnxruntime (CPU): prompts rendered from its contract, greedy answers with the
    graph's KV cache, stopped at the contract's stop tokens or ``max_new_tokens``."""

    def __init__(self, folder: str | Path, context_file: str | Path | None = None):
        """``context_file``: for a domain with context, a context file to use instead of the folder's copy (a newer
        one, with entities added since training: the model needs no retraining for them)."""
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder, self.np = Path(folder), np
        self.contract: ModelContract = read_contract(folder)
        if context_file is not None and self.contract.context is None:
            raise PredictError(f"--context {context_file}: domain {self.contract.domain} is asked without context")
        try:
            self.context: Context | None = read_context(folder, self.contract, context_file)
        except ContextError as exc:
            raise PredictError(str(exc)) from None
        if self.contract.kv_cache is None or not self.contract.kv_cache.inputs:
            raise PredictError(f"{folder}: its contract describes no KV cache; lorafleet predict needs one")
        self.tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        tokenizer_config = json.loads((self.folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.clean_up_spaces = bool(tokenizer_config.get("clean_up_tokenization_spaces"))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_graph(self.folder)), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        kv = self.contract.kv_cache
        self.past_names = [(name.strip().format(layer=layer), present.strip().format(layer=layer))
                           for layer in range(kv.num_layers)
                           for name, present in zip(kv.inputs.split(","), kv.outputs.split(","))]
        past_type = next(i.type for i in self.session.get_inputs() if i.name == self.past_names[0][0])
        self.past_dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        eos = self.contract.generation.get("eos_token_id")
        self.stop_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        self.max_new_tokens = int(self.contract.generation["max_new_tokens"])

    def prompt(self, turns: list[dict[str, str]], context: str | None = None) -> str:
        """The prompt text for a record's turns (``context``: its entity's rendered context, ``Request.context``)."""
        return render_messages(self.folder, self.contract,
                               with_system_prompt(turns, self.contract.system_prompt, context))

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt, add_special_tokens=False).ids  # as evaluation tokenized it

    def generate(self, prompt_ids: list[int]) -> list[int]:
        """Greedy token ids after the prompt, up to and including the first stop token."""
        np, kv = self.np, self.contract.kv_cache
        past = {name: np.zeros((1, kv.num_kv_heads, 0, kv.head_dim), dtype=self.past_dtype) for name, _ in self.past_names}
        step, seen, answer = list(prompt_ids), 0, []
        for _ in range(self.max_new_tokens):
            feeds = {"input_ids": np.array([step], dtype=np.int64),
                     "attention_mask": np.ones((1, seen + len(step)), dtype=np.int64), **past}
            if "position_ids" in self.input_names:
                feeds["position_ids"] = np.arange(seen, seen + len(step), dtype=np.int64)[None, :]
            outputs = dict(zip(self.output_names, self.session.run(None, feeds)))
            token = int(outputs["logits"][0, -1].argmax())
            answer.append(token)
            if token in self.stop_ids:
                break
            past = {name: outputs[present] for name, present in self.past_names}
            seen, step = seen + len(step), [token]
        return answer

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return clean_up_tokenization(text) if self.clean_up_spaces else text

    def answer(self, turns: list[dict[str, str]], context: str | None = None) -> str:
        return self.decode(self.generate(self.prompt_ids(self.prompt(turns, context))))


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (applied on decode where the tokenizer's config asks for it)."""
    for spaced, joined in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                           (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(spaced, joined)
    return text


# ---- records in, answers out ----------------------------------------------------------------------------------------

def read_requests(path: str | Path, contract: ModelContract, context: Context | None = None) -> list[Request]:
    """Every record of a JSONL file, checked before anything is answered (``request_of``; ``context``: the domain's
    context file, where each record's entity must be); a record's ``id`` field, else ``line-N``, names its answer."""
    requests = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictError(f"{path}: cannot read it ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            requests.append(request_of(record, contract, number, context))
        except (ValueError, KeyError, TypeError) as exc:
            reason = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise PredictError(f"{path}:{number}: {reason}") from None
    if not requests:
        raise PredictError(f"{path}: no records")
    return requests


def request_of(record: dict[str, Any], contract: ModelContract, line: int | None = None,
               context: Context | None = None) -> Request:
    """A record asked as its domain's training records were: ``{"id", "input"}``, or the domain's own format (an
    alpaca domain's records are always its format: an instruction, and an input or none). A domain with context:
    the record's entity field (``contract.context.key``, e.g. ``{"id", "input", "brand"}``) names its record in
    ``context`` (the folder's context file unless given), rendered into the system prompt; a ContextError (a
    ValueError) names the context file when the entity is not there."""
    fmt = contract.message_format.data_format
    if fmt == "alpaca" or fmt in record:
        turns = record_turns(record, fmt, with_answer=False)
    else:
        turns = [{"role": "user", "content": contract.message_format.render_user(record["input"])}]
    rendered = None
    if contract.context is not None:
        if context is None:
            raise ValueError(f"domain {contract.domain} is asked with context: no context file given")
        rendered = context.render(record[contract.context.key])
    return Request(id=record.get("id", f"line-{line}"), line=line, messages=turns, context=rendered)


def answer_all(model: OnnxModel, requests: list[Request], progress=None) -> list[Answer]:
    """Each request answered and validated; ``progress(done, total, seconds)`` is called every few seconds and at
    the end."""
    from jsonschema import Draft202012Validator

    schema = json.loads((model.folder / model.contract.output_schema).read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    answers, started, shown = [], time.monotonic(), time.monotonic()
    for request in requests:
        text = model.answer(request.messages, request.context)
        ok, output = parse_answer(text)
        errors = ([f"{'/'.join(map(str, e.absolute_path)) or '(answer)'}: {e.message}"
                   for e in validator.iter_errors(output)] if ok else ["not JSON"])
        answers.append(Answer(id=request.id, text=text, output=output if ok else None, errors=errors))
        if progress and (time.monotonic() - shown >= PROGRESS_EVERY_S or len(answers) == len(requests)):
            progress(len(answers), len(requests), time.monotonic() - started)
            shown = time.monotonic()
    return answers


def write_answers(path: str | Path, answers: list[Answer]) -> None:
    """All rows at once: written beside ``path`` and renamed onto it, so a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for answer in answers:
                handle.write(json.dumps(answer.row(), ensure_ascii=False) + "\n")
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def show_progress(done: int, total: int, seconds: float) -> None:
    print(f"predict: {done}/{total} records answered ({done / max(seconds, 1e-9):.1f}/s)", file=sys.stderr)
