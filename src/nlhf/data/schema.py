"""The in-memory schema of one pairwise comparison (paper §5: pairwise human preference data).

A ``Comparison`` holds a prompt ``x``, two responses ``y`` (``response_a``) and ``y'``
(``response_b``) and a label ``P(y > y' | x)`` in [0, 1]: 1 means ``a`` was preferred, 0 means
``b`` was, anything in between is a soft or tied label (0.5 = tie). Prompts and responses are
plain text or chat message lists (``[{"role": "user", "content": "..."}, ...]``); models read
them through :func:`as_text`.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Union

Message = dict[str, Any]
Text = Union[str, list[Message]]  # noqa: UP007  (runtime alias, py3.10)


class InvalidComparisonError(ValueError):
    """A comparison that breaks the schema; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"field {field!r}: {message}")
        self.field = field
        self.message = message


ROLES = ("system", "developer", "user", "assistant", "tool", "function", "ipython")
"""The chat roles a message may have (those of the common chat templates)."""


def _check_string(value: str, field: str, what: str = "") -> str:
    """Text a tokenizer can encode: no lone surrogates (which JSON escapes such as ``\\ud800``
    produce and no UTF-8 encoder accepts)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidComparisonError(
            field,
            f"{what}holds an invalid character {value[err.start]!r} (a lone UTF-16 surrogate) "
            f"at character {err.start}",
        ) from None
    return value


def _check_message(m: Any, i: int, field: str) -> dict[str, Any]:
    if isinstance(m, dict) and "from" in m and "value" in m and "role" not in m:
        raise InvalidComparisonError(
            field,
            f"message {i} has ShareGPT keys 'from'/'value'; convert the messages to "
            f"'role'/'content' (human -> user, gpt -> assistant)",
        )
    if not isinstance(m, dict) or "content" not in m or "role" not in m:
        raise InvalidComparisonError(
            field, f"message {i} must be a mapping with 'role' and 'content', got {m!r:.120}"
        )
    role, content = m["role"], m["content"]
    if role not in ROLES:
        raise InvalidComparisonError(
            field, f"message {i} has role {role!r:.40}; a role is one of {', '.join(ROLES)}"
        )
    if not isinstance(content, str):
        hint = ""
        if isinstance(content, list):
            hint = " (a list of content parts: only text content is read; join the parts' text)"
        raise InvalidComparisonError(
            field, f"message {i} has non-text content {content!r:.120}{hint}"
        )
    _check_string(content, field, f"message {i} ")
    return dict(m)


def _check_text(value: Any, field: str) -> Text:
    if value is None:
        raise InvalidComparisonError(field, "is missing")
    if isinstance(value, str):
        if not value.strip():
            raise InvalidComparisonError(field, "is empty")
        return _check_string(value, field)
    if isinstance(value, list | tuple):
        if len(value) == 0:
            raise InvalidComparisonError(field, "is an empty message list")
        messages = [_check_message(m, i, field) for i, m in enumerate(value)]
        if not any(m["content"].strip() for m in messages):
            raise InvalidComparisonError(field, "all messages are empty")
        return messages
    raise InvalidComparisonError(
        field, f"must be text or a list of chat messages, got {value!r:.120}"
    )


def _check_label(value: Any) -> float:
    if value is None:
        raise InvalidComparisonError("label", "is missing")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # CSV cells are text: "1", "0.5" are numbers
        stripped = value.strip()
        if not stripped:
            raise InvalidComparisonError("label", "is empty")
        try:
            value = float(stripped)
        except ValueError:
            raise InvalidComparisonError(
                "label", f"{value!r:.40} is not a number (P(a > b) in [0, 1]: 1 = response_a)"
            ) from None
    if type(value) not in (int, float) and not isinstance(value, numbers.Real):  # numpy too
        raise InvalidComparisonError("label", f"{value!r:.40} is not a number")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise InvalidComparisonError("label", f"{value} is outside [0, 1]")
    return value


@dataclass
class Comparison:
    """One pairwise comparison, validated on construction (:class:`InvalidComparisonError`)."""

    prompt: Text
    response_a: Text
    response_b: Text
    label: float
    """P(a > b | prompt) in [0, 1]: 1 = a preferred, 0 = b preferred, 0.5 = tie."""
    rater: str | None = None
    split: str | None = None

    def __post_init__(self) -> None:
        self.prompt = _check_text(self.prompt, "prompt")
        self.response_a = _check_text(self.response_a, "response_a")
        self.response_b = _check_text(self.response_b, "response_b")
        self.label = _check_label(self.label)
        if as_text(self.response_a) == as_text(self.response_b):
            raise InvalidComparisonError("response_b", "is identical to response_a")
        if self.rater is not None and not isinstance(self.rater, str):
            self.rater = str(self.rater)
        if self.split is not None and not isinstance(self.split, str):
            self.split = str(self.split)

    def swapped(self) -> Comparison:
        """The same comparison with the responses swapped and the label ``1 - label``."""
        return Comparison(
            self.prompt, self.response_b, self.response_a, 1.0 - self.label, self.rater, self.split
        )

    def to_dict(self) -> dict[str, Any]:
        """The native JSONL row (``rater``/``split`` only when set)."""
        row = asdict(self)
        return {k: v for k, v in row.items() if v is not None or k not in ("rater", "split")}


def as_text(value: Text) -> str:
    """Plain text a model reads: text as is; a chat list as ``Role: content`` blocks.

    ``[{"role": "user", "content": "Hi"}]`` -> ``"User: Hi"``; blocks are joined by a blank line,
    the layout of Anthropic HH-RLHF (``Human:`` / ``Assistant:``).
    """
    if isinstance(value, str):
        return value
    return "\n\n".join(f"{str(m['role']).capitalize()}: {m['content']}" for m in value)
