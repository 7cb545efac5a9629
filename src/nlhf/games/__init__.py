"""Tabular preference games: Nash-MD, baselines, exact solvers and metrics (paper §3-4).

``from nlhf.games import PreferenceGame, solve_nash_lp, solve_regularized, exploitability,
duality_gap, kl``; the algorithms (``nash_md``, ``self_play``, ``fictitious_play``,
``best_response_to_mu``, ``ema_opponent``, ``extragradient``, ``optimistic_md``, ``magnetic_md``)
return a :class:`Trajectory`; ``nlhf.games.builders`` makes classic games and population
preference matrices.
"""

from nlhf.games import builders
from nlhf.games.baselines import best_response_to_mu, ema_opponent, fictitious_play, self_play
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
from nlhf.games.last_iterate import extragradient, magnetic_md, optimistic_md
from nlhf.games.nash_md import nash_md, theorem1_bound
from nlhf.games.trajectory import Trajectory

__all__ = [
    "PreferenceGame",
    "SolveInfo",
    "Trajectory",
    "best_response_to_mu",
    "builders",
    "duality_gap",
    "ema_opponent",
    "exploitability",
    "extragradient",
    "fictitious_play",
    "fixed_point_residual",
    "kl",
    "kl_rho",
    "magnetic_md",
    "nash_md",
    "optimistic_md",
    "preference",
    "regularized_best_response",
    "self_play",
    "solve_nash_lp",
    "solve_regularized",
    "theorem1_bound",
]
