"""Classic preference games, and preference matrices from populations of raters.

Every builder returns a float64 ``(n, n)`` matrix with ``P[i, j] = P(y_i > y_j)`` and
``P + P^T = 1`` (wrap it in :class:`nlhf.games.PreferenceGame` to add ``mu`` and ``tau``).

- :func:`rock_paper_scissors`: the smallest non-transitive game; its Nash equilibrium is uniform.
- :func:`three_rater_example`: three rater groups whose rankings form a Condorcet cycle, with
  weights moved by ``epsilon`` (the situation of paper §3.2): the Nash mixture moves continuously
  with ``epsilon`` while the Bradley-Terry reward maximiser jumps from one response to another.
- :func:`efron_dice`: Efron's non-transitive dice (each die beats the next with probability 2/3).
- :func:`random_game`: ``P[i, j] ~ U[0, 1]`` above the diagonal, ``1 - P[j, i]`` below it.
- :func:`from_rankings` / :func:`from_utilities`: a population of rater groups (weighted rankings,
  or utilities with a Bradley-Terry noise temperature per group) -> the population's ``P``.
- :func:`fit_bradley_terry`: the Bradley-Terry reward fit (the RLHF reward model of paper §3,
  with infinite data) to the comparisons of ``P`` sampled with given pair weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.special import expit


def rock_paper_scissors() -> np.ndarray:
    """Rock, paper, scissors (in that order): each beats the next-but-one surely."""
    return np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])


def three_rater_weights(epsilon: float) -> np.ndarray:
    """Group weights ``(1/3 + 2 eps, 1/3 - eps, 1/3 - eps)`` of :func:`three_rater_example`."""
    if not -1 / 6 < epsilon < 1 / 6:
        raise ValueError(f"epsilon must be in (-1/6, 1/6) so all weights are > 0, got {epsilon}")
    return np.array([1 / 3 + 2 * epsilon, 1 / 3 - epsilon, 1 / 3 - epsilon])


THREE_RATER_RANKINGS = ((0, 1, 2), (1, 2, 0), (2, 0, 1))
"""Group 1: y1 > y2 > y3; group 2: y2 > y3 > y1; group 3: y3 > y1 > y2 (a Condorcet cycle)."""


def three_rater_example(epsilon: float = 0.02) -> np.ndarray:
    """Three rater groups with cyclic rankings, weights ``(1/3 + 2 eps, 1/3 - eps, 1/3 - eps)``.

    The situation of paper §3.2 (our parametrisation): every group ranks the three responses
    strictly, the population preference is the weight-average. For ``|eps| < 1/12`` the majority
    relation is a cycle and the Nash equilibrium is the interior mixture
    ``(1/3 + 2 eps, 1/3 - 4 eps, 1/3 + 2 eps)``, continuous in ``eps``; the Bradley-Terry reward
    fit on uniformly sampled pairs ranks the responses by Borda score ``1 + 3 eps (1, 0, -1)``, so
    its maximiser is ``y3`` for ``eps < 0`` and ``y1`` for ``eps > 0``.
    """
    return from_rankings(THREE_RATER_RANKINGS, three_rater_weights(epsilon))


def three_rater_nash(epsilon: float) -> np.ndarray:
    """The closed-form Nash equilibrium of :func:`three_rater_example` for ``|eps| < 1/12``."""
    return np.array([1 / 3 + 2 * epsilon, 1 / 3 - 4 * epsilon, 1 / 3 + 2 * epsilon])


EFRON_DICE = ((4, 4, 4, 4, 0, 0), (3, 3, 3, 3, 3, 3), (6, 6, 2, 2, 2, 2), (5, 5, 5, 1, 1, 1))


def efron_dice(faces: Sequence[Sequence[float]] = EFRON_DICE) -> np.ndarray:
    """``P[i, j] = P(die i > die j) + P(tie) / 2`` for fair dice with the given faces.

    The default is Efron's dice A, B, C, D: A beats B, B beats C, C beats D and D beats A, each
    with probability 2/3.
    """
    dice = [np.asarray(f, dtype=np.float64) for f in faces]
    n = len(dice)
    P = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            a, b = dice[i][:, None], dice[j][None, :]
            P[i, j] = np.mean(a > b) + 0.5 * np.mean(a == b)
    return P


def random_game(n: int, seed: int = 0) -> np.ndarray:
    """A random preference matrix: ``P[i, j] ~ U[0, 1]`` for ``i < j``, ``1 - P[j, i]`` below."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    upper = np.triu(rng.random((n, n)), k=1)
    P = upper + np.tril(1.0 - upper.T, k=-1)
    np.fill_diagonal(P, 0.5)
    return P


def from_rankings(rankings: Sequence[Sequence[int]], weights: Sequence[float]) -> np.ndarray:
    """Population preference of rater groups, each with a strict ranking (best first).

    ``P[i, j]`` is the total weight of the groups that rank ``y_i`` above ``y_j``.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if len(rankings) != len(weights):
        raise ValueError(f"{len(rankings)} rankings but {len(weights)} weights")
    if (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-9:
        raise ValueError(f"weights must be >= 0 and sum to 1, got {weights.tolist()}")
    n = len(rankings[0])
    P = np.zeros((n, n))
    for g, (ranking, w) in enumerate(zip(rankings, weights)):
        if sorted(ranking) != list(range(n)):
            raise ValueError(f"rankings[{g}] = {list(ranking)} is not a permutation of 0..{n - 1}")
        position = np.empty(n, dtype=int)
        position[list(ranking)] = np.arange(n)
        P += w * (position[:, None] < position[None, :])
    np.fill_diagonal(P, 0.5)
    return P


def from_utilities(
    utilities: np.ndarray, weights: Sequence[float], temperature: float | Sequence[float] = 1.0
) -> np.ndarray:
    """Population preference of rater groups with utilities ``U (G, n)`` and noise temperatures.

    Group ``g`` prefers ``y_i`` to ``y_j`` with probability ``sigmoid((U[g, i] - U[g, j]) / T_g)``
    (``T_g = 0``: deterministically, ties 1/2); ``P`` is the weight-average over groups.
    """
    U = np.atleast_2d(np.asarray(utilities, dtype=np.float64))  # (G, n)
    weights = np.asarray(weights, dtype=np.float64)
    temps = np.broadcast_to(np.asarray(temperature, dtype=np.float64), weights.shape)
    if U.shape[0] != len(weights):
        raise ValueError(f"utilities have {U.shape[0]} groups but there are {len(weights)} weights")
    if (weights < 0).any() or abs(weights.sum() - 1.0) > 1e-9:
        raise ValueError(f"weights must be >= 0 and sum to 1, got {weights.tolist()}")
    if (temps < 0).any():
        raise ValueError(f"temperatures must be >= 0, got {temps.tolist()}")
    P = np.zeros((U.shape[1],) * 2)
    for u, w, t in zip(U, weights, temps):
        diff = u[:, None] - u[None, :]
        P += w * (np.sign(diff) * 0.5 + 0.5 if t == 0 else expit(diff / t))
    return P


def fit_bradley_terry(
    P: np.ndarray, pair_weights: np.ndarray | None = None, iters: int = 100
) -> np.ndarray:
    """Bradley-Terry rewards ``r`` (mean 0) maximising the expected log-likelihood of ``P``.

    Minimises ``-sum_{i != j} W[i, j] P[i, j] log sigmoid(r_i - r_j)``: the reward model an RLHF
    pipeline fits to comparisons of pairs sampled with weights ``W`` (uniform by default),
    labelled with the population preference ``P`` (infinite data). Newton's method on the
    convex loss.
    """
    P = np.asarray(P, dtype=np.float64)
    n = P.shape[0]
    W = np.ones((n, n)) if pair_weights is None else np.asarray(pair_weights, dtype=np.float64)
    W = 0.5 * (W + W.T)
    np.fill_diagonal(W, 0.0)
    r = np.zeros(n)
    for _ in range(iters):
        S = expit(r[:, None] - r[None, :])  # (n, n) model P(i > j)
        grad = (W * (S - P)).sum(axis=1)  # d loss / d r_i
        H = -W * S * (1 - S)
        np.fill_diagonal(H, -H.sum(axis=1))
        H += np.full((n, n), 1.0 / n)  # fixes the free constant (mean 0)
        step = np.linalg.solve(H, grad)
        r -= step
        r -= r.mean()
        if np.abs(step).max() < 1e-13:
            break
    return r
