"""Confidence intervals for the tournament's win rates.

The paper's evaluation (Munos et al. 2024, §7) reports each ``P(column > row)`` with a 95%
Clopper-Pearson interval over 2,000 sampled 0/1 judgements (about ±0.023 there). When the judge's
probabilities are used instead of sampled labels, each prompt contributes a number in [0, 1] and
the interval is a Student-t interval of the mean or a percentile bootstrap.

Every interval here contains its point estimate, and the interval of ``1 - p`` is exactly the
mirror image of the interval of ``p`` (so a matrix with ``M + M^T = 1`` has mirrored intervals).
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for a binomial proportion ``successes / trials``.

    ``lower = Beta^-1(alpha/2; k, n-k+1)``, ``upper = Beta^-1(1-alpha/2; k+1, n-k)``, with
    ``lower = 0`` when ``k = 0`` and ``upper = 1`` when ``k = n``. Conservative: its coverage is at
    least ``confidence`` for every true proportion.
    """
    _check_confidence(confidence)
    k, n = int(successes), int(trials)
    if n <= 0:
        raise ValueError(f"Clopper-Pearson needs at least one trial, got trials={trials}")
    if not 0 <= k <= n:
        raise ValueError(f"successes must be in [0, trials={n}], got {successes}")
    alpha = 1.0 - confidence
    lower = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    upper = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lower, upper


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (each in [0, 1]), clipped to [0, 1].

    With fewer than two values, or no spread at all, the interval is the point itself.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("t interval needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return mean, mean
    sem = float(x.std(ddof=1)) / np.sqrt(x.size)
    half = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * sem
    return max(0.0, mean - half), min(1.0, mean + half)


def bootstrap_interval(
    values: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``, widened to contain the mean.

    The resampling uses its own seeded generator, so the interval is reproducible.
    """
    _check_confidence(confidence)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("bootstrap interval needs at least one value")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    mean = float(x.mean())
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // x.size)  # resamples per block: bounded memory for large N
    means = np.concatenate(
        [
            x[rng.integers(0, x.size, size=(min(chunk, n_resamples - i), x.size))].mean(axis=1)
            for i in range(0, n_resamples, chunk)
        ]
    )  # (R,)
    alpha = 1.0 - confidence
    lower, upper = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return min(float(lower), mean), max(float(upper), mean)
