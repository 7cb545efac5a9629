"""An LLM prompted as a rater over any OpenAI-compatible server: the paper's evaluation judge.

The paper (Munos et al. 2024, §7) has a much larger LLM compare two summaries with the prompt
"You are an expert summary rater. Given a piece of text and two of its possible summaries, output
1 or 2 to indicate which summary is better." :class:`LLMJudge` does the same against any server
that speaks the OpenAI chat-completions API (OpenAI and other hosted APIs, vLLM, llama.cpp,
``transformers serve``, Ollama, ...), behind the :class:`~nlhf.models.judge.Judge` protocol::

    judge = LLMJudge(LLMJudgeConfig(model="gpt-4o-mini"))  # key from $OPENAI_API_KEY
    p = judge.prob(prompts, responses_a, responses_b)      # (B,) P(a > b | x)

One answer ``J(x, y)`` = the judge's probability that the response shown first is better:
  * ``probability="logprobs"``: from the log-probabilities the server returns for the answer
    token (the first "1" or "2" of the greedy reply), ``P("1") / (P("1") + P("2"))`` over the
    ``top_logprobs`` alternatives (an answer absent from them counts as 0);
  * ``probability="sample"``: the fraction of ``samples`` replies answering "1" (one greedy reply
    at ``temperature=0``); a reply's answer is its first "1" or "2" standing alone;
  * ``probability="auto"`` (default): logprobs when the server returns them, else sample (decided
    on the first request and remembered in the cache).
Both orders are asked and combined to cancel position bias,
``P(a > b) = (J(a, b) + 1 - J(b, a)) / 2``, so ``P(a > b) + P(b > a) = 1`` exactly.

A reply with neither "1" nor "2" is *unparseable*: it is counted and re-asked up to ``reasks``
times at ``reask_temperature`` with new seeds; one that stays unparseable fails the batch with
the count (``on_unparseable="fail"``, default) or counts as a tie J = 1/2
(``on_unparseable="tie"``: explicit and reported, never silent). Every answer is cached on disk
(:mod:`nlhf.models.llm_cache`), so re-running a tournament costs no requests.

Templates and answer parsing: :mod:`nlhf.models.llm_prompts`; settings and ``--judge`` specs:
:mod:`nlhf.models.llm_judge_config`; transport, retries and the server's errors:
:mod:`nlhf.models.llm_client`. User guide: docs/judges.md.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import requests
import torch
from tqdm.auto import tqdm

from nlhf.data.schema import Text, as_text
from nlhf.models.judge import _check_batch
from nlhf.models.llm_cache import AnswerCache, cache_key
from nlhf.models.llm_client import ChatClient, JudgeRequestError, server_message
from nlhf.models.llm_judge_config import (
    DEFAULT_BASE_URL,
    LLMJudgeConfig,
    config_from_mapping,
    parse_openai_spec,
)
from nlhf.models.llm_prompts import (
    DIALOGUE_TEMPLATE,
    PAPER_TEMPLATE,
    answer_from_logprobs,
    answer_from_text,
    fill_template,
    load_template,
)

__all__ = [
    "DEFAULT_BASE_URL",
    "DIALOGUE_TEMPLATE",
    "PAPER_TEMPLATE",
    "JudgeRequestError",
    "LLMJudge",
    "LLMJudgeConfig",
    "UnparseableAnswersError",
    "config_from_mapping",
    "parse_openai_spec",
]

CACHE_VERSION = 1  # bump when the parsing of a reply changes
REASK_SEED_STRIDE = 1_000_003


class UnparseableAnswersError(ValueError):
    """Replies that stayed neither "1" nor "2" after every re-ask (``on_unparseable="fail"``); a
    ``ValueError``, so the commands print it as one line."""


class LLMJudge:
    """``prob(prompts, a, b)``: an LLM over an OpenAI-compatible server rates ``a`` against
    ``b`` in both orders (module doc). ``stats()`` counts requests, cache hits, retries and
    unparseable answers; ``describe()`` is what a report shows (never the API key)."""

    def __init__(self, config: LLMJudgeConfig):
        self.config = cfg = config
        self.base_url = cfg.base_url.rstrip("/")
        self.template = load_template(cfg.template, cfg.template_file, PAPER_TEMPLATE, "template")
        self.chat_template = load_template(
            cfg.chat_template, cfg.chat_template_file, DIALOGUE_TEMPLATE, "chat_template"
        )
        self.progress = cfg.progress
        self._lock = threading.Lock()
        self._stats = dict.fromkeys(
            ("pairs", "requests", "retries", "cache_hits", "answers", "unparseable", "reasks",
             "unresolved", "chat_prompts"),
            0,
        )  # fmt: skip
        self.client = ChatClient(
            self.base_url,
            os.environ.get(cfg.api_key_env) or None,
            cfg.timeout_s,
            cfg.max_retries,
            cfg.backoff_s,
            cfg.backoff_max_s,
            on_attempt=self._on_attempt,
        )
        if cfg.cache == "off":
            self.cache, self.cache_path = None, None
        else:
            from nlhf.models.pretrained import cache_dir

            path = cache_dir() / "llm-judge.sqlite" if cfg.cache == "default" else Path(cfg.cache)
            self.cache, self.cache_path = AnswerCache(path), path
        self._mode = None if cfg.probability == "auto" else cfg.probability
        self._model_checked = not cfg.check_model
        self._probed: tuple[str, dict[str, Any]] | None = None  # auto mode's first answer

    def __repr__(self) -> str:
        return f"LLMJudge(model={self.config.model!r}, base_url={self.base_url!r})"

    # ----------------------------------------------------------------------------------------
    # bookkeeping

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n

    def _on_attempt(self, retry: bool) -> None:
        self._count("requests")
        if retry:
            self._count("retries")

    def stats(self) -> dict[str, int]:
        """Counters since construction: ``pairs`` judged, HTTP ``requests`` sent (retries
        included), ``retries``, ``cache_hits``, fresh ``answers``, ``unparseable`` replies,
        ``reasks``, ``unresolved`` (still unparseable after the re-asks), ``chat_prompts``."""
        with self._lock:
            return dict(self._stats)

    def describe(self) -> dict[str, Any]:
        """The judge's identity and settings for reports (the API key's variable NAME only)."""
        cfg = self.config
        out: dict[str, Any] = {
            "kind": "LLM judge (OpenAI-compatible chat completions)",
            "model": cfg.model,
            "base_url": self.base_url,
            "probability": self._mode or "auto (undecided: no request yet)",
            "template": self.template,
            "chat_template": self.chat_template,
            "system": cfg.system,
            "max_tokens": cfg.max_tokens,
            "seed": cfg.seed,
            "reasks": cfg.reasks,
            "reask_temperature": cfg.reask_temperature,
            "on_unparseable": cfg.on_unparseable,
            "api_key_env": cfg.api_key_env,
            "cache": str(self.cache_path) if self.cache_path else "off",
        }
        if self._mode != "logprobs":
            out.update(temperature=cfg.temperature, samples=cfg.samples)
        if self._mode != "sample":
            out["top_logprobs"] = cfg.top_logprobs
        return out

    # ----------------------------------------------------------------------------------------
    # requests

    def messages(self, prompt: Text, first: Text, second: Text) -> list[dict[str, str]]:
        """The chat messages asking which of ``first`` (1) and ``second`` (2) is better."""
        template = self.template if isinstance(prompt, str) else self.chat_template
        text = fill_template(template, as_text(prompt), as_text(first), as_text(second))
        system = [{"role": "system", "content": self.config.system}] if self.config.system else []
        return [*system, {"role": "user", "content": text}]

    def _body(self, messages: list, mode: str, sample: int, attempt: int) -> dict[str, Any]:
        cfg = self.config
        if attempt == 0:
            temperature = 0.0 if mode == "logprobs" else cfg.temperature
        else:  # a re-ask: a new seed and a temperature at which the reply can change
            temperature = cfg.reask_temperature
        body: dict[str, Any] = {
            "model": cfg.model,
            "messages": messages,
            "max_tokens": cfg.max_tokens,
            "temperature": temperature,
            "seed": cfg.seed + sample + REASK_SEED_STRIDE * attempt,
        }
        if mode == "logprobs":
            body.update(logprobs=True, top_logprobs=cfg.top_logprobs)
        return body

    def _key(self, body: dict[str, Any]) -> str:
        return cache_key({"v": CACHE_VERSION, "base_url": self.base_url, "body": body})

    def _error(self, err: JudgeRequestError) -> JudgeRequestError:
        where = f"LLM judge {self.config.model!r} at {self.base_url}"
        hint = ""
        if err.status in (401, 403):
            hint = f" (is the key in ${self.config.api_key_env} right?)"
        return JudgeRequestError(f"{where}: {err}{hint}", err.status)

    def _ask(self, body: dict[str, Any], mode: str) -> dict[str, Any]:
        """Send one request; its parsed answer ``{"p1": J or None, "reply": text}``."""
        try:
            data = self.client.complete(body)
        except JudgeRequestError as err:
            raise self._error(err) from None
        choice = data["choices"][0]
        reply = str((choice.get("message") or {}).get("content") or "")
        if mode == "logprobs":
            if not (choice.get("logprobs") or {}).get("content"):
                raise JudgeRequestError(
                    f"LLM judge {self.config.model!r} at {self.base_url}: the server returned no "
                    "logprobs; use probability: sample (or auto)"
                )
            p1 = answer_from_logprobs(choice["logprobs"])
        else:
            digit = answer_from_text(reply)
            p1 = None if digit is None else float(digit == "1")
        return {"p1": p1, "reply": reply[:300]}

    def _check_model(self) -> None:
        """Once, before the first request: the server must list the model (``check_model``)."""
        if self._model_checked:
            return
        try:
            response = self.client.get("/models")
        except requests.RequestException:
            return  # an unreachable server fails with retries on the first completion
        if response.status_code in (401, 403):
            raise self._error(
                JudgeRequestError(
                    f"GET /models: HTTP {response.status_code}: "
                    f"{self.client.redact(server_message(response))}",
                    response.status_code,
                )
            )
        try:
            listed = [str(m.get("id")) for m in response.json().get("data", [])]
        except (ValueError, AttributeError):
            listed = []
        model = self.config.model
        if (
            response.status_code == 200
            and listed
            and not any(m == model or m.endswith(f"/{model}") for m in listed)  # models/NAME
        ):
            shown = ", ".join(repr(m) for m in listed[:8]) + (" ..." if len(listed) > 8 else "")
            raise JudgeRequestError(
                f"LLM judge: model {self.config.model!r} is not served at {self.base_url}; it "
                f"serves {shown} (for a server that lists only loaded models: check_model: false)",
                404,
            )
        self._model_checked = True

    def _resolve_mode(self, messages: list) -> str:
        """``auto``: logprobs if the server returns them for the first request, else sample;
        the decision is cached per server and model so that a re-run sends nothing."""
        if self._mode is not None:
            return self._mode
        cap_key = cache_key(
            {"v": CACHE_VERSION, "logprobs?": self.base_url, "model": self.config.model}
        )
        known = self.cache.get(cap_key) if self.cache is not None else None
        if known is not None:
            self._mode = known["mode"]
            return self._mode
        body = self._body(messages, "logprobs", 0, 0)
        if self.cache is not None and self.cache.get(self._key(body)) is not None:
            mode = "logprobs"
        else:
            self._check_model()
            try:
                answer = self._ask(body, "logprobs")
                mode = "logprobs"
                self._count("answers")
                self._probed = (self._key(body), answer)  # _fetch uses it without a request
                if self.cache is not None:
                    self.cache.put(self._key(body), answer)
            except JudgeRequestError as err:
                if "logprobs" in str(err) and (err.status in (None, 400, 422)):
                    mode = "sample"
                else:
                    raise
        if self.cache is not None:
            self.cache.put(cap_key, {"mode": mode})
        self._mode = mode
        return mode

    def _fetch(self, todo: dict[str, dict[str, Any]], mode: str) -> dict[str, dict[str, Any]]:
        """Answers for ``{key: body}``: from the cache, else from the server, ``concurrency`` at
        a time; each fresh answer is cached as soon as it arrives."""
        out: dict[str, dict[str, Any]] = {}
        missing = []
        probed, self._probed = self._probed, None
        hits = 0
        for key, body in todo.items():
            if probed is not None and key == probed[0]:
                out[key] = probed[1]
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                out[key], hits = hit, hits + 1
            else:
                missing.append((key, body))
        self._count("cache_hits", hits)
        if not missing:
            return out
        self._check_model()
        self.client.cancel.clear()
        bar = tqdm(
            total=len(missing), desc="LLM judge", unit="req", leave=False,
            disable=not self.progress or len(missing) < 32,
        )  # fmt: skip
        pool = ThreadPoolExecutor(max_workers=min(self.config.concurrency, len(missing)))
        try:
            futures = {pool.submit(self._ask, body, mode): key for key, body in missing}
            for future in as_completed(futures):
                answer = future.result()
                out[futures[future]] = answer
                self._count("answers")
                if self.cache is not None:
                    self.cache.put(futures[future], answer)
                bar.update(1)
        except BaseException:
            self.client.cancel.set()  # the other requests stop waiting and retrying
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)
        return out

    # ----------------------------------------------------------------------------------------
    # the Judge protocol

    def answers(self, questions: Sequence[list[dict[str, str]]]) -> np.ndarray:
        """``J`` (N,) for N lists of messages: the probability that the judge answers "1" (the
        response shown first), re-asking unparseable replies (module doc)."""
        cfg = self.config
        if not questions:
            return np.zeros(0)
        mode = self._resolve_mode(questions[0])
        k = cfg.samples if mode == "sample" else 1
        J = np.zeros(len(questions))  # (N,)
        # one request per (question, sample); identical requests are sent once
        asks: dict[str, tuple[dict[str, Any], int, list[int]]] = {}
        for q, messages in enumerate(questions):
            for s in range(k):
                body = self._body(messages, mode, s, 0)
                asks.setdefault(self._key(body), (body, s, []))[2].append(q)
        for attempt in range(cfg.reasks + 1):
            got = self._fetch({key: body for key, (body, _, _) in asks.items()}, mode)
            retry: dict[str, tuple[dict[str, Any], int, list[int]]] = {}
            for key, (body, s, qs) in asks.items():
                p1 = got[key]["p1"]
                if p1 is not None:
                    for q in qs:
                        J[q] += p1 / k
                    continue
                self._count("unparseable")
                if attempt < cfg.reasks:
                    self._count("reasks")
                    new = self._body(body["messages"], mode, s, attempt + 1)
                    retry[self._key(new)] = (new, s, qs)
                else:
                    retry[key] = (body, s, qs)
            if not retry:
                return J
            asks = retry
            if attempt == cfg.reasks:
                break
        n = sum(len(qs) for _, _, qs in asks.values())
        self._count("unresolved", len(asks))
        replies = [repr(got[key]["reply"][:80]) for key in list(asks)[:3]]
        if cfg.on_unparseable == "fail":
            raise UnparseableAnswersError(
                f"LLM judge {cfg.model!r} at {self.base_url}: {len(asks)} replies answered "
                f"neither 1 nor 2 after {cfg.reasks} re-asks ({n} of {len(questions)} questions "
                f"in this batch; {self.stats()['unparseable']} unparseable replies so far), e.g. "
                f"{'; '.join(replies)}. Fix the template or the model, or set "
                "on_unparseable: tie to count them as ties."
            )
        for _, _, qs in asks.values():
            for q in qs:
                J[q] += 0.5 / k
        return J

    def prob(
        self, prompts: Sequence[Text], responses_a: Sequence[Text], responses_b: Sequence[Text]
    ) -> torch.Tensor:
        """``P(a > b | x) = (J(a, b) + 1 - J(b, a)) / 2`` (B,), CPU float32; exactly
        ``1 - prob(prompts, b, a)``."""
        _check_batch(prompts, responses_a, responses_b)
        n = len(prompts)
        if n == 0:
            return torch.zeros(0)
        # Each pair is judged in a canonical order and the other order is its complement, so
        # that the float32 results of (a, b) and (b, a) add up to exactly 1.
        swap = [_order_key(a) > _order_key(b) for a, b in zip(responses_a, responses_b)]
        first = [b if s else a for a, b, s in zip(responses_a, responses_b, swap)]
        second = [a if s else b for a, b, s in zip(responses_a, responses_b, swap)]
        questions = []
        for x, y, z in zip(prompts, first, second):
            questions += [self.messages(x, y, z), self.messages(x, z, y)]  # both orders
        J = self.answers(questions).reshape(n, 2)  # (B, 2) J(first, second), J(second, first)
        self._count("pairs", n)
        self._count("chat_prompts", sum(not isinstance(x, str) for x in prompts))
        p = torch.as_tensor(0.5 + 0.5 * (J[:, 0] - J[:, 1]), dtype=torch.float32)  # (B,)
        return torch.where(torch.tensor(swap), 1.0 - p, p)


def _order_key(text: Text) -> str:
    return text if isinstance(text, str) else repr(text)
