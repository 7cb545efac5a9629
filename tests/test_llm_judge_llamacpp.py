"""The LLM judge against a real llama.cpp server (llama-cpp-python[server]) serving SmolLM2-135M-
Instruct from its GGUF file: the log-probability path, the cache, the tournament, errors.

One server per module (started on a free loopback port, stopped at the end); it requires an API
key, which the judge reads from an environment variable whose name the spec gives.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from llm_servers import LLAMA_MODEL, free_port, llama_cpp_command, running, tldr_cases
from test_eval_tournament import forced_policy

from nlhf.cli import main
from nlhf.eval.tournament import TournamentResult
from nlhf.models.judges import resolve_judge
from nlhf.models.llm_client import JudgeRequestError
from nlhf.models.llm_judge import (
    PAPER_TEMPLATE,
    LLMJudge,
    LLMJudgeConfig,
    UnparseableAnswersError,
)
from nlhf.models.tokenizer import build_tokenizer

KEY_ENV = "NLHF_TEST_JUDGE_KEY"
KEY = "sk-nlhf-test-5be1c0ffee"  # the server's API key; the judge reads it from $KEY_ENV
PROMPTS, RIGHT, WRONG = tldr_cases()
# A template that asks for a word instead of 1 or 2.
WORD_TEMPLATE = (
    "Here is a text and two summaries of it.\n\nText: {prompt}\n\nSummary A: {response_1}\n\n"
    "Summary B: {response_2}\n\nWhich summary is better? Answer with one word, first or second."
)


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("llama_cpp") / "server.log"
    with running(llama_cpp_command(smollm2_gguf, port, KEY), port, log, api_key=KEY) as base:
        yield base


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)


def make_judge(base: str, cache: Path | str, **settings) -> LLMJudge:
    cfg = {"model": LLAMA_MODEL, "base_url": base, "api_key_env": KEY_ENV, "cache": str(cache)}
    return LLMJudge(LLMJudgeConfig(**{**cfg, **settings}))


def direct_answer(base: str, prompt: str, first: str, second: str) -> float | None:
    """P("1") / (P("1") + P("2")) computed here from one raw greedy request (no judge code, no
    cache): the first reply token that is 1 or 2, its top_logprobs summed per answer."""
    text = PAPER_TEMPLATE.replace("{prompt}", prompt)
    text = text.replace("{response_1}", first).replace("{response_2}", second)
    body = {
        "model": LLAMA_MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 16,
        "temperature": 0.0, "seed": 0, "logprobs": True, "top_logprobs": 20,
    }  # fmt: skip
    headers = {"Authorization": f"Bearer {KEY}"}
    data = requests.post(f"{base}/chat/completions", json=body, headers=headers, timeout=120)
    for position in data.json()["choices"][0]["logprobs"]["content"]:
        if position["token"].strip() in ("1", "2"):
            mass = {"1": 0.0, "2": 0.0}
            for alt in {a["token"]: a["logprob"] for a in position["top_logprobs"]}.items():
                if alt[0].strip() in mass:
                    mass[alt[0].strip()] += math.exp(alt[1])
            return mass["1"] / (mass["1"] + mass["2"])
        if position["token"].strip():
            return None  # the reply starts with something else: the judge would look further
    return None


def test_tldr_cases_logprob_path(server, key, tmp_path):
    """The probability path on the TL;DR-like cases. SmolLM2-135M is far too weak a rater to
    tell the right summary from an off-topic one reliably (docs/judges.md records what it got),
    so this checks the exact properties, and the probabilities against a recomputation from raw
    requests; it prints P(right > off-topic) per case."""
    judge = make_judge(server, tmp_path / "cache.sqlite", on_unparseable="tie", reasks=0)
    p = judge.prob(PROMPTS, RIGHT, WRONG)  # (6,)
    stats = judge.stats()
    print("\nllama.cpp (logprobs) P(right > off-topic):", [round(float(x), 3) for x in p])
    print("stats:", stats)
    assert judge.describe()["probability"] == "logprobs"
    assert p.dtype == torch.float32 and p.shape == (len(PROMPTS),)
    assert bool(torch.all((p >= 0) & (p <= 1)))
    assert stats["pairs"] == len(PROMPTS) and stats["requests"] > 0
    assert stats["unparseable"] == stats["unresolved"] and stats["reasks"] == 0
    # the other order asks the same two questions: answered from memory of the cache, sums to 1
    q = judge.prob(PROMPTS, WRONG, RIGHT)
    assert torch.equal(p + q, torch.ones(len(PROMPTS)))
    assert judge.stats()["requests"] == stats["requests"]
    # the combination, from the judge's own per-order answers (from its cache: no request)
    J = judge.answers([judge.messages(x, a, b) for x, a, b in zip(PROMPTS, RIGHT, WRONG)])
    J_swapped = judge.answers([judge.messages(x, b, a) for x, a, b in zip(PROMPTS, RIGHT, WRONG)])
    assert judge.stats()["requests"] == stats["requests"]
    np.testing.assert_allclose(p.numpy(), 0.5 + 0.5 * (J - J_swapped), atol=1e-7)
    # a no-cache recomputation of one answer from a raw request, no judge code involved
    for i in range(len(PROMPTS)):
        direct = direct_answer(server, PROMPTS[i], RIGHT[i], WRONG[i])
        if direct is not None:
            print(f"case {i}, right summary first: J = {J[i]:.6f}, recomputed {direct:.6f}")
            assert J[i] == pytest.approx(direct, abs=1e-9)
            break
    else:
        pytest.fail("no case was answered with a digit at once")


def test_second_tournament_run_is_answered_from_the_cache(server, key, tmp_path):
    words = "my landlord has not fixed the heating for weeks flat is broken and ignores me"
    responses = {
        "on_topic": ["landlord", "ignores", "the", "broken", "heating"],
        "off_topic": ["chocolate", "cake", "recipe", "with", "frosting"],
    }
    corpus = " ".join([words, *(" ".join(r) for r in responses.values())])
    tokenizer = build_tokenizer([corpus], kind="word")
    for name, response in responses.items():
        forced_policy(tokenizer, response, tmp_path / name)
    (tmp_path / "prompts.txt").write_text(
        "my landlord has not fixed the heating for weeks <sep>\n"
        "the heating in my flat is broken and my landlord ignores me <sep>\n"
    )
    spec = tmp_path / "judge.yaml"
    spec.write_text(
        f"model: {LLAMA_MODEL}\nbase_url: {server}\napi_key_env: {KEY_ENV}\n"
        f"cache: {tmp_path / 'cache.sqlite'}\non_unparseable: tie\nreasks: 0\n"
    )
    results = []
    for run in ("first", "second"):
        rc = main(
            [
                "tournament", "--policies", *(f"{n}={tmp_path / n}" for n in responses),
                "--prompts", str(tmp_path / "prompts.txt"), "--judge", str(spec),
                "--labels", "prob", "--max-new-tokens", "8",
                "--output-dir", str(tmp_path / run), "--quiet",
            ]
        )  # fmt: skip
        assert rc == 0
        results.append(TournamentResult.from_json(tmp_path / run / "tournament.json"))
    first, second = (r.settings["judge_stats"] for r in results)
    assert first["pairs"] == 2 and first["answers"] > 0 and first["requests"] > 0
    assert second["requests"] == 0 and second["answers"] == 0 and second["retries"] == 0
    assert second["cache_hits"] == first["answers"] + first["cache_hits"]
    assert np.array_equal(results[0].matrix, results[1].matrix)
    assert np.array_equal(results[1].matrix + results[1].matrix.T, np.ones((2, 2)))
    report = (tmp_path / "second" / "report.md").read_text()
    assert "## Judge" in report and "You are an expert summary rater." in report
    assert f"- model: `{LLAMA_MODEL}`" in report and "- probability: `logprobs`" in report
    assert "with 0 HTTP requests (0 retries)" in report
    info = results[1].settings["judge_info"]
    assert info["api_key_env"] == KEY_ENV and info["base_url"] == server
    for out in ("first", "second"):  # the key is in no file written
        for f in (tmp_path / out).iterdir():
            if f.suffix in (".md", ".json", ".csv", ".jsonl"):
                assert KEY not in f.read_text(), f


def test_nlhf_train_uses_the_llm_judge(server, key, tmp_path):
    """``nlhf train --judge judge.yaml``: the LLM judge scores y against y'. The forced policy
    and its mixture with itself answer identically, and a judge given two identical responses
    says exactly 1/2 (one question, asked once)."""
    words = ["landlord", "ignores", "the", "broken", "heating"]
    tokenizer = build_tokenizer([" ".join(words + ["my", "is"])], kind="word")
    forced_policy(tokenizer, words, tmp_path / "sft")
    (tmp_path / "prompts.txt").write_text("my heating is broken <sep>\nmy landlord <sep>\n")
    spec = tmp_path / "judge.yaml"
    spec.write_text(
        f"model: {LLAMA_MODEL}\nbase_url: {server}\napi_key_env: {KEY_ENV}\n"
        f"cache: {tmp_path / 'cache.sqlite'}\non_unparseable: tie\nreasks: 0\n"
    )
    out = tmp_path / "md"
    rc = main(
        [
            "train", "--policy", str(tmp_path / "sft"), "--judge", str(spec),
            "--prompts", str(tmp_path / "prompts.txt"), "--output-dir", str(out),
            "--steps", "1", "--batch-size", "2", "--max-new-tokens", "4", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["pref/mean"] == 0.5
    config = (out / "config.yaml").read_text()
    assert f"judge: {spec}" in config and KEY not in config


def test_wrong_model_name_fails_at_once(server, monkeypatch, tmp_path):
    # llama.cpp would answer any model name with its one model: the judge checks /models first
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("NLHF_CACHE", str(tmp_path))  # the default cache goes here
    judge = resolve_judge(f"openai:no-such-model@{server}")
    assert judge.cache_path == tmp_path / "llm-judge.sqlite"
    t0 = time.perf_counter()
    with pytest.raises(JudgeRequestError, match="'no-such-model' is not served at .*'smollm2'"):
        judge.prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])
    assert time.perf_counter() - t0 < 10 and judge.stats()["requests"] == 1
    assert isinstance(JudgeRequestError("x"), ValueError)  # the commands print it as one line


def test_wrong_api_key_fails_at_once_without_showing_it(server, monkeypatch, tmp_path):
    monkeypatch.setenv(KEY_ENV, "sk-wrong-key-123")
    judge = make_judge(server, "off")
    with pytest.raises(JudgeRequestError) as err:
        judge.prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])
    message = str(err.value)
    assert "HTTP 401: Invalid API key" in message and f"${KEY_ENV}" in message
    assert "sk-wrong-key-123" not in message and judge.stats()["requests"] == 1
    monkeypatch.delenv(KEY_ENV)  # no key at all: the same clear refusal
    with pytest.raises(JudgeRequestError, match="HTTP 401"):
        make_judge(server, "off").prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])


def _replies(cache: Path) -> list[str]:
    with sqlite3.connect(cache) as db:
        rows = [json.loads(v) for (v,) in db.execute("SELECT value FROM answers")]
    return [r["reply"] for r in rows if "reply" in r]


def test_unparseable_answers_are_counted_reasked_and_fail_the_run(server, key, tmp_path):
    cache = tmp_path / "cache.sqlite"
    n = 2  # cases: 4 questions
    strict = make_judge(server, cache, template=WORD_TEMPLATE, probability="sample", reasks=0)
    with pytest.raises(UnparseableAnswersError) as err:
        strict.prob(PROMPTS[:n], RIGHT[:n], WRONG[:n])
    replies = _replies(cache)  # what the server answered, read back from the cache
    assert len(replies) == 2 * n
    numbers = [set(re.findall(r"\d+", r)) & {"1", "2"} for r in replies]
    bad = sum(not x for x in numbers)
    print("\nreplies to the word template:", replies)
    assert bad >= 1  # the model answers a word question with words
    stats = strict.stats()
    assert stats["unparseable"] == stats["unresolved"] == bad
    assert f"{bad} replies answered neither 1 nor 2 after 0 re-asks" in str(err.value)

    # re-asked once (new seed, temperature 1), then explicitly counted as ties
    lenient = make_judge(
        server, cache, template=WORD_TEMPLATE, probability="sample", reasks=1,
        on_unparseable="tie",
    )  # fmt: skip
    p = lenient.prob(PROMPTS[:n], RIGHT[:n], WRONG[:n])
    stats = lenient.stats()
    assert stats["cache_hits"] == 2 * n and stats["reasks"] == bad
    assert stats["answers"] == bad  # only the re-asks went to the server
    assert stats["unparseable"] == bad + stats["unresolved"]
    assert bool(torch.all((p >= 0) & (p <= 1)))


def test_stopped_server_is_retried_then_reported(smollm2_gguf, key, tmp_path):
    port = free_port()
    with running(llama_cpp_command(smollm2_gguf, port, KEY), port, tmp_path / "log", KEY) as base:
        judge = make_judge(base, "off", max_retries=2, backoff_s=0.05, backoff_max_s=0.1)
    # the server is stopped now
    t0 = time.perf_counter()
    with pytest.raises(JudgeRequestError) as err:
        judge.prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])
    message = str(err.value)
    assert f"LLM judge 'smollm2' at {base}" in message
    assert "gave up after 3 attempts (max_retries=2)" in message
    assert "connection failed" in message and "refused" in message.lower()
    assert judge.stats()["retries"] >= 2 and time.perf_counter() - t0 < 30


def test_timeout_is_retried_then_reported(server, key):
    judge = make_judge(server, "off", timeout_s=0.02, max_retries=1, backoff_s=0.01, concurrency=1)
    expected = r"gave up after 2 attempts.*no answer within 0.02 s \(timeout_s\)"
    with pytest.raises(JudgeRequestError, match=expected):
        judge.prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])
    assert judge.stats()["retries"] == 1
