"""Nash-MD and its baselines side by side on a tabular preference game (paper §3-4).

Builds a game (a built-in one, or a matrix read from CSV / .npy), computes its exact equilibria
(``pi*_tau`` by Newton's method to duality gap <= 1e-12, the unregularised Nash by LP), runs every
chosen algorithm for the same number of iterations and prints, for each output policy, its
``KL(pi*_tau, pi)``, exploitability, regularised duality gap, mat-vec count and time. Writes
``results.json`` and a log-log plot of KL and gap against iterations, with Theorem 1's bound
``8 / (tau^2 (T + 1))`` drawn in, to ``--output-dir``.

examples:
  nlhf tabular                                   # random 100-response game, tau = 0.05
  nlhf tabular --game rps --tau 0.1 --iterations 500
  nlhf tabular --game three-raters --epsilon 0.05
  nlhf tabular --matrix prefs.csv --tau 0.01 --json > results.json
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from nlhf.config import add_config_arguments, config_from_args, to_dict
from nlhf.games import builders
from nlhf.games.baselines import best_response_to_mu, ema_opponent, fictitious_play, self_play
from nlhf.games.exact import solve_nash_lp, solve_regularized
from nlhf.games.game import PreferenceGame, duality_gap, exploitability, kl_rho
from nlhf.games.last_iterate import extragradient, magnetic_md, optimistic_md
from nlhf.games.nash_md import nash_md, theorem1_bound
from nlhf.games.trajectory import Trajectory

ALGORITHMS = (
    "nash-md",
    "nash-md-constant",
    "self-play",
    "fictitious-play",
    "best-response-to-mu",
    "ema-opponent",
    "magnetic-md",
    "extragradient",
    "optimistic-md",
)


@dataclass
class TabularConfig:
    """Configuration of ``nlhf tabular``."""

    game: Literal["random", "rps", "three-raters", "dice"] = "random"
    """built-in game: random (P[i,j] ~ U[0,1]), rps (rock-paper-scissors), three-raters (a
    Condorcet cycle of three rater groups, weights moved by --epsilon), dice (Efron's dice)"""
    matrix: Path | None = None
    """read P from this file instead (.csv: one row per response, optional header of names;
    .npy: (n, n) or (C, n, n) with one matrix per context); P[i, j] = P(response i > response j)"""
    n: int = 100
    """number of responses of the random game"""
    seed: int = 0
    """seed of the random game"""
    epsilon: float = 0.02
    """weight shift of the three-raters game: group weights (1/3 + 2 eps, 1/3 - eps, 1/3 - eps)"""
    tau: float = 0.05
    """KL regularisation strength (0: the unregularised game; KL to pi*_tau is then not shown)"""
    mu: list[float] | None = None
    """reference policy mu (one probability per response; default uniform)"""
    rho: list[float] | None = None
    """context weights for a (C, n, n) matrix (default uniform)"""
    iterations: int = 2000
    """iterations of every algorithm"""
    algorithms: list[str] = field(default_factory=lambda: list(ALGORITHMS))
    """algorithms to run, any of: nash-md, nash-md-constant, self-play, fictitious-play,
    best-response-to-mu, ema-opponent, magnetic-md, extragradient, optimistic-md"""
    eta: float = 0.1
    """constant step of nash-md-constant (and of self-play / ema-opponent when tau = 0; with
    tau > 0 they use Theorem 1's schedule 2 / (tau (t + 2)) like nash-md)"""
    eta_fast: float = 1.0
    """constant step of extragradient and optimistic-md"""
    eta_mmd: float | None = None
    """constant step of magnetic-md (default: tau)"""
    ema_beta: float = 0.9
    """EMA coefficient of the ema-opponent's averaged log-policy"""
    output_dir: Path = Path("runs/tabular")
    """where results.json and convergence.png are written"""
    plot: bool = True
    """write the log-log convergence plot"""
    json: bool = False
    """print the results as JSON on stdout instead of the table"""

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be >= 2, got {self.n}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not np.isfinite(self.tau) or self.tau < 0:
            raise ValueError(f"tau must be >= 0, got {self.tau}")
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"algorithms: unknown {unknown}; choose from {list(ALGORITHMS)}")
        if not self.algorithms:
            raise ValueError("algorithms: give at least one")
        for name in ("eta", "eta_fast"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.eta_mmd is not None and not self.eta_mmd > 0:
            raise ValueError(f"eta_mmd must be > 0, got {self.eta_mmd}")
        if not 0 <= self.ema_beta < 1:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TabularConfig)


# ---------------------------------------------------------------------------------------------
# Loading a matrix.


def load_matrix(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a preference matrix from ``.csv`` (optional header row of names) or ``.npy``.

    Returns ``(P, names)``; the matrix is validated later by :class:`PreferenceGame`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"matrix file {path} does not exist")
    if path.suffix == ".npy":
        try:
            P = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from None
        if not np.issubdtype(P.dtype, np.number):
            raise ValueError(f"{path}: expected a numeric array, got dtype {P.dtype}")
        return P.astype(np.float64), None
    if path.suffix.lower() not in (".csv", ".txt", ".tsv"):
        raise ValueError(f"{path}: unknown matrix format {path.suffix!r} (use .csv or .npy)")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f, delimiter=delimiter) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    names = None

    def is_number(cell: str) -> bool:
        try:
            float(cell)
            return True
        except ValueError:
            return False

    if not all(is_number(c) for c in rows[0]):
        names, rows = [c.strip() for c in rows[0]], rows[1:]
    values = []
    for r, row in enumerate(rows):
        line = r + (2 if names else 1)
        if names is not None and len(row) == len(names) + 1 and not is_number(row[0]):
            row = row[1:]  # a leading name column
        cells = []
        for c, cell in enumerate(row):
            try:
                cells.append(float(cell))
            except ValueError:
                raise ValueError(
                    f"{path}, line {line}, column {c + 1}: {cell.strip()!r} is not a number"
                ) from None
        if values and len(cells) != len(values[0]):
            raise ValueError(
                f"{path}, line {line}: {len(cells)} numbers, but the first row has {len(values[0])}"
            )
        values.append(cells)
    P = np.array(values, dtype=np.float64)
    if P.shape[0] != P.shape[1]:
        raise ValueError(
            f"{path}: P must be square, got {P.shape[0]} rows and {P.shape[1]} columns"
        )
    if names is not None and len(names) != P.shape[0]:
        names = None
    return P, names


def build_game(cfg: TabularConfig) -> tuple[PreferenceGame, str, list[str] | None]:
    """The configured game, a one-line description and response names (if any)."""
    names = None
    if cfg.matrix is not None:
        P, names = load_matrix(cfg.matrix)
        label = f"matrix {cfg.matrix}"
    elif cfg.game == "rps":
        P, names, label = builders.rock_paper_scissors(), ["rock", "paper", "scissors"], "rps"
    elif cfg.game == "three-raters":
        P = builders.three_rater_example(cfg.epsilon)
        names, label = ["y1", "y2", "y3"], f"three raters (epsilon = {cfg.epsilon:g})"
    elif cfg.game == "dice":
        P, names, label = builders.efron_dice(), ["A", "B", "C", "D"], "Efron's dice"
    else:
        P = builders.random_game(cfg.n, cfg.seed)
        label = f"random game (seed {cfg.seed})"
    try:
        game = PreferenceGame(P, mu=cfg.mu, tau=cfg.tau, rho=cfg.rho)
    except ValueError as err:
        where = f"{cfg.matrix}: " if cfg.matrix is not None else ""
        raise ValueError(f"{where}{err}") from None
    return game, label, names


# ---------------------------------------------------------------------------------------------
# Running.


def log_steps(T: int, points: int = 60) -> list[int]:
    """About ``points`` log-spaced iterations in ``1..T`` (and ``T``)."""
    return sorted({int(round(x)) for x in np.geomspace(1, T, points)} | {T})


def run_algorithm(name: str, game: PreferenceGame, cfg: TabularConfig, record) -> Trajectory:
    """Run one named algorithm with the configured step sizes."""
    T = cfg.iterations
    const_eta = None if game.tau > 0 else cfg.eta
    if name == "nash-md":
        return nash_md(game, T, record=record)
    if name == "nash-md-constant":
        eta = cfg.eta if game.tau == 0 else min(cfg.eta, 1.0 / game.tau)
        traj = nash_md(game, T, eta=eta, record=record)
        traj.name = "nash-md-constant"
        return traj
    if name == "self-play":
        return self_play(game, T, eta=const_eta, record=record)
    if name == "fictitious-play":
        return fictitious_play(game, T, record=record)
    if name == "best-response-to-mu":
        return best_response_to_mu(game, record=record)
    if name == "ema-opponent":
        return ema_opponent(game, T, eta=const_eta, beta=cfg.ema_beta, record=record)
    if name == "magnetic-md":
        return magnetic_md(game, T, eta=cfg.eta_mmd, record=record)
    if name == "extragradient":
        return extragradient(game, T, eta=cfg.eta_fast, record=record)
    if name == "optimistic-md":
        return optimistic_md(game, T, eta=cfg.eta_fast, record=record)
    raise ValueError(f"unknown algorithm {name!r}")


def _label(traj: Trajectory) -> str:
    eta = traj.params.get("eta")
    if traj.params.get("schedule") == "theorem1":
        return f"{traj.name} (eta_t=2/(tau(t+2)))"
    if eta is not None:
        return f"{traj.name} (eta={eta:g})"
    return traj.name


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TabularConfig, args)
    game, label, names = build_game(cfg)
    regularized = game.tau > 0

    start = time.perf_counter()
    pi_star = solve_regularized(game, tol=1e-12) if regularized else None
    star_seconds = time.perf_counter() - start
    start = time.perf_counter()
    pi_nash, _value = solve_nash_lp(game.P, game.rho)
    lp_seconds = time.perf_counter() - start

    record = log_steps(cfg.iterations)
    rows, skipped = [], []
    for name in cfg.algorithms:
        try:
            traj = run_algorithm(name, game, cfg, record)
        except ValueError as err:
            if not regularized:
                skipped.append(f"{name}: {err}")
                continue
            raise
        hist_kl = [kl_rho(game, pi_star, p) for p in traj.history] if regularized else []
        hist_gap = [duality_gap(game, p) for p in traj.history]
        hist_expl = [exploitability(game.P, p, game.rho) for p in traj.history]
        rows.append(
            {
                "algorithm": traj.name,
                "label": _label(traj),
                "output": traj.output,
                "params": traj.params,
                "kl": kl_rho(game, pi_star, traj.policy) if regularized else None,
                "exploitability": exploitability(game.P, traj.policy, game.rho),
                "duality_gap": duality_gap(game, traj.policy),
                "matvecs": traj.matvecs,
                "seconds": traj.seconds,
                "policy": traj.policy.tolist(),
                "history": {
                    "steps": traj.steps.tolist(),
                    "kl": hist_kl,
                    "duality_gap": hist_gap,
                    "exploitability": hist_expl,
                },
            }
        )

    result = {
        "game": label,
        "n": game.n,
        "contexts": game.n_contexts,
        "tau": game.tau,
        "iterations": cfg.iterations,
        "names": names,
        "equilibrium": {
            "pi_star_tau": None if pi_star is None else pi_star.tolist(),
            "pi_star_tau_gap": None if pi_star is None else duality_gap(game, pi_star),
            "pi_star_tau_seconds": star_seconds,
            "nash_lp": pi_nash.tolist(),
            "nash_lp_exploitability": exploitability(game.P, pi_nash, game.rho),
            "nash_lp_seconds": lp_seconds,
        },
        "theorem1_bound_at_T": float(theorem1_bound(game.tau, cfg.iterations))
        if regularized
        else None,
        "algorithms": rows,
        "skipped": skipped,
        "config": to_dict(cfg),
    }
    cfg.output_dir.mkdir(parents=True, exist_ok=True)
    plot_path = None
    if cfg.plot:
        plot_path = cfg.output_dir / "convergence.png"
        plot_convergence(result, plot_path)
    result["plot"] = None if plot_path is None else str(plot_path)
    (cfg.output_dir / "results.json").write_text(json.dumps(result, indent=1))

    if cfg.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print_table(result, game, pi_star, pi_nash, names, cfg)
    return 0


# ---------------------------------------------------------------------------------------------
# Output.


def _sci(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.2e}" if abs(x) >= 1e-15 else "0"


def _policy_str(pi: np.ndarray, names: list[str] | None, k: int = 6) -> str:
    pi = np.asarray(pi)
    if pi.ndim == 2:
        return f"({pi.shape[0]} contexts)"
    order = np.argsort(-pi)[:k]
    label = (lambda i: names[i]) if names else (lambda i: f"y{i}")
    parts = [f"{label(i)}: {pi[i]:.3f}" for i in order]
    more = f", ... ({int((pi > 1e-3).sum())} responses above 0.001)" if len(pi) > k else ""
    return ", ".join(parts) + more


def print_table(result, game, pi_star, pi_nash, names, cfg) -> None:
    eq = result["equilibrium"]
    ctx = f", {game.n_contexts} contexts" if game.batched else ""
    print(
        f"nlhf tabular: {result['game']}, {game.n} responses{ctx}, tau = {game.tau:g}, "
        f"{cfg.iterations} iterations"
    )
    if pi_star is not None:
        print(
            f"  pi*_tau (Newton, gap {_sci(eq['pi_star_tau_gap'])}, "
            f"{eq['pi_star_tau_seconds']:.2f} s): {_policy_str(pi_star, names)}"
        )
    print(f"  Nash (LP, {eq['nash_lp_seconds']:.2f} s):  {_policy_str(pi_nash, names)}")
    print()
    header = ("algorithm", "output", "KL(pi*_tau,pi)", "exploitab.", "gap_tau", "matvecs", "time")
    width = max(len(header[0]), *(len(r["label"]) for r in result["algorithms"]))
    fmt = f"{{:<{width}}}  {{:<7}}  {{:>14}}  {{:>10}}  {{:>9}}  {{:>7}}  {{:>7}}"
    print(fmt.format(*header))
    print("-" * (width + 67))
    for r in result["algorithms"]:
        print(
            fmt.format(
                r["label"],
                r["output"],
                _sci(r["kl"]),
                _sci(r["exploitability"]),
                _sci(r["duality_gap"]),
                r["matvecs"],
                f"{r['seconds']:.2f}s",
            )
        )
    for s in result["skipped"]:
        print(f"skipped {s}")
    print()
    if result["theorem1_bound_at_T"] is not None:
        print(
            f"Theorem 1 bound on nash-md's KL at T = {cfg.iterations}: 8 / (tau^2 (T + 1)) = "
            f"{result['theorem1_bound_at_T']:.3g}"
        )
    print(
        "KL: to the regularised equilibrium; exploitability: max_pi' P(pi' > pi) - 1/2; "
        "gap_tau: max_pi' P_tau(pi' > pi) - 1/2"
    )
    if result["plot"]:
        print(f"plot:    {result['plot']}")
    print(f"results: {cfg.output_dir / 'results.json'}")


def plot_convergence(result: dict, path: Path) -> None:
    """Log-log plot of KL(pi*_tau, pi_t) and the duality gap against t, with Theorem 1's bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tau = result["tau"]
    regularized = tau > 0
    fig, axes = plt.subplots(1, 2 if regularized else 1, figsize=(12 if regularized else 6, 4.5))
    axes = np.atleast_1d(axes)
    floor = 1e-16
    ax_gap = axes[-1]
    for r in result["algorithms"]:
        h = r["history"]
        steps = np.asarray(h["steps"])
        if len(steps) < 2:
            continue
        style = "-" if r["output"] == "last" else "--"
        if regularized:
            axes[0].loglog(steps, np.maximum(h["kl"], floor), style, label=r["label"])
        ax_gap.loglog(steps, np.maximum(h["duality_gap"], floor), style, label=r["label"])
    if regularized:
        T = np.arange(1, result["iterations"] + 1)
        axes[0].loglog(T, theorem1_bound(tau, T), "k:", lw=2, label="Theorem 1: 8/(tau^2 (T+1))")
        axes[0].set_ylabel("KL(pi*_tau, pi_t)")
        axes[0].set_title("distance to the regularised equilibrium")
    ax_gap.set_ylabel("duality gap" if regularized else "exploitability")
    ax_gap.set_title(f"duality gap of the tau = {tau:g} game")
    for ax in axes:
        ax.set_xlabel("iteration t")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{result['game']}, n = {result['n']}, tau = {tau:g}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
