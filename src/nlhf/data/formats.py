"""Converters from the public pairwise-preference formats to :class:`Comparison`.

Formats (``format=`` in :func:`nlhf.data.load_comparisons`):

- ``native``: ``prompt, response_a, response_b, label[, rater, split]`` (what ``write_jsonl``
  writes).
- ``chosen_rejected``: ``prompt, chosen, rejected`` (TRL / UltraFeedback-binarized style), plain
  text or chat message lists; ``a = chosen``, label 1. A prompt repeated at the start of the
  chosen/rejected chats is taken out of them (UltraFeedback-binarized: a text prompt, whole chats).
- ``summarize_from_feedback``: OpenAI's comparisons (Stiennon et al. 2020), ``info.post`` (or
  ``info.article``), ``summaries[i].text``, ``choice`` (index of the preferred summary); the prompt
  is laid out as ``SUBREDDIT: r/...\\n\\nTITLE: ...\\n\\nPOST: ...\\n\\nTL;DR:``.
- ``hh_rlhf``: Anthropic HH-RLHF, ``chosen`` and ``rejected`` full dialogues; their shared prefix
  up to the last ``Assistant:`` turn is the prompt. Also takes chat message lists without a
  ``prompt`` key (the shared leading messages are the prompt).

Each converter maps one row (a mapping) to a ``Comparison`` or raises
:class:`~nlhf.data.schema.InvalidComparisonError` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from nlhf.data.schema import Comparison, InvalidComparisonError

FORMATS = ("native", "chosen_rejected", "summarize_from_feedback", "hh_rlhf")
REQUIRED_COLUMNS = {
    "native": ("prompt", "response_a", "response_b", "label"),
    "chosen_rejected": ("prompt", "chosen", "rejected"),
    "summarize_from_feedback": ("info", "summaries", "choice"),
    "hh_rlhf": ("chosen", "rejected"),
}
ASSISTANT_MARK = "\n\nAssistant:"


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess a row's format from its keys; raises ``InvalidComparisonError`` if none fits."""
    keys = set(row)
    if keys & {"response_a", "response_b"}:
        return "native"
    if keys & {"info", "summaries"}:
        return "summarize_from_feedback"
    if keys & {"chosen", "rejected"}:
        return "chosen_rejected" if "prompt" in keys else "hh_rlhf"
    raise InvalidComparisonError(
        "*",
        f"cannot tell the format from the keys {sorted(keys)}; expected native "
        "(prompt, response_a, response_b, label), prompt/chosen/rejected, HH-RLHF "
        "(chosen, rejected) or summarize-from-feedback (info, summaries, choice)",
    )


def check_columns(columns: list[str], format: str = "auto") -> None:
    """The column names of a table (a CSV header, a Parquet schema) must fit ``format``;
    ``InvalidComparisonError`` names the first missing column."""
    if format == "auto":
        try:
            format = detect_format(dict.fromkeys(columns))
        except InvalidComparisonError:
            raise InvalidComparisonError(
                "*",
                f"the columns {columns} fit no comparison format; name the columns: "
                + "; ".join(f"{f}: {', '.join(c)}" for f, c in REQUIRED_COLUMNS.items()),
            ) from None
    required = REQUIRED_COLUMNS.get(format, ())
    for name in required:
        if name not in columns:
            raise InvalidComparisonError(
                name,
                f"no such column (the columns are {columns}); the {format} format needs "
                f"{', '.join(required)}",
            )


def _get(row: Mapping[str, Any], field: str) -> Any:
    if field not in row or row[field] is None:
        raise InvalidComparisonError(field, "is missing")
    value = row[field]
    if isinstance(value, str) and value == "":
        raise InvalidComparisonError(field, "is empty")
    return value


def _maybe_json(value: Any) -> Any:
    """Cells of CSV files hold nested values as JSON text; decode those."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _optional_str(row: Mapping[str, Any], field: str) -> str | None:
    value = row.get(field)
    if value is None or (isinstance(value, float) and value != value) or value == "":
        return None
    return str(value)


def from_native(row: Mapping[str, Any]) -> Comparison:
    return Comparison(
        prompt=_maybe_json(_get(row, "prompt")),
        response_a=_maybe_json(_get(row, "response_a")),
        response_b=_maybe_json(_get(row, "response_b")),
        label=_get(row, "label"),
        rater=_optional_str(row, "rater"),
        split=_optional_str(row, "split"),
    )


def from_chosen_rejected(row: Mapping[str, Any]) -> Comparison:
    prompt = _maybe_json(_get(row, "prompt"))
    chosen = _maybe_json(_get(row, "chosen"))
    rejected = _maybe_json(_get(row, "rejected"))
    if isinstance(chosen, list) and isinstance(rejected, list):
        if isinstance(prompt, list):
            # Some conversational datasets repeat the prompt inside chosen/rejected: drop it.
            n = len(prompt)
            if n and chosen[:n] == prompt and rejected[:n] == prompt:
                chosen, rejected = chosen[n:], rejected[n:]
        elif isinstance(prompt, str):
            # UltraFeedback-binarized: a text prompt, and chosen/rejected are whole chats that
            # start with it as a user turn; the shared leading messages (ending with a user
            # turn) are the conversation the replies answer, so they become the prompt.
            n = _shared_messages(chosen, rejected)
            if n and _is_user(chosen[n - 1]):
                prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
    return Comparison(
        prompt,
        chosen,
        rejected,
        1.0,
        rater=_optional_str(row, "rater"),
        split=_optional_str(row, "split"),
    )


def _shared_messages(a: list[Any], b: list[Any]) -> int:
    """How many leading messages two chats share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _is_user(message: Any) -> bool:
    return isinstance(message, Mapping) and message.get("role") == "user"


def _split_dialogues(chosen: str, rejected: str) -> tuple[str, str, str]:
    """HH-RLHF: shared prefix up to and including the last ``\\n\\nAssistant:`` is the prompt."""
    common = 0
    for ca, cb in zip(chosen, rejected):
        if ca != cb:
            break
        common += 1
    cut = chosen.rfind(ASSISTANT_MARK, 0, common)
    if cut < 0:
        raise InvalidComparisonError(
            "chosen",
            "chosen and rejected share no prefix ending in an '\\n\\nAssistant:' turn; "
            "is this HH-RLHF data?",
        )
    end = cut + len(ASSISTANT_MARK)
    return chosen[:end], chosen[end:].lstrip(" "), rejected[end:].lstrip(" ")


def from_hh_rlhf(row: Mapping[str, Any]) -> Comparison:
    chosen = _maybe_json(_get(row, "chosen"))
    rejected = _maybe_json(_get(row, "rejected"))
    if isinstance(chosen, list) and isinstance(rejected, list):
        n = _shared_messages(chosen, rejected)
        if n == 0:
            raise InvalidComparisonError("chosen", "chosen and rejected share no leading messages")
        prompt, a, b = chosen[:n], chosen[n:], rejected[n:]
        if not a and not b:
            raise InvalidComparisonError("rejected", "is identical to chosen")
    elif isinstance(chosen, str) and isinstance(rejected, str):
        if chosen == rejected:
            raise InvalidComparisonError("rejected", "is identical to chosen")
        prompt, a, b = _split_dialogues(chosen, rejected)
    else:
        raise InvalidComparisonError(
            "chosen", "chosen and rejected must both be text or both lists"
        )
    if isinstance(a, str) and not a.strip():
        raise InvalidComparisonError("chosen", "the chosen reply after the shared prompt is empty")
    if isinstance(b, str) and not b.strip():
        raise InvalidComparisonError(
            "rejected", "the rejected reply after the shared prompt is empty"
        )
    return Comparison(prompt, a, b, 1.0, rater=_optional_str(row, "rater"))


def summary_prompt(info: Mapping[str, Any]) -> str:
    """The TL;DR prompt layout of Stiennon et al. (2020) for an ``info`` record:
    ``SUBREDDIT: r/...\\n\\nTITLE: ...\\n\\nPOST: ...\\n\\nTL;DR:``, the layout of the TL;DR SFT
    data ``trl-lib/tldr``, so that policy prompts and comparison prompts read the same."""
    if info.get("post"):
        parts = []
        if info.get("subreddit"):
            parts.append(f"SUBREDDIT: r/{info['subreddit']}")
        if info.get("title"):
            parts.append(f"TITLE: {info['title']}")
        parts.append(f"POST: {info['post']}")
        return "\n\n".join(parts) + "\n\nTL;DR:"
    if info.get("article"):
        return f"ARTICLE: {info['article']}\n\nTL;DR:"
    raise InvalidComparisonError("info.post", "is missing (no 'post' nor 'article' in info)")


def from_summarize_from_feedback(row: Mapping[str, Any]) -> Comparison:
    info = _maybe_json(_get(row, "info"))
    if not isinstance(info, Mapping):
        raise InvalidComparisonError("info", f"must be a mapping, got {info!r}")
    summaries = _maybe_json(_get(row, "summaries"))
    if not isinstance(summaries, list) or len(summaries) != 2:
        raise InvalidComparisonError("summaries", "must be a list of two summaries")
    texts = []
    for i, s in enumerate(summaries):
        text = s.get("text") if isinstance(s, Mapping) else None
        if not isinstance(text, str) or not text.strip():
            raise InvalidComparisonError(f"summaries[{i}].text", "is missing or empty")
        texts.append(text.strip())
    choice = _get(row, "choice")
    if isinstance(choice, bool):
        raise InvalidComparisonError("choice", f"{choice!r} is not 0 or 1")
    try:
        choice_int = int(choice)
    except (TypeError, ValueError):
        raise InvalidComparisonError("choice", f"{choice!r} is not 0 or 1") from None
    if choice_int not in (0, 1) or (isinstance(choice, float) and not choice.is_integer()):
        raise InvalidComparisonError("choice", f"{choice!r} is not 0 or 1")
    return Comparison(
        summary_prompt(info),
        texts[0],
        texts[1],
        1.0 if choice_int == 0 else 0.0,
        rater=_optional_str(row, "worker"),
        split=_optional_str(row, "split"),
    )


CONVERTERS: dict[str, Callable[[Mapping[str, Any]], Comparison]] = {
    "native": from_native,
    "chosen_rejected": from_chosen_rejected,
    "summarize_from_feedback": from_summarize_from_feedback,
    "hh_rlhf": from_hh_rlhf,
}


def convert_row(row: Mapping[str, Any], format: str = "auto") -> Comparison:
    """One row of any supported format -> ``Comparison`` (``format="auto"`` detects per row)."""
    if not isinstance(row, Mapping):
        raise InvalidComparisonError("*", f"a row must be a JSON object, got {type(row).__name__}")
    fmt = detect_format(row) if format == "auto" else format
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown format {format!r}; choose one of {['auto', *FORMATS]}")
    return CONVERTERS[fmt](row)
