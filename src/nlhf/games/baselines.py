"""The baselines Nash-MD is contrasted with (Munos et al. 2024, §4 and §6).

Each function runs one algorithm on a :class:`~nlhf.games.PreferenceGame` and returns a
:class:`~nlhf.games.trajectory.Trajectory`. Per context, in log space, one iteration is:

- **Self-play / online mirror descent** (:func:`self_play`): mirror descent against the current
  policy ``pi_t`` itself instead of the mixture ``pi_t^mu`` (the paper's contrast; with
  ``tau = 0`` it is multiplicative weights):
  1. ``v = P pi_t`` (one mat-vec);
  2. ``log pi_{t+1} = (1 - eta_t tau) log pi_t + eta_t tau log mu + eta_t v - log Z``.
  Its last iterate can cycle (rock-paper-scissors); only its average converges.
- **Fictitious play** (:func:`fictitious_play`): best response to the average of the past:
  1. ``bar_pi_t = (pi_0 + ... + pi_t) / (t + 1)`` (must store the past, here as a running sum);
  2. ``pi_{t+1} = argmax_pi P_tau(pi > bar_pi_t)``: ``∝ mu exp(P bar_pi_t / tau)`` for
     ``tau > 0``, the best pure response for ``tau = 0`` (one mat-vec, kept as a running average
     of ``P pi_t``). Its output is the average ``bar_pi_T``.
- **Best response to mu** (:func:`best_response_to_mu`): ``argmax_pi P_tau(pi > mu)``, one
  mat-vec; the policy that "preference-hacks" the reference (paper §7's BR), exploitable.
- **EMA opponent** (:func:`ema_opponent`): mirror descent against ``bar_pi_t``, an exponential
  moving average of past parameters (the tabular Nash-EMA of paper §6; the parameters of a tabular
  policy are its log-probabilities):
  1. ``v = P bar_pi_t``;
  2. ``log pi_{t+1} = (1 - eta_t tau) log pi_t + eta_t tau log mu + eta_t v - log Z``;
  3. ``bar_z <- beta bar_z + (1 - beta) log pi_{t+1}``, ``bar_pi_{t+1} = softmax(bar_z)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from nlhf.games.game import PreferenceGame, matvec, normalize_log
from nlhf.games.trajectory import Recorder, Trajectory, initial_log_policy, step_sizes


def self_play(
    game: PreferenceGame,
    iterations: int,
    *,
    eta: float | None = None,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Online mirror descent against the current policy (self-play); see the module docstring.

    ``eta=None`` uses Theorem 1's schedule (``tau > 0``); a number is a constant step.
    """
    eta_at, schedule = step_sizes(game, eta, "self_play")
    rec = Recorder(game, iterations, record, callback)
    log_pi = initial_log_policy(game, init)  # (C, n)
    rec(0, np.exp(log_pi))
    for t in range(iterations):
        eta_t = eta_at(t)
        values = matvec(game.P3, np.exp(log_pi))  # (C, n) P(y > pi_t)
        rec.matvecs += 1
        a = eta_t * game.tau
        log_pi = normalize_log((1.0 - a) * log_pi + a * game.log_mu3 + eta_t * values)
        if rec(t + 1, np.exp(log_pi)):
            break
    return rec.finish("self-play", np.exp(log_pi), {"eta": eta, "schedule": schedule})


def _best_response(game: PreferenceGame, values3: np.ndarray) -> np.ndarray:
    """``argmax_pi pi.v - tau KL(pi, mu)`` per context given ``values3 = P @ opponent``."""
    if game.tau > 0:
        return np.exp(normalize_log(game.log_mu3 + values3 / game.tau))
    best = np.zeros_like(values3)
    best[np.arange(values3.shape[0]), values3.argmax(axis=-1)] = 1.0
    return best


def fictitious_play(
    game: PreferenceGame,
    iterations: int,
    *,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Fictitious play; the output (and the kept history) is the running average."""
    rec = Recorder(game, iterations, record, callback)
    pi = np.exp(initial_log_policy(game, init))  # (C, n)
    values_sum = np.zeros_like(pi)  # sum_s P pi_s
    avg = pi.copy()
    rec(0, pi, avg)
    for t in range(iterations):
        values_sum += matvec(game.P3, pi)  # (C, n)
        rec.matvecs += 1
        pi = _best_response(game, values_sum / (t + 1))  # best response to bar_pi_t
        avg = (avg * (t + 1) + pi) / (t + 2)
        if rec(t + 1, pi, avg):
            break
    return rec.finish("fictitious-play", pi, {}, output="average")


def best_response_to_mu(
    game: PreferenceGame, iterations: int = 1, *, record: Iterable[int] | None = None
) -> Trajectory:
    """The (regularised) best response to the reference policy; ``iterations`` is ignored."""
    rec = Recorder(game, 1, record)
    rec(0, game.mu3)
    pi = _best_response(game, matvec(game.P3, game.mu3))
    rec.matvecs += 1
    rec(1, pi)
    return rec.finish("best-response-to-mu", pi, {})


def ema_opponent(
    game: PreferenceGame,
    iterations: int,
    *,
    eta: float | None = None,
    beta: float = 0.9,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Mirror descent against an exponential moving average of past log-policies (Nash-EMA)."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"ema_opponent: beta must be in [0, 1), got {beta}")
    eta_at, schedule = step_sizes(game, eta, "ema_opponent")
    rec = Recorder(game, iterations, record, callback)
    log_pi = initial_log_policy(game, init)  # (C, n)
    ema_logits = log_pi.copy()
    rec(0, np.exp(log_pi))
    for t in range(iterations):
        eta_t = eta_at(t)
        values = matvec(game.P3, np.exp(normalize_log(ema_logits)))  # (C, n) P(y > bar_pi_t)
        rec.matvecs += 1
        a = eta_t * game.tau
        log_pi = normalize_log((1.0 - a) * log_pi + a * game.log_mu3 + eta_t * values)
        ema_logits = beta * ema_logits + (1.0 - beta) * log_pi
        if rec(t + 1, np.exp(log_pi)):
            break
    params = {"eta": eta, "schedule": schedule, "beta": beta}
    return rec.finish("ema-opponent", np.exp(log_pi), params)
