"""Tabular preference games: Nash-MD, baselines, exact solvers and metrics (paper §3-4).

``from nlhf.games import PreferenceGame, solve_nash_lp, solve_regularized, exploitability,
duality_gap, kl``.
"""

from nlhf.games.exact import SolveInfo, solve_nash_lp, solve_regularized
from nlhf.games.game import (
    PreferenceGame,
    duality_gap,
    exploitability,
    fixed_point_residual,
    kl,
    kl_rho,
    preference,
    regularized_best_response,
)

__all__ = [
    "PreferenceGame",
    "SolveInfo",
    "duality_gap",
    "exploitability",
    "fixed_point_residual",
    "kl",
    "kl_rho",
    "preference",
    "regularized_best_response",
    "solve_nash_lp",
    "solve_regularized",
]
