"""Settings of the LLM judge and the two ways to give them: ``--judge openai:MODEL@BASE_URL``
(every other setting at its default) or a YAML judge spec file (``--judge judge.yaml``) holding
:class:`LLMJudgeConfig`'s fields. The API key is never a setting: only the NAME of the
environment variable that holds it (``api_key_env``)."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from nlhf.models.llm_prompts import check_template

DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass
class LLMJudgeConfig:
    """Settings of an LLM judge (a ``--judge`` YAML spec file holds these fields)."""

    model: str = ""
    """model name as the server knows it (required), e.g. gpt-4o-mini"""
    base_url: str = DEFAULT_BASE_URL
    """the server's OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"""
    api_key_env: str = "OPENAI_API_KEY"
    """NAME of the environment variable holding the API key (the key itself is never read from
    a file, logged or written anywhere); unset or empty = no Authorization header"""
    template: str | None = None
    """prompt template for text prompts, with {prompt}, {response_1} and {response_2}; default:
    the paper's summary-rater instruction"""
    template_file: Path | None = None
    """file holding the template for text prompts (instead of template)"""
    chat_template: str | None = None
    """template for chat-message-list prompts (same placeholders; {prompt} is the conversation as
    'Role: content' blocks); default: a dialogue variant of the paper's instruction"""
    chat_template_file: Path | None = None
    """file holding the chat template (instead of chat_template)"""
    system: str | None = None
    """optional system message sent before the filled-in template"""
    probability: Literal["auto", "logprobs", "sample"] = "auto"
    """how one answer becomes a probability: 'logprobs' (P("1") normalised over "1" and "2"
    from the server's top_logprobs), 'sample' (fraction of sampled replies answering 1), or
    'auto' (logprobs when the server returns them)"""
    temperature: float = 0.0
    """sampling temperature of the replies with probability=sample (0 = greedy)"""
    samples: int = 1
    """replies per order with probability=sample (> 1 needs temperature > 0)"""
    max_tokens: int = 16
    """maximum tokens of a reply (the answer is its first standalone 1 or 2; a judge that
    answers at once stops after one token)"""
    top_logprobs: int = 20
    """alternatives per token requested with probability=logprobs (OpenAI allows up to 20)"""
    seed: int = 0
    """seed sent with every request (sample i uses seed + i), so replies can be reproduced"""
    concurrency: int = 4
    """requests in flight at once"""
    timeout_s: float = 60.0
    """seconds to wait for one answer before retrying it"""
    max_retries: int = 5
    """retries of a request after HTTP 408/409/429/5xx, a connection error or a timeout"""
    backoff_s: float = 1.0
    """first retry delay in seconds, doubled each retry, with jitter (uniform in [d/2, d])"""
    backoff_max_s: float = 30.0
    """cap of a retry delay in seconds"""
    reasks: int = 3
    """times an unparseable reply (neither 1 nor 2) is asked again with a new seed"""
    reask_temperature: float = 1.0
    """temperature of re-asks (> 0 so that a re-ask can differ from the first reply)"""
    on_unparseable: Literal["fail", "tie"] = "fail"
    """a reply still unparseable after the re-asks: 'fail' stops with the count, 'tie' counts it
    as J = 1/2 (reported)"""
    check_model: bool = True
    """before the first request, stop if the server's /models list lacks the model (turn off for
    servers that list only the models they have loaded so far)"""
    cache: str = "default"
    """answer cache: 'default' ($NLHF_CACHE/llm-judge.sqlite, i.e. ~/.cache/nlhf), 'off', or a
    SQLite file path"""
    progress: bool = True
    """show a progress bar over the requests of a large batch"""

    def __post_init__(self) -> None:
        if not self.model.strip():
            raise ValueError("model: give the model name the server serves")
        if not re.match(r"^https?://[^/\s]+", self.base_url):
            raise ValueError(f"base_url: expected http(s)://HOST[:PORT]/..., got {self.base_url!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env):
            raise ValueError(
                f"api_key_env: expected the NAME of an environment variable, got "
                f"{self.api_key_env[:4]!r}... (never put the key itself in a spec)"
            )
        for inline, file, name in (
            (self.template, self.template_file, "template"),
            (self.chat_template, self.chat_template_file, "chat_template"),
        ):
            if inline is not None and file is not None:
                raise ValueError(f"{name}: give {name} or {name}_file, not both")
            if inline is not None:
                check_template(inline, name)
        if self.probability not in ("auto", "logprobs", "sample"):
            raise ValueError(f"probability: 'auto', 'logprobs' or 'sample', not {self.probability}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if self.samples < 1:
            raise ValueError(f"samples: must be >= 1, got {self.samples}")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("samples > 1 needs temperature > 0 (greedy replies are identical)")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if not 1 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs: must be in 1..20, got {self.top_logprobs}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {self.concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_retries < 0 or self.reasks < 0:
            raise ValueError("max_retries and reasks must be >= 0")
        if not (0 <= self.backoff_s <= self.backoff_max_s):
            raise ValueError("backoff_s and backoff_max_s: need 0 <= backoff_s <= backoff_max_s")
        if not self.reask_temperature > 0:
            raise ValueError(f"reask_temperature: must be > 0, got {self.reask_temperature}")
        if self.on_unparseable not in ("fail", "tie"):
            raise ValueError(f"on_unparseable: 'fail' or 'tie', not {self.on_unparseable!r}")


def parse_openai_spec(rest: str) -> LLMJudgeConfig:
    """``MODEL@BASE_URL`` (the text after ``openai:``) -> a config with default settings; a bare
    ``MODEL`` uses ``$OPENAI_BASE_URL`` or OpenAI's API."""
    m = re.fullmatch(r"(.*?)@(https?://\S+)", rest.strip())
    model, url = (m.group(1), m.group(2)) if m else (rest.strip(), None)
    if not model:
        raise ValueError(f"--judge 'openai:{rest}': expected openai:MODEL@BASE_URL")
    return LLMJudgeConfig(
        model=model, base_url=url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    )


def config_from_mapping(data: dict[str, Any], base_dir: Path, where: str) -> LLMJudgeConfig:
    """A config from a YAML spec's mapping; relative template files are read next to it."""
    from nlhf.config import from_dict

    for secret in ("api_key", "key", "token", "password"):
        if secret in data:
            raise ValueError(
                f"{where}: {secret!r} is not allowed in a judge spec; put the key in an "
                "environment variable and name that variable with api_key_env"
            )
    data = dict(data)
    for name in ("template_file", "chat_template_file"):
        if data.get(name) is not None and not Path(str(data[name])).is_absolute():
            data[name] = str(base_dir / str(data[name]))
    return from_dict(LLMJudgeConfig, data, where=where)
