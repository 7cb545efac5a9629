"""Demonstrations for supervised fine-tuning (SFT): a prompt and the response to imitate.

The paper's policies start from an SFT model trained on human demonstrations (Munos et al. 2024,
§7: TL;DR summaries written by the posts' authors). Formats (``format=`` in
:func:`load_demonstrations`, ``auto`` decides per row from its keys):

- ``messages``: a ``messages`` chat list (UltraFeedback-binarized ``train_sft``, UltraChat,
  TRL's conversational format). The last assistant message is the response; the messages
  before it are the prompt (earlier assistant turns are context, not trained on).
- ``prompt_response``: a ``prompt`` and the response under ``response``, ``completion`` (TRL's
  prompt-completion format, e.g. ``trl-lib/tldr``) or ``label``
  (``CarperAI/openai_summarize_tldr``), each text or a chat list.

Sources are those of :func:`nlhf.data.load_comparisons` (JSONL/JSON/CSV/TSV/Parquet, a
``datasets`` directory or object, a hub name); a bad row is a ``ValueError`` naming the file,
the line/row and the field, or is skipped and counted with ``skip_invalid``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nlhf.data.formats import _maybe_json, _optional_str
from nlhf.data.loaders import Comparisons, load_rows
from nlhf.data.schema import InvalidComparisonError, Text, _check_text

DEMONSTRATION_FORMATS = ("messages", "prompt_response")
RESPONSE_KEYS = ("response", "completion", "label")


@dataclass
class Demonstration:
    """One SFT example, validated on construction (:class:`InvalidComparisonError`)."""

    prompt: Text
    """the context: text, or chat messages ending before the reply"""
    response: Text
    """the reply to imitate: text, or assistant message(s)"""
    split: str | None = None

    def __post_init__(self) -> None:
        self.prompt = _check_text(self.prompt, "prompt")
        self.response = _check_text(self.response, "response")
        if self.split is not None and not isinstance(self.split, str):
            self.split = str(self.split)


class Demonstrations(Comparisons):
    """A ``list[Demonstration]`` with ``skipped`` rows and ``source`` (see ``Comparisons``)."""


def detect_demonstration_format(row: Mapping[str, Any]) -> str:
    """``messages`` or ``prompt_response`` from a row's keys; an error names the keys."""
    if "messages" in row and row["messages"] is not None:
        return "messages"
    if "prompt" in row and any(k in row for k in RESPONSE_KEYS):
        return "prompt_response"
    raise InvalidComparisonError(
        "*",
        f"cannot tell the format from the keys {sorted(row)}; expected 'messages' (a chat list) "
        "or 'prompt' with 'response', 'completion' or 'label'",
    )


def check_demonstration_columns(columns: list[str], format: str = "auto") -> None:
    """The column names of a table (CSV header, Parquet schema) must hold demonstrations."""
    has_messages = "messages" in columns
    has_pair = "prompt" in columns and any(k in columns for k in RESPONSE_KEYS)
    if format == "messages" and not has_messages:
        raise InvalidComparisonError("messages", f"no such column (the columns are {columns})")
    if format == "prompt_response" and not has_pair:
        raise InvalidComparisonError(
            "*",
            f"the columns {columns} have no 'prompt' with 'response', 'completion' or 'label'",
        )
    if not (has_messages or has_pair):
        raise InvalidComparisonError(
            "*",
            f"the columns {columns} fit no demonstration format; name the columns: 'messages' "
            "(a chat list as JSON), or 'prompt' with 'response', 'completion' or 'label'",
        )


def from_messages(row: Mapping[str, Any]) -> Demonstration:
    messages = _maybe_json(row.get("messages"))
    if messages is None:
        raise InvalidComparisonError("messages", "is missing")
    if not isinstance(messages, list | tuple) or not messages:
        raise InvalidComparisonError(
            "messages", f"must be a non-empty chat list, got {messages!r:.80}"
        )
    messages = _check_text(list(messages), "messages")
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise InvalidComparisonError("messages", "has no assistant message to learn from")
    if last == 0:
        raise InvalidComparisonError("messages", "the assistant message has no prompt before it")
    if not messages[last]["content"].strip():
        raise InvalidComparisonError("messages", f"message {last} (the reply) is empty")
    return Demonstration(messages[:last], [messages[last]], _split(row))


def from_prompt_response(row: Mapping[str, Any]) -> Demonstration:
    prompt = _maybe_json(row.get("prompt"))
    if prompt is None:
        raise InvalidComparisonError("prompt", "is missing")
    key = next((k for k in RESPONSE_KEYS if k in row), "response")
    response = _maybe_json(row.get(key))
    if response is None:
        raise InvalidComparisonError(key, "is missing")
    if key == "label" and isinstance(response, int | float):
        raise InvalidComparisonError(
            key,
            f"{response!r} is a number, not a response; a row with a numeric label is a "
            "comparison (load it with load_comparisons / nlhf train-preference)",
        )
    if isinstance(response, str) and not response.strip():
        raise InvalidComparisonError(key, "is empty")
    try:
        return Demonstration(prompt, response, _split(row))
    except InvalidComparisonError as err:
        if err.field == "response" and key != "response":  # name the row's own field
            raise InvalidComparisonError(key, err.message) from None
        raise


def _split(row: Mapping[str, Any]) -> str | None:
    return _optional_str(row, "split")


def convert_demonstration(row: Any, format: str = "auto") -> Demonstration:
    """One row -> ``Demonstration`` (``format="auto"`` detects per row)."""
    if not isinstance(row, Mapping):
        raise InvalidComparisonError("*", f"a row must be a JSON object, got {type(row).__name__}")
    _check_format(format)
    fmt = detect_demonstration_format(row) if format == "auto" else format
    return from_messages(row) if fmt == "messages" else from_prompt_response(row)


def _check_format(format: str) -> None:
    if format != "auto" and format not in DEMONSTRATION_FORMATS:
        raise ValueError(
            f"format: unknown format {format!r}; choose one of {['auto', *DEMONSTRATION_FORMATS]}"
        )


def load_demonstrations(
    path_or_name: str | Path | Any,
    format: str = "auto",
    split: str | None = None,
    skip_invalid: bool = False,
    config_name: str | None = None,
) -> Demonstrations:
    """SFT demonstrations from any source of :func:`nlhf.data.load_comparisons`.

    ``format``: ``auto``, ``messages`` or ``prompt_response`` (module docstring). ``split``: the
    dataset split to read, or for a file the rows whose ``split`` field equals it.
    ``skip_invalid``: drop bad rows (``result.skipped``, one warning) instead of raising.
    """
    _check_format(format)
    return load_rows(
        path_or_name,
        lambda row: convert_demonstration(row, format),
        split=split,
        skip_invalid=skip_invalid,
        config_name=config_name,
        what="demonstrations",
        result=Demonstrations,
        check_columns=lambda columns: check_demonstration_columns(columns, format),
    )
