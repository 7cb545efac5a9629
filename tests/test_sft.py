"""SFT: a GPT-2-shaped policy trained on the task's demonstrations reproduces their style prior."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nlhf.sampling import generate
from nlhf.tasks.summaries import STYLES, SummaryTask
from nlhf.train.sft import SFTConfig, collate, encode_pairs, train_sft


@pytest.fixture(scope="module")
def task() -> SummaryTask:
    return SummaryTask(seed=0)


def test_loss_is_on_response_tokens_only(task):
    tok = task.tokenizer()
    prompts = task.prompts(3, seed=0)
    rows = encode_pairs(tok, prompts, ["brief rain", "list", "story a b"], max_len=64)
    batch = collate(rows, tok.pad_token_id)
    for i, (p, r) in enumerate(rows):
        labels = batch["labels"][i]
        assert r[-1] == tok.eos_token_id
        assert torch.all(labels[: len(p)] == -100)
        assert labels[len(p) : len(p) + len(r)].tolist() == r
        assert torch.all(labels[len(p) + len(r) :] == -100)
        assert batch["attention_mask"][i].sum() == len(p) + len(r)
    with pytest.raises(ValueError, match="SFT pair 0"):
        encode_pairs(tok, prompts[:1], ["brief " + "rain " * 80], max_len=32)
    with pytest.raises(ValueError, match="one response per prompt"):
        encode_pairs(tok, prompts, ["brief"], max_len=64)


def test_config_validation():
    with pytest.raises(ValueError, match="n_embd"):
        SFTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="steps"):
        SFTConfig(steps=0)


def test_sft_policy_reproduces_the_demonstration_style_prior(task, tmp_path):
    torch.manual_seed(0)
    prompts = task.prompts(1500, seed=1)
    demos = task.demonstrations(prompts, seed=1)
    cfg = SFTConfig(
        output_dir=tmp_path / "sft", steps=250, n_layer=1, n_embd=32, n_head=2, n_positions=32
    )
    out = train_sft(cfg, prompts, demos, tokenizer=task.tokenizer())

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss/sft"] < 0.7 * metrics[0]["loss/sft"]
    assert json.loads((out / "nlhf_model.json").read_text())["kind"] == "policy"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tok)

    eval_prompts = task.prompts(800, seed=2)
    gen = torch.Generator().manual_seed(0)
    texts = generate(model, tok, eval_prompts, max_new_tokens=10, generator=gen).texts
    counts = Counter(task.style_of(t) for t in texts)
    freq = np.array([counts[s] for s in STYLES]) / len(texts)
    # the demonstrations' prior (0.2, 0.5, 0.3), not the Nash mixture (~0.53, 0.18, 0.29)
    np.testing.assert_allclose(freq, task.config.demo_style_prior, atol=0.06)
    assert counts["none"] / len(texts) < 0.05
    # responses are mostly made of the document's words
    words = [w for p, t in zip(eval_prompts, texts) for w in t.split()[1:]]
    in_doc = [w in p.split() for p, t in zip(eval_prompts, texts) for w in t.split()[1:]]
    assert len(words) > 500 and np.mean(in_doc) > 0.4


def test_model_config_file(task, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=24).to_json_file(tmp_path / "c.json")
    prompts = task.prompts(20, seed=0)
    cfg = SFTConfig(output_dir=tmp_path / "o", model_config=tmp_path / "c.json", steps=2)
    out = train_sft(cfg, prompts, task.demonstrations(prompts), tokenizer=task.tokenizer())
    assert AutoModelForCausalLM.from_pretrained(out).config.n_embd == 16
    with pytest.raises(FileNotFoundError, match="model_config"):
        train_sft(
            SFTConfig(output_dir=tmp_path / "x", model_config=tmp_path / "nope.json"),
            prompts,
            task.demonstrations(prompts),
            tokenizer=task.tokenizer(),
        )
