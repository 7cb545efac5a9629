"""Faster last-iterate methods for the regularised game (constant step, linear convergence).

All three treat the KL-to-``mu`` regulariser by its exact proximal step, so one update with
gradient ``g`` (a vector ``P(. > pi')``) and step ``eta`` is, in log space,

    prox(log pi, g) = (log pi + eta tau log mu + eta g) / (1 + eta tau) - log Z,

i.e. ``argmax_pi' [eta (pi'.g - tau KL(pi', mu)) - KL(pi', pi)]``.

- **Magnetic mirror descent** (Sokota et al. 2023), :func:`magnetic_md`, one mat-vec per step:
  1. ``g = P pi_t``; 2. ``log pi_{t+1} = prox(log pi_t, g)``.
  Linear convergence to ``pi*_tau`` for ``eta`` small enough (about ``tau / L^2``).
- **Extragradient / mirror prox** (Korpelevich 1976; Cen et al. 2021 for entropy-regularised
  games), :func:`extragradient`, two mat-vecs per step:
  1. ``log pi_{t+1/2} = prox(log pi_t, P pi_t)``;
  2. ``log pi_{t+1} = prox(log pi_t, P pi_{t+1/2})``.
  Linear rate about ``1 - eta tau`` for ``eta`` up to about ``1 / (tau + max|P - 1/2|)``.
- **Optimistic mirror descent** (Rakhlin & Sridharan 2013; Cen et al. 2021's OMWU),
  :func:`optimistic_md`, one mat-vec per step (the extrapolated point's gradient is reused):
  1. ``log bar_pi_{t+1} = prox(log pi_t, P bar_pi_t)``;
  2. ``log pi_{t+1} = prox(log pi_t, P bar_pi_{t+1})``.

In the symmetric game both players share the policy, so one sequence suffices. For
``pi*_tau`` to high precision use :func:`nlhf.games.solve_regularized` (Newton).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from nlhf.games.game import PreferenceGame, matvec, normalize_log
from nlhf.games.trajectory import Recorder, Trajectory, initial_log_policy


def _check(game: PreferenceGame, eta: float, name: str) -> float:
    if game.tau <= 0:
        raise ValueError(f"{name} solves the regularised game: it needs tau > 0")
    eta = float(eta)
    if not eta > 0:
        raise ValueError(f"{name}: eta must be > 0, got {eta}")
    return eta


def _prox(log_pi, log_mu, g, eta, tau):
    # (log pi + eta tau log mu + eta g) / (1 + eta tau), with weights that stay finite for any
    # eta (eta -> inf: the regularised best response log mu + g / tau)
    a = eta * tau
    w_pi, w_mu, w_g = 1.0 / (1.0 + a), 1.0 / (1.0 / a + 1.0), 1.0 / (1.0 / eta + tau)
    return normalize_log(w_pi * log_pi + w_mu * log_mu + w_g * g)


def magnetic_md(
    game: PreferenceGame,
    iterations: int,
    *,
    eta: float | None = None,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Magnetic mirror descent with constant step ``eta`` (default ``tau``, a safe step)."""
    eta = _check(game, game.tau if eta is None else eta, "magnetic_md")
    rec = Recorder(game, iterations, record, callback)
    log_pi = initial_log_policy(game, init)
    rec(0, np.exp(log_pi))
    for t in range(iterations):
        g = matvec(game.P3, np.exp(log_pi))  # (C, n)
        rec.matvecs += 1
        log_pi = _prox(log_pi, game.log_mu3, g, eta, game.tau)
        if rec(t + 1, np.exp(log_pi)):
            break
    return rec.finish("magnetic-md", np.exp(log_pi), {"eta": eta})


def extragradient(
    game: PreferenceGame,
    iterations: int,
    *,
    eta: float = 1.0,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Extragradient (mirror prox) with constant step ``eta``; two mat-vecs per iteration."""
    eta = _check(game, eta, "extragradient")
    rec = Recorder(game, iterations, record, callback)
    log_pi = initial_log_policy(game, init)
    rec(0, np.exp(log_pi))
    for t in range(iterations):
        g = matvec(game.P3, np.exp(log_pi))  # (C, n)
        log_half = _prox(log_pi, game.log_mu3, g, eta, game.tau)
        g_half = matvec(game.P3, np.exp(log_half))
        rec.matvecs += 2
        log_pi = _prox(log_pi, game.log_mu3, g_half, eta, game.tau)
        if rec(t + 1, np.exp(log_pi)):
            break
    return rec.finish("extragradient", np.exp(log_pi), {"eta": eta})


def optimistic_md(
    game: PreferenceGame,
    iterations: int,
    *,
    eta: float = 1.0,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Optimistic mirror descent (OMWU) with constant step ``eta``; one mat-vec per iteration."""
    eta = _check(game, eta, "optimistic_md")
    rec = Recorder(game, iterations, record, callback)
    log_pi = initial_log_policy(game, init)
    g_bar = matvec(game.P3, np.exp(log_pi))  # gradient at bar_pi_0 = pi_0
    rec.matvecs += 1
    rec(0, np.exp(log_pi))
    for t in range(iterations):
        log_bar = _prox(log_pi, game.log_mu3, g_bar, eta, game.tau)
        g_bar = matvec(game.P3, np.exp(log_bar))  # (C, n)
        rec.matvecs += 1
        log_pi = _prox(log_pi, game.log_mu3, g_bar, eta, game.tau)
        if rec(t + 1, np.exp(log_pi)):
            break
    return rec.finish("optimistic-md", np.exp(log_pi), {"eta": eta})
