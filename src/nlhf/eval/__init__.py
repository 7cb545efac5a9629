"""Evaluation: tournaments between policies under a judge, and their report (paper §7).

``from nlhf.eval import run_tournament, TournamentConfig, TournamentResult, write_report``;
figures in ``nlhf.eval.plots``, intervals in ``nlhf.eval.intervals``.
"""

from nlhf.eval.intervals import bootstrap_interval, clopper_pearson, t_interval
from nlhf.eval.tournament import (
    TournamentConfig,
    TournamentResult,
    check_checkpoint,
    parse_policy_specs,
    pool_summary,
    run_tournament,
)

__all__ = [
    "TournamentConfig",
    "TournamentResult",
    "bootstrap_interval",
    "check_checkpoint",
    "clopper_pearson",
    "parse_policy_specs",
    "pool_summary",
    "run_tournament",
    "t_interval",
    "report_extras",
    "write_report",
]


def __getattr__(name: str):
    # The report pulls in matplotlib; import it only when asked for.
    if name in ("write_report", "report_extras"):
        from nlhf.eval import report

        return getattr(report, name)
    raise AttributeError(f"module 'nlhf.eval' has no attribute {name!r}")
