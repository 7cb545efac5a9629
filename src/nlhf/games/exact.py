"""Exact solvers: the unregularised Nash equilibrium by LP and ``pi*_tau`` by Newton's method.

Unregularised game (paper §3): ``pi* = argmax_pi min_pi' P(pi > pi')``. It is the linear program
``max v  s.t.  sum_i pi_i P[i, j] >= v for every j,  pi on the simplex``, solved with scipy's
HiGHS; its value is 1/2 for every preference matrix (the game is symmetric).

Regularised game (paper §3, §4): the unique equilibrium ``pi*_tau`` solves the fixed point
``pi(y) ∝ mu(y) exp(P(y > pi) / tau)``. We solve it on logits ``z`` (``pi = softmax(z)``):

    F(z) = z - log mu - P softmax(z) / tau = 0,
    J(z) = I - (P - v 1^T) diag(s) / tau,       s = softmax(z),  v = P s.

Because ``P = 1/2 11^T + A`` with ``A`` antisymmetric, ``J = I - A (diag(s) - s s^T) / tau`` is
``I`` minus an antisymmetric matrix times a positive semi-definite one: its eigenvalues are
``1 + i lambda`` and it is never singular, so every (inexact) Newton direction descends on
``|F|^2 / 2``. One Newton iteration (inexact Newton-Krylov):

1. ``s = softmax(z)``, ``v = P s`` (one mat-vec), ``F = z - log mu - v / tau``; stop when the
   duality gap of ``s`` is at most ``tol``;
2. solve ``J d = -F`` to relative residual ``min(0.1, |F|)`` by GMRES, one mat-vec per GMRES
   iteration (``J d = d - (P (s * d) - v (s . d)) / tau``), right-preconditioned when ``tau`` is
   small by the exact inverse of ``J`` restricted to the *heavy* responses
   ``H = {y : s_y > c tau / sqrt(n)}``: the block lower-triangular matrix that drops the light
   columns of ``J`` (one LU factorisation of the ``|H| x |H|`` block in float32, reused across
   Newton steps until GMRES needs more than ``refactor_iterations`` iterations). The light
   columns carry little mass, so the preconditioned operator is close to the identity;
3. backtracking (Armijo) line search on ``|F|^2 / 2``, then ``z <- z + t d``.

Small ``tau`` is reached by continuation: solve at ``tau_0 = max(tau, tau_start)``, then shrink
``tau`` by ``tau_factor`` per stage until the requested ``tau``; only the last stage runs to
``tol``. Each stage starts from the tangent prediction ``v(tau') = v(tau) + (tau' - tau)
dv/dtau`` (``J dv/dtau = -P (diag(s) - s s^T) v / tau^2``: one more GMRES solve), with ``z = log
mu + v / tau'``; the preconditioner is carried over. A stage that does not converge within
``stage_steps`` Newton steps is retried with half the step in ``log tau`` (adaptive path
following). Jacobian products inside GMRES, and the residuals of the loose intermediate stages,
use a float32 copy of ``P`` (half the memory traffic); the final stage's residuals and gaps are
float64. With a dense random ``P``, n = 4096 and tau = 0.001 this takes about ten Newton
steps, about 100 mat-vecs and two LU factorisations of about 2000 x 2000 (see
``benchmarks/bench_tabular.py``).
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
    """What :func:`solve_regularized` did (summed over contexts).

    ``matvecs`` counts products with ``P`` in n x n units (products with sub-blocks count by
    their share of the entries); ``factorizations`` lists the sizes of the LU factorisations;
    ``trace`` holds ``(seconds, matvecs, gap)`` after every Newton step of the first context,
    the gap measured in the requested game (also during continuation stages).
    """

    gap: float = float("nan")
    newton_steps: int = 0
    gmres_iterations: int = 0
    matvecs: float = 0.0
    factorizations: list[int] = field(default_factory=list)
    seconds: float = 0.0
    trace: list[tuple[float, float, float]] = field(default_factory=list)
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
        time_limit: seconds for HiGHS, all contexts together (each context gets what the
            earlier ones left; ``None``: no limit). Exceeding it raises ``TimeoutError``.
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
    for c in range(C):
        options = {}
        if time_limit is not None:
            left = float(time_limit) - (time.perf_counter() - start)
            if left <= 0:
                raise TimeoutError(f"the time limit ran out before context {c} of {C}")
            options["time_limit"] = left
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


def _gmres(apply_A, b: np.ndarray, apply_M, rtol: float, max_iter: int):
    """Right-preconditioned GMRES from ``x0 = 0`` (modified Gram-Schmidt, Givens rotations).

    Returns ``(x, iterations, relative residual)``; the residual never exceeds ``|b|``.
    """
    n = b.shape[0]
    beta = float(np.linalg.norm(b))
    if beta == 0.0:
        return np.zeros(n), 0, 0.0
    V = np.empty((max_iter + 1, n))
    Z = np.empty((max_iter, n))
    H = np.zeros((max_iter + 1, max_iter))
    cs, sn = np.zeros(max_iter), np.zeros(max_iter)
    g = np.zeros(max_iter + 1)
    g[0] = beta
    V[0] = b / beta
    k, residual = 0, 1.0
    for k in range(max_iter):
        Z[k] = apply_M(V[k])
        w = apply_A(Z[k])
        for i in range(k + 1):
            H[i, k] = w @ V[i]
            w -= H[i, k] * V[i]
        H[k + 1, k] = np.linalg.norm(w)
        if H[k + 1, k] > 0:
            V[k + 1] = w / H[k + 1, k]
        for i in range(k):
            top = cs[i] * H[i, k] + sn[i] * H[i + 1, k]
            H[i + 1, k] = -sn[i] * H[i, k] + cs[i] * H[i + 1, k]
            H[i, k] = top
        r = np.hypot(H[k, k], H[k + 1, k])
        cs[k], sn[k] = H[k, k] / r, H[k + 1, k] / r
        H[k, k], H[k + 1, k] = r, 0.0
        g[k + 1] = -sn[k] * g[k]
        g[k] = cs[k] * g[k]
        residual = abs(g[k + 1]) / beta
        if residual <= rtol or H[k + 1, k] == 0 and r == 0:
            break
    m = k + 1
    y = scipy.linalg.solve_triangular(H[:m, :m], g[:m])
    return y @ Z[:m], m, residual


class _HeavyBlockPreconditioner:
    """``M^{-1}`` for ``M = J`` without its light columns (block lower-triangular in (H, L)).

    ``M^{-1} r``: ``y_H = (I - G_HH)^{-1} r_H`` by LU, ``y_L = r_L + G_LH y_H`` where
    ``G = (P - v 1^T) diag(s) / tau``.
    """

    def __init__(self, P, s, v, tau, heavy_c, info: SolveInfo):
        n = P.shape[0]
        heavy = s > heavy_c * tau / np.sqrt(n)
        heavy[np.argsort(-s)[: min(n, 32)]] = True
        self.H, self.L = np.flatnonzero(heavy), np.flatnonzero(~heavy)
        self.sH, self.vL, self.tau = s[self.H], v[self.L], tau
        block = P[np.ix_(self.H, self.H)] * (-self.sH / tau)  # (|H|, |H|)
        block += np.outer(v[self.H] / tau, self.sH)
        block[np.diag_indices_from(block)] += 1.0
        self.lu = scipy.linalg.lu_factor(
            block.astype(np.float32), overwrite_a=True, check_finite=False
        )
        self.P_LH = P[np.ix_(self.L, self.H)]  # (|L|, |H|)
        self.share = len(self.L) * len(self.H) / n**2
        self.info = info
        info.factorizations.append(len(self.H))

    def __call__(self, r: np.ndarray) -> np.ndarray:
        y = np.empty_like(r)
        yH = scipy.linalg.lu_solve(self.lu, r[self.H].astype(np.float32), check_finite=False)
        yH = yH.astype(np.float64)
        y[self.H] = yH
        if len(self.L):
            w = self.sH * yH
            y[self.L] = r[self.L] + (self.P_LH @ w - self.vL * w.sum()) / self.tau
            self.info.matvecs += self.share
        return y


def _identity(r: np.ndarray) -> np.ndarray:
    return r


def _newton_krylov(
    P: np.ndarray,
    log_mu: np.ndarray,
    tau: float,
    z: np.ndarray,
    tol: float,
    info: SolveInfo,
    *,
    max_steps: int,
    polish: int,
    precondition_below: float,
    heavy_c: float,
    refactor_iterations: int,
    max_gmres: int,
    trace_tau: float | None,
    start: float,
    state: dict,
    intermediate: bool,
) -> tuple[np.ndarray, float]:
    """Inexact Newton-Krylov on ``F(z) = z - log mu - P softmax(z) / tau`` for one context.

    Stops when the duality gap is at most ``tol`` (then takes ``polish`` more steps); returns
    ``(z, gap)``.
    """
    ones = np.ones(1)

    # intermediate stages may evaluate with the float32 copy (rounding ~1e-7, far below tol)
    P_eval = state["P_jac"] if intermediate and tol >= 1e-6 else P

    def evaluate(z):
        s = _softmax(z)
        v = (P_eval @ s.astype(P_eval.dtype)).astype(np.float64)  # (n,) P(y > s)
        info.matvecs += 1
        return s, v, z - log_mu - v / tau

    def gap_of(z, v, t):
        return gap_from_values(v[None], (z - logsumexp_last(z))[None], log_mu[None], t, ones)

    s, v, F = evaluate(z)
    gap = gap_of(z, v, tau)
    merit = 0.5 * float(F @ F)
    preconditioner = state.get("preconditioner") if state.get("reuse") else None
    use_preconditioner = tau < precondition_below
    extra = 0
    for _ in range(max_steps):
        if gap <= tol:
            if extra >= polish:
                break
            extra += 1  # Newton converges quadratically: one more step is nearly exact
        if use_preconditioner and preconditioner is None:
            preconditioner = _HeavyBlockPreconditioner(P, s, v, tau, heavy_c, info)

        jacobian_times = _jacobian(state["P_jac"], s, v, tau, info)
        rtol = min(0.1, max(float(np.sqrt(2 * merit)), 1e-14))  # forcing term
        d, iterations, _res = _gmres(
            jacobian_times, -F, preconditioner or _identity, rtol, max_gmres
        )
        info.gmres_iterations += iterations
        info.newton_steps += 1
        if iterations > refactor_iterations:  # the preconditioner went stale (or is missing)
            use_preconditioner, preconditioner = True, None
        t = 1.0
        for _ls in range(40):
            s_new, v_new, F_new = evaluate(z + t * d)
            merit_new = 0.5 * float(F_new @ F_new)
            if merit_new <= (1.0 - 1e-4 * t) * merit or merit_new == 0.0:
                break
            t *= 0.5
        else:  # no decrease possible at float64 precision
            break
        z, s, v, F, merit = z + t * d, s_new, v_new, F_new, merit_new
        state["preconditioner"] = preconditioner
        gap = gap_of(z, v, tau)
        if trace_tau is not None:
            traced = gap if trace_tau == tau else gap_of(z, v, trace_tau)
            info.trace.append((time.perf_counter() - start, info.matvecs, traced))
    state["s"], state["v"] = s, v
    return z, gap


def _jacobian(P_jac: np.ndarray, s: np.ndarray, v: np.ndarray, tau: float, info: SolveInfo):
    """``d -> J d = d - (P (s * d) - v (s . d)) / tau``; ``P_jac`` may be a float32 copy of ``P``
    (mixed precision: Newton only needs the products to GMRES' relative tolerance)."""

    def jacobian_times(d: np.ndarray) -> np.ndarray:
        w = s * d
        info.matvecs += 1
        return d - (P_jac @ w.astype(P_jac.dtype) - v * w.sum()) / tau

    return jacobian_times


def _tangent(P, s, v, tau, info: SolveInfo, state: dict) -> np.ndarray:
    """``dv/dtau`` along the path of equilibria at ``(s, v = P s, tau)``.

    Differentiating ``v = P softmax(log mu + v / tau)`` gives
    ``J dv/dtau = -P (diag(s) - s s^T) v / tau^2`` (one mat-vec and one GMRES solve).
    """
    Dv = s * v - s * (s @ v)
    rhs = -(P @ Dv) / (tau * tau)
    info.matvecs += 1
    jacobian_times = _jacobian(state["P_jac"], s, v, tau, info)
    preconditioner = state.get("preconditioner") or _identity
    dv, iterations, _ = _gmres(jacobian_times, rhs, preconditioner, 1e-2, 30)
    info.gmres_iterations += iterations
    return dv


def solve_regularized(
    game: PreferenceGame,
    tol: float = 1e-12,
    *,
    init: np.ndarray | None = None,
    max_steps: int = 40,
    stage_steps: int = 15,
    tau_start: float = 0.01,
    tau_factor: float = 0.3,
    polish: bool = True,
    precondition_below: float = 0.01,
    heavy_c: float = 3.0,
    refactor_iterations: int = 15,
    max_gmres: int = 60,
    reuse_preconditioner: bool = True,
    predictor: bool = True,
    mixed_precision: bool = True,
    return_info: bool = False,
):
    """The regularised equilibrium ``pi*_tau`` to duality gap ``<= tol`` (Newton-Krylov, float64).

    Args:
        game: the game; ``game.tau`` must be > 0.
        tol: duality gap ``max_pi' P_tau(pi' > pi) - 1/2`` to reach (per context).
        init: optional starting policy (game's policy shape); skips the continuation in ``tau``.
        max_steps: Newton steps of the first (and of an ``init``-started) stage at most; if
            the first stage fails, it is retried at ten times the ``tau``.
        stage_steps: Newton steps per later continuation stage; a stage that needs more is
            retried from the previous stage's solution with half the step in ``log tau``.
        tau_start: continuation starts at ``max(game.tau, tau_start)``.
        tau_factor: ``tau`` shrinks by this factor per continuation stage.
        polish: once the gap is reached, take one more Newton step (quadratic convergence makes
            the fixed point nearly exact).
        precondition_below: use the heavy-block LU preconditioner for stages with ``tau`` below
            this (above it, or when GMRES is slow, plain GMRES is used first).
        heavy_c: responses with ``s_y > heavy_c * tau / sqrt(n)`` enter the LU block.
        refactor_iterations: rebuild the preconditioner after a GMRES solve that needed more.
        max_gmres: GMRES iterations per Newton step at most.
        reuse_preconditioner: carry the preconditioner into the next continuation stage (it is
            rebuilt only when GMRES gets slow).
        predictor: start each continuation stage from the tangent (first-order) prediction
            ``v(tau') = v(tau) + (tau' - tau) dv/dtau`` instead of the previous ``v``.
        mixed_precision: Jacobian-vector products inside GMRES use a float32 copy of ``P``
            (for ``n >= 256``); residuals, gaps and the result stay float64.
        return_info: also return a :class:`SolveInfo`.

    Returns:
        ``pi*_tau`` with the game's policy shape (``(n,)`` or ``(C, n)``), and the info if asked.
        Raises ``RuntimeError`` if the gap is not reached.
    """
    if game.tau <= 0:
        raise ValueError("solve_regularized needs tau > 0 (use solve_nash_lp for tau = 0)")
    if not 0 < tau_factor < 1:
        raise ValueError(f"tau_factor must be in (0, 1), got {tau_factor}")
    start = time.perf_counter()
    info = SolveInfo()
    tau = game.tau
    first_tau = tau if init is not None else max(tau, tau_start)
    pi3 = game.mu3.copy() if init is None else game.as_batch(init)
    out = np.empty_like(game.mu3)
    gaps = np.empty(game.n_contexts)
    newton_options = dict(
        precondition_below=precondition_below,
        heavy_c=heavy_c,
        refactor_iterations=refactor_iterations,
        max_gmres=max_gmres,
        start=start,
    )
    for c in range(game.n_contexts):
        P, log_mu = game.P3[c], game.log_mu3[c]
        pi, t_done, t, factor = pi3[c], None, first_tau, tau_factor
        anchor_v = anchor_dv = None  # v and dv/dtau at the last solved stage
        state = {"reuse": reuse_preconditioner, "P_jac": P}
        if mixed_precision and game.n >= 256:
            state["P_jac"] = P.astype(np.float32)
        while True:
            last = t == tau
            stage_tol = tol if last else max(1e-3 * t, tol)
            if anchor_dv is not None:  # first-order predictor along the path
                v_start = anchor_v + (t - t_done) * anchor_dv
            else:
                v_start = P @ pi  # a fixed-point step into the stage's logits
                info.matvecs += 1
            z = log_mu + v_start / t
            z, gap = _newton_krylov(
                P,
                log_mu,
                t,
                z,
                stage_tol,
                info,
                max_steps=max_steps if t_done is None else stage_steps,
                polish=int(last and polish),
                trace_tau=tau if c == 0 else None,
                state=state,
                intermediate=not last,
                **newton_options,
            )
            if gap <= stage_tol:  # stage solved: move on (and lengthen the next step again)
                pi, t_done = _softmax(z), t
                if last:
                    break
                if predictor:
                    anchor_v = state["v"]  # the last solved stage: predictions start here
                    anchor_dv = _tangent(P, state["s"], anchor_v, t, info, state)
                factor = min(tau_factor, factor**0.5) if factor < tau_factor else factor
                t = max(tau, t * factor)
            elif t_done is None:  # the first stage failed: start from a larger tau
                if t >= 1e3:
                    break  # give up (reported below)
                t = min(t * 10.0, 1e3)
            else:  # too far from the previous stage's solution: halve the step in log tau
                factor = (t / t_done) ** 0.5
                if factor > 0.999:
                    break
                t = max(tau, t_done * factor)
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
