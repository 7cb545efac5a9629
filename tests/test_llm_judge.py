"""The LLM judge's pure parts: templates, answer parsing, spec parsing, the cache, back-off.

Everything that talks to a server is tested against real local servers in
test_llm_judge_llamacpp.py (log-probabilities) and test_llm_judge_transformers.py (sampled
answers)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import nlhf.models.llm_cache
from nlhf.models.judges import resolve_judge
from nlhf.models.llm_cache import AnswerCache, cache_key
from nlhf.models.llm_client import ChatClient
from nlhf.models.llm_judge import (
    DIALOGUE_TEMPLATE,
    PAPER_TEMPLATE,
    LLMJudge,
    LLMJudgeConfig,
    parse_openai_spec,
)
from nlhf.models.llm_prompts import (
    answer_from_logprobs,
    answer_from_text,
    check_template,
    fill_template,
)


def test_paper_template_is_filled_in_one_pass():
    assert PAPER_TEMPLATE.startswith(
        "You are an expert summary rater. Given a piece of text and two of its possible "
        "summaries, output 1 or 2 to indicate which summary is better."
    )
    text = fill_template(PAPER_TEMPLATE, "a {response_1} post", "s{1}", "t {prompt}")
    assert "Text: a {response_1} post" in text  # braces inside texts are left alone
    assert "Summary 1: s{1}\n" in text and "Summary 2: t {prompt}\n" in text
    with pytest.raises(ValueError, match=r"missing placeholder\(s\) \{response_2\}"):
        check_template("{prompt} {response_1}")


def test_chat_prompts_use_the_dialogue_template(tmp_path):
    judge = LLMJudge(LLMJudgeConfig(model="m", base_url="http://127.0.0.1:9/v1", cache="off"))
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    (message,) = judge.messages(chat, "Fine.", "Go away.")
    assert message["role"] == "user"
    assert message["content"] == fill_template(
        DIALOGUE_TEMPLATE, "User: Hi\n\nAssistant: Hello!", "Fine.", "Go away."
    )
    judge = LLMJudge(
        LLMJudgeConfig(model="m", base_url="http://127.0.0.1:9/v1", cache="off", system="Be fair.")
    )
    system, user = judge.messages("text", "a", "b")
    assert system == {"role": "system", "content": "Be fair."}
    assert user["content"] == fill_template(PAPER_TEMPLATE, "text", "a", "b")


@pytest.mark.parametrize(
    "reply, answer",
    [
        ("1", "1"),
        (" 2.", "2"),
        ("**2**", "2"),
        ("Summary 1 is better than summary 2", "1"),
        ("Preferred summary: 2", "2"),
        ("The second one.", None),
        ("12 points", None),
        ("Summary1", None),
        ("", None),
    ],
)
def test_answer_from_text(reply, answer):
    assert answer_from_text(reply) == answer


def _position(token, logprob, top):
    return {
        "token": token,
        "logprob": logprob,
        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top],
    }


def test_answer_from_logprobs_normalises_over_1_and_2_at_the_answer_token():
    # the shape llama.cpp and OpenAI return for logprobs=True, top_logprobs=k
    lp = {
        "content": [
            _position("Summary", -0.1, [("Summary", -0.1), ("1", -3.0)]),
            _position(" ", -0.2, [(" ", -0.2)]),
            _position("1", -0.5, [("1", -0.5), ("2", -1.5), (" 1", -2.0), ("The", -2.5)]),
            _position(".", -0.1, [(".", -0.1)]),
        ]
    }
    p1 = math.exp(-0.5) + math.exp(-2.0)
    assert answer_from_logprobs(lp) == pytest.approx(p1 / (p1 + math.exp(-1.5)), abs=1e-12)
    # an answer absent from top_logprobs counts as 0
    only = {"content": [_position("2", -0.01, [("2", -0.01), ("Two", -5.0)])]}
    assert answer_from_logprobs(only) == 0.0
    # no standalone digit token: unparseable
    assert answer_from_logprobs({"content": [_position("The", -0.1, [("1", -1.0)])]}) is None
    assert answer_from_logprobs({"content": [_position("12", -0.1, [("1", -1.0)])]}) is None
    assert answer_from_logprobs(None) is None


def test_openai_spec_and_yaml_spec(tmp_path, monkeypatch):
    cfg = parse_openai_spec("qwen2.5:7b@http://127.0.0.1:11434/v1")
    assert (cfg.model, cfg.base_url) == ("qwen2.5:7b", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1")
    assert parse_openai_spec("gpt-4o-mini").base_url == "http://127.0.0.1:8000/v1"
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert parse_openai_spec("gpt-4o-mini").base_url == "https://api.openai.com/v1"
    with pytest.raises(ValueError, match="openai:MODEL@BASE_URL"):
        resolve_judge("openai:@http://127.0.0.1:1/v1")

    (tmp_path / "rater.txt").write_text("Rate.\n{prompt}\n1: {response_1}\n2: {response_2}\n")
    spec = tmp_path / "judge.yaml"
    spec.write_text(
        "type: openai\nmodel: m\nbase_url: http://127.0.0.1:9/v1\napi_key_env: MY_JUDGE_KEY\n"
        "template_file: rater.txt\nprobability: sample\ntemperature: 0.7\nsamples: 3\n"
        f"cache: {tmp_path / 'c.sqlite'}\n"
    )
    judge = resolve_judge(str(spec))
    assert isinstance(judge, LLMJudge)
    assert judge.template.startswith("Rate.\n{prompt}")  # read relative to the spec file
    assert (judge.config.samples, judge.config.temperature) == (3, 0.7)

    spec.write_text("model: m\napi_key: sk-123\n")
    with pytest.raises(ValueError, match="'api_key' is not allowed.*api_key_env"):
        resolve_judge(str(spec))
    spec.write_text("model: m\ntemprature: 1\n")
    with pytest.raises(ValueError, match=r"judge.yaml: unknown key\(s\) \['temprature'\]"):
        resolve_judge(str(spec))
    spec.write_text("model: m\nsamples: 4\n")
    with pytest.raises(ValueError, match="samples > 1 needs temperature > 0"):
        resolve_judge(str(spec))
    spec.write_text("model: m\ntemplate: 'Which? {prompt} {response_1}'\n")
    with pytest.raises(ValueError, match=r"template: missing placeholder\(s\) \{response_2\}"):
        resolve_judge(str(spec))
    with pytest.raises(FileNotFoundError, match="judge spec file does not exist"):
        resolve_judge(str(tmp_path / "missing.yaml"))


def test_the_api_key_stays_out_of_reprs_and_descriptions(monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-123")
    cfg = LLMJudgeConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="MY_JUDGE_KEY")
    judge = LLMJudge(LLMJudgeConfig(**{**cfg.__dict__, "cache": "off"}))
    assert judge.client._session().headers["Authorization"] == "Bearer sk-secret-123"
    for text in (repr(judge), repr(judge.client), repr(judge.config), str(judge.describe())):
        assert "sk-secret" not in text
    assert judge.describe()["api_key_env"] == "MY_JUDGE_KEY"
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        LLMJudgeConfig(model="m", api_key_env="sk-secret-123")


def test_backoff_is_exponential_capped_and_jittered():
    client = ChatClient("http://127.0.0.1:9/v1", None, 1.0, 5, backoff_s=0.5, backoff_max_s=3.0)
    for attempt, full in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        delays = [client._delay(attempt, None) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full / 10  # jitter


# A writer that loads the cache module by path (stdlib only, so it starts fast) and writes answers
# until it is killed.
WRITER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("llm_cache", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
cache = mod.AnswerCache(sys.argv[2])
i = 0
while True:
    cache.put(f"k{i}", {"p1": i / 1e6, "reply": "x" * 100})
    i += 1
"""


def test_cache_is_safe_across_threads_processes_and_a_kill(tmp_path):
    path = tmp_path / "cache.sqlite"
    key = cache_key({"base_url": "u", "body": {"model": "m", "seed": 1}})
    assert key == cache_key({"body": {"seed": 1, "model": "m"}, "base_url": "u"})  # canonical
    caches = [AnswerCache(path), AnswerCache(path)]  # two handles, as two processes would have

    def write(t: int) -> None:
        for i in range(50):
            caches[t % 2].put(f"t{t}-{i}", {"p1": i / 50, "reply": str(t)})

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(caches[0]) == 200
    assert caches[1].get("t3-49") == {"p1": 0.98, "reply": "3"}

    # a writer killed mid-stream leaves a readable cache with every committed answer
    module = Path(nlhf.models.llm_cache.__file__)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(module), str(path)])
    try:
        deadline = time.monotonic() + 60
        while len(caches[0]) < 260 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fresh = AnswerCache(path)
    n = len(fresh)
    assert n >= 260
    assert fresh.get("k0") == {"p1": 0.0, "reply": "x" * 100}
    assert fresh.get(f"k{n - 201}") is not None and fresh.get(f"k{n - 200}") is None
