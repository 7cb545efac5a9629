"""Memory-lean token log-probs (nlhf.sampling.token_logprobs): values, entropies and gradients
equal the plain full-vocabulary formula, for every chunking, with and without recomputation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from nlhf.sampling import AdaptersDisabled, _separable_head, response_logits, token_logprobs

V = 97


def gpt2(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=64)
    return GPT2LMHeadModel(config).to(dtype).eval()


def llama(seed=0, dtype=torch.float64, tie=False):
    torch.manual_seed(seed)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=V, max_position_embeddings=64,
        tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(config).to(dtype).eval()


def batch(seed=0, B=3, P=5, T=7):
    """Left-padded prompts, right-padded responses of different lengths (one of length 0)."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, V, (B, P), generator=gen)
    prompt_mask = torch.ones(B, P, dtype=torch.long)
    prompt_mask[1, :2] = 0
    response_ids = torch.randint(3, V, (B, T), generator=gen)
    response_mask = torch.ones(B, T, dtype=torch.long)
    response_mask[1, 4:] = 0
    response_mask[2, :] = 0 if B > 3 else 1
    response_mask[0, 6:] = 0
    return prompt_ids, prompt_mask, response_ids * response_mask, response_mask


def plain(model, args, temperature):
    """The full-vocabulary formula the trainer used before: log_softmax over (B, T, V)."""
    logits = response_logits(model, *args)
    logp_all = F.log_softmax(logits.double() / temperature, dim=-1)  # (B, T, V)
    logp = logp_all.gather(-1, args[2][..., None])[..., 0] * args[3]
    entropy = -(logp_all.exp() * logp_all).sum(-1) * args[3]
    return logp, entropy


def grads(model, logp, weights):
    model.zero_grad(set_to_none=True)
    (logp * weights).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "make", [gpt2, llama, lambda: llama(tie=True)], ids=["gpt2", "llama", "tied"]
)
@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_equal_the_full_formula_values_and_gradients(make, chunk, temperature):
    model = make()
    args = batch()
    weights = torch.randn(args[2].shape, generator=torch.Generator().manual_seed(1)).double()
    expected_logp, expected_entropy = plain(model, args, temperature)
    expected_grads = grads(model, expected_logp, weights)
    logp, entropy = token_logprobs(
        model, *args, temperature=temperature, with_entropy=True, chunk_tokens=chunk
    )
    assert logp.shape == entropy.shape == args[2].shape
    assert not entropy.requires_grad
    # float32 accumulation inside (logits are upcast to float32): tight, not bitwise
    assert torch.allclose(logp.double(), expected_logp, atol=1e-5)
    assert torch.allclose(entropy.double(), expected_entropy, atol=1e-5)
    assert (logp[args[3] == 0] == 0).all() and (entropy[args[3] == 0] == 0).all()
    got_grads = grads(model, logp.double(), weights)
    assert got_grads.keys() == expected_grads.keys()
    for name, g in expected_grads.items():
        assert torch.allclose(got_grads[name].double(), g, rtol=1e-4, atol=1e-6), name


def test_float64_gradients_equal_to_rounding_with_recomputation():
    """In float64 end to end, chunking with recomputation changes only the order of additions:
    values and gradients agree with the plain formula to ~1e-12."""
    model = llama()
    args = batch(seed=3)
    weights = torch.randn(args[2].shape, dtype=torch.float64)
    expected_logp, _ = plain(model, args, 0.9)
    expected = grads(model, expected_logp, weights)
    head = model.get_output_embeddings()
    calls = []
    head.register_forward_hook(lambda *a: calls.append(1))
    logp = token_logprobs(model, *args, temperature=0.9, chunk_tokens=2)
    assert logp.dtype == torch.float64
    assert torch.allclose(logp, expected_logp, rtol=0, atol=1e-12)
    before = len(calls)
    got = grads(model, logp, weights)
    n_chunks = -(-int(args[3].sum()) // 2)
    assert len(calls) - before == n_chunks  # every chunk was recomputed in the backward pass
    for name, g in expected.items():
        assert torch.allclose(got[name], g, rtol=1e-9, atol=1e-12), name


def test_no_full_vocabulary_tensor_is_kept_for_backward():
    """With several chunks, no (tokens, V) tensor is saved for the backward pass: only the
    states and the head's weight are; the plain formula saves (B, T, V)."""
    model = gpt2(dtype=torch.float32)
    args = batch(T=7)
    saved: list[torch.Size] = []

    def pack(t):
        saved.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(model, *args, chunk_tokens=2)
    assert not [s for s in saved if s[-1] == V]
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = response_logits(model, *args)
        F.log_softmax(logits.float(), -1)
    assert (*args[2].shape, V) in [tuple(s) for s in saved]


def test_soft_capped_logits_fall_back_to_the_models_own_logits():
    torch.manual_seed(0)
    config = Gemma2Config(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, vocab_size=V, max_position_embeddings=64,
        final_logit_softcapping=2.0,
    )  # fmt: skip
    model = Gemma2ForCausalLM(config).double().eval()
    assert _separable_head(model) is None  # head(hidden) is not the logits: detected
    assert _separable_head(llama()) is not None and _separable_head(gpt2()) is not None
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the check holds under autocast too
        assert _separable_head(llama(dtype=torch.float32)) is not None
    assert _separable_head(llama(dtype=torch.bfloat16)) is not None
    args = batch()
    expected, _ = plain(model, args, 1.0)
    assert torch.allclose(token_logprobs(model, *args, chunk_tokens=3).double(), expected)


def test_adapters_disabled_scores_the_base_model_even_with_an_adapted_head():
    from peft import LoraConfig, get_peft_model

    base = llama(dtype=torch.float32)
    args = batch()
    expected = token_logprobs(base, *args)
    lora = LoraConfig(r=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    peft_model = get_peft_model(llama(dtype=torch.float32), lora).eval()
    adapted = token_logprobs(peft_model, *args)
    assert not torch.allclose(adapted, expected, atol=1e-3)  # the adapters change the policy
    reference = token_logprobs(AdaptersDisabled(peft_model), *args)
    assert torch.allclose(reference, expected, atol=1e-6)
    assert torch.allclose(token_logprobs(peft_model, *args), adapted)  # adapters back on
