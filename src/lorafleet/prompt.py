"""How a record is asked: the domain's system prompt (for a domain with context, followed by a blank line and the
record's entity rendered through the context template: ``render_context``, ``with_system_prompt``), then the user
message the record's input becomes, rendered by the tokenizer's chat template with the assistant's turn opened. The
one source for training (``data.to_example`` builds every prompt here; TRL renders it with the same template and the
same ``add_generation_prompt``), evaluation and parity (``prompt_text``), and a published model's consumers
(``contract.render_prompt``, ``lorafleet predict``: ``record_turns`` and ``render_chat``, which need neither
transformers nor torch), so all of them ask alike."""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DataFormat = Literal["messages", "conversations", "alpaca"]


class MessageFormat(BaseModel):
    """How a record of the training data's format becomes the messages the model is asked with: the system prompt,
    then one user message made from the record's input by ``user_message`` (a ``str.format`` template)."""

    model_config = ConfigDict(frozen=True)
    data_format: DataFormat = Field(description="The training data's format (data.format of the domain config).")
    messages: list[dict[str, str]] = Field(
        default=[{"role": "system", "content": "{system_prompt}"}, {"role": "user", "content": "{user_message}"}],
        description="The messages, in order, before the chat template renders them.")
    user_message: str = Field(description="The user message made from the record's fields: {input} is the record's "
                              "text (messages, conversations: the user turn's content), {instruction} alpaca's "
                              "instruction.")
    user_message_without_input: str | None = Field(
        None, description="The user message of an alpaca record whose input is empty.")
    add_generation_prompt: bool = Field(True, description="The chat template opens the assistant's turn after them.")

    @classmethod
    def of(cls, data_format: DataFormat) -> MessageFormat:
        if data_format == "alpaca":
            return cls(data_format=data_format, user_message="{instruction}\n\n{input}",
                       user_message_without_input="{instruction}")
        return cls(data_format=data_format, user_message="{input}")

    def render_user(self, input: str, instruction: str | None = None) -> str:
        """The user message for a record's ``input`` (and alpaca's ``instruction``)."""
        for name, value in (("input", input), ("instruction", instruction)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string, got {type(value).__name__}")
        if self.user_message_without_input is not None and not input:
            return self.user_message_without_input.format(instruction=instruction)
        return self.user_message.format(input=input, instruction=instruction)


# between the system prompt and an entity's rendered context (a domain with ``context``)
CONTEXT_SEPARATOR = "\n\n"


def with_system_prompt(turns: list[dict[str, str]], system_prompt: str,
                       context: str | None = None) -> list[dict[str, str]]:
    """The prompt turns as the model is asked: the domain's system prompt first, unless the record has its own;
    ``context`` (the record's entity rendered through the domain's context template, ``render_context``) follows that
    system prompt after a blank line."""
    own = bool(turns) and turns[0]["role"] == "system"
    if own and context is None:
        return turns
    system, rest = (turns[0]["content"], turns[1:]) if own else (system_prompt, turns)
    if context is not None:
        system = system + CONTEXT_SEPARATOR + context
    return [{"role": "system", "content": system}, *rest]


def without_context(messages: list[dict[str, str]], context: str) -> list[dict[str, str]]:
    """The messages of ``with_system_prompt(..., context)`` with the context taken out of the system prompt again:
    how evaluation asks the same record with the context removed."""
    system = messages[0]["content"]
    suffix = CONTEXT_SEPARATOR + context
    if messages[0]["role"] != "system" or not system.endswith(suffix):
        raise ValueError("the messages' system prompt does not end with the context")
    return [{"role": "system", "content": system[: -len(suffix)]}, *messages[1:]]


def render_context(template: str, record: dict[str, Any]) -> str:
    """An entity's record through a context template (``str.format`` fields naming the record's fields): a string as
    it is, a list as its items joined by ", " (each item rendered the same way), a number, boolean or null as JSON, an
    object as JSON."""
    return template.format_map({name: _context_value(value) for name, value in record.items()})


def _context_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return ", ".join(_context_value(v) for v in value)
    return json.dumps(value, ensure_ascii=False)


def prompt_messages(system_prompt: str, user_message: str, context: str | None = None) -> list[dict[str, str]]:
    """The messages a single-turn record is asked with (``context``: its entity's rendered context)."""
    return with_system_prompt([{"role": "user", "content": user_message}], system_prompt, context)


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt as the model reads it: the chat template over the messages, the assistant's turn opened (TRL
    renders a training prompt the same way, then appends the answer)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_chat(template: str, messages: list[dict[str, str]], special_tokens: dict[str, Any]) -> str:
    """``prompt_text`` without transformers: the chat template rendered as transformers' ``apply_chat_template``
    renders it (the same jinja environment, filters and globals; the tokenizer's special tokens as variables), the
    assistant's turn opened."""
    return _compiled(template).render(messages=messages, tools=None, documents=None, add_generation_prompt=True,
                                      **special_tokens)


@lru_cache(maxsize=8)
def _compiled(template: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # not HTML-escaped, as transformers
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


# ---- format adapters: a record of the domain's data format -> its turns ---------------------------------------

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def _turns_messages(record: dict[str, Any], with_answer: bool) -> list[dict[str, str]]:
    turns = record["messages"]
    if not isinstance(turns, list):
        raise KeyError("messages (a list)")
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def _turns_conversations(record: dict[str, Any], with_answer: bool) -> list[dict[str, str]]:
    turns = record["conversations"]
    if not isinstance(turns, list):
        raise KeyError("conversations (a list)")
    out = []
    for t in turns:
        if t["from"] not in SHAREGPT_ROLES:
            raise ValueError(f"unknown speaker {t['from']!r} (expected one of {sorted(SHAREGPT_ROLES)})")
        out.append({"role": SHAREGPT_ROLES[t["from"]], "content": t["value"]})
    return out


def _turns_alpaca(record: dict[str, Any], with_answer: bool) -> list[dict[str, str]]:
    user = MessageFormat.of("alpaca").render_user(record.get("input") or "", record["instruction"])
    return [{"role": "user", "content": user}, *([{"role": "assistant", "content": record["output"]}] if with_answer else [])]


_ADAPTERS = {"messages": _turns_messages, "conversations": _turns_conversations, "alpaca": _turns_alpaca}


def record_turns(record: dict[str, Any], data_format: DataFormat, with_answer: bool = True) -> list[dict[str, str]]:
    """A record's turns in role/content form. ``with_answer``: the record holds the answer (training data: alpaca's
    ``output`` is read); without, the turns asked (a trailing assistant turn, as an evaluation file has, is left
    out). Raises KeyError/ValueError/TypeError on a malformed record."""
    turns = _ADAPTERS[data_format](record, with_answer)
    for t in turns:
        if t["role"] not in ("system", "user", "assistant") or not isinstance(t["content"], str):
            raise ValueError(f"bad turn {t!r}: role must be system/user/assistant and content a string")
    if not with_answer:
        while turns and turns[-1]["role"] == "assistant":
            turns = turns[:-1]
    if not any(t["role"] == "user" for t in turns):
        raise ValueError("no user turn")
    return turns
