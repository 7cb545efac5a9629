"""Tabular preference games and their metrics (Munos et al. 2024, §3 and §4).

A preference game is a matrix ``P`` with ``P[i, j] = P(y_i > y_j)`` (row beats column), so that
``P + P^T = 1`` and the diagonal is 1/2, a reference policy ``mu`` and a regularisation strength
``tau``. With contexts (prompts) ``x``, ``P`` is a batch ``(C, n, n)``, ``mu`` is ``(C, n)`` and
``rho`` weights the contexts. Bad input raises a ``ValueError`` that names the entry and says by
how much it is off; nothing is repaired beyond rounding: a ``P`` accepted within the tolerance
(``1e-9``, or a few units of float32 / float16 rounding for such data) is made exactly
consistent, ``P <- (P + 1 - P^T) / 2`` (each entry moves by at most half the tolerance), and an
accepted ``rho`` is divided by its sum.

``tau`` is 0 (the unregularised game) or in ``[TAU_MIN, TAU_MAX] = [1e-6, 1e12]``; outside that
range float64 cannot represent the regularised game faithfully:

- below ``1e-6`` the fixed point ``pi ∝ mu exp(P pi / tau)`` has logits beyond ``1e6``, whose
  rounding (``1e6 * 2e-16``) is no longer negligible against the duality gaps to be resolved
  (the solver stops converging at ``tau ~ 1e-9``), and Theorem 1's bound ``8 / (tau^2 (T + 1))``
  exceeds ``8e12 / T``; ``pi*_tau`` is then within ``O(tau)`` of a Nash equilibrium of the
  unregularised game, which ``tau = 0`` computes exactly (LP);
- above ``1e12``, ``pi*_tau = mu (1 + O(1 / tau))`` agrees with ``mu`` to 12 digits, while the
  gap of a float64 policy (whose entries are rounded at ``1e-16``) is of order
  ``tau * 1e-32``, which reaches the solver's tolerance ``1e-12`` at ``tau ~ 1e18``.

Quantities (paper §3, §4; ``pi`` is one policy per context):

- ``P(y > pi) = (P @ pi)[y]`` and ``P(pi' > pi) = E_rho[pi'^T P pi]``;
- exploitability ``max_pi' P(pi' > pi) - 1/2`` (0 exactly at a Nash equilibrium of the
  unregularised game);
- regularised preference
  ``P_tau(pi' > pi) = P(pi' > pi) - tau KL_rho(pi', mu) + tau KL_rho(pi, mu)`` and its
  duality gap ``max_pi' P_tau(pi' > pi) - 1/2``, whose maximiser has the closed form
  ``BR(y) ∝ mu(y) exp(P(y > pi) / tau)``, so that the gap is
  ``tau log sum_y mu(y) exp(P(y > pi) / tau) + tau KL(pi, mu) - 1/2
  = tau KL(pi, BR) + P(pi > pi) - 1/2`` per context. The second form is what is computed: with
  :func:`kl_from_logs` it has no cancellation, so the gap stays accurate to about ``1e-16``
  however large ``tau`` is (the first form loses ``tau * 1e-16``);
- ``KL(pi*_tau, pi)``, the quantity Theorem 1 bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TAU_MIN = 1e-6
"""Smallest supported ``tau > 0`` (see the module docstring for why)."""
TAU_MAX = 1e12
"""Largest supported ``tau`` (see the module docstring for why)."""
SYMMETRY_ATOL = 1e-9
"""Default tolerance of ``P + P^T = 1`` and of ``sum(mu) = 1`` for float64 data."""


def check_tau(tau: object, name: str = "tau") -> float:
    """``tau`` as a float if it is 0 or in ``[TAU_MIN, TAU_MAX]``, else a ``ValueError`` saying
    why the range is what it is."""
    try:
        value = float(tau)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {tau!r}") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {tau!r}")
    if 0 < value < TAU_MIN:
        raise ValueError(
            f"{name} = {value:g} is below the supported range [{TAU_MIN:g}, {TAU_MAX:g}] (or 0): "
            f"the regularised equilibrium's logits P pi / tau would exceed 1e6, beyond what "
            f"float64 resolves, and Theorem 1's bound 8 / (tau^2 (T + 1)) is vacuous; the "
            f"regularised equilibrium is then within O(tau) of a Nash equilibrium of the "
            f"unregularised game: use {name} = 0 for that (solved exactly by LP)"
        )
    if value > TAU_MAX:
        raise ValueError(
            f"{name} = {value:g} is above the supported range [{TAU_MIN:g}, {TAU_MAX:g}] (or 0): "
            f"the regularised equilibrium is mu to 12 digits there (pi*_tau = mu (1 + O(1 / "
            f"tau))), and rounding a policy to float64 alone moves its regularised duality gap "
            f"by about tau * 1e-32"
        )
    return value


def default_atol(dtype: np.dtype) -> float:
    """Tolerance of ``P + P^T = 1`` for data of ``dtype``: ``1e-9``, or 4 units of rounding of a
    coarser float type (float32: 4.8e-7, float16: 3.9e-3)."""
    if np.issubdtype(dtype, np.floating):
        return max(SYMMETRY_ATOL, 4.0 * float(np.finfo(dtype).eps))
    return SYMMETRY_ATOL


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def _check_matrix(P: np.ndarray, atol: float | None, name: str = "P") -> np.ndarray:
    """Validate one preference matrix or a batch of them; return a float64 (C, n, n) copy that
    satisfies ``P + P^T = 1`` to rounding (an accepted matrix is projected onto it)."""
    source = np.asarray(P) if isinstance(P, np.ndarray) else None
    if source is not None and (
        np.iscomplexobj(source)
        or not (np.issubdtype(source.dtype, np.number) or source.dtype == np.bool_)
    ):
        raise ValueError(f"{name}: expected real numbers, got dtype {source.dtype}")
    if atol is None:
        atol = default_atol(source.dtype) if source is not None else SYMMETRY_ATOL
    try:
        P = np.array(P, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot read as an array of numbers ({err})") from None
    if P.ndim not in (2, 3):
        raise ValueError(
            f"{name} must be an (n, n) matrix or a (C, n, n) batch, got shape {P.shape}"
        )
    P3 = P[None] if P.ndim == 2 else P
    C, rows, cols = P3.shape
    if rows != cols:
        raise ValueError(f"{name} must be square, got {rows} rows and {cols} columns")
    if rows < 1 or C < 1:
        raise ValueError(f"{name} is empty (shape {P.shape})")

    def where(idx: tuple[int, ...]) -> str:
        c, i, j = (int(k) for k in idx)
        return f"{name}[{i}, {j}]" if P.ndim == 2 else f"{name}[{c}, {i}, {j}]"

    bad = ~np.isfinite(P3)
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise ValueError(
            f"{where(idx)} = {P3[tuple(idx)]} is not finite ({int(bad.sum())} such entries)"
        )
    low, high = P3 + atol < 0.0, P3 - atol > 1.0
    if low.any() or high.any():
        off = np.where(low, -P3, 0.0) + np.where(high, P3 - 1.0, 0.0)
        idx = np.unravel_index(np.argmax(off), off.shape)
        raise ValueError(
            f"{where(idx)} = {_fmt(P3[idx])} is outside [0, 1] by {_fmt(off[idx])} "
            f"({int((low | high).sum())} entries outside [0, 1]; tolerance {atol:g})"
        )
    sym = P3 + np.swapaxes(P3, 1, 2) - 1.0
    err = np.abs(sym)
    if err.max() > atol:
        idx = np.unravel_index(np.argmax(err), err.shape)
        c, i, j = idx
        other = where((c, j, i))
        raise ValueError(
            f"{where(idx)} + {other} = {_fmt(P3[idx] + P3[c, j, i])}, should be 1 "
            f"(P(a > b) + P(b > a) = 1); off by {_fmt(sym[idx])} (tolerance {atol:g})"
        )
    if err.max() > 4 * np.finfo(np.float64).eps or (P3 < 0).any() or (P3 > 1).any():
        # within the tolerance: project onto P + P^T = 1 and [0, 1] (clipping a pair keeps
        # its sum, since P[i, j] > 1 goes with P[j, i] < 0)
        P3 = np.clip(0.5 * (P3 - np.swapaxes(P3, 1, 2) + 1.0), 0.0, 1.0)
    return P3


def _check_simplex(
    x: np.ndarray, shape: tuple[int, ...], name: str, atol: float, positive: bool
) -> np.ndarray:
    """Validate probability vector(s) of the given shape (last axis sums to 1)."""
    try:
        x = np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: cannot read as an array of numbers ({err})") from None
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {x.shape}")

    def where(idx: tuple[int, ...]) -> str:
        return f"{name}[{', '.join(str(int(k)) for k in idx)}]"

    bad = ~np.isfinite(x)
    if bad.any():
        idx = tuple(np.argwhere(bad)[0])
        raise ValueError(f"{where(idx)} = {x[idx]} is not finite")
    if positive and (x <= 0).any():
        idx = tuple(np.argwhere(x <= 0)[0])
        raise ValueError(
            f"{where(idx)} = {_fmt(x[idx])} must be > 0 (the KL regulariser needs every "
            f"response to have positive reference probability)"
        )
    if (x < 0).any():
        idx = tuple(np.argwhere(x < 0)[0])
        raise ValueError(f"{where(idx)} = {_fmt(x[idx])} is negative")
    sums = x.sum(axis=-1)
    err = np.abs(sums - 1.0)
    if np.max(err) > atol:
        k = np.unravel_index(np.argmax(err), err.shape) if err.ndim else ()
        label = f"{name}[{', '.join(str(int(i)) for i in k)}]" if k else name
        raise ValueError(
            f"{label} sums to {_fmt(float(sums[k]))}, not 1 (off by {_fmt(float(sums[k] - 1))}); "
            f"it must be a probability distribution"
        )
    return x


@dataclass(frozen=True, eq=False)
class PreferenceGame:
    """A validated tabular preference game (paper §3): ``P``, reference ``mu``, ``tau``, ``rho``.

    Args:
        P: ``(n, n)`` matrix, ``P[i, j] = P(y_i > y_j)``, or a ``(C, n, n)`` batch, one per
            context. Entries in [0, 1] and ``P + P^T = 1`` within ``atol``.
        mu: reference policy, ``(n,)`` (shared by every context) or ``(C, n)``, strictly positive
            and summing to 1 within ``atol``. Default: uniform.
        tau: KL regularisation strength: 0 (the unregularised game) or in
            ``[TAU_MIN, TAU_MAX] = [1e-6, 1e12]`` (see the module docstring for why).
        rho: context weights ``(C,)`` on the simplex; only for a batch. Default: uniform.
        atol: tolerance of the checks ``P + P^T = 1`` and ``sum(mu) = 1``; default ``1e-9``, or
            4 units of rounding of ``P``'s float type if it is coarser (float32: ``4.8e-7``).
            An accepted ``P`` is projected onto ``P + P^T = 1``: ``(P + 1 - P^T) / 2``.

    Attributes ``P3 (C, n, n)``, ``mu3 (C, n)``, ``log_mu3 (C, n)`` and ``rho (C,)`` are the
    batched forms every algorithm works on; ``policy_shape`` is ``(n,)`` or ``(C, n)``.
    """

    P: np.ndarray
    mu: np.ndarray | None = None
    tau: float = 0.1
    rho: np.ndarray | None = None
    atol: float | None = None

    def __post_init__(self) -> None:
        P3 = _check_matrix(self.P, self.atol)
        batched = np.ndim(self.P) == 3
        C, n, _ = P3.shape
        tau = check_tau(self.tau)
        simplex_atol = SYMMETRY_ATOL if self.atol is None else self.atol
        if self.mu is None:
            mu3 = np.full((C, n), 1.0 / n)
        else:
            mu_arr = np.asarray(self.mu)
            if mu_arr.ndim == 1:
                mu3 = np.broadcast_to(
                    _check_simplex(mu_arr, (n,), "mu", simplex_atol, positive=True), (C, n)
                ).copy()
            elif batched:
                mu3 = _check_simplex(mu_arr, (C, n), "mu", simplex_atol, positive=True)
            else:
                raise ValueError(f"mu must have shape ({n},), got {mu_arr.shape}")
        if self.rho is None:
            rho = np.full(C, 1.0 / C)
        else:
            if not batched:
                raise ValueError("rho (context weights) needs a (C, n, n) batch of matrices P")
            rho = _check_simplex(self.rho, (C,), "rho", simplex_atol, positive=False)
            rho = rho / rho.sum()  # accepted within the tolerance: an exact distribution
        set_ = object.__setattr__
        set_(self, "P", P3 if batched else P3[0])
        set_(self, "mu", mu3 if batched else mu3[0])
        set_(self, "tau", tau)
        set_(self, "rho", rho)
        set_(self, "P3", P3)
        set_(self, "mu3", mu3)
        set_(self, "log_mu3", np.log(mu3))
        set_(self, "batched", batched)

    # The attributes set in __post_init__ (declared for type checkers and readers).
    P3: np.ndarray = field(init=False, repr=False)  # (C, n, n)
    mu3: np.ndarray = field(init=False, repr=False)  # (C, n)
    log_mu3: np.ndarray = field(init=False, repr=False)  # (C, n)
    batched: bool = field(init=False, repr=False)

    @property
    def n(self) -> int:
        """Number of responses."""
        return int(self.P3.shape[-1])

    @property
    def n_contexts(self) -> int:
        """Number of contexts ``C`` (1 for a single matrix)."""
        return int(self.P3.shape[0])

    @property
    def policy_shape(self) -> tuple[int, ...]:
        """``(n,)`` for a single matrix, ``(C, n)`` for a batch."""
        return (self.n_contexts, self.n) if self.batched else (self.n,)

    def with_tau(self, tau: float) -> PreferenceGame:
        """The same game with another regularisation strength."""
        return PreferenceGame(self.P, self.mu, tau, self.rho if self.batched else None, self.atol)

    def as_batch(self, pi: np.ndarray) -> np.ndarray:
        """A policy in the game's shape -> ``(C, n)``."""
        pi = np.asarray(pi, dtype=np.float64)
        if pi.shape != self.policy_shape:
            raise ValueError(f"policy must have shape {self.policy_shape}, got {pi.shape}")
        return pi[None] if not self.batched else pi

    def from_batch(self, pi3: np.ndarray) -> np.ndarray:
        """``(C, n)`` -> a policy in the game's shape."""
        return pi3 if self.batched else pi3[0]


# ---------------------------------------------------------------------------------------------
# Pure functions on (C, n) batches; the public metrics below accept the user's shapes.


def matvec(P3: np.ndarray, pi3: np.ndarray) -> np.ndarray:
    """``P(y > pi | x)`` for every response and context: ``(C, n, n) x (C, n) -> (C, n)``."""
    if P3.shape[0] == 1:
        return (P3[0] @ pi3[0])[None]
    return np.einsum("cij,cj->ci", P3, pi3)


def logsumexp_last(x: np.ndarray) -> np.ndarray:
    """``log sum exp`` along the last axis, keeping it (fast; scipy's has array-API overhead)."""
    m = x.max(axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def normalize_log(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities from logits along the last axis (log-softmax).

    Shifted by the maximum first, so that huge logits (``|x| ~ 1e300`` after a huge step) do
    not absorb the normaliser: ``(x - m) - log sum exp(x - m)``.
    """
    m = logits.max(axis=-1, keepdims=True)
    shifted = logits - np.where(np.isfinite(m), m, 0.0)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _expm1_minus_x(x: np.ndarray) -> np.ndarray:
    """``phi(x) = e^x - 1 - x >= 0`` without cancellation: Taylor series to ``x^12 / 12!`` for
    ``|x| <= 0.1`` (truncation below ``1e-20`` relative), ``expm1(x) - x`` beyond."""
    small = np.abs(x) <= 0.1
    xs = np.where(small, x, 0.0)
    series = np.full_like(xs, 1.0 / 479001600.0)  # 1/12!
    factorial = 479001600.0
    for k in range(11, 1, -1):  # Horner: 1/2! + x/3! + ... + x^10/12!
        factorial /= k + 1
        series = 1.0 / factorial + xs * series
    xb = np.where(small, 0.0, x)
    with np.errstate(over="ignore"):
        return np.where(small, xs * xs * series, np.expm1(xb) - xb)


def kl_from_logs(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """``KL(p, q)`` per row from log-probabilities ``(C, n)``; rows are normalised here and
    ``-inf`` is probability 0 (``KL = inf`` if ``q = 0`` where ``p > 0``).

    Computed in the centred form ``KL = log sum_y w_y e^{x_y} + log(1 + q's mass off supp(p))``
    with ``w = p / sum p``, ``r = log p - log q`` and ``x = E_w[r] - r`` (so ``E_w[x] = 0``):
    ``KL = log1p(sum_y w_y phi(x_y) + off)`` with ``phi(x) = e^x - 1 - x >= 0``. Every term is
    non-negative, so nothing cancels: an error ``e`` in the logs changes ``KL`` by about
    ``e |x| + e^2`` (not ``e``), which keeps ``tau KL`` accurate for large ``tau`` (the naive
    ``sum p (log p - log q)`` loses ``tau * 1e-16``).
    """
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    lse_p = logsumexp_last(log_p)  # (C, 1)
    log_w = log_p - lse_p
    w = np.exp(log_w)  # (C, n) normalised p
    supp = w > 0
    impossible = np.any(supp & (log_q == -np.inf), axis=-1)  # (C,) q = 0 where p > 0
    with np.errstate(invalid="ignore"):
        r = np.where(supp & (log_q > -np.inf), log_p - log_q, 0.0)
        c = np.sum(w * r, axis=-1, keepdims=True)  # (C, 1) E_w[r]
        x = np.where(supp, c - r, 0.0)  # centred
        huge = x > 700.0
        on = np.where(huge, 0.0, w * _expm1_minus_x(np.where(huge, 0.0, x)))
        log_huge = np.where(huge & supp, log_w + x, -np.inf)  # w e^x of the huge terms
        log_off = np.where(supp, -np.inf, log_q + c - lse_p)  # q's mass off supp(p), rescaled
    with np.errstate(over="ignore"):
        total = on.sum(axis=-1) + np.exp(log_off).sum(axis=-1) + np.exp(log_huge).sum(axis=-1)
    out = np.log1p(total)
    overflow = ~np.isfinite(total)
    if overflow.any():  # KL > ~700: the log-sum-exp of the same terms, accurate at that size
        log_terms = np.concatenate([np.log(np.maximum(on, 1e-300)), log_off, log_huge], axis=-1)[
            overflow
        ]
        out[overflow] = logsumexp_last(log_terms)[:, 0]
    out[impossible] = np.inf
    return np.maximum(out, 0.0)


def kl_batch(p3: np.ndarray, q3: np.ndarray) -> np.ndarray:
    """``KL(p, q)`` per row, ``(C, n) x (C, n) -> (C,)``; terms with ``p = 0`` count 0 (see
    :func:`kl_from_logs`)."""
    with np.errstate(divide="ignore"):
        return kl_from_logs(np.log(p3), np.log(q3))


def regularized_best_response_log(
    P3: np.ndarray, log_mu3: np.ndarray, tau: float, pi3: np.ndarray
) -> np.ndarray:
    """Log of the regularised best response ``pi'(y) ∝ mu(y) exp(P(y > pi) / tau)``, (C, n)."""
    return normalize_log(log_mu3 + matvec(P3, pi3) / tau)


def gap_from_values(
    values3: np.ndarray,
    log_pi3: np.ndarray,
    log_mu3: np.ndarray,
    tau: float,
    rho: np.ndarray,
) -> float:
    """Regularised duality gap given ``values3 = P @ pi`` (saves a mat-vec).

    ``gap = E_rho[tau KL(pi, BR) + P(pi > pi)] - 1/2`` with ``BR ∝ mu exp(P pi / tau)`` (the
    closed-form maximiser), computed without cancellation by :func:`kl_from_logs`. ``log_pi3``
    may hold ``-inf`` for responses of probability 0; ``pi`` is normalised here.
    """
    lse = logsumexp_last(log_pi3)  # (C, 1) log sum pi
    pi_hat = np.exp(log_pi3 - lse)
    values_hat = values3 * np.exp(-lse)  # P pi_hat
    log_br = log_mu3 + values_hat / tau  # BR up to its normaliser
    self_preference = np.sum(pi_hat * values_hat, axis=-1)  # P(pi > pi) = 1/2 up to rounding
    kl_br = kl_from_logs(log_pi3, log_br)
    return float(rho @ (tau * kl_br + self_preference) - 0.5)


# ---------------------------------------------------------------------------------------------
# Public metrics.


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p, q) = sum_y p(y) log(p(y) / q(y))`` of two distributions on the last axis.

    For ``(C, n)`` arrays this is the plain sum over contexts; use :func:`kl_rho` for weights.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"kl: shapes differ, {p.shape} vs {q.shape}")
    return float(np.sum(kl_batch(p.reshape(-1, p.shape[-1]), q.reshape(-1, q.shape[-1]))))


def kl_rho(game: PreferenceGame, p: np.ndarray, q: np.ndarray) -> float:
    """``KL_rho(p, q) = E_{x ~ rho} KL(p(.|x), q(.|x))`` (the quantity of Theorem 1)."""
    return float(game.rho @ kl_batch(game.as_batch(p), game.as_batch(q)))


def preference(P: np.ndarray, pi_a: np.ndarray, pi_b: np.ndarray, rho=None) -> float:
    """``P(pi_a > pi_b) = E_rho[pi_a^T P pi_b]`` for ``P (n, n)`` or ``(C, n, n)``."""
    P3, a3, b3, rho = _as_batches(P, pi_a, rho, pi_b)
    return float(rho @ np.sum(a3 * matvec(P3, b3), axis=-1))


def _as_batches(P, pi, rho, pi_b=None):
    P3 = np.asarray(P, dtype=np.float64)
    P3 = P3[None] if P3.ndim == 2 else P3
    C, n = P3.shape[0], P3.shape[-1]
    out = []
    for arr in (pi, pi_b):
        if arr is None:
            continue
        a = np.asarray(arr, dtype=np.float64)
        a = a[None] if a.ndim == 1 else a
        if a.shape != (C, n):
            raise ValueError(f"policy shape {np.shape(arr)} does not match P {np.shape(P)}")
        out.append(a)
    rho = np.full(C, 1.0 / C) if rho is None else np.asarray(rho, dtype=np.float64)
    return (P3, *out, rho)


def exploitability(P: np.ndarray, pi: np.ndarray, rho: np.ndarray | None = None) -> float:
    """``max_pi' P(pi' > pi) - 1/2`` for ``P (n, n)``, ``pi (n,)`` (or ``(C, n, n)``, ``(C, n)``).

    Zero exactly at a Nash equilibrium of the unregularised game, at most 1/2.
    """
    if isinstance(P, PreferenceGame):
        P, rho = P.P, P.rho
    P3, pi3, rho = _as_batches(P, pi, rho)
    return float(rho @ matvec(P3, pi3).max(axis=-1) - 0.5)


def duality_gap(game: PreferenceGame, pi: np.ndarray) -> float:
    """``max_pi' P_tau(pi' > pi) - 1/2`` of the regularised game (0 only at ``pi*_tau``).

    Closed form per context: ``tau log sum_y mu(y) exp(P(y > pi) / tau) + tau KL(pi, mu) - 1/2``;
    for ``tau = 0`` this is the exploitability.
    """
    pi3 = game.as_batch(pi)
    if game.tau == 0:
        return exploitability(game.P3, pi3, game.rho)
    with np.errstate(divide="ignore"):
        log_pi3 = np.log(pi3)
    return gap_from_values(matvec(game.P3, pi3), log_pi3, game.log_mu3, game.tau, game.rho)


def regularized_best_response(game: PreferenceGame, pi: np.ndarray) -> np.ndarray:
    """``argmax_pi' P_tau(pi' > pi)``: ``pi'(y) ∝ mu(y) exp(P(y > pi) / tau)``."""
    pi3 = game.as_batch(pi)
    if game.tau == 0:
        values = matvec(game.P3, pi3)
        best = np.zeros_like(values)
        best[np.arange(values.shape[0]), values.argmax(axis=-1)] = 1.0
        return game.from_batch(best)
    return game.from_batch(
        np.exp(regularized_best_response_log(game.P3, game.log_mu3, game.tau, pi3))
    )


def fixed_point_residual(game: PreferenceGame, pi: np.ndarray) -> float:
    """``max |log pi - log mu - P(. > pi)/tau - c|`` (0 at ``pi*_tau``), ``c`` the best constant.

    The regularised equilibrium satisfies ``pi*_tau(y) ∝ mu(y) exp(P(y > pi*_tau) / tau)``.
    Responses whose probability underflowed to 0 are left out.
    """
    pi3 = game.as_batch(pi)
    worst = 0.0
    for c in range(game.n_contexts):
        keep = pi3[c] > 0
        r = np.log(pi3[c][keep]) - game.log_mu3[c][keep]
        r -= (game.P3[c] @ pi3[c])[keep] / game.tau
        worst = max(worst, float(0.5 * (r.max() - r.min())))
    return worst
