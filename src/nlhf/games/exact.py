"""Exact solvers: the unregularised Nash equilibrium by LP and ``pi*_tau`` by Newton's method.

Unregularised game (paper §3): ``pi* = argmax_pi min_pi' P(pi > pi')``. It is the linear program
``max v  s.t.  sum_i pi_i P[i, j] >= v for every j,  pi on the simplex``, solved with scipy's
HiGHS; its value is 1/2 for every preference matrix (the game is symmetric).

Regularised game (paper §3, §4): the unique equilibrium ``pi*_tau`` solves the fixed point
``pi(y) ∝ mu(y) exp(P(y > pi) / tau)``. We solve it on logits ``z`` (``pi = softmax(z)``):

    F(z) = z - log mu - P softmax(z) / tau = 0,
    J(z) = I - P (diag(s) - s s^T) / tau,       s = softmax(z).

Because ``P = 1/2 11^T + A`` with ``A`` antisymmetric and ``(diag(s) - s s^T) 1 = 0``, ``J`` is
``I - A D / tau`` with ``D`` positive semi-definite: its eigenvalues are ``1 + i lambda`` and it
is never singular, so every Newton direction descends on ``|F|^2 / 2``. One iteration:

1. ``s = softmax(z)``, ``v = P s`` (one mat-vec), ``F = z - log mu - v / tau``;
   stop when the duality gap of ``s`` is at most ``tol``;
2. keep the responses with non-negligible mass ``S = {y : s_y > 1e-30}`` (the others do not enter
   ``J`` to float64 precision) and solve the dense ``|S| x |S|`` system
   ``(I - (P_SS diag(s_S) - v_S s_S^T) / tau) d_S = -F_S`` (LAPACK ``gesv``);
3. extend ``d = -F + (P[:, S] (s_S d_S) - v (s_S . d_S)) / tau`` (one mat-vec);
4. backtracking (Armijo) line search on ``|F|^2 / 2``, then ``z <- z + t d``.

Small ``tau`` is reached by continuation: solve at ``tau_0 = max(tau, 0.05)``, then divide
``tau`` by a constant factor, warm-starting each stage from the previous ``pi`` (``z = log mu +
P pi / tau``), until the requested ``tau``; only the last stage runs to ``tol``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
from scipy.optimize import linprog

from nlhf.games.game import PreferenceGame, _as_batches, gap_from_values, logsumexp_last


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


@dataclass
class SolveInfo:
    """What a solver did: per-context iterations, mat-vecs, final duality gap, seconds."""

    gap: float = float("nan")
    newton_steps: int = 0
    matvecs: int = 0
    linear_solves: int = 0
    seconds: float = 0.0
    stages: list[float] = field(default_factory=list)
    converged: bool = False


def solve_nash_lp(
    P: np.ndarray,
    rho: np.ndarray | None = None,
    *,
    time_limit: float | None = None,
    return_info: bool = False,
):
    """A Nash equilibrium of the unregularised game by linear programming (HiGHS).

    Args:
        P: ``(n, n)`` preference matrix (``P[i, j] = P(y_i > y_j)``), or ``(C, n, n)``.
        rho: context weights for a batch (default uniform); only the returned value uses them.
        time_limit: seconds for HiGHS per context (``None``: no limit). Exceeding it raises
            ``TimeoutError``.
        return_info: also return a dict with ``seconds`` and HiGHS' status message.

    Returns:
        ``(pi, value)``: ``pi (n,)`` or ``(C, n)`` maximises ``min_pi' P(pi > pi')``, whose value
        is 1/2 for a preference matrix (``P + P^T = 1``).
    """
    if isinstance(P, PreferenceGame):
        P, rho = P.P, P.rho
    P3, rho = _as_batches(P, None, rho)
    C, n, _ = P3.shape
    start = time.perf_counter()
    pis, values, messages = [], [], []
    options = {} if time_limit is None else {"time_limit": float(time_limit)}
    for c in range(C):
        # variables (pi_1..pi_n, v); minimise -v s.t. v - sum_i pi_i P[i, j] <= 0, sum pi = 1.
        A_ub = np.hstack([-P3[c].T, np.ones((n, 1))])
        A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
        cost = np.zeros(n + 1)
        cost[-1] = -1.0
        bounds = [(0.0, None)] * n + [(None, None)]
        res = linprog(
            cost, A_ub=A_ub, b_ub=np.zeros(n), A_eq=A_eq, b_eq=[1.0], bounds=bounds,
            method="highs", options=options,
        )  # fmt: skip
        if res.status == 1:
            raise TimeoutError(f"HiGHS hit its limit on context {c}: {res.message}")
        if res.status != 0:
            raise RuntimeError(f"HiGHS failed on context {c}: {res.message}")
        pi = np.clip(res.x[:n], 0.0, None)
        pi /= pi.sum()
        pis.append(pi)
        values.append(float((P3[c].T @ pi).min()))
        messages.append(res.message)
    pi3 = np.stack(pis)
    value = float(rho @ np.array(values))
    out_pi = pi3 if np.ndim(P) == 3 else pi3[0]
    if return_info:
        return out_pi, value, {"seconds": time.perf_counter() - start, "message": messages}
    return out_pi, value


def _newton_context(
    P: np.ndarray,
    log_mu: np.ndarray,
    tau: float,
    z: np.ndarray,
    tol: float,
    max_steps: int,
    info: SolveInfo,
    support_eps: float = 1e-30,
    polish: int = 0,
) -> tuple[np.ndarray, float]:
    """Damped Newton on ``F(z) = z - log mu - P softmax(z) / tau`` for one context.

    Stops when the duality gap is at most ``tol``; returns ``(z, gap)``.
    """
    ones = np.ones(1)

    def evaluate(z):
        s = _softmax(z)
        v = P @ s  # (n,) P(y > s)
        info.matvecs += 1
        F = z - log_mu - v / tau
        return s, v, F

    s, v, F = evaluate(z)
    gap = gap_from_values(v[None], (z - logsumexp_last(z))[None], log_mu[None], tau, ones)
    merit = 0.5 * float(F @ F)
    extra = 0
    for _ in range(max_steps):
        if gap <= tol:
            if extra >= polish:
                break
            extra += 1  # Newton converges quadratically: one more step is nearly exact
        S = np.flatnonzero(s > support_eps * s.max())
        sS, vS = s[S], v[S]
        M = P[np.ix_(S, S)] * (-sS / tau)
        M += np.outer(vS / tau, sS)
        M[np.diag_indices_from(M)] += 1.0
        dS = scipy.linalg.solve(M, -F[S], overwrite_a=True, check_finite=False)
        info.linear_solves += 1
        w = sS * dS
        d = -F + (P[:, S] @ w - v * w.sum()) / tau
        info.matvecs += 1
        info.newton_steps += 1
        t = 1.0
        for _ls in range(40):
            z_new = z + t * d
            s_new, v_new, F_new = evaluate(z_new)
            merit_new = 0.5 * float(F_new @ F_new)
            if merit_new <= (1.0 - 1e-4 * t) * merit or merit_new == 0.0:
                break
            t *= 0.5
        else:  # no decrease possible at float64 precision: we are at the solution
            break
        z, s, v, F, merit = z_new, s_new, v_new, F_new, merit_new
        gap = gap_from_values(v[None], (z - logsumexp_last(z))[None], log_mu[None], tau, ones)
    return z, gap


def solve_regularized(
    game: PreferenceGame,
    tol: float = 1e-12,
    *,
    init: np.ndarray | None = None,
    max_steps: int = 200,
    tau_start: float = 0.05,
    tau_factor: float = 0.25,
    polish: bool = True,
    return_info: bool = False,
):
    """The regularised equilibrium ``pi*_tau`` to duality gap ``<= tol`` (Newton, float64).

    Args:
        game: the game; ``game.tau`` must be > 0.
        tol: duality gap ``max_pi' P_tau(pi' > pi) - 1/2`` to reach (per context).
        init: optional starting policy (game's policy shape); skips the continuation in ``tau``.
        max_steps: Newton steps per stage at most.
        tau_start: continuation starts at ``max(game.tau, tau_start)``.
        tau_factor: ``tau`` shrinks by this factor per continuation stage.
        polish: once the gap is reached, take one more Newton step (quadratic convergence makes
            the fixed point nearly exact at the cost of one linear solve).
        return_info: also return a :class:`SolveInfo`.

    Returns:
        ``pi*_tau`` with the game's policy shape (``(n,)`` or ``(C, n)``), and the info if asked.
        Raises ``RuntimeError`` if the gap is not reached.
    """
    if game.tau <= 0:
        raise ValueError("solve_regularized needs tau > 0 (use solve_nash_lp for tau = 0)")
    start = time.perf_counter()
    info = SolveInfo()
    tau = game.tau
    taus = [tau]
    if init is None:
        t = max(tau, tau_start)
        taus = []
        while t > tau * (1 + 1e-12):
            taus.append(t)
            t *= tau_factor
        taus.append(tau)
        pi3 = game.mu3.copy()
    else:
        pi3 = game.as_batch(init)
    out = np.empty_like(game.mu3)
    gaps = np.empty(game.n_contexts)
    for c in range(game.n_contexts):
        P, log_mu = game.P3[c], game.log_mu3[c]
        pi = pi3[c]
        for k, t in enumerate(taus):
            z = log_mu + (P @ pi) / t  # one fixed-point step into the stage's logits
            info.matvecs += 1
            last = k == len(taus) - 1
            stage_tol = tol if last else max(1e-3 * t, tol)
            z, gap = _newton_context(
                P, log_mu, t, z, stage_tol, max_steps, info, polish=int(last and polish)
            )
            pi = _softmax(z)
            if c == 0:
                info.stages.append(gap)
        out[c], gaps[c] = pi, gap
    info.gap = float(game.rho @ gaps)
    info.converged = bool(np.all(gaps <= tol))
    info.seconds = time.perf_counter() - start
    if not info.converged:
        raise RuntimeError(
            f"solve_regularized: duality gap {gaps.max():.3g} > tol {tol:g} after "
            f"{info.newton_steps} Newton steps (tau = {tau:g})"
        )
    pi_out = game.from_batch(out)
    return (pi_out, info) if return_info else pi_out
