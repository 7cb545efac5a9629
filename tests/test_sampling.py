"""Exactness of nlhf.sampling: KV-cached token-level mixture vs recomputation, goodness of fit,
the beta = 0 / 1 reductions, EOS handling, EMA policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from nlhf.models.tokenizer import build_tokenizer
from nlhf.sampling import (
    EMAPolicy,
    generate,
    generate_pair,
    mix_log_probs,
    mixture_token_logprobs,
    token_logprobs,
)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far"]
PROMPTS = ["the cat <sep>", "a dog ran far on the mat <sep>", "<sep>", "mat sat <sep>"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([" ".join(WORDS)], kind="word")


def make_lm(tok, seed: int, spread: float = 0.02, n_positions: int = 64) -> GPT2LMHeadModel:
    """A small random GPT-2; ``spread`` (init std) makes its next-token distributions peaked."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(tok),
        n_positions=n_positions,
        initializer_range=spread,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


class Forbidden(torch.nn.Module):
    """A model that must not be run (to prove that a zero-weight model is skipped)."""

    def __init__(self, like):
        super().__init__()
        self.config = like.config
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *args, **kwargs):
        raise AssertionError("this model has weight 0 and must not be run")


@pytest.mark.parametrize("beta,temperature", [(0.3, 1.0), (0.7, 0.7), (0.0, 1.3), (1.0, 1.0)])
def test_cached_logprobs_equal_recomputation(tok, beta, temperature):
    pi, mu = make_lm(tok, 0, spread=0.3), make_lm(tok, 1, spread=0.3)
    gen = torch.Generator().manual_seed(0)
    s = generate(
        pi,
        tok,
        PROMPTS * 3,
        max_new_tokens=12,
        temperature=temperature,
        reference=mu,
        beta=beta,
        generator=gen,
    )
    assert s.response_ids.shape == s.logprobs.shape == s.response_mask.shape
    recomputed = mixture_token_logprobs(pi, mu, beta, s, temperature=temperature)
    diff = (recomputed - s.logprobs).abs().max().item()
    assert diff < 1e-5, diff
    # prompts of different lengths were left-padded and still agree row by row
    assert s.prompt_mask[:, 0].tolist().count(0) > 0


def test_beta_zero_and_one_reduce_exactly(tok):
    pi, mu = make_lm(tok, 0, spread=0.3), make_lm(tok, 1, spread=0.3)
    kwargs = dict(max_new_tokens=10, temperature=0.9)

    def run(policy, **extra):
        gen = torch.Generator().manual_seed(5)
        return generate(policy, tok, PROMPTS, generator=gen, **kwargs, **extra)

    plain_pi, plain_mu = run(pi), run(mu)
    mix0 = run(pi, reference=Forbidden(mu), beta=0.0)  # the reference is never run
    mix1 = run(Forbidden(pi), reference=mu, beta=1.0)  # the policy is never run
    assert torch.equal(mix0.response_ids, plain_pi.response_ids)
    assert torch.equal(mix0.logprobs, plain_pi.logprobs)
    assert torch.equal(mix1.response_ids, plain_mu.response_ids)
    assert torch.equal(mix1.logprobs, plain_mu.logprobs)
    # and the plain sampler's log-probs are those of the model at the temperature
    ref = token_logprobs(
        pi,
        plain_pi.prompt_ids,
        plain_pi.prompt_mask,
        plain_pi.response_ids,
        plain_pi.response_mask,
        temperature=0.9,
    )
    assert (ref - plain_pi.logprobs).abs().max() < 1e-5


def _two_token_table(pi, mu, tok, prompt, beta):
    """Exact probabilities of every 2-token outcome under the token-level mixture and under the
    sequence-level geometric mixture (for the power check). EOS first ends the response."""
    V, eos = len(tok), tok.eos_token_id
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():

        def step_logp(model, prefix):  # (V,) log p(. | prompt, prefix), no cache
            x = torch.tensor([ids + prefix])
            logits = model(input_ids=x, attention_mask=torch.ones_like(x)).logits
            return torch.log_softmax(logits[0, -1].double(), -1)

        first = {m: step_logp(m, []) for m in (pi, mu)}
        token_level, seq_pi, seq_mu = {}, {}, {}
        mix1 = mix_log_probs([first[pi], first[mu]], [1 - beta, beta]).double()
        for t1 in range(V):
            if t1 == eos:
                token_level[(t1,)] = mix1[t1].exp().item()
                seq_pi[(t1,)], seq_mu[(t1,)] = first[pi][t1].item(), first[mu][t1].item()
                continue
            second = {m: step_logp(m, [t1]) for m in (pi, mu)}
            mix2 = mix_log_probs([second[pi], second[mu]], [1 - beta, beta]).double()
            for t2 in range(V):
                token_level[(t1, t2)] = (mix1[t1] + mix2[t2]).exp().item()
                seq_pi[(t1, t2)] = (first[pi][t1] + second[pi][t2]).item()
                seq_mu[(t1, t2)] = (first[mu][t1] + second[mu][t2]).item()
    keys = list(token_level)
    seq = np.array([(1 - beta) * seq_pi[k] + beta * seq_mu[k] for k in keys])
    seq = np.exp(seq - seq.max())
    return keys, np.array([token_level[k] for k in keys]), seq / seq.sum()


def _chi_square(counts, probs):
    expected = probs / probs.sum() * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    return stats.chisquare(obs, exp).pvalue


def test_sampled_frequencies_match_the_token_level_mixture(tok):
    beta, n = 0.4, 20000
    pi, mu = make_lm(tok, 2, spread=0.5), make_lm(tok, 3, spread=0.5)
    prompt = "the cat <sep>"
    keys, token_level, sequence_level = _two_token_table(pi, mu, tok, prompt, beta)
    assert abs(token_level.sum() - 1) < 1e-5  # float32 mixing
    s = generate(
        pi,
        tok,
        [prompt] * n,
        max_new_tokens=2,
        reference=mu,
        beta=beta,
        generator=torch.Generator().manual_seed(11),
        batch_size=5000,
    )
    index = {k: i for i, k in enumerate(keys)}
    counts = np.zeros(len(keys))
    for row, mask in zip(s.response_ids.tolist(), s.response_mask.tolist()):
        counts[index[tuple(t for t, m in zip(row, mask) if m)]] += 1
    p_token = _chi_square(counts, token_level)
    p_sequence = _chi_square(counts, sequence_level)
    assert p_token > 1e-3, p_token
    # power check: the same test rejects the (different) sequence-level geometric mixture
    assert p_sequence < 1e-6, p_sequence


def test_eos_masks_and_texts(tok):
    pi = make_lm(tok, 4)  # near-uniform next-token distributions: EOS has p ~ 1/V per step
    eos = tok.eos_token_id
    s = generate(
        pi, tok, PROMPTS * 8, max_new_tokens=15, generator=torch.Generator().manual_seed(0)
    )
    ids, mask = s.response_ids, s.response_mask.bool()
    assert s.ended.any() and (~s.ended).any()
    for i in range(len(ids)):
        n = int(mask[i].sum())
        assert mask[i, :n].all() and not mask[i, n:].any()  # one contiguous run
        if s.ended[i]:
            assert ids[i, n - 1] == eos and (ids[i, n:] == tok.pad_token_id).all()
            assert (ids[i, : n - 1] != eos).all()
        else:
            assert n == 15
        assert (s.logprobs[i, n:] == 0).all() and (s.logprobs[i, :n] < 0).all()
        assert "<eos>" not in s.texts[i] and "<pad>" not in s.texts[i]


def test_top_k_one_is_greedy_and_batching_is_consistent(tok):
    pi = make_lm(tok, 5, spread=0.3)
    a = generate(pi, tok, PROMPTS, max_new_tokens=6, top_k=1)
    b = generate(pi, tok, PROMPTS, max_new_tokens=6, top_k=1, batch_size=1)
    assert a.texts == b.texts
    assert torch.allclose(a.logprobs, torch.zeros_like(a.logprobs))  # greedy: p = 1


def test_bad_inputs(tok):
    pi, mu = make_lm(tok, 0), make_lm(tok, 1)
    with pytest.raises(ValueError, match="beta"):
        generate(pi, tok, PROMPTS, reference=mu, beta=1.5)
    with pytest.raises(ValueError, match="no reference"):
        generate(pi, tok, PROMPTS, beta=0.5)
    with pytest.raises(ValueError, match="empty"):
        generate(pi, tok, [])
    with pytest.raises(ValueError, match="prompt 1 .* is empty"):
        generate(pi, tok, ["the cat", ""])
    short = make_lm(tok, 0, n_positions=8)
    with pytest.raises(ValueError, match="prompt 0 has 9 tokens"):
        generate(short, tok, ["the cat sat on a mat dog ran far"])
    other = build_tokenizer([" ".join(WORDS + ["extra", "words"])], kind="word")
    with pytest.raises(ValueError, match="vocabulary"):
        generate(pi, tok, PROMPTS, reference=make_lm(other, 1), beta=0.5)


def test_ema_policy_update_sampling_and_checkpoint(tok, tmp_path):
    pi = make_lm(tok, 0)
    ema = EMAPolicy(pi, decay=0.9)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in pi.parameters():
            p.add_(1.0)
    ema.update(pi)
    for name, p in pi.named_parameters():
        expected = 0.9 * before[name] + 0.1 * p.detach()
        assert torch.allclose(ema.model.get_parameter(name), expected, atol=1e-6)
    s = generate(ema, tok, PROMPTS, max_new_tokens=4, generator=torch.Generator().manual_seed(0))
    assert len(s.texts) == len(PROMPTS)
    ema.save_pretrained(tmp_path / "ema", tokenizer=tok)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ema")
    for (n1, p1), (_, p2) in zip(ema.model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p1, p2), n1
    with pytest.raises(ValueError, match="ema_decay"):
        EMAPolicy(pi, decay=1.5)


def test_mix_log_probs_is_the_normalised_geometric_mixture():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 11, generator=gen), torch.randn(3, 11, generator=gen) * 3
    for beta in (0.0, 0.2, 0.5, 1.0):
        mixed = mix_log_probs([a, b], [1 - beta, beta], temperature=0.5)
        p, q = torch.softmax(a / 0.5, -1), torch.softmax(b / 0.5, -1)
        expected = p ** (1 - beta) * q**beta
        expected = expected / expected.sum(-1, keepdim=True)
        assert torch.allclose(mixed.exp(), expected, atol=1e-6)
        same = mix_log_probs([a, a], [1 - beta, beta])
        assert torch.allclose(same, torch.log_softmax(a, -1), atol=1e-6)


@pytest.mark.parametrize("beta", [0.3, 0.0, 1.0, "ema"])
def test_generate_pair_samples_policy_and_alternative_exactly(tok, beta):
    pi, mu = make_lm(tok, 0, spread=0.3), make_lm(tok, 1, spread=0.3)
    ema = EMAPolicy(make_lm(tok, 2, spread=0.3), decay=0.9) if beta == "ema" else None
    y, y_alt = generate_pair(
        pi,
        tok,
        PROMPTS * 3,
        max_new_tokens=10,
        reference=mu,
        beta=0.0 if ema else beta,
        alternative=ema,
        generator=torch.Generator().manual_seed(3),
    )
    assert len(y.texts) == len(y_alt.texts) == len(PROMPTS) * 3
    assert (mixture_token_logprobs(pi, None, 0.0, y) - y.logprobs).abs().max() < 1e-5
    if ema is not None:
        expected = mixture_token_logprobs(ema, None, 0.0, y_alt)
    else:
        expected = mixture_token_logprobs(pi, mu, beta, y_alt)
    assert (expected - y_alt.logprobs).abs().max() < 1e-5
    assert not torch.equal(y.response_ids, y_alt.response_ids)  # independent samples


@pytest.mark.parametrize("beta", [0.3, 0.0, 1.0, "ema"])
def test_reference_scores_from_the_sampling_loop_equal_recomputation(tok, beta):
    """``score_reference=True``: the reference scores y inside the cached loop; the values
    equal a no-cache forward of the reference, and the samples are the very same draws."""
    pi, mu = make_lm(tok, 0, spread=0.3), make_lm(tok, 1, spread=0.3)
    ema = EMAPolicy(make_lm(tok, 2, spread=0.3), decay=0.9) if beta == "ema" else None
    kwargs = dict(
        max_new_tokens=10, reference=mu, beta=0.0 if ema else beta, alternative=ema,
        temperature=0.8,
    )  # fmt: skip
    y, y_alt = generate_pair(
        pi, tok, PROMPTS * 3, generator=torch.Generator().manual_seed(3), score_reference=True,
        **kwargs,
    )  # fmt: skip
    plain_y, plain_alt = generate_pair(
        pi, tok, PROMPTS * 3, generator=torch.Generator().manual_seed(3), **kwargs
    )
    assert torch.equal(y.response_ids, plain_y.response_ids)
    assert torch.equal(y_alt.response_ids, plain_alt.response_ids)
    assert plain_y.reference_logprobs is None and y_alt.reference_logprobs is None
    args = (y.prompt_ids, y.prompt_mask, y.response_ids, y.response_mask)
    expected = token_logprobs(mu, *args, temperature=0.8)
    assert y.reference_logprobs.shape == expected.shape
    assert (y.reference_logprobs - expected).abs().max() < 1e-5
    assert (y.reference_logprobs[y.response_mask == 0] == 0).all()
    with pytest.raises(ValueError, match="score_reference"):
        generate_pair(pi, tok, PROMPTS, beta=0.0, score_reference=True)


def test_llama_linear_layers_are_packed_on_cpu_and_still_exact(tok):
    """A Llama's nn.Linear layers run pre-packed in the CPU decode loop (the frozen reference's
    packed weights are kept, the trainable policy's dropped); the cached log-probs still equal
    a no-cache recomputation with the plain layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from nlhf.sampling import _PACKED, _onednn_linear_available

    def llama(seed):
        torch.manual_seed(seed)
        config = LlamaConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=64,
            initializer_range=0.3, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        return LlamaForCausalLM(config).eval()

    pi, mu = llama(0), llama(1).requires_grad_(False)
    y, y_alt = generate_pair(
        pi, tok, PROMPTS * 2, max_new_tokens=10, reference=mu, beta=0.4, temperature=0.9,
        generator=torch.Generator().manual_seed(0), score_reference=True,
    )  # fmt: skip
    if _onednn_linear_available():
        assert any(m in _PACKED for m in mu.modules())
        assert not any(m in _PACKED for m in pi.modules())
    assert all("forward" not in m.__dict__ for m in (*pi.modules(), *mu.modules()))
    assert (mixture_token_logprobs(pi, None, 0.0, y, 0.9) - y.logprobs).abs().max() < 1e-5
    assert (mixture_token_logprobs(pi, mu, 0.4, y_alt, 0.9) - y_alt.logprobs).abs().max() < 1e-5
    expected = token_logprobs(mu, y.prompt_ids, y.prompt_mask, y.response_ids, y.response_mask, 0.9)
    assert (expected - y.reference_logprobs).abs().max() < 1e-5


def test_shared_prompts_are_encoded_once_per_model(tok):
    """y and y' share their prompts: a model that samples both encodes the b prompts once and
    repeats its KV cache (exactness is covered by the recomputation tests above)."""

    class Counting(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.config, self.rows = model, model.config, []

        def forward(self, **kwargs):
            self.rows.append(kwargs["input_ids"].shape)
            return self.model(**kwargs)

    pi, mu = Counting(make_lm(tok, 0)), Counting(make_lm(tok, 1))
    generate_pair(
        pi, tok, PROMPTS, max_new_tokens=3, reference=mu, beta=0.3, score_reference=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    b = len(PROMPTS)
    assert pi.rows[0][0] == b and mu.rows[0][0] == b  # the prompts, once
    assert pi.rows[1] == (2 * b, 1) and mu.rows[1] == (2 * b, 1)  # then one token for each copy


def test_per_sample_generators_make_a_sample_independent_of_its_batch(tok):
    """One generator per prompt: a prompt's ``y`` and ``y'`` are the same drawn alone, in a
    batch, or in another split of the batch (what lets N processes sample what one process
    samples); the samples still follow the policy and the mixture."""
    pi, mu = make_lm(tok, 0, spread=0.3), make_lm(tok, 1, spread=0.3)
    prompts = PROMPTS * 2

    def streams(keys):
        return [torch.Generator().manual_seed(100 + k) for k in keys]

    kwargs = dict(max_new_tokens=10, reference=mu, beta=0.4)
    whole = generate_pair(pi, tok, prompts, generator=streams(range(8)), **kwargs)
    halves = [
        generate_pair(pi, tok, prompts[i : i + 4], generator=streams(range(i, i + 4)), **kwargs)
        for i in (0, 4)
    ]
    alone = generate_pair(pi, tok, prompts[5:6], generator=streams([5]), **kwargs)
    for c in range(2):  # y, y'
        assert whole[c].texts == halves[0][c].texts + halves[1][c].texts
        assert whole[c].texts[5] == alone[c].texts[0]
        width = alone[c].response_ids.shape[1]
        assert torch.equal(whole[c].response_ids[5, :width], alone[c].response_ids[0])
    assert (mixture_token_logprobs(pi, None, 0.0, whole[0]) - whole[0].logprobs).abs().max() < 1e-5
    assert (mixture_token_logprobs(pi, mu, 0.4, whole[1]) - whole[1].logprobs).abs().max() < 1e-5
    assert whole[0].texts != whole[1].texts  # y and y' are different draws
    with pytest.raises(ValueError, match="3 generators for 8 prompts"):
        generate(pi, tok, prompts, generator=streams(range(3)))
