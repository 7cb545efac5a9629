"""Chat prompts on a real pretrained chat model (SmolLM2-135M-Instruct)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from nlhf.models.chat import encode_prompts, render_prompt_ids, stop_token_ids
from nlhf.sampling import generate

CHAT = [[{"role": "user", "content": "Name one fruit."}], [{"role": "user", "content": "Hi!"}]]


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return AutoModelForCausalLM.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(
        smollm2_dir
    )


def test_prompt_ids_are_the_chat_template(smol):
    _, tok = smol
    want = tok.apply_chat_template(CHAT[0], add_generation_prompt=True, tokenize=True)
    want = want["input_ids"] if hasattr(want, "keys") else want
    assert render_prompt_ids(tok, CHAT[0]) == list(want)
    assert tok.decode(render_prompt_ids(tok, CHAT[0])).endswith("<|im_start|>assistant\n")
    # plain text stays as written
    assert render_prompt_ids(tok, "TL;DR:") == tok("TL;DR:", add_special_tokens=False).input_ids


def test_stop_tokens_include_the_end_of_turn(smol):
    _, tok = smol
    assert tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok)


def test_sampled_chat_responses_end_at_im_end(smol):
    model, tok = smol
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = generate(model, tok, CHAT, max_new_tokens=48, generator=torch.Generator().manual_seed(0))
    for row, mask, ended, text in zip(out.response_ids, out.response_mask, out.ended, out.texts):
        n = int(mask.sum())
        if ended:
            assert int(row[n - 1]) == end  # stopped at the template's end of turn
        assert "<|im_end|>" not in text and "<|im_start|>" not in text
        assert text.strip()
    assert bool(out.ended.any()), "no response ended within 48 tokens"


def test_encode_prompts_rejects_empty(smol):
    _, tok = smol
    with pytest.raises(ValueError, match="empty after tokenization"):
        encode_prompts(tok, [""])
