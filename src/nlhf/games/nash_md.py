"""Nash-MD: mirror descent against the geometric mixture (Munos et al. 2024, §4, Theorem 1).

For a regularised game (``P``, ``mu``, ``tau > 0``), one iteration ``t -> t + 1`` with step
``eta_t`` is, per context and in log space:

1. geometric mixture with the reference (paper Eq. for ``pi_t^mu``):
   ``log pi_t^mu = (1 - eta_t tau) log pi_t + eta_t tau log mu - log Z``;
2. one mat-vec: ``P(y > pi_t^mu) = (P pi_t^mu)[y]``;
3. closed-form mirror-descent step
   ``pi_{t+1} = argmax_pi [eta_t P(pi > pi_t^mu) - KL(pi, pi_t^mu)]``, i.e.
   ``log pi_{t+1} = log pi_t^mu + eta_t P(. > pi_t^mu) - log Z'``.

Theorem 1: ``KL(pi*_tau, pi_{t+1}) <= (1 - eta_t tau) KL(pi*_tau, pi_t) + 2 eta_t^2``; with the
schedule ``eta_t = 2 / (tau (t + 2))`` this gives the last-iterate bound
``KL(pi*_tau, pi_T) <= 8 / (tau^2 (T + 1))`` for every ``T >= 1``, whatever the number of
responses (and per context for ``KL_rho``). ``eta_0 tau = 1`` makes ``pi_1`` independent of
``pi_0``. A constant ``eta`` (with ``eta tau <= 1``) is the other option.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from nlhf.games.game import PreferenceGame, matvec, normalize_log
from nlhf.games.trajectory import Recorder, Trajectory, initial_log_policy, step_sizes


def theorem1_bound(tau: float, T: np.ndarray | int) -> np.ndarray | float:
    """Theorem 1's last-iterate bound ``8 / (tau^2 (T + 1))`` on ``KL(pi*_tau, pi_T)``."""
    tau = np.float64(tau)
    return 8.0 / (tau * tau * (np.asarray(T, dtype=np.float64) + 1.0))


def nash_md(
    game: PreferenceGame,
    iterations: int,
    *,
    eta: float | None = None,
    init: np.ndarray | None = None,
    record: Iterable[int] | None = None,
    callback: Callable[[int, np.ndarray, int], bool] | None = None,
) -> Trajectory:
    """Run Nash-MD for ``iterations`` steps.

    Args:
        game: the regularised game (``tau > 0`` for the Theorem 1 schedule).
        iterations: number of steps ``T``.
        eta: ``None`` for Theorem 1's ``eta_t = 2 / (tau (t + 2))``; a number for a constant step
            (``eta * tau <= 1``).
        init: ``pi_0`` (game's policy shape, strictly positive); default ``mu``.
        record: iterations ``t`` (0..T) at which to keep ``pi_t`` in the history.
        callback: called as ``callback(t, pi_t (C, n), matvecs)`` after every iteration;
            returning True stops the run.

    Returns:
        A :class:`~nlhf.games.trajectory.Trajectory` whose ``policy`` is the last iterate.
    """
    eta_at, schedule = step_sizes(game, eta, "nash_md")
    rec = Recorder(game, iterations, record, callback)
    log_pi = initial_log_policy(game, init)  # (C, n)
    rec(0, np.exp(log_pi))
    for t in range(iterations):
        eta_t = eta_at(t)
        mix_weight = eta_t * game.tau  # in (0, 1]
        log_mix = normalize_log((1.0 - mix_weight) * log_pi + mix_weight * game.log_mu3)
        values = matvec(game.P3, np.exp(log_mix))  # (C, n) P(y > pi_t^mu)
        rec.matvecs += 1
        log_pi = normalize_log(log_mix + eta_t * values)
        if rec(t + 1, np.exp(log_pi)):
            break
    return rec.finish("nash-md", np.exp(log_pi), {"eta": eta, "schedule": schedule})
