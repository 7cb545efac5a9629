"""Prompts as a model sees them: plain text, or chat messages through the tokenizer's template.

A prompt is text or a list of chat messages (``[{"role": "user", "content": "..."}]``, the
``Text`` type of :mod:`nlhf.data.schema`). For a policy:

- a message list with a tokenizer that has a chat template becomes
  ``apply_chat_template(messages, add_generation_prompt=True)``;
- a message list without a template falls back to :func:`nlhf.data.schema.as_text`
  (``User: ...`` blocks) with a one-time warning;
- plain text is tokenized as written (no BOS/EOS added).

Generation stops at the tokenizer's EOS and at the template's end-of-turn token
(:func:`stop_token_ids`), e.g. ``<|im_end|>`` for ChatML templates.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Sequence
from typing import Any

from nlhf.data.schema import Text, as_text

__all__ = [
    "is_chat",
    "has_chat_template",
    "render_prompt_ids",
    "encode_prompts",
    "stop_token_ids",
]

_PROBE_REPLY = "nlhf-probe-reply"
_SPECIAL_LOOKING = re.compile(r"<\|?[^<>\s]{1,40}\|?>|\[/?[A-Z_]{2,20}\]")
_warned: set[str] = set()


def is_chat(prompt: Any) -> bool:
    """True for a chat message list (a list of mappings with ``role`` and ``content``)."""
    return isinstance(prompt, list | tuple) and all(isinstance(m, dict) for m in prompt)


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def _ids(encoded: Any) -> list[int]:
    """Token ids from ``apply_chat_template(tokenize=True)``: a list, or a mapping in
    transformers >= 5."""
    if hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return [int(t) for t in encoded]


def render_prompt_ids(tokenizer, prompt: Text) -> list[int]:
    """Token ids of one prompt as the policy reads it (see the module docstring)."""
    if isinstance(prompt, str):
        return [int(t) for t in tokenizer(prompt, add_special_tokens=False)["input_ids"]]
    if not is_chat(prompt):
        raise ValueError(f"a prompt must be text or a list of chat messages, got {prompt!r:.80}")
    if has_chat_template(tokenizer):
        return _ids(
            tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
        )
    _warn_once(
        f"no-template:{getattr(tokenizer, 'name_or_path', '')}",
        "the tokenizer has no chat template: chat prompts are rendered as 'Role: content' "
        "blocks (warned once)",
    )
    return render_prompt_ids(tokenizer, as_text(list(prompt)))


def encode_prompts(tokenizer, prompts: Sequence[Text]) -> list[list[int]]:
    """Token ids of each prompt (:func:`render_prompt_ids`); an empty result is an error."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of prompts, got a single string")
    encoded = [render_prompt_ids(tokenizer, p) for p in prompts]
    for i, ids in enumerate(encoded):
        if len(ids) == 0:
            raise ValueError(f"prompt {i} ({prompts[i]!r:.80}) is empty after tokenization")
    return encoded


def _template_end_of_turn(tokenizer) -> int | None:
    """The token a chat template closes an assistant turn with, found by rendering a probe
    conversation: the first token after the reply, if it is a special (added) token."""
    messages = [
        {"role": "user", "content": "nlhf-probe"},
        {"role": "assistant", "content": _PROBE_REPLY},
    ]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except Exception as err:  # a template that cannot render a plain two-turn chat
        raise ValueError(f"the tokenizer's chat template cannot render a chat: {err}") from None
    tail = text[text.rfind(_PROBE_REPLY) + len(_PROBE_REPLY) :]
    if not tail.strip():
        return None
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", [])) | {
        int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})
    }
    for tok in ids:
        if int(tok) in special:
            return int(tok)
        if tokenizer.decode([tok]).strip():
            break  # the turn ends in ordinary text
    marker = _SPECIAL_LOOKING.match(tail.strip())
    if marker:  # looks like a special token, yet the vocabulary does not have it
        raise ValueError(
            f"the chat template ends a turn with {marker.group(0)!r}, which is not a token of the "
            "tokenizer's vocabulary, so generation could not stop at the end of a turn"
        )
    return None


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a response: EOS and, with a chat template, its end-of-turn token."""
    cache = getattr(tokenizer, "_nlhf_stop_ids", None)
    if cache is not None:
        return list(cache)
    stops: list[int] = []
    if tokenizer.eos_token_id is not None:
        stops.append(int(tokenizer.eos_token_id))
    if has_chat_template(tokenizer):
        eot = _template_end_of_turn(tokenizer)
        if eot is not None and eot not in stops:
            stops.append(eot)
    with contextlib.suppress(AttributeError):  # a tokenizer that refuses new attributes
        tokenizer._nlhf_stop_ids = tuple(stops)
    return stops
