"""The LLM judge against a real ``transformers serve`` (transformers[serving]) serving the
SmolLM2-135M-Instruct checkpoint: a server without log-probabilities, so the sampled-answer path.

One server per module, pinned to the checkpoint, started on a free loopback port and stopped at
the end. ``transformers serve`` samples only when the model's generation_config.json says
``do_sample: true`` (otherwise every temperature gives the greedy reply); the served copy says
so, as a deployment that wants sampled judgements would.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from llm_servers import free_port, running, tldr_cases, transformers_command

from nlhf.models.llm_client import JudgeRequestError
from nlhf.models.llm_judge import LLMJudge, LLMJudgeConfig

PROMPTS, RIGHT, WRONG = tldr_cases()


@pytest.fixture(scope="module")
def served(smollm2_dir, tmp_path_factory):
    """(API root, model name): the checkpoint's files linked into a directory whose
    generation_config.json turns sampling on."""
    root = tmp_path_factory.mktemp("transformers_serve")
    model = root / "smollm2-135m-instruct"
    model.mkdir()
    for f in smollm2_dir.iterdir():
        if f.name != "generation_config.json":
            (model / f.name).symlink_to(f)
    config = json.loads((smollm2_dir / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**config, "do_sample": True}))
    port = free_port()
    with running(transformers_command(model, port), port, root / "server.log") as base:
        yield base, str(model)


def make_judge(served, tmp_path, **settings) -> LLMJudge:
    base, model = served
    cfg = {"model": model, "base_url": base, "cache": str(tmp_path / "cache.sqlite")}
    return LLMJudge(LLMJudgeConfig(**{**cfg, **settings}))


def test_tldr_cases_sampled_answer_path(served, tmp_path):
    """Greedy answers (temperature 0, one reply per order): J is 0 or 1 per order, so P(a > b)
    is 0, 1/2 or 1 (1/4 and 3/4 where an unparseable reply counts as a tie). Prints
    P(right > off-topic) per case; SmolLM2-135M's verdicts are recorded in docs/judges.md."""
    judge = make_judge(served, tmp_path, on_unparseable="tie", reasks=0)
    p = judge.prob(PROMPTS, RIGHT, WRONG)
    stats = judge.stats()
    print("\ntransformers serve (sampled) P(right > off-topic):", [float(x) for x in p])
    print("stats:", stats)
    assert judge.describe()["probability"] == "sample"  # auto: the server gave no logprobs
    assert p.dtype == torch.float32 and p.shape == (len(PROMPTS),)
    quarters = {0.0, 0.25, 0.5, 0.75, 1.0}
    assert {float(x) for x in p} <= quarters
    if stats["unresolved"] == 0:
        assert {float(x) for x in p} <= {0.0, 0.5, 1.0}
    # the auto probe's request was a logprobs request; every other one a plain greedy request
    assert stats["requests"] == 1 + 1 + 2 * len(PROMPTS)  # GET /models, probe, the questions
    q = judge.prob(PROMPTS, WRONG, RIGHT)
    assert torch.equal(p + q, torch.ones(len(PROMPTS)))
    assert judge.stats()["requests"] == stats["requests"]
    # a fresh judge on the same cache knows the server's mode and sends nothing
    again = make_judge(served, tmp_path, on_unparseable="tie", reasks=0)
    assert torch.equal(again.prob(PROMPTS, RIGHT, WRONG), p)
    assert again.stats()["requests"] == 0 and again.describe()["probability"] == "sample"


def test_k_samples_at_a_temperature(served, tmp_path):
    judge = make_judge(
        served,
        tmp_path,
        probability="sample",
        samples=2,
        temperature=1.0,
        reasks=0,
        on_unparseable="tie",
    )
    p = judge.prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])
    stats = judge.stats()
    print("\nk=2 samples at temperature 1:", float(p[0]), stats)
    assert stats["answers"] == 2 * 2  # 2 orders x 2 seeds
    # J per order is a multiple of 1/2 (1/4 with a tie), so P(a > b) is a multiple of 1/8
    assert float(p[0]) * 8 == round(float(p[0]) * 8) and 0 <= float(p[0]) <= 1


def test_wrong_model_name_is_the_servers_clear_refusal(served, tmp_path):
    # without the /models check the pinned server itself refuses at once (HTTP 400)
    judge = make_judge(
        served, tmp_path, model="no-such-model", check_model=False, probability="sample"
    )
    t0 = time.perf_counter()
    with pytest.raises(JudgeRequestError, match=r"HTTP 400: Server is pinned to .*'no-such-model'"):
        judge.prob(PROMPTS[:1], RIGHT[:1], WRONG[:1])
    assert time.perf_counter() - t0 < 10 and judge.stats()["retries"] == 0
