"""Convergence of a policy in a *feature game*, measured during training.

A feature maps a response to one of a few categories (in the built-in task: its style word). On a
fixed set of probe prompts a policy puts shares on the categories, and a preference model,
restricted to responses that differ only in that feature, is a small preference game ``G`` over
the categories (``G[i, j] = P(category i > category j)``). Paper §3-4 then gives exact targets:

- the regularised Nash equilibrium ``pi*_tau`` of ``G`` with ``mu`` = the reference policy's
  shares, ``pi*_tau ∝ mu exp(G pi*_tau / tau)`` (:func:`regularized_nash`): where the last
  iterate of Nash-MD should go (Theorem 1);
- with a fixed ``beta``, the stationary point of the expected Nash-MD-PG update,
  ``pi = argmax_pi E_{y~pi} P(y > pi^beta) - tau KL(pi, mu)`` with the geometric mixture
  ``pi^beta ∝ pi^(1-beta) mu^beta`` (:func:`mixture_fixed_point`); ``beta = 0`` is ``pi*_tau``
  (self-play) and ``beta = 1`` the regularised best response to ``mu`` (BR). When the feature is
  a response's first token, the token-level mixture of the sampler is exactly this geometric
  mixture on the feature;
- for a reward ``r`` per category (RLHF): ``argmax E r - tau KL = mu exp(r / tau)``
  (:func:`reward_optimum`).

:class:`FeatureProbe` measures a policy's shares (exactly from the first-token distribution when
each category is one leading token, otherwise by sampling and a feature function), and
:class:`ConvergenceRecorder` is a ``train_policy`` callback that writes them every ``every``
steps to a JSONL file (and those of Nash-EMA-PG's averaged policy, which the trainer passes it).
Distances: :func:`kl_to` (``KL(target, shares)``, the quantity of Theorem 1) and :func:`tv_to`
(total variation); the last share is the mass on no category.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlhf.games import PreferenceGame, solve_regularized

# --------------------------------------------------------------------------------------------
# measuring a policy


@dataclass
class FeatureProbe:
    """A policy's shares of a discrete response feature on fixed probe prompts.

    Exact path (``token_ids`` given): category ``k`` is a response whose first token is
    ``token_ids[k]``; the shares are the mean over prompts of the first-token probabilities at
    ``temperature`` (no sampling noise). Sampled path (``feature`` given): ``samples`` responses
    per prompt, each mapped by ``feature(prompt, response)`` to a category name or anything else
    (no category). Either way the result has ``len(categories) + 1`` entries, the last being
    the mass on no category.
    """

    prompts: list[str]
    """the fixed probe prompts"""
    categories: list[str]
    """category names, in the order of the shares"""
    token_ids: list[int] | None = None
    """exact path: the token id that starts a response of each category"""
    feature: Callable[[str, str], str] | None = None
    """sampled path: ``feature(prompt, response) -> category name``"""
    samples: int = 4
    """sampled path: responses per prompt"""
    max_new_tokens: int = 16
    """sampled path: response length limit"""
    temperature: float = 1.0
    """sampling temperature of the policy (as in training)"""
    batch_size: int = 256
    """prompts per forward pass"""
    seed: int = 0
    """sampled path: seed of the probe's own generator (training's streams are untouched)"""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("FeatureProbe: give at least one probe prompt")
        if (self.token_ids is None) == (self.feature is None):
            raise ValueError("FeatureProbe: give exactly one of token_ids and feature")
        if self.token_ids is not None:
            if len(self.token_ids) != len(self.categories):
                raise ValueError(
                    f"FeatureProbe: {len(self.token_ids)} token ids for "
                    f"{len(self.categories)} categories"
                )
            if len(set(self.token_ids)) != len(self.token_ids):
                raise ValueError(f"FeatureProbe: token ids must differ, got {self.token_ids}")
        if self.samples < 1 or self.batch_size < 1 or self.temperature <= 0:
            raise ValueError("FeatureProbe: samples, batch_size and temperature must be > 0")

    def shares(self, model, tokenizer) -> np.ndarray:
        """``(S + 1,)`` shares of the categories and, last, of no category."""
        if self.token_ids is not None:
            return self._first_token_shares(model, tokenizer)
        return self._sampled_shares(model, tokenizer)

    def _first_token_shares(self, model, tokenizer) -> np.ndarray:
        import torch

        from nlhf.sampling import encode_prompts, left_pad

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device
        ids = torch.tensor(self.token_ids, device=device)
        total = torch.zeros(len(self.token_ids), dtype=torch.float64)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for i in range(0, len(self.prompts), self.batch_size):
                    encoded = encode_prompts(tokenizer, self.prompts[i : i + self.batch_size])
                    prompt_ids, mask = left_pad(encoded, pad, device)  # (B, P)
                    positions = (mask.cumsum(-1) - 1).clamp(min=0)
                    logits = model(
                        input_ids=prompt_ids, attention_mask=mask, position_ids=positions
                    ).logits[:, -1]  # (B, V)
                    probs = torch.softmax(logits.float() / self.temperature, dim=-1)  # (B, V)
                    total += probs[:, ids].sum(0).double().cpu()
        finally:
            model.train(was_training)
        shares = (total / len(self.prompts)).numpy()
        return np.append(shares, max(0.0, 1.0 - shares.sum()))

    def _sampled_shares(self, model, tokenizer) -> np.ndarray:
        import torch

        from nlhf.sampling import generate

        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(self.seed)
        counts = np.zeros(len(self.categories) + 1)
        index = {c: k for k, c in enumerate(self.categories)}
        prompts = [p for p in self.prompts for _ in range(self.samples)]
        texts = generate(
            model, tokenizer, prompts, self.max_new_tokens, self.temperature,
            generator=gen, batch_size=self.batch_size,
        ).texts  # fmt: skip
        for p, r in zip(prompts, texts):
            counts[index.get(self.feature(p, r), len(self.categories))] += 1
        return counts / counts.sum()


class ConvergenceRecorder:
    """A ``train_policy`` callback: at step 0 (the trainer calls it before the first update),
    every ``every`` steps and at step ``last``, append ``{"step": t, "shares": [...]}`` of the
    policy under ``probe`` to ``path``. With Nash-EMA-PG the trainer passes its averaged policy
    (``alternative``), whose shares are recorded too (``"average_shares"``).

    ``average`` (optional) is for callers that do not pass the trainer's ``alternative`` on: an
    ``nlhf.sampling.EMAPolicy`` of the initial policy that the recorder updates after every step
    like the trainer's (with the trainer's decay it is the same average).
    """

    def __init__(
        self,
        probe: FeatureProbe,
        tokenizer,
        path: str | Path,
        every: int,
        last: int,
        average=None,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.probe, self.tokenizer, self.path = probe, tokenizer, Path(path)
        self.every, self.last, self.average = every, last, average
        self._recorded: int | None = None  # the step last written (each step once)

    def record(self, step: int, policy, average=None) -> dict:
        """Measure ``policy`` (and ``average``, default the recorder's own) now and append the
        row; returns it."""
        row = {
            "step": step,
            "shares": [float(x) for x in self.probe.shares(policy, self.tokenizer)],
        }
        average = self.average if average is None else average
        if average is not None:
            shares = self.probe.shares(average, self.tokenizer)
            row["average_shares"] = [float(x) for x in shares]
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._recorded = step
        return row

    def __call__(self, step: int, policy, record: dict | None = None, alternative=None) -> None:
        if self.average is not None and alternative is None and step > 0:
            self.average.update(policy)
        due = step % self.every == 0 or step == self.last
        if due and step != self._recorded:
            self.record(step, policy, average=alternative)


def read_trajectory(path: str | Path, key: str = "shares") -> tuple[np.ndarray, np.ndarray]:
    """Steps ``(N,)`` and shares ``(N, S + 1)`` of a recorder's JSONL file in step order
    (``key="average_shares"``: those of the average)."""
    rows = []
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                rows.append((int(row["step"]), [float(x) for x in row[key]]))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}, line {i}: no {key!r} trajectory row ({err})") from None
    rows.sort(key=lambda r: r[0])
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


# --------------------------------------------------------------------------------------------
# distances (the last entry of ``shares`` is the mass on no category; targets have none)


def _split(target: np.ndarray, shares: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    q = np.asarray(target, dtype=np.float64)
    p = np.asarray(shares, dtype=np.float64)
    S = q.shape[-1]
    if p.shape[-1] == S:
        return q, p, 0.0
    if p.shape[-1] != S + 1:
        raise ValueError(f"shares have {p.shape[-1]} entries for a target of {S}")
    return q, p[..., :S], p[..., S]


def kl_to(target: np.ndarray, shares: np.ndarray) -> np.ndarray | float:
    """``KL(target, shares) = sum_k target_k log(target_k / shares_k)`` (Theorem 1's measure);
    ``shares`` may carry a last "no category" entry (mass the target does not have)."""
    q, p, _ = _split(target, shares)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * (np.log(q) - np.log(np.maximum(p, 1e-300))), 0.0)
    out = np.maximum(terms.sum(-1), 0.0)  # >= 0; rounding can leave -1e-17
    return float(out) if np.ndim(out) == 0 else out


def tv_to(target: np.ndarray, shares: np.ndarray) -> np.ndarray | float:
    """Total variation ``1/2 sum_k |target_k - shares_k|`` (no-category mass included)."""
    q, p, rest = _split(target, shares)
    out = 0.5 * (np.abs(q - p).sum(-1) + rest)
    return float(out) if np.ndim(out) == 0 else out


def renormalized(shares: np.ndarray) -> np.ndarray:
    """Shares of the categories alone (the no-category mass dropped), summing to 1."""
    p = np.asarray(shares, dtype=np.float64)
    return p / p.sum(-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# exact targets in a feature game


def _check_game(G: np.ndarray, mu: np.ndarray, tau: float) -> tuple[np.ndarray, np.ndarray]:
    G = np.asarray(G, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or mu.shape != (G.shape[0],):
        raise ValueError(f"need G (S, S) and mu (S,), got {G.shape} and {mu.shape}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if np.any(mu <= 0):
        raise ValueError(f"mu must be strictly positive, got {mu}")
    return G, mu / mu.sum()


def regularized_nash(G: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
    """``pi*_tau`` of the feature game (``nlhf.games.solve_regularized``, duality gap 1e-12)."""
    G, mu = _check_game(G, mu, tau)
    return np.asarray(solve_regularized(PreferenceGame(G, mu=mu, tau=tau)), dtype=np.float64)


def geometric_mixture(pi: np.ndarray, mu: np.ndarray, beta: float) -> np.ndarray:
    """``pi^(1-beta) mu^beta``, normalised."""
    z = (1 - beta) * np.log(pi) + beta * np.log(mu)
    z = np.exp(z - z.max())
    return z / z.sum()


def regularized_best_response(G: np.ndarray, mu: np.ndarray, tau: float, against) -> np.ndarray:
    """``argmax_pi E_{y~pi} P(y > against) - tau KL(pi, mu) ∝ mu exp(G against / tau)``."""
    G, mu = _check_game(G, mu, tau)
    z = np.log(mu) + G @ np.asarray(against, dtype=np.float64) / tau
    z = np.exp(z - z.max())
    return z / z.sum()


def mixture_fixed_point(
    G: np.ndarray, mu: np.ndarray, tau: float, beta: float, tol: float = 1e-12
) -> np.ndarray:
    """Stationary point of the expected Nash-MD-PG update with a fixed ``beta``:
    ``pi ∝ mu exp(G pi^beta / tau)`` with ``pi^beta ∝ pi^(1-beta) mu^beta``.

    ``beta = 0`` gives ``pi*_tau``, ``beta = 1`` the regularised best response to ``mu``.
    Solved by Newton's method in the logits, continued in ``beta`` from ``pi*_tau``; raises
    ``RuntimeError`` if the residual does not reach ``tol``.
    """
    from scipy.optimize import root

    G, mu = _check_game(G, mu, tau)
    if not 0 <= beta <= 1:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_mu = np.log(mu)

    def residual(z: np.ndarray, b: float) -> np.ndarray:
        pi = np.exp(z - z.max())
        pi /= pi.sum()
        r = z - log_mu - G @ geometric_mixture(pi, mu, b) / tau
        return r - r.mean()

    pi = regularized_nash(G, mu, tau)
    z = np.log(pi)
    for b in np.linspace(0.0, beta, max(2, int(np.ceil(beta / 0.02)) + 1))[1:]:
        sol = root(residual, z, args=(b,), method="hybr", tol=1e-14)
        z = sol.x
    z = z - z.max()
    res = float(np.abs(residual(z, beta)).max())
    if res > tol * max(1.0, 1.0 / tau):
        raise RuntimeError(f"mixture_fixed_point: residual {res:.1e} at beta {beta}")
    pi = np.exp(z)
    return pi / pi.sum()


def reward_optimum(rewards: np.ndarray, mu: np.ndarray, tau: float) -> np.ndarray:
    """``argmax_pi E_pi r - tau KL(pi, mu) = mu exp(r / tau)`` normalised (the RLHF target)."""
    mu = np.asarray(mu, dtype=np.float64)
    if tau <= 0 or np.any(mu <= 0):
        raise ValueError("reward_optimum needs tau > 0 and mu > 0")
    z = np.log(mu / mu.sum()) + np.asarray(rewards, dtype=np.float64) / tau
    z = np.exp(z - z.max())
    return z / z.sum()


def feature_game(
    judge,
    prompts: Sequence[str],
    responses: Callable[[str, str], str],
    categories: Sequence[str],
) -> np.ndarray:
    """``(S, S)`` mean ``judge.prob`` of two responses that differ only in their category:
    ``responses(prompt, category) -> text``."""
    S = len(categories)
    out = np.full((S, S), 0.5)
    texts = {c: [responses(p, c) for p in prompts] for c in categories}
    for i in range(S):
        for j in range(i + 1, S):
            p = float(judge.prob(list(prompts), texts[categories[i]], texts[categories[j]]).mean())
            out[i, j], out[j, i] = p, 1.0 - p
    return out
