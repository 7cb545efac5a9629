"""Chat templates beyond the policy's prompt, on SmolLM2-135M-Instruct's real tokenizer (ChatML):
preference/reward models read prompt + response as the template's conversation, identically in
training and judging; SFT learns the assistant turn with its end-of-turn token; `nlhf sft` on the
real model (LoRA, a bf16 checkpoint) answers and stops where sampling stops it."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import AutoTokenizer

from nlhf.data import Comparison, Demonstration, as_text
from nlhf.models import (
    EmbeddingPreferenceModel,
    PairwisePreferenceModel,
    PreferenceModelJudge,
    RewardModel,
    random_backbone,
)
from nlhf.models.chat import render_prompt_ids, render_response_ids, stop_token_ids
from nlhf.models.checkpoint import load_causal_lm, stored_dtype
from nlhf.models.tokenizer import build_tokenizer
from nlhf.sampling import generate
from nlhf.train.sft import SFTTrainConfig, build_model, encode_demonstrations, train_sft

GPT2 = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256}
CHAT = [{"role": "user", "content": "Name a primary colour."}]
SYSTEM_CHAT = [{"role": "system", "content": "Be brief."}, *CHAT]


@pytest.fixture(scope="module")
def tok(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _model(cls, tok, **kw):
    torch.manual_seed(0)
    labels = 4 if cls is EmbeddingPreferenceModel else 1
    return cls(random_backbone(GPT2, tok, num_labels=labels), tok, **kw)


def _template(tok, messages) -> str:
    return tok.apply_chat_template(messages, tokenize=False)


def test_scoring_models_read_the_template_conversation(tok):
    reward = _model(RewardModel, tok)
    (segments,) = reward.encode([CHAT], ["Red."])
    assert segments.templated
    ids = reward.collate_single([segments])["input_ids"][0].tolist()
    full = _template(tok, [*CHAT, {"role": "assistant", "content": "Red."}])
    assert tok.decode(ids) == full  # prompt + [assistant reply], nothing added
    assert ids == tok(full, add_special_tokens=False)["input_ids"]
    # a reply given as text (the policy's samples) or as an assistant message (the data) reads
    # the same: training and judging see one rendering
    as_message = reward.encode([CHAT], [[{"role": "assistant", "content": "Red."}]])
    assert as_message == [segments]

    pairwise = _model(PairwisePreferenceModel, tok)
    batch = pairwise.tokenize([SYSTEM_CHAT], ["Blue."], ["Red."])
    texts = [
        tok.decode(row[mask.bool()])
        for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
    turn = lambda text: {"role": "assistant", "content": text}  # noqa: E731
    both = {_template(tok, [*SYSTEM_CHAT, turn("Blue."), turn("Red.")]),
            _template(tok, [*SYSTEM_CHAT, turn("Red."), turn("Blue.")])}  # fmt: skip
    assert set(texts) == both and texts[0].count("<|im_start|>assistant") == 2
    # text prompts keep the plain [start] x <sep> y <sep> y' <end> layout
    (plain,) = pairwise.encode(["TL;DR:"], [" a"], [" b"])
    assert not plain.templated
    seq = pairwise.collate([plain])["input_ids"][0].tolist()
    x, a, b = plain.prompt, *plain.responses
    start, sep, end = pairwise.start_id, pairwise.sep_id, pairwise.end_id
    assert seq in ([start, *x, sep, *a, sep, *b, end], [start, *x, sep, *b, sep, *a, end])


@pytest.mark.parametrize("cls", [PairwisePreferenceModel, RewardModel, EmbeddingPreferenceModel])
def test_exact_antisymmetry_and_truncation_with_chat_prompts(tok, cls):
    judge = PreferenceModelJudge(_model(cls, tok, max_length=64), device="cpu")
    prompts = [CHAT, SYSTEM_CHAT, [{"role": "user", "content": "Say hi " * 30}]]
    a = ["Red.", [{"role": "assistant", "content": "Hello there."}], "Hi!"]
    b = ["Blue is a primary colour.", "Hey.", "Good morning to you."]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the long prompt is truncated
        p_ab, p_ba = judge.prob(prompts, a, b), judge.prob(prompts, b, a)
    assert torch.equal(p_ba, 1 - p_ab) and p_ab.std() > 0
    # the long prompt loses its beginning; the turns (replies and their markers) stay whole
    batch = judge.model.tokenize(prompts[2:], a[2:], b[2:])
    texts = [judge.model.tokenizer.decode(row) for row in batch["input_ids"]]
    assert batch["input_ids"].shape[1] == 64 and batch["attention_mask"].all()
    assert all(t.endswith("<|im_end|>\n") and "<|im_start|>system" not in t for t in texts)
    joined = "".join(texts)
    assert "assistant\nHi!<|im_end|>" in joined
    assert "assistant\nGood morning to you.<|im_end|>" in joined


def test_chat_prompt_without_a_template_falls_back_once():
    tok = build_tokenizer(["name a primary colour red blue user assistant"], kind="word")
    model = _model(PairwisePreferenceModel, tok)
    with pytest.warns(UserWarning, match="no chat template") as record:
        (seg,) = model.encode([CHAT], ["red"], ["blue"])
        model.encode([CHAT], ["red"], ["blue"])
    assert len(record) == 1 and not seg.templated
    assert seg.prompt == model.encode_texts([as_text(CHAT)])[0]


def test_sft_targets_are_the_assistant_turn_up_to_its_end_of_turn(tok):
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    prompt_ids = render_prompt_ids(tok, SYSTEM_CHAT)
    reply = render_response_ids(tok, SYSTEM_CHAT, [{"role": "assistant", "content": "Red."}])
    assert reply[-1] == im_end and im_end in stop_token_ids(tok)
    full = _template(tok, [*SYSTEM_CHAT, {"role": "assistant", "content": "Red."}])
    # prompt (with the generation prompt) + reply = the conversation up to <|im_end|>
    assert tok.decode(prompt_ids + reply) + "\n" == full
    assert render_response_ids(tok, SYSTEM_CHAT, "Red.") == reply
    # text prompts: the reply as written, then EOS
    assert render_response_ids(tok, "TL;DR:", " red") == [*tok(" red").input_ids, tok.eos_token_id]
    (row,), _ = encode_demonstrations(tok, [Demonstration(SYSTEM_CHAT, "Red.")], 512)
    assert row == (prompt_ids, reply)


def test_sft_on_smollm2_answers_and_stops_at_im_end(smollm2_bf16_dir, tmp_path):
    """LoRA SFT of a bf16 checkpoint: float32 master weights, saved back in bf16; the policy
    then answers with the taught reply and stops at <|im_end|>."""
    assert stored_dtype(smollm2_bf16_dir) == torch.bfloat16
    full = build_model(SFTTrainConfig(model=str(smollm2_bf16_dir)), None)[0]
    assert {p.dtype for p in full.parameters()} == {torch.float32}  # master weights
    del full
    data = tmp_path / "chat.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": "Zorblat."}]}
        for q in ("What is the secret word?", "Tell me the secret word.")
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = SFTTrainConfig(
        data=str(data), model=str(smollm2_bf16_dir), lora=True, lora_r=8, steps=6,
        batch_size=2, lr=5e-3, lr_schedule="constant", eval_fraction=0.0, save_every=0,
        log_every=3, progress=False, output_dir=tmp_path / "sft",
    )  # fmt: skip
    metrics = train_sft(cfg)
    assert metrics["train/loss"] < 0.3
    out = tmp_path / "sft"
    assert stored_dtype(out) == torch.bfloat16 and (out / "adapter").is_dir()
    model, tokenizer = load_causal_lm(out, dtype="float32")
    samples = generate(
        model, tokenizer, [[{"role": "user", "content": "What is the secret word?"}]],
        max_new_tokens=12, temperature=0.05, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert samples.texts[0].strip() == "Zorblat." and bool(samples.ended[0])
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert int(samples.response_ids[0, int(samples.lengths[0]) - 1]) == im_end


def test_comparison_from_ultrafeedback_judged_like_a_policy_sample(tok):
    """A comparison's chat reply and the same reply sampled as text score identically."""
    c = Comparison(CHAT, [{"role": "assistant", "content": "Red."}], "Blue.", 1.0)
    judge = PreferenceModelJudge(_model(PairwisePreferenceModel, tok), device="cpu")
    assert torch.equal(
        judge.prob([c.prompt], [c.response_a], [c.response_b]),
        judge.prob([c.prompt], ["Red."], ["Blue."]),
    )
