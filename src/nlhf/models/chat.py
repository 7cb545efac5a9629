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

Two more renderings use the same template:

- :func:`render_response_ids`: a reply as the policy generates it after
  :func:`render_prompt_ids`, up to and including the token that stops generation (the SFT
  targets);
- :func:`render_chat_turns`: the prompt messages and each response as a whole assistant turn
  (``apply_chat_template(prompt + [assistant reply])`` split after the prompt), the input of
  preference and reward models.
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
    "as_messages",
    "response_text",
    "render_prompt_ids",
    "render_response_ids",
    "render_chat_turns",
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


def as_messages(response: Text) -> list[dict[str, Any]]:
    """A reply as chat messages: text -> one assistant message; a message list as it is."""
    if isinstance(response, str):
        return [{"role": "assistant", "content": response}]
    return [dict(m) for m in response]


def response_text(response: Text) -> str:
    """A reply as plain text: text as it is; messages -> their contents, blank-line separated."""
    if isinstance(response, str):
        return response
    return "\n\n".join(str(m["content"]) for m in response)


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


def _template_text(tokenizer, messages: list, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=False
    )


def _text_ids(tokenizer, text: str) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def render_response_ids(tokenizer, prompt: Text, response: Text) -> list[int]:
    """Token ids of ``response`` as the policy generates it after
    ``render_prompt_ids(tokenizer, prompt)``, ending with the token that stops generation.

    - chat prompt, tokenizer with a template: the text the template adds after the generation
      prompt when the reply is appended (``apply_chat_template(prompt + [assistant reply])``),
      cut after its last stop token (:func:`stop_token_ids`: the end-of-turn token, e.g.
      ``reply<|im_end|>``; what follows it, like ChatML's newline, is never generated);
    - otherwise: the reply's text (:func:`response_text`) followed by EOS.
    """
    if is_chat(prompt) and has_chat_template(tokenizer):
        messages = list(prompt)
        head = _template_text(tokenizer, messages, True)
        full = _template_text(tokenizer, messages + as_messages(response), False)
        if full.startswith(head):
            ids = _text_ids(tokenizer, full[len(head) :])
            stops = set(stop_token_ids(tokenizer))
            ends = [i for i, t in enumerate(ids) if t in stops]
            if ends:
                return ids[: ends[-1] + 1]
            return ids + [int(tokenizer.eos_token_id)]
        _warn_once(
            f"not-prefix:{getattr(tokenizer, 'name_or_path', '')}",
            "the chat template does not render a conversation as its generation prompt followed "
            "by the reply; replies are encoded as their text and the end-of-turn token "
            "(warned once)",
        )
        stops = stop_token_ids(tokenizer)
        return _text_ids(tokenizer, response_text(response)) + [stops[-1]]
    ids = _text_ids(tokenizer, response_text(response))
    eos = int(tokenizer.eos_token_id)
    return ids if ids and ids[-1] == eos else ids + [eos]


def render_chat_turns(
    tokenizer, prompt: Text, responses: Sequence[Text]
) -> tuple[list[int], list[list[int]]] | None:
    """``(prompt_ids, [turn_ids, ...])`` of a chat prompt and each response as an assistant turn,
    through the tokenizer's template: ``prompt_ids`` = ``apply_chat_template(prompt)`` and each
    turn is what ``apply_chat_template(prompt + [assistant response])`` adds to it (header,
    reply, end-of-turn). ``prompt_ids + turn_ids`` is that conversation's rendering.

    ``None`` when the prompt is text, the tokenizer has no template (a one-time warning for a
    chat prompt), or the template does not render the prompt as a prefix of the conversation:
    the caller then uses its plain-text layout.
    """
    if not is_chat(prompt):
        return None
    name = getattr(tokenizer, "name_or_path", "")
    if not has_chat_template(tokenizer):
        _warn_once(
            f"no-template-scoring:{name}",
            "the tokenizer has no chat template: chat prompts and replies are read as "
            "'Role: content' text (warned once)",
        )
        return None
    messages = list(prompt)
    head = _template_text(tokenizer, messages, False)
    turns = []
    for response in responses:
        full = _template_text(tokenizer, messages + as_messages(response), False)
        if not full.startswith(head):
            _warn_once(
                f"not-prefix-scoring:{name}",
                "the chat template does not render a conversation as the prompt followed by the "
                "reply; preference and reward models read it as 'Role: content' text "
                "(warned once)",
            )
            return None
        turns.append(_text_ids(tokenizer, full[len(head) :]))
    return _text_ids(tokenizer, head), turns


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
