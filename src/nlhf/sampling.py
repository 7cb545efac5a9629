"""Sampling from causal language models: plain, token-level geometric mixture, and EMA policies.

Munos et al., "Nash Learning from Human Feedback" (ICML 2024), §6 and App. F. Nash-MD-PG plays
the policy against the *one-step-at-a-time regularized policy*

    pi^beta(y_n | x, y_<n)  ∝  pi_theta(y_n | x, y_<n)^(1 - beta) * mu(y_n | x, y_<n)^beta,

i.e. at every step it samples from ``softmax((1 - beta) * logits_pi + beta * logits_mu)``. This is
a *token-level* mixture: the per-step normalisers depend on the path, so it is not the
sequence-level geometric mixture of the two models.

One step of :func:`generate` (each model keeps its OWN key/value cache):

1. run every model that has a non-zero weight on the new token (the whole left-padded prompt on
   the first step, encoded once and its cache repeated when a model samples several copies of
   the batch), one incremental forward each; on CPU the models' linear layers run with weights
   pre-packed for the few rows of a decode step;
2. mix: ``log p = log_softmax(sum_k w_k * log_softmax(logits_k / temperature))`` with
   ``w = (1 - beta, beta)``; a model with weight 0 is never run (``beta = 0`` samples the policy,
   ``beta = 1`` the reference, exactly);
3. draw the next token from ``p`` (optionally truncated by top-k / top-p, off by default because
   the policy gradient assumes on-policy samples), record its log-probability;
4. a sequence that emitted EOS is finished: later positions are padding with mask 0.

:func:`generate_pair` draws ``y ~ pi_theta`` and ``y' ~ pi^beta`` in the same loop, with the
policy's rows for both batched into one forward: 2 forwards per token for Nash-MD-PG (policy on
2B rows, reference on B rows) instead of 3. With ``score_reference=True`` the reference also
runs on the rows of ``y`` and records ``log mu(y_n | x, y_<n)`` (one more batch row per token
instead of a second forward over prompt + response after sampling).

:func:`token_logprobs` scores given responses without a cache (what the trainer differentiates)
and never materialises the (B, T, V) float32 log-softmax: the LM head and the log-softmax run in
chunks of response tokens, ``log p(y_n) = logit_y / T - logsumexp(logits / T)``, and when there
are several chunks each is recomputed in the backward pass instead of being kept.

:class:`EMAPolicy` holds ``theta_bar <- decay * theta_bar + (1 - decay) * theta`` (Nash-EMA-PG's
alternative policy); it is a ``torch.nn.Module`` that :func:`generate` samples like any policy
and that saves as a standard Hugging Face checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from nlhf.models.chat import encode_prompts, stop_token_ids
from nlhf.models.checkpoint import save_causal_lm

__all__ = [
    "Samples",
    "generate",
    "generate_pair",
    "encode_prompts",
    "left_pad",
    "token_logprobs",
    "LOGIT_CHUNK_BYTES",
    "mixture_token_logprobs",
    "mix_log_probs",
    "context_length",
    "accepts_logits_to_keep",
    "EMAPolicy",
    "AdaptersDisabled",
    "is_dtensor",
]

# one generator for a batch, one per prompt (per-sample streams), or the global stream
Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclass
class Samples:
    """A batch of sampled responses.

    ``response_ids`` holds the sampled tokens, EOS included, then ``pad`` (mask 0) after it.
    ``logprobs`` are the log-probabilities of the *sampling* distribution (the mixture when
    ``beta > 0``, at the sampling temperature), 0 where the mask is 0.
    """

    prompts: list[str]
    texts: list[str]  # decoded responses, special tokens removed
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) 1 = real token
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T) 1 = sampled token (EOS included)
    logprobs: torch.Tensor  # (B, T) float32
    ended: torch.Tensor  # (B,) bool: the response ended with EOS (not cut at max_new_tokens)
    reference_logprobs: torch.Tensor | None = None  # (B, T) log mu(y_n | .) when scored in the loop

    @property
    def lengths(self) -> torch.Tensor:
        """Response lengths in tokens, EOS included, (B,)."""
        return self.response_mask.sum(-1)


class AdaptersDisabled(torch.nn.Module):
    """A PEFT model seen with its adapters switched off: the base model, without a second copy.

    Used as the reference policy of LoRA training, so the mixture sampler keeps a separate KV
    cache for it while the weights are shared with the policy.
    """

    def __init__(self, peft_model: torch.nn.Module):
        super().__init__()
        self.peft_model = peft_model
        self.train(peft_model.training)  # share the wrapped model's mode, never flip it

    @property
    def config(self):
        return self.peft_model.config

    def forward(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)


class EMAPolicy(torch.nn.Module):
    """Exponential moving average of a policy's parameters (Nash-EMA-PG, paper §6).

    ``update(policy)`` applies ``theta_bar <- decay * theta_bar + (1 - decay) * theta``. The object
    is sampled like any model (``generate(ema, ...)``) and ``save_pretrained`` writes a standard
    Hugging Face checkpoint (LoRA adapters merged into the base weights).
    """

    def __init__(self, policy: torch.nn.Module, decay: float = 0.999):
        super().__init__()
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.model = copy.deepcopy(policy)
        self.model.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> EMAPolicy:
        """An EMA policy is never trained: it stays in eval mode (dropout off)."""
        return super().train(False)

    @property
    def config(self):
        return self.model.config

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    @torch.no_grad()
    def update(self, policy: torch.nn.Module) -> None:
        """``theta_bar <- decay * theta_bar + (1 - decay) * theta`` for every trainable weight
        (a policy sharded by FSDP2 is gathered weight by weight: call it on every process)."""
        source = dict(policy.named_parameters())
        for name, p_bar in self.model.named_parameters():
            p = source.get(name)
            if p is None:
                raise ValueError(f"EMA update: the policy has no parameter {name!r}")
            if p.requires_grad:
                full = p.full_tensor() if is_dtensor(p) else p  # FSDP2: gather the shards
                p_bar.lerp_(full.detach().to(p_bar.dtype), 1.0 - self.decay)

    def save_pretrained(
        self, path: str | Path, tokenizer=None, dtype: torch.dtype | str | None = None
    ) -> None:
        """Write the averaged policy as a standard Hugging Face checkpoint, its floating-point
        weights in ``dtype`` (None: as held, float32)."""
        model = self.model
        if hasattr(model, "merge_and_unload"):  # PEFT: merge adapters into a copy
            model = copy.deepcopy(model).merge_and_unload()
        save_causal_lm(model, path, dtype=dtype, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------
# helpers


def _hf_forward_signature(model: torch.nn.Module) -> inspect.Signature:
    """The signature of the innermost Hugging Face forward (through PEFT/EMA/DDP wrappers)."""
    for module in model.modules():
        params = inspect.signature(module.forward).parameters
        if "input_ids" in params and ("cache" in params or "past_key_values" in params):
            return inspect.signature(module.forward)
    return inspect.signature(model.forward)


_CACHE_KWARG: dict[type, tuple[str, bool]] = {}


def _cache_kwarg(model: torch.nn.Module) -> tuple[str, bool]:
    """Name of the KV-cache argument (``cache`` in transformers >= 5.x, else
    ``past_key_values``) and whether ``logits_to_keep`` is accepted."""
    key = type(model)
    if key not in _CACHE_KWARG:
        params = _hf_forward_signature(model).parameters
        name = "cache" if "cache" in params else "past_key_values"
        _CACHE_KWARG[key] = (name, "logits_to_keep" in params)
    return _CACHE_KWARG[key]


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the model's (innermost Hugging Face) forward takes ``logits_to_keep``."""
    return _cache_kwarg(model)[1]


def _output_cache(out):
    for key in ("cache", "past_key_values"):
        value = out.get(key) if hasattr(out, "get") else getattr(out, key, None)
        if value is not None:
            return value
    raise ValueError("the model returned no key/value cache (use_cache=True was ignored)")


def context_length(model: torch.nn.Module) -> int | None:
    """The model's maximum sequence length from its config, or None if it has no limit."""
    config = model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def left_pad(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists: ids (B, P) and mask (B, P)."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)  # (B,)
    width = int(lengths.max())
    flat = torch.tensor([t for s in sequences for t in s], dtype=torch.long)  # (sum of lengths,)
    cols = torch.arange(width)[None, :]  # (1, P)
    mask = cols >= (width - lengths)[:, None]  # (B, P): True on the right-aligned tokens
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    ids[mask] = flat  # row-major order of the mask matches the concatenation order
    return ids.to(device), mask.long().to(device)


def _pad_id(tokenizer) -> int:
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return int(tok_id)
    return 0


def mix_log_probs(
    logits: Sequence[torch.Tensor], weights: Sequence[float], temperature: float = 1.0
) -> torch.Tensor:
    """``log_softmax(sum_k w_k * log_softmax(logits_k / temperature))`` over the last axis.

    With a single model of weight 1 this is exactly ``log_softmax(logits / temperature)``.
    The weighted sum is the token-level geometric mixture ``prod_k p_k^w_k`` (renormalised).
    """
    if len(logits) == 1 and weights[0] == 1.0:
        return F.log_softmax(logits[0].float() / temperature, dim=-1)
    vocab = {lg.shape[-1] for lg in logits}
    if len(vocab) != 1:
        raise ValueError(
            f"policy and reference have different vocabulary sizes {sorted(vocab)}; "
            "the token-level mixture needs the same vocabulary"
        )
    mixed = sum(
        w * F.log_softmax(lg.float() / temperature, dim=-1)
        for lg, w in zip(logits, weights)
        if w != 0.0
    )
    return F.log_softmax(mixed, dim=-1)


def _truncate(logp: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k / nucleus truncation of log-probs (B, V), renormalised. Off unless asked."""
    if top_k is None and (top_p is None or top_p >= 1.0):
        return logp
    if top_k is not None and 0 < top_k < logp.shape[-1]:
        kth = torch.topk(logp, top_k, dim=-1).values[..., -1:]
        logp = logp.masked_fill(logp < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logp, order = torch.sort(logp, descending=True, dim=-1)
        cum = sorted_logp.exp().cumsum(-1)
        drop_sorted = (cum - sorted_logp.exp()) >= top_p  # keep the smallest set with mass >= p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, float("-inf"))
    return F.log_softmax(logp, dim=-1)


def _draw(
    logp: torch.Tensor, generator: torch.Generator | None, u: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row from log-probs (B, V) -> (B,), by inverting the CDF.

    ``u ~ U[0, 1)`` times the total mass, then the first index whose cumulative probability
    exceeds ``u``: an exact draw (float64 cumulative sums), a token of probability 0 is never
    chosen, and it is ~10x faster than ``torch.multinomial`` for large vocabularies on CPU.
    ``u`` (B, 1) float64: uniforms drawn beforehand (per-sample streams) instead of from
    ``generator``.
    """
    if u is None:
        device = generator.device if generator is not None else logp.device
        u = torch.rand(logp.shape[0], 1, generator=generator, device=device, dtype=torch.float64)
    cdf = logp.to(device=u.device, dtype=torch.float64).exp().cumsum(-1)  # (B, V)
    index = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # (B, 1)
    return index[:, 0].clamp(max=cdf.shape[-1] - 1).to(logp.device)


# --------------------------------------------------------------------------------------------
# sampling


@torch.no_grad()
def generate(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    reference: torch.nn.Module | None = None,
    beta: float = 0.0,
    generator: Generators = None,
    batch_size: int | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    prompt_token_ids: Sequence[Sequence[int]] | None = None,
    synced: bool = False,
) -> Samples:
    """Sample one response per prompt from ``policy`` or from the token-level mixture
    ``softmax((1 - beta) logits_policy + beta logits_reference)`` (paper §6, Nash-MD-PG).

    Prompts are text (tokenized as written, no BOS added) or chat message lists (rendered by the
    tokenizer's chat template with the generation prompt, :mod:`nlhf.models.chat`), left-padded;
    each model keeps its own KV cache, so a token costs one incremental forward of each model
    with non-zero weight. Sampling stops at EOS or the chat template's end-of-turn token
    (:func:`nlhf.models.chat.stop_token_ids`), or after ``max_new_tokens``. The models are run
    in eval mode (dropout off) and restored to their previous mode afterwards.
    ``prompt_token_ids`` (optional) are the prompts already tokenized, to skip re-encoding.

    ``generator``: one generator for the whole batch, or one per prompt (per-sample streams:
    prompt i's response then depends only on its own generator, not on the rest of the batch,
    so a batch split over processes samples what the whole batch samples in one process).
    ``synced=True``: under a distributed launch every process keeps decoding until the rows of
    all processes are done, as a sharded model's forward (FSDP, ZeRO-3) is a collective that
    every process must join; the samples are unchanged.
    """
    _check_beta(beta, reference)
    runs = _models_for(policy, reference, beta)  # [(model, weight)]
    plan = _Plan(
        copies=1,
        runs=[(m, 0, 1) for m, _ in runs],
        groups=[[(k, w) for k, (_, w) in enumerate(runs)]],
    )
    (samples,) = _generate(
        plan, tokenizer, prompts, max_new_tokens, temperature, generator, batch_size, top_k,
        top_p, prompt_token_ids, synced,
    )  # fmt: skip
    return samples


@torch.no_grad()
def generate_pair(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    reference: torch.nn.Module | None = None,
    beta: float = 0.0,
    alternative: torch.nn.Module | None = None,
    generator: Generators = None,
    batch_size: int | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    prompt_token_ids: Sequence[Sequence[int]] | None = None,
    score_reference: bool = False,
    synced: bool = False,
) -> tuple[Samples, Samples]:
    """``y ~ policy`` and ``y' ~`` the alternative for every prompt, sampled in one loop.

    The alternative is ``alternative`` (another model, e.g. an :class:`EMAPolicy`) if given,
    else the token-level mixture of ``policy`` and ``reference`` with weight ``beta``. The policy
    runs ONE incremental forward per token on the rows of both samples that need it (2B rows
    for a mixture with ``beta < 1``), the reference one on the B rows of ``y'``: 2 forwards per
    token instead of 3 for Nash-MD-PG, 1 instead of 2 for self-play. Each sample has the same
    distribution as a separate :func:`generate` call (the random stream differs).
    ``generator`` and ``synced`` as in :func:`generate` (a per-prompt generator draws both
    of its prompt's samples).

    ``score_reference=True`` also fills ``y.reference_logprobs`` with ``log mu(y_n | x, y_<n)``
    at ``temperature``: the reference runs on the rows of ``y`` too (for a mixture that is the
    same forward on 2B rows instead of B; for self-play or an EMA alternative it adds a forward
    on B rows per token). The values equal :func:`token_logprobs` of the reference up to
    float rounding.
    """
    if score_reference and reference is None:
        raise ValueError("score_reference: no reference was given")
    first_ref = 0 if score_reference else 1  # the reference runs on copies first_ref..1
    if alternative is not None:
        runs = [(policy, 0, 1), (alternative, 1, 2)]
        if score_reference:
            runs.append((reference, 0, 1))
        plan = _Plan(copies=2, runs=runs, groups=[[(0, 1.0)], [(1, 1.0)]])
    else:
        _check_beta(beta, reference)
        if beta == 1.0:  # best response to mu: the policy is not needed for y'
            runs = [(policy, 0, 1), (reference, first_ref, 2)]
            plan = _Plan(copies=2, runs=runs, groups=[[(0, 1.0)], [(1, 1.0)]])
        elif beta == 0.0:  # self-play: both samples from the policy, one batched forward
            runs = [(policy, 0, 2)] + ([(reference, 0, 1)] if score_reference else [])
            plan = _Plan(copies=2, runs=runs, groups=[[(0, 1.0)], [(0, 1.0)]])
        else:
            runs = [(policy, 0, 2), (reference, first_ref, 2)]
            groups = [[(0, 1.0)], [(0, 1.0 - beta), (1, beta)]]
            plan = _Plan(copies=2, runs=runs, groups=groups)
        _check_vocab([m for m, _, _ in plan.runs])
    if score_reference:
        plan.scored = (0, len(plan.runs) - 1)  # y under the reference, always the last run
    y, y_alt = _generate(
        plan, tokenizer, prompts, max_new_tokens, temperature, generator, batch_size, top_k,
        top_p, prompt_token_ids, synced,
    )  # fmt: skip
    return y, y_alt


@dataclass
class _Plan:
    """Which model runs on which rows, and how the rows' next-token distributions are mixed.

    The prompt batch (b rows) is repeated ``copies`` times. ``runs[k] = (model, c0, c1)``: the
    model runs (with its own KV cache) on copies c0..c1-1. ``groups[c]`` lists ``(run, weight)``
    pairs whose tempered log-probs are mixed for copy c. ``scored = (c, k)``: the tokens drawn
    for copy c are also scored under run k alone (``Samples.reference_logprobs``).
    """

    copies: int
    runs: list[tuple[torch.nn.Module, int, int]]
    groups: list[list[tuple[int, float]]]
    scored: tuple[int, int] | None = None  # (copy, run): also record log p_run of copy's tokens


def _check_beta(beta: float, reference) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if beta > 0 and reference is None:
        raise ValueError(f"beta = {beta} mixes in the reference, but no reference was given")


def _models_for(policy, reference, beta: float) -> list[tuple[torch.nn.Module, float]]:
    """The models with non-zero weight (beta = 0 / 1 never run the other model)."""
    models: list[tuple[torch.nn.Module, float]] = []
    if beta < 1.0:
        models.append((policy, 1.0 - beta))
    if beta > 0.0:
        models.append((reference, beta))
    _check_vocab([m for m, _ in models])
    return models


def _check_vocab(models: Sequence[torch.nn.Module]) -> None:
    sizes = [m.config.vocab_size for m in models]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"the reference's vocabulary size {sizes[-1]} differs from the policy's {sizes[0]}; "
            "the token-level mixture needs the same vocabulary"
        )


def _generate(
    plan, tokenizer, prompts, max_new_tokens, temperature, generator, batch_size, top_k, top_p,
    prompt_token_ids, synced,
) -> list[Samples]:  # fmt: skip
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of strings, got a single string")
    if len(prompts) == 0:
        raise ValueError("generate: the prompt list is empty")
    if prompt_token_ids is None:
        encoded = encode_prompts(tokenizer, prompts)
    else:
        if len(prompt_token_ids) != len(prompts):
            raise ValueError(f"{len(prompt_token_ids)} prompt_token_ids for {len(prompts)} prompts")
        encoded = [list(ids) for ids in prompt_token_ids]
    per_sample = generator is not None and not isinstance(generator, torch.Generator)
    if per_sample and len(generator) != len(prompts):
        raise ValueError(f"{len(generator)} generators for {len(prompts)} prompts")
    batch_size = batch_size or len(encoded)
    # parts[i][c]: the tensors of chunk i, copy c
    parts = [
        _generate_batch(
            plan, tokenizer, encoded[i : i + batch_size], max_new_tokens, temperature,
            generator[i : i + batch_size] if per_sample else generator, top_k, top_p, synced,
        )
        for i in range(0, len(encoded), batch_size)
    ]  # fmt: skip
    return [_assemble([p[c] for p in parts], tokenizer, list(prompts)) for c in range(plan.copies)]


def _assemble(parts, tokenizer, prompts: list[str]) -> Samples:
    """Concatenate per-chunk tensors (padding to common widths) and decode."""
    pad_id = _pad_id(tokenizer)
    width_p = max(p[0].shape[1] for p in parts)
    width_t = max(p[2].shape[1] for p in parts)

    def cat(index: int, width: int, fill: float, left: bool) -> torch.Tensor:
        tensors = []
        for p in parts:
            t = p[index]
            extra = width - t.shape[1]
            tensors.append(F.pad(t, (extra, 0) if left else (0, extra), value=fill))
        return torch.cat(tensors)

    response_ids = cat(2, width_t, pad_id, left=False)
    response_mask = cat(3, width_t, 0, left=False)
    kept = [
        [t for t, keep in zip(row, keep_row) if keep]
        for row, keep_row in zip(response_ids.tolist(), response_mask.tolist())
    ]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return Samples(
        prompts=prompts,
        texts=[t.strip() for t in texts],
        prompt_ids=cat(0, width_p, pad_id, left=True),
        prompt_mask=cat(1, width_p, 0, left=True),
        response_ids=response_ids,
        response_mask=response_mask,
        logprobs=cat(4, width_t, 0.0, left=False),
        ended=torch.cat([p[5] for p in parts]),
        reference_logprobs=cat(6, width_t, 0.0, left=False) if parts[0][6] is not None else None,
    )


def _generate_batch(
    plan, tokenizer, encoded, max_new_tokens, temperature, generator, top_k, top_p, synced
):
    models = [m for m, _, _ in plan.runs]
    device = _model_device(models[0])
    pad_id = _pad_id(tokenizer)
    stop_ids = torch.tensor(stop_token_ids(tokenizer), dtype=torch.long, device=device)
    prompt_ids, prompt_mask = left_pad(encoded, pad_id, device)  # (b, P)
    b, P = prompt_ids.shape
    limit = min(context_length(m) or 10**9 for m in models)
    if limit <= P:
        longest = max(range(b), key=lambda i: len(encoded[i]))
        raise ValueError(
            f"prompt {longest} has {len(encoded[longest])} tokens, which leaves no room for a "
            f"response in the model context of {limit} tokens"
        )
    steps = min(max_new_tokens, limit - P)
    C = plan.copies
    prompt_ids, prompt_mask = prompt_ids.repeat(C, 1), prompt_mask.repeat(C, 1)  # (N = C b, P)
    N = C * b
    rows = [slice(c0 * b, c1 * b) for _, c0, c1 in plan.runs]  # rows each model runs on
    uniforms = None  # per-sample streams: (N, steps), row c b + j from prompt j's generator
    if generator is not None and not isinstance(generator, torch.Generator):
        # draw t * C + c of prompt j's stream is copy c's token t: the same whatever the batch
        u = torch.stack([torch.rand(steps, C, generator=g, dtype=torch.float64) for g in generator])
        uniforms = u.permute(2, 0, 1).reshape(N, steps).to(device)  # (b, steps, C) -> (N, steps)
        generator = None

    def mixed_log_probs(last_logits: list[torch.Tensor]) -> torch.Tensor:  # -> (N, V)
        out = []
        for c, group in enumerate(plan.groups):
            logits = []
            for k, _ in group:
                first = c * b - rows[k].start
                logits.append(last_logits[k][first : first + b])  # (b, V)
            out.append(mix_log_probs(logits, [w for _, w in group], temperature))
        return torch.cat(out) if len(out) > 1 else out[0]

    with _decoding(models, rows=N):  # eval mode (restored after); CPU: pre-packed weights
        attention = prompt_mask.clone()  # (N, P + t)
        positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (N, P)
        caches: list = [None] * len(models)
        last_logits: list[torch.Tensor] = []
        for k, model in enumerate(models):
            caches[k], logits = _prefill(model, prompt_ids, attention, positions, rows[k], b)
            last_logits.append(logits)  # (rows_k, V)
        next_pos = positions[:, -1] + 1  # (N,)
        cache_names = [_cache_kwarg(model)[0] for model in models]
        done = torch.zeros(N, dtype=torch.bool, device=device)
        tokens, masks, logps, scores = [], [], [], []
        for t in range(steps):
            logp = _truncate(mixed_log_probs(last_logits), top_k, top_p)  # (N, V)
            token = _draw(logp, generator, None if uniforms is None else uniforms[:, t, None])
            live = ~done
            token = torch.where(live, token, torch.full_like(token, pad_id))
            tokens.append(token)
            masks.append(live.long())
            logps.append(torch.where(live, logp.gather(-1, token[:, None])[:, 0], 0.0))
            if plan.scored is not None:  # log p_k(token) of the scored copy, (b,)
                c, k = plan.scored
                first = c * b - rows[k].start
                z = last_logits[k][first : first + b].float() / temperature  # (b, V)
                rows_c = slice(c * b, (c + 1) * b)
                chosen = z.gather(-1, token[rows_c, None])[:, 0] - torch.logsumexp(z, -1)
                scores.append(torch.where(live[rows_c], chosen, 0.0))
            done = done | (live & torch.isin(token, stop_ids))  # EOS or end of turn
            if _all_done(done, synced) or t == steps - 1:
                break
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            for k, model in enumerate(models):
                r = rows[k]
                out = model(
                    input_ids=token[r, None],
                    attention_mask=attention[r],
                    position_ids=next_pos[r, None],
                    use_cache=True,
                    **{cache_names[k]: caches[k]},
                )
                caches[k] = _output_cache(out)
                last_logits[k] = out.logits[:, -1]
            next_pos = next_pos + 1
    response_ids = torch.stack(tokens, 1)  # (N, T)
    response_mask = torch.stack(masks, 1)  # (N, T)
    logprobs = torch.stack(logps, 1).float()  # (N, T)
    scored = torch.stack(scores, 1).float() if scores else None  # (b, T) for the scored copy
    return [
        (
            prompt_ids[c * b : (c + 1) * b],
            prompt_mask[c * b : (c + 1) * b],
            response_ids[c * b : (c + 1) * b],
            response_mask[c * b : (c + 1) * b],
            logprobs[c * b : (c + 1) * b],
            done[c * b : (c + 1) * b],
            scored if plan.scored is not None and plan.scored[0] == c else None,
        )
        for c in range(C)
    ]


def _all_done(done: torch.Tensor, synced: bool) -> bool:
    """Whether every row is done; ``synced``: every row of every process."""
    if not (synced and torch.distributed.is_available() and torch.distributed.is_initialized()):
        return bool(done.all())
    flag = done.all().to(torch.int32).reshape(1)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def is_dtensor(t: torch.Tensor) -> bool:
    """Whether ``t`` is a DTensor (a parameter sharded by FSDP2)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _prefill(model, prompt_ids, attention, positions, rows: slice, b: int):
    """One model's forward over the prompts of its rows: its KV cache and last logits (rows, V).

    The copies of a batch share their prompts, so a model that runs on several copies (the
    policy for ``y`` and the mixture's ``y'``) encodes the b prompts once and repeats the cache.
    """
    copies = (rows.stop - rows.start) // b
    first = slice(rows.start, rows.start + b) if copies > 1 else rows
    cache, logits = _encode_prompts(model, prompt_ids[first], attention[first], positions[first])
    if copies == 1:
        return cache, logits
    index = torch.arange(b, device=logits.device).repeat(copies)  # copy-major rows
    try:
        cache.batch_select_indices(index)
    except (AttributeError, NotImplementedError, TypeError):  # a cache that cannot: encode all
        return _encode_prompts(model, prompt_ids[rows], attention[rows], positions[rows])
    return cache, logits[index]


def _encode_prompts(model, ids, attention, positions):
    """A forward over left-padded prompts (rows, P): the KV cache and the last logits (rows, V)."""
    _, keep_ok = _cache_kwarg(model)
    extra = {"logits_to_keep": 1} if keep_ok else {}
    out = model(
        input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True, **extra
    )
    return _output_cache(out), out.logits[:, -1]


# --------------------------------------------------------------------------------------------
# CPU: pre-packed linear layers for the decode loop

_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # Linear -> (key, packed)


def _onednn_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


@contextlib.contextmanager
def _decoding(models: Sequence[torch.nn.Module], rows: int):
    """The models in eval mode (dropout off; each one's mode restored afterwards); on CPU their
    linear layers pre-packed for ``rows``-row inputs (:func:`_packed_linears`)."""
    was_training = [m.training for m in models]
    for m in models:
        m.eval()
    cpu = all(_model_device(m).type == "cpu" for m in models)
    try:
        with _packed_linears(models, rows) if cpu else contextlib.nullcontext():
            yield
    finally:
        for m, was in zip(models, was_training):
            m.train(was)


@contextlib.contextmanager
def _packed_linears(models: Sequence[torch.nn.Module], rows: int):
    """CPU, float32, no gradient: run the models' ``nn.Linear`` layers through oneDNN with
    their weights pre-packed for ``rows``-row inputs. The decode loop multiplies a handful of
    rows by every weight matrix at every token, where BLAS's general matrix product is slow
    (measured ~1.4x faster sampling for SmolLM2-135M on one core); the results equal
    ``F.linear``'s to float rounding. A frozen weight's packed copy is kept for later calls
    (the reference is packed once per run); a trainable one is packed per call and dropped
    after it (it changes at every optimizer step)."""
    if not _onednn_linear_available():
        yield
        return
    linears = {
        id(m): m
        for model in models
        if not any(is_dtensor(p) for p in model.parameters())  # FSDP2 swaps its weights
        for m in model.modules()
        if type(m) is torch.nn.Linear
        and m.weight.dtype == torch.float32
        and m.weight.device.type == "cpu"
        and "forward" not in m.__dict__  # hooks installed their own forward: leave it
    }.values()
    try:
        for linear in linears:
            key = (linear.weight.data_ptr(), linear.weight._version)
            entry = _PACKED.get(linear)
            if entry is None or entry[0] != key:
                packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), rows)
                _PACKED[linear] = (key, packed)
            linear.forward = _PackedForward(linear)
        yield
    finally:
        for linear in linears:
            linear.__dict__.pop("forward", None)
            if linear.weight.requires_grad:
                _PACKED.pop(linear, None)


class _PackedForward:
    """``linear(x)`` with the pre-packed weight; the plain forward under autograd or autocast."""

    def __init__(self, linear: torch.nn.Linear):
        self.linear = weakref.ref(linear)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        linear = self.linear()
        entry = _PACKED.get(linear)
        if (
            entry is None
            or torch.is_grad_enabled()
            or torch.is_autocast_enabled("cpu")
            or x.dtype != torch.float32
        ):
            return torch.nn.Linear.forward(linear, x)
        flat = x.reshape(-1, x.shape[-1])  # (rows, in)
        y = torch.ops.mkldnn._linear_pointwise(flat, entry[1], linear.bias, "none", [], "")
        return y.reshape(*x.shape[:-1], y.shape[-1])


# --------------------------------------------------------------------------------------------
# scoring (no cache): what the trainer differentiates, and what the exactness tests compare to


def response_logits(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """Logits predicting each response token, from one forward over prompt + response.

    prompt (B, P) left-padded, response (B, T) right-padded -> logits (B, T, V).
    """
    ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, P + T)
    mask = torch.cat([prompt_mask, response_mask], dim=1)  # (B, P + T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    T = response_ids.shape[1]
    _, keep_ok = _cache_kwarg(model)
    extra = {"logits_to_keep": T + 1} if keep_ok else {}  # skip the LM head on the prompt
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra
    )
    return out.logits[:, -(T + 1) : -1]  # (B, T, V)


LOGIT_CHUNK_BYTES = 64 * 2**20
"""Bytes of float32 logits (chunk tokens x V) that :func:`token_logprobs` holds at once."""


def token_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log p(y_n | x, y_<n) for each response token under ``model`` at ``temperature``, (B, T),
    0 where the mask is 0. Differentiable (call under ``torch.no_grad()`` when not needed).

    Memory-lean: one forward of the model body over prompt + response gives the final hidden
    states (B, T, D); the LM head and the log-softmax then run on chunks of the response tokens
    that count (mask 1), ``log p(y_n) = logit_y / T - logsumexp(logits / T)``, so no (B, T, V)
    tensor exists. When the tokens span several chunks and a gradient is needed, each chunk is
    recomputed in the backward pass (``torch.utils.checkpoint``) instead of being kept; the
    gradient is that of the plain formula. A model whose logits are not ``head(hidden)``
    (e.g. soft-capped logits) is scored from its own logits, still chunked.

    ``with_entropy=True`` also returns the per-token entropy ``H(p(. | x, y_<n))`` (B, T)
    (no gradient), computed from the same chunks in the forward pass. ``chunk_tokens``: tokens
    per chunk (default: :data:`LOGIT_CHUNK_BYTES` of float32 logits).
    """
    if isinstance(model, AdaptersDisabled):  # the head too must run with adapters disabled
        with model.peft_model.disable_adapter():
            return token_logprobs(
                model.peft_model, prompt_ids, prompt_mask, response_ids, response_mask,
                temperature, with_entropy=with_entropy, chunk_tokens=chunk_tokens,
            )  # fmt: skip
    B, T = response_ids.shape
    head = _separable_head(model)
    with _head_bypassed(head):  # the model returns its final hidden states, not logits
        states = response_logits(model, prompt_ids, prompt_mask, response_ids, response_mask)
    if head is None:  # the states are the logits themselves
        head = torch.nn.Identity()
    index = response_mask.reshape(-1).nonzero()[:, 0]  # (n,) positions that count
    states = states.reshape(B * T, -1).index_select(0, index)  # (n, D)
    targets = response_ids.reshape(-1).index_select(0, index)  # (n,)
    vocab = _vocab_size(model, head, states)
    rows = chunk_tokens or max(1, LOGIT_CHUNK_BYTES // (4 * vocab))
    recompute = torch.is_grad_enabled() and states.requires_grad and len(index) > rows
    logps, entropies = [], []
    for start in range(0, len(index), rows):
        chunk = (states[start : start + rows], targets[start : start + rows])
        pending = [with_entropy]  # entropy once, in the forward pass (not when recomputed)
        if recompute:
            logp, entropy = torch.utils.checkpoint.checkpoint(
                _chunk_scores, head, *chunk, temperature, pending, use_reentrant=False
            )
        else:
            logp, entropy = _chunk_scores(head, *chunk, temperature, pending)
        logps.append(logp)
        entropies.append(entropy)
    if not logps:  # no response token at all
        logps = entropies = [torch.zeros(0, dtype=torch.float32, device=response_ids.device)]
    values = torch.cat(logps)  # (n,)
    zeros = torch.zeros(B * T, dtype=values.dtype, device=values.device)
    logp = zeros.index_put((index,), values).view(B, T)  # (B, T)
    if not with_entropy:
        return logp
    return logp, zeros.index_put((index,), torch.cat(entropies)).view(B, T)


def _chunk_scores(
    head: torch.nn.Module,
    states: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    entropy_pending: list[bool],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log p(target)`` (n,) and, if pending, the entropy (n,) of one chunk of states (n, D)."""
    logits = head(states)  # (n, V)
    want_entropy = entropy_pending[0]
    entropy_pending[0] = False  # a recomputation in the backward pass skips the entropy
    logp, entropy = _TargetLogProb.apply(logits, targets, temperature, want_entropy)
    return logp, entropy if want_entropy else None


class _TargetLogProb(torch.autograd.Function):
    """``log softmax(logits / T)[target]`` = ``logit_y / T - logsumexp(logits / T)`` (n,) and
    the entropy (n,) from logits (n, V), upcast from half precision to float32.

    Its backward builds ONE (n, V) tensor, ``(onehot(y) - softmax(logits / T)) * g / T``, in
    place (autograd's own formula holds three: the scattered one-hot, the softmax, their sum);
    only the logits and the (n,) normaliser are kept for it.
    """

    @staticmethod
    def forward(ctx, logits, targets, temperature: float, want_entropy: bool):
        z = _tempered(logits, temperature)  # (n, V) float32 (logits itself when T = 1)
        lse = torch.logsumexp(z, dim=-1)  # (n,)
        logp = z.gather(-1, targets[:, None])[:, 0] - lse  # (n,)
        entropy = torch.zeros_like(lse)
        if want_entropy:  # H = lse - sum_v p_v z_v
            p = torch.exp(z - lse[:, None])  # (n, V)
            entropy = lse - (p[:, None, :] @ z[:, :, None])[:, 0, 0]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature = temperature
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_logp, grad_entropy):
        logits, targets, lse = ctx.saved_tensors
        T = ctx.temperature
        grad = _tempered(logits, T, copy=True)  # (n, V), the one new tensor
        grad.sub_(lse[:, None]).exp_().mul_(-grad_logp[:, None] / T)  # -softmax * g / T
        grad.scatter_add_(-1, targets[:, None], grad_logp[:, None] / T)  # + onehot * g / T
        return grad.to(logits.dtype), None, None, None


def _tempered(logits: torch.Tensor, temperature: float, copy: bool = False) -> torch.Tensor:
    """``logits / temperature`` in float32 (float64 stays float64); a new tensor if ``copy``."""
    dtype = logits.dtype if logits.dtype in (torch.float32, torch.float64) else torch.float32
    if temperature != 1.0:
        return logits.to(dtype) / temperature
    if dtype != logits.dtype:
        return logits.to(dtype)
    return logits.clone() if copy else logits


def _vocab_size(model, head, states) -> int:
    size = getattr(head, "out_features", None)
    if isinstance(size, int):
        return size
    if isinstance(head, torch.nn.Identity):
        return states.shape[-1]
    return int(model.config.vocab_size)


_HEAD_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _separable_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The LM head module whose output on the model's final hidden states IS the model's
    logits, or None when that does not hold (no output embeddings, or logits post-processed,
    e.g. soft-capped or scaled). Checked once per model on a two-token input."""
    hf_model = next(
        (m for m in model.modules() if callable(getattr(m, "get_output_embeddings", None))),
        None,
    )
    if hf_model is None:
        return None
    head = hf_model.get_output_embeddings()
    if not isinstance(head, torch.nn.Module):
        return None
    if hf_model not in _HEAD_CHECKED:
        _HEAD_CHECKED[hf_model] = _head_reproduces_logits(hf_model, head)
    return head if _HEAD_CHECKED[hf_model] else None


@torch.no_grad()
def _head_reproduces_logits(hf_model: torch.nn.Module, head: torch.nn.Module) -> bool:
    """Whether ``head(final hidden states)`` is bit for bit the model's logits (same input,
    same shapes, same precision context): any post-processing (soft-capping, scaling) fails."""
    ids = torch.tensor([[0, 1]], device=_model_device(hf_model))
    was_training = hf_model.training
    hf_model.eval()
    try:
        logits = hf_model(input_ids=ids, use_cache=False).logits  # (1, 2, V)
        with _head_bypassed(head):
            states = hf_model(input_ids=ids, use_cache=False).logits  # (1, 2, D)
        again = head(states)  # (1, 2, V)
    except Exception:  # noqa: BLE001 - any failure: score from the model's own logits
        return False
    finally:
        hf_model.train(was_training)
    return again.shape == logits.shape and torch.equal(again.to(logits.dtype), logits)


@contextlib.contextmanager
def _head_bypassed(head: torch.nn.Module | None):
    """Within the block, ``head`` passes its input through, so the model's "logits" are its
    final hidden states (the model's own wrappers, hooks and autocast still apply)."""
    if head is None:
        yield
        return
    own = head.__dict__.get("forward")  # an instance-level forward (hooks) to restore
    head.forward = _identity
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _identity(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return x


@torch.no_grad()
def mixture_token_logprobs(
    policy: torch.nn.Module,
    reference: torch.nn.Module | None,
    beta: float,
    samples: Samples,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs (B, T) of the token-level mixture, recomputed without a cache."""
    args = (samples.prompt_ids, samples.prompt_mask, samples.response_ids, samples.response_mask)
    models = []
    if beta < 1.0:
        models.append((policy, 1.0 - beta))
    if beta > 0.0:
        models.append((reference, beta))
    logits = [response_logits(m, *args) for m, _ in models]
    logp = mix_log_probs(logits, [w for _, w in models], temperature)  # (B, T, V)
    chosen = logp.gather(-1, samples.response_ids[..., None])[..., 0]
    return chosen * samples.response_mask
