"""How a record is asked: the domain's system prompt, then the user message the record's input becomes, rendered by
the tokenizer's chat template with the assistant's turn opened. The one source for training (``data.to_example``
builds every prompt here; TRL renders it with the same template and the same ``add_generation_prompt``), evaluation
and parity (``prompt_text``), and a published model's consumers (``contract.render_prompt``), so all of them ask
alike."""
from __future__ import annotations

from typing import Literal

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


def with_system_prompt(turns: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    """The prompt turns as the model is asked: the domain's system prompt first, unless the record has its own."""
    if turns and turns[0]["role"] == "system":
        return turns
    return [{"role": "system", "content": system_prompt}, *turns]


def prompt_messages(system_prompt: str, user_message: str) -> list[dict[str, str]]:
    """The messages a single-turn record is asked with."""
    return with_system_prompt([{"role": "user", "content": user_message}], system_prompt)


def prompt_text(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt as the model reads it: the chat template over the messages, the assistant's turn opened (TRL
    renders a training prompt the same way, then appends the answer)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
