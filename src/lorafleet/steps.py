"""Per-step pipelines: one annotated source, several steps, each its own domain.

A pipeline file (``configs/pipelines/<pipeline>.yaml``, read by ``config.load_pipeline``) expands into one ordinary
``DomainConfig`` per step, named ``<pipeline>.<step>``, whose ``step`` section (``config.StepConfig``) says how an
annotated record becomes the step's record: the user message (an annotated field, by dotted path, or the string a
prompt builder in the user's own code returns) and the answer (a JSON object whose fields are annotated fields, by
dotted path). The record made is a ``messages`` record, so everything after reading (governance, split, training,
evaluation, export, contract, predict) is the one every domain goes through.

A prompt builder is ``module:function``: lorafleet imports it (installed packages first, then the pipeline file's
folder, then the current directory) and calls it unchanged on each annotated record (a dict, as the source holds
it); it returns the user message. The serving code calls the same function, so the model is asked as it was
trained. Its qualified name and the sha256 of its source (``inspect.getsource``) go into the config (hence the
lineage and ``config_sha256``) and the published ``lorafleet_model.json`` (``prompt_builder``).

Nothing here imports the config module: the functions take its ``StepConfig`` (or any object with its fields).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUILDER_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
PromptBuilder = Callable[[dict[str, Any]], str]


class StepError(ValueError):
    """An annotated record cannot become the step's record (a mapped field is missing, the builder failed); the
    caller prefixes the record's file and line."""


# ---- dotted paths -----------------------------------------------------------------------------------------------

_MISSING = object()


def lookup(record: Any, dotted: str) -> Any:
    """``annotations.characters`` -> record["annotations"]["characters"]; a number indexes a list
    (``events.0.type``). Raises StepError naming the part that is missing."""
    node, walked = record, []
    for part in dotted.split("."):
        value = _MISSING
        if isinstance(node, dict):
            value = node.get(part, _MISSING)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            value = node[int(part)]
        if value is _MISSING:
            inside = f" in {'.'.join(walked)}" if walked else ""
            what = "no item" if isinstance(node, list) else ("no field" if isinstance(node, dict) else
                                                             f"a {type(node).__name__} has no field")
            raise StepError(f"{what} {part!r}{inside}")
        node = value
        walked.append(part)
    return node


# ---- the prompt builder -----------------------------------------------------------------------------------------

@contextmanager
def _importable(folders: list[Path]) -> Iterator[None]:
    """``folders`` on sys.path (after everything already there, so nothing beside a YAML file shadows an installed
    module) while the builder's module is imported."""
    added = [str(f) for f in folders if str(f) not in sys.path]
    sys.path.extend(added)
    try:
        yield
    finally:
        for folder in added:
            sys.path.remove(folder)


def load_builder(ref: str, folder: str | Path) -> PromptBuilder:
    """The function ``module:qualname`` names, imported from the installed packages, else ``folder`` (the pipeline
    file's), else the current directory. Raises StepError saying what is wrong."""
    if not BUILDER_RE.fullmatch(ref):
        raise StepError(f"{ref!r} is not module:function (e.g. mypkg.prompts:build_character_prompt)")
    module_name, _, qualname = ref.partition(":")
    try:
        with _importable([Path(folder).resolve(), Path.cwd()]):
            module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: anything it raises is its problem, named
        raise StepError(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, _MISSING)
        if target is _MISSING:
            raise StepError(f"{module_name} has no {qualname}")
    if not callable(target):
        raise StepError(f"{ref} is a {type(target).__name__}, not a function")
    return target


def builder_sha256(builder: PromptBuilder) -> str:
    """sha256 of the builder's source text (``inspect.getsource``): what the contract records, and what serving code
    can compare with the function it calls."""
    try:
        source = inspect.getsource(builder)
    except (OSError, TypeError) as exc:
        raise StepError(f"cannot read the source of {getattr(builder, '__qualname__', builder)!r}: {exc}") from exc
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def build_prompt(builder: PromptBuilder, ref: str, record: dict[str, Any]) -> str:
    """The builder's user message for one annotated record; StepError if it raises or returns something else than
    a non-empty string."""
    try:
        message = builder(record)
    except Exception as exc:  # the user's code
        raise StepError(f"prompt builder {ref} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(message, str):
        raise StepError(f"prompt builder {ref} returned {type(message).__name__}, expected a string (the user message)")
    if not message.strip():
        raise StepError(f"prompt builder {ref} returned an empty string")
    return message


# ---- an annotated record -> the step's record -------------------------------------------------------------------

def mapper(step, group_key: str, folder: str | Path) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A function from an annotated record to the step's ``messages`` record: ``{group_key, messages: [user,
    assistant]}``, the assistant's turn the target mapping's JSON (fields in the mapping's order). ``step``: a
    ``config.StepConfig``; its builder is imported once, here."""
    builder = load_builder(step.prompt, folder) if step.prompt else None
    name = f"{step.pipeline}.{step.step}"

    def to_record(record: dict[str, Any]) -> dict[str, Any]:
        if builder is not None:
            try:
                user = build_prompt(builder, step.prompt, record)
            except StepError as exc:
                raise StepError(f"step {name}: {exc}") from exc.__cause__
        else:
            user = _field(record, step.input, "input", name)
            if not isinstance(user, str):
                raise StepError(f"step {name}: input: {step.input} is a {type(user).__name__}, expected text")
        answer = {field: _field(record, path, f"target.{field}", name) for field, path in step.target.items()}
        group = _field(record, group_key, "source.group_key", name)
        return {group_key: group, "messages": [{"role": "user", "content": user},
                                               {"role": "assistant", "content": json.dumps(answer, ensure_ascii=False)}]}

    return to_record


def _field(record: dict[str, Any], dotted: str, label: str, step_name: str) -> Any:
    try:
        return lookup(record, dotted)
    except StepError as exc:
        raise StepError(f"step {step_name}: {label}: {dotted}: {exc}") from None
