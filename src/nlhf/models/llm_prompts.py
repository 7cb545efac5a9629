"""Prompts and answers of the LLM judge: the rater templates and how a reply becomes an answer.

A template is chat-message text with three placeholders, ``{prompt}``, ``{response_1}`` and
``{response_2}``, filled in one pass (braces inside the texts are left alone). A reply's answer is
its first "1" or "2" standing alone (not part of a number or a word); with log-probabilities, the
answer token's probability is normalised over the two answers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

PAPER_TEMPLATE = (
    "You are an expert summary rater. Given a piece of text and two of its possible summaries, "
    "output 1 or 2 to indicate which summary is better.\n\n"
    "Text: {prompt}\n\nSummary 1: {response_1}\n\nSummary 2: {response_2}\n\n"
    "Preferred summary:"
)
"""The paper's rater instruction (§7) with the text and both summaries filled in."""

DIALOGUE_TEMPLATE = (
    "You are an expert rater of assistant replies. Given a conversation and two possible next "
    "replies of the assistant, output 1 or 2 to indicate which reply is better.\n\n"
    "Conversation:\n{prompt}\n\nReply 1: {response_1}\n\nReply 2: {response_2}\n\n"
    "Preferred reply:"
)
"""The chat-style variant, used for prompts that are chat message lists (``{prompt}`` is the
conversation as ``Role: content`` blocks)."""

PLACEHOLDERS = ("{prompt}", "{response_1}", "{response_2}")
_ANSWER = re.compile(r"(?<![0-9A-Za-z])([12])(?![0-9])")
_PLACEHOLDER = re.compile(r"\{(prompt|response_1|response_2)\}")


def check_template(template: str, name: str = "template") -> str:
    """``template`` if it holds each of {prompt}, {response_1}, {response_2}; else ValueError."""
    missing = [p for p in PLACEHOLDERS if p not in template]
    if missing:
        raise ValueError(f"{name}: missing placeholder(s) {', '.join(missing)}")
    return template


def fill_template(template: str, prompt: str, response_1: str, response_2: str) -> str:
    """The template with its placeholders replaced in one pass (braces in the texts stay)."""
    values = {"prompt": prompt, "response_1": response_1, "response_2": response_2}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def answer_from_text(reply: str) -> str | None:
    """ "1" or "2": the first 1 or 2 standing alone in ``reply`` (not part of a number or word);
    ``None`` when there is none."""
    m = _ANSWER.search(reply or "")
    return m.group(1) if m else None


def answer_from_logprobs(logprobs: dict[str, Any] | None) -> float | None:
    """``P("1") / (P("1") + P("2"))`` at the answer token of a chat completion's ``logprobs``.

    The answer token is the one holding the reply's first standalone 1 or 2 (by the tokens'
    text). Its probability and the ``top_logprobs`` alternatives whose text is "1" or "2" (any
    surrounding whitespace) are summed per answer. ``None`` when the reply has no such token or
    the digit shares its token with other characters."""
    positions = (logprobs or {}).get("content") or []
    tokens = [str(p.get("token") or "") for p in positions]
    m = _ANSWER.search("".join(tokens))
    if m is None:
        return None
    ends = np.cumsum([len(t) for t in tokens])  # end offset of each token in the reply
    i = int(np.searchsorted(ends, m.start(), side="right"))  # the token holding the digit
    position = positions[i]
    if tokens[i].strip() != m.group(1):
        return None
    mass = {"1": 0.0, "2": 0.0}
    seen: set[str] = set()
    for entry in [position, *(position.get("top_logprobs") or [])]:
        text = str(entry.get("token") or "")
        if text in seen or entry.get("logprob") is None:
            continue
        seen.add(text)
        if text.strip() in mass:
            mass[text.strip()] += math.exp(float(entry["logprob"]))
    total = mass["1"] + mass["2"]
    return mass["1"] / total if total > 0 else None


def load_template(inline: str | None, file: Path | None, default: str, name: str) -> str:
    if file is None:
        return default if inline is None else inline
    try:
        text = Path(file).read_text()
    except OSError as err:
        raise ValueError(f"{name}_file: cannot read {file} ({err.strerror or err})") from None
    return check_template(text, f"{name}_file {file}")
