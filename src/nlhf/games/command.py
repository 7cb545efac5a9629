"""Nash-MD and its baselines side by side on a tabular preference game (paper §3-4).

Builds a game (a built-in one, or a matrix read from CSV / .npy), computes its exact equilibria
(``pi*_tau`` by Newton's method to duality gap <= 1e-12, the unregularised Nash by LP), runs every
chosen algorithm for the same number of iterations and prints, for each output policy, its
``KL(pi*_tau, pi)``, exploitability, regularised duality gap, mat-vec count and time. Writes
``results.json`` and a log-log plot of KL and gap against iterations, with Theorem 1's bound
``8 / (tau^2 (T + 1))`` drawn in, to ``--output-dir``.

Every input and the output directory are checked before anything is computed; a bad one stops
the run with one line naming the argument, file, line and column, or entry. The LP runs under
``--lp-time-limit`` and is skipped (with the reason, also in results.json) when it would take
longer; the algorithms show progress bars. tau is 0 or in [1e-6, 1e12].

examples:
  nlhf tabular                                   # random 100-response game, tau = 0.05
  nlhf tabular --game rps --tau 0.1 --iterations 500
  nlhf tabular --game three-raters --epsilon 0.05
  nlhf tabular --matrix prefs.csv --tau 0.01 --json > results.json
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
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
from nlhf.games.game import PreferenceGame, check_tau, duality_gap, exploitability, kl_rho
from nlhf.games.last_iterate import extragradient, magnetic_md, optimistic_md
from nlhf.games.nash_md import nash_md, theorem1_bound
from nlhf.games.trajectory import Trajectory
from nlhf.jsonio import dumps, write_json

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

LP_SETUP_SECONDS_PER_ENTRY = 1e-6
"""A generous estimate of what handing a dense n x n LP to HiGHS costs before it starts (about
0.6 us per entry of P measured on a 2-core machine): with it the LP is skipped up front when
its set-up alone would overrun ``--lp-time-limit``."""
MEMORY_COPIES = 6
"""Copies of ``P`` (float64) the command holds at its peak, without the LP (building a random
game, the float32 copy for Newton's products)."""
LP_MEMORY_COPIES = 20
"""Copies of ``P`` (float64) the LP adds at its peak: HiGHS' sparse copies of the dense
constraint matrix (15-17 measured at n = 1000-2000)."""


@dataclass
class TabularConfig:
    """Configuration of ``nlhf tabular``."""

    game: Literal["random", "rps", "three-raters", "dice"] = "random"
    """built-in game: random (P[i,j] ~ U[0,1]), rps (rock-paper-scissors), three-raters (a
    Condorcet cycle of three rater groups, weights moved by --epsilon), dice (Efron's dice)"""
    matrix: Path | None = None
    """read P from this file instead (.csv/.tsv: one row per response, optional header row of
    names and leading column of names; .npy: (n, n) or (C, n, n) with one matrix per context);
    P[i, j] = P(response i > response j)"""
    matrix_tolerance: float | None = None
    """tolerance of the check P + P^T = 1 (default 1e-9, or 4 units of rounding for float32 /
    float16 .npy data); an accepted matrix is made exactly consistent, P <- (P + 1 - P^T) / 2"""
    n: int = 100
    """number of responses of the random game"""
    seed: int = 0
    """seed of the random game"""
    epsilon: float = 0.02
    """weight shift of the three-raters game: group weights (1/3 + 2 eps, 1/3 - eps, 1/3 - eps)"""
    tau: float = 0.05
    """KL regularisation strength: 0 (the unregularised game; KL to pi*_tau is then not shown)
    or in [1e-6, 1e12], where float64 represents the regularised game faithfully"""
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
    lp_time_limit: float = 60.0
    """seconds the LP for the unregularised Nash equilibrium (HiGHS) may take, all contexts
    together; past it the LP is skipped, with the reason printed and in results.json (it is
    skipped up front when setting up a dense n x n LP alone would take longer; 0: skip it)"""
    output_dir: Path = Path("runs/tabular")
    """where results.json and convergence.png are written (replacing those of an earlier run)"""
    plot: bool = True
    """write the log-log convergence plot"""
    json: bool = False
    """print the results as JSON on stdout instead of the table"""
    progress: bool = True
    """progress bars on stderr while the algorithms run"""

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be >= 2, got {self.n}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        self.tau = check_tau(self.tau)
        if not self.algorithms:
            raise ValueError("algorithms: give at least one")
        unknown = [a for a in self.algorithms if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"algorithms: unknown {unknown}; choose from {list(ALGORITHMS)}")
        repeated = sorted({a for a in self.algorithms if self.algorithms.count(a) > 1})
        if repeated:
            raise ValueError(f"algorithms: {repeated} given more than once")
        for name in ("eta", "eta_fast"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.eta_mmd is not None and not self.eta_mmd > 0:
            raise ValueError(f"eta_mmd must be > 0, got {self.eta_mmd}")
        if not 0 <= self.ema_beta < 1:
            raise ValueError(f"ema_beta must be in [0, 1), got {self.ema_beta}")
        if not self.lp_time_limit >= 0:
            raise ValueError(f"lp_time_limit must be >= 0 seconds, got {self.lp_time_limit}")
        if self.matrix_tolerance is not None and not 0 < self.matrix_tolerance <= 0.01:
            raise ValueError(
                f"matrix_tolerance must be in (0, 0.01], got {self.matrix_tolerance} (a larger "
                f"violation of P + P^T = 1 is an error in the data, not rounding)"
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TabularConfig)


# ---------------------------------------------------------------------------------------------
# Loading a matrix.


def load_matrix(path: Path) -> tuple[np.ndarray, list[str] | None]:
    """Read a preference matrix from ``.csv`` / ``.tsv`` / ``.txt`` or ``.npy``.

    Returns ``(P, names)``; ``P`` keeps the dtype of a ``.npy`` file (so that the game's
    tolerance can follow it) and is validated later by :class:`PreferenceGame`. A CSV file is
    UTF-8 (a byte-order mark is accepted), one row per response:

    - the first row is a header of response names when none of its cells is a number; it must
      hold one name per column (optionally after a corner cell above a name column), names
      must be distinct and non-empty;
    - a row starting with a non-number starts with the response's name; then every row does,
      and with a header the rows must list the responses in the header's order;
    - every other cell is a finite number; blank lines are skipped.

    Every error names the file and, where there is one, the line and column.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"matrix file {path} is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"matrix file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _load_npy(path), None
    if suffix not in (".csv", ".txt", ".tsv"):
        raise ValueError(f"{path}: unknown matrix format {path.suffix!r} (use .csv or .npy)")
    return _load_csv(path, "\t" if suffix == ".tsv" else ",")


def _load_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)  # the header only, so far
    except (ValueError, OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy array ({err})") from None
    if not isinstance(array, np.ndarray):  # np.load opens .npz archives whatever the suffix
        if hasattr(array, "close"):
            array.close()
        raise ValueError(f"{path}: a .npz archive, not a .npy array; save P with np.save")
    dtype = array.dtype
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise ValueError(f"{path}: expected an array of real numbers, got dtype {dtype}")
    if array.ndim not in (2, 3) or array.shape[-1] != array.shape[-2] or 0 in array.shape:
        raise ValueError(
            f"{path}: expected an (n, n) matrix or a (C, n, n) batch with n >= 1, "
            f"got shape {array.shape}"
        )
    check_memory(array.shape[-1], 1 if array.ndim == 2 else array.shape[0], str(path))
    try:
        return np.array(array)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: cannot read the array's data ({err})") from None


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # UTF-8 byte-order mark
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x} at byte "
            f"{column} of the line); save the file as UTF-8"
        ) from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_csv(path: Path, delimiter: str) -> tuple[np.ndarray, list[str] | None]:
    text = _decode(path)
    rows: list[tuple[int, list[str]]] = []  # (line, cells)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((reader.line_num, [cell.strip() for cell in row]))
    except csv.Error as err:
        raise ValueError(f"{path}, line {reader.line_num}: not valid CSV ({err})") from None
    if not rows:
        raise ValueError(f"{path}: the file is empty")
    kind = "tab" if delimiter == "\t" else "comma"

    def hint(cell: str) -> str:  # a file separated by something else
        for sep, label in ((";", "';'"), ("\t", "a tab"), (",", "','"), (" ", "a space")):
            if sep != delimiter and sep in cell:
                return f" (the file is read as {kind}-separated and this cell contains {label})"
        return ""

    def not_a_number(line: int, column: int, cell: str) -> ValueError:
        return ValueError(
            f"{path}, line {line}, column {column}: {cell!r} is not a number{hint(cell)}"
        )

    header_line, header = None, None
    if not any(_is_number(cell) for cell in rows[0][1]):
        (header_line, header), rows = rows[0], rows[1:]
        if not rows:
            raise ValueError(f"{path}: no rows of numbers after the header on line {header_line}")
    first_line, first = rows[0]
    named_rows = not _is_number(first[0])  # a leading column of response names
    width = len(first)
    if width == int(named_rows):
        raise not_a_number(first_line, 1, first[0])
    row_names, values = [], []
    for line, cells in rows:
        if len(cells) != width:
            raise ValueError(
                f"{path}, line {line}: {len(cells)} cells, but line {first_line} has {width}"
            )
        if named_rows:
            if _is_number(cells[0]):
                raise ValueError(
                    f"{path}, line {line}, column 1: {cells[0]!r} is a number, but line "
                    f"{first_line} starts with the name {first[0]!r}: either every row starts "
                    f"with a response name or none does"
                )
            row_names.append(cells[0])
        start = int(named_rows)
        try:
            numbers = [float(cell) for cell in cells[start:]]
        except ValueError:
            for column, cell in enumerate(cells[start:], start=start + 1):
                if not _is_number(cell):
                    raise not_a_number(line, column, cell) from None
            raise
        for column, x in enumerate(numbers, start=start + 1):
            if not math.isfinite(x):
                raise ValueError(
                    f"{path}, line {line}, column {column}: {cells[column - 1]!r} is not a "
                    f"finite number"
                )
        values.append(numbers)
    n = width - int(named_rows)
    if len(values) != n:
        hint = ""
        if header is None and len(values) == n + 1:
            hint = (
                " (a first row of names that are all numbers is read as data: give names "
                "that are not numbers, such as y1, y2, ...)"
            )
        raise ValueError(f"{path}: P must be square, got {len(values)} rows and {n} columns{hint}")
    names = None
    if header is not None:
        if len(header) == n + 1 and named_rows:
            header_names, first_column = header[1:], 2  # a corner cell above the name column
        elif len(header) == n:
            header_names, first_column = header, 1
        else:
            name_column = " after the name column" if named_rows else ""
            raise ValueError(
                f"{path}, line {header_line}: the header has {len(header)} names, but the rows "
                f"have {n} numbers{name_column}; give one name per column"
            )
        _check_names(path, header_line, header_names, first_column)
        names = list(header_names)
        if named_rows:
            for (line, _), row_name, column_name in zip(rows, row_names, names):
                if row_name != column_name:
                    raise ValueError(
                        f"{path}, line {line}: the row is named {row_name!r} but the matching "
                        f"column is {column_name!r}: rows and columns must list the responses "
                        f"in the same order"
                    )
    elif named_rows:
        _check_names(path, None, row_names, 1, lines=[line for line, _ in rows])
        names = row_names
    return np.array(values, dtype=np.float64), names


def _check_names(
    path: Path, line: int | None, names: list[str], first_column: int, lines=None
) -> None:
    """Names must be non-empty and distinct; errors name the line (and the columns or lines)."""
    unit = "lines" if lines else "columns"
    place = (lambda k: lines[k]) if lines else (lambda k: first_column + k)
    prefix = f"{path}, line {line}" if line is not None else f"{path}"
    for k, name in enumerate(names):
        if not name:
            raise ValueError(f"{prefix}: empty response name ({unit[:-1]} {place(k)})")
    seen: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        seen.setdefault(name, []).append(k)
    repeated = {name: ks for name, ks in seen.items() if len(ks) > 1}
    if repeated:
        listed = "; ".join(
            f"{name!r} ({unit} {', '.join(str(place(k)) for k in ks)})"
            for name, ks in repeated.items()
        )
        raise ValueError(f"{prefix}: duplicate response names: {listed}")


def available_memory() -> float | None:
    """Bytes of memory available (Linux ``MemAvailable``), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return float(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(n: int, contexts: int, what: str) -> None:
    """Refuse a game whose matrices would not fit in the available memory."""
    need = MEMORY_COPIES * 8.0 * contexts * n * n
    available = available_memory()
    if available is not None and need > available:
        raise ValueError(
            f"{what}: {contexts} x {n} x {n} needs about {need / 2**30:.1f} GiB of memory "
            f"({MEMORY_COPIES} float64 copies of P at the peak), but {available / 2**30:.1f} GiB "
            f"are available"
        )


def build_game(cfg: TabularConfig) -> tuple[PreferenceGame, str, list[str] | None]:
    """The configured game, a one-line description and response names (if any)."""
    names = None
    if cfg.matrix is not None:
        try:
            P, names = load_matrix(cfg.matrix)
        except PermissionError as err:
            raise ValueError(f"matrix file {cfg.matrix}: cannot read ({err.strerror})") from None
        label = f"matrix {cfg.matrix}"
    elif cfg.game == "rps":
        P, names, label = builders.rock_paper_scissors(), ["rock", "paper", "scissors"], "rps"
    elif cfg.game == "three-raters":
        P = builders.three_rater_example(cfg.epsilon)
        names, label = ["y1", "y2", "y3"], f"three raters (epsilon = {cfg.epsilon:g})"
    elif cfg.game == "dice":
        P, names, label = builders.efron_dice(), ["A", "B", "C", "D"], "Efron's dice"
    else:
        check_memory(cfg.n, 1, f"--n {cfg.n}")
        P = builders.random_game(cfg.n, cfg.seed)
        label = f"random game (seed {cfg.seed})"
    try:
        game = PreferenceGame(P, mu=cfg.mu, tau=cfg.tau, rho=cfg.rho, atol=cfg.matrix_tolerance)
    except ValueError as err:
        if cfg.matrix is None or not str(err).startswith("P"):
            raise
        hint = ""
        if "should be 1" in str(err):  # P + P^T = 1 fails: rounding, or an error in the data?
            P3 = np.asarray(P, dtype=np.float64).reshape(-1, *np.shape(P)[-2:])
            if np.abs(P3 + np.swapaxes(P3, 1, 2) - 1).max() <= 0.01:
                hint = (
                    "; if the entries were rounded, write P[j, i] as 1 - P[i, j] or allow the "
                    "rounding with --matrix-tolerance"
                )
        raise ValueError(f"{cfg.matrix}: {err}{hint}") from None
    return game, label, names


def check_output_dir(path: Path) -> None:
    """Refuse an output directory that cannot be created or written, before any compute; then
    create it (every input has been validated by now)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--output-dir {path} exists and is not a directory")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"--output-dir {path}: {parent} is a file, not a directory")
            break
    for name in ("results.json", "convergence.png"):
        if (path / name).exists() and not (path / name).is_file():
            raise ValueError(f"--output-dir {path}: {path / name} exists and is not a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--output-dir {path}: cannot create it ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--output-dir {path}: not writable")


# ---------------------------------------------------------------------------------------------
# Running.


def log_steps(T: int, points: int = 60) -> list[int]:
    """About ``points`` log-spaced iterations in ``1..T`` (and ``T``)."""
    return sorted({int(round(x)) for x in np.geomspace(1, T, points)} | {T})


def run_algorithm(
    name: str, game: PreferenceGame, cfg: TabularConfig, record, callback=None
) -> Trajectory:
    """Run one named algorithm with the configured step sizes."""
    T = cfg.iterations
    const_eta = None if game.tau > 0 else cfg.eta
    kw = {"record": record, "callback": callback}
    if name == "nash-md":
        return nash_md(game, T, **kw)
    if name == "nash-md-constant":
        eta = cfg.eta if game.tau == 0 else min(cfg.eta, 1.0 / game.tau)
        traj = nash_md(game, T, eta=eta, **kw)
        traj.name = "nash-md-constant"
        return traj
    if name == "self-play":
        return self_play(game, T, eta=const_eta, **kw)
    if name == "fictitious-play":
        return fictitious_play(game, T, **kw)
    if name == "best-response-to-mu":
        return best_response_to_mu(game, record=record)
    if name == "ema-opponent":
        return ema_opponent(game, T, eta=const_eta, beta=cfg.ema_beta, **kw)
    if name == "magnetic-md":
        return magnetic_md(game, T, eta=cfg.eta_mmd, **kw)
    if name == "extragradient":
        return extragradient(game, T, eta=cfg.eta_fast, **kw)
    if name == "optimistic-md":
        return optimistic_md(game, T, eta=cfg.eta_fast, **kw)
    raise ValueError(f"unknown algorithm {name!r}")


def _label(traj: Trajectory) -> str:
    eta = traj.params.get("eta")
    if traj.params.get("schedule") == "theorem1":
        return f"{traj.name} (eta_t=2/(tau(t+2)))"
    if eta is not None:
        return f"{traj.name} (eta={eta:g})"
    return traj.name


def _note(cfg: TabularConfig, text: str) -> None:
    if cfg.progress:
        print(f"nlhf tabular: {text}", file=sys.stderr, flush=True)


def solve_lp(
    game: PreferenceGame, cfg: TabularConfig
) -> tuple[np.ndarray | None, float, str | None]:
    """The LP's Nash equilibrium within ``--lp-time-limit``: ``(pi or None, seconds, why not)``."""
    if cfg.lp_time_limit == 0:
        return None, 0.0, "skipped: --lp-time-limit 0"
    entries = game.n_contexts * game.n**2
    need, available = LP_MEMORY_COPIES * 8.0 * game.n**2, available_memory()
    if available is not None and need > available:
        return (
            None,
            0.0,
            (
                f"skipped: the dense LP for n = {game.n} needs about {need / 2**30:.1f} GiB of "
                f"memory (HiGHS holds about {LP_MEMORY_COPIES} copies of P), "
                f"{available / 2**30:.1f} GiB are available"
            ),
        )
    setup = LP_SETUP_SECONDS_PER_ENTRY * entries
    if setup > cfg.lp_time_limit:
        return (
            None,
            0.0,
            (
                f"skipped: setting up the dense LP for n = {game.n} ({entries:.3g} entries) alone "
                f"would take about {setup:.0f} s > --lp-time-limit {cfg.lp_time_limit:g} s; raise "
                f"the limit to try it"
            ),
        )
    if setup > 0.5:
        _note(cfg, f"LP for the Nash equilibrium (HiGHS, n = {game.n}, at most about "
              f"{cfg.lp_time_limit:g} s, see --lp-time-limit) ...")  # fmt: skip
    start = time.perf_counter()
    try:
        pi, _value = solve_nash_lp(
            game.P, game.rho, time_limit=max(cfg.lp_time_limit - setup, 0.01)
        )
    except TimeoutError:
        seconds = time.perf_counter() - start
        return (
            None,
            seconds,
            (
                f"skipped: HiGHS did not finish within --lp-time-limit {cfg.lp_time_limit:g} s "
                f"(stopped after {seconds:.1f} s, n = {game.n}); raise the limit to wait longer"
            ),
        )
    except RuntimeError as err:
        return None, time.perf_counter() - start, f"failed: {err}"
    return pi, time.perf_counter() - start, None


def _not_a_policy(pi: np.ndarray) -> str | None:
    """Why ``pi`` (``(n,)`` or ``(C, n)``) is not a probability distribution, or None."""
    if not np.isfinite(pi).all():
        return "the policy is not finite"
    if (pi < 0).any() or np.abs(pi.sum(axis=-1) - 1.0).max() > 1e-9:
        return f"the policy sums to {float(np.max(pi.sum(axis=-1))):.6g}, not 1"
    return None


def _progress_callback(bar, state: dict):
    """Per-iteration callback: advance the bar, stop the run when the policy stops being
    finite (recorded in ``state["diverged"]``)."""

    def callback(t: int, pi3: np.ndarray, matvecs: int) -> bool:
        if bar is not None:
            bar.update(1)
        if not np.isfinite(pi3).all():
            state["diverged"] = t
            return True
        return False

    return callback


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TabularConfig, args)
    # 1. Validate every input and the output directory before computing anything.
    game, label, names = build_game(cfg)
    check_output_dir(cfg.output_dir)
    regularized = game.tau > 0

    # 2. Exact equilibria: pi*_tau (Newton) and the unregularised Nash (LP, time-limited).
    start = time.perf_counter()
    pi_star, star_error = None, None
    if regularized:
        try:
            pi_star = solve_regularized(game, tol=1e-12)
        except RuntimeError as err:
            star_error = str(err)
    star_seconds = time.perf_counter() - start
    pi_nash, lp_seconds, lp_skipped = solve_lp(game, cfg)

    # 3. The algorithms, each for the same number of iterations.
    from tqdm.auto import tqdm

    record = log_steps(cfg.iterations)
    rows, skipped = [], []
    for k, name in enumerate(cfg.algorithms):
        total = 1 if name == "best-response-to-mu" else cfg.iterations
        bar = tqdm(
            total=total,
            desc=f"{name} ({k + 1}/{len(cfg.algorithms)})",
            leave=False,
            disable=not cfg.progress,
            dynamic_ncols=True,
        )
        state: dict = {}
        try:
            with np.errstate(all="ignore"):  # a diverging run is caught and reported below
                traj = run_algorithm(name, game, cfg, record, _progress_callback(bar, state))
        except ValueError as err:
            if not regularized:
                skipped.append(f"{name}: {err}")
                continue
            raise
        finally:
            bar.close()
        broken = _not_a_policy(traj.policy)
        if "diverged" in state or broken:
            at = state.get("diverged", traj.iterations)
            skipped.append(
                f"{name}: diverged ({broken or 'the policy is not finite'} at iteration {at}, "
                f"{_label(traj)}); use a smaller step"
            )
            continue
        with_kl = pi_star is not None
        hist_kl = [kl_rho(game, pi_star, p) for p in traj.history] if with_kl else []
        hist_gap = [duality_gap(game, p) for p in traj.history]
        hist_expl = [exploitability(game.P, p, game.rho) for p in traj.history]
        rows.append(
            {
                "algorithm": traj.name,
                "label": _label(traj),
                "output": traj.output,
                "params": traj.params,
                "kl": kl_rho(game, pi_star, traj.policy) if with_kl else None,
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
            "pi_star_tau_error": star_error,
            "nash_lp": None if pi_nash is None else pi_nash.tolist(),
            "nash_lp_exploitability": None
            if pi_nash is None
            else exploitability(game.P, pi_nash, game.rho),
            "nash_lp_seconds": lp_seconds,
            "nash_lp_skipped": lp_skipped,
        },
        "theorem1_bound_at_T": float(theorem1_bound(game.tau, cfg.iterations))
        if regularized
        else None,
        "algorithms": rows,
        "skipped": skipped,
        "config": to_dict(cfg),
        "plot": str(cfg.output_dir / "convergence.png") if cfg.plot else None,
    }

    # 4. Outputs: results.json first (atomically), then the plot.
    results_path = cfg.output_dir / "results.json"
    write_json(results_path, result, indent=1)
    if cfg.plot:
        try:
            plot_convergence(result, Path(result["plot"]))
        except Exception as err:  # the results are safe; say why the plot is missing
            print(f"nlhf tabular: warning: no plot ({type(err).__name__}: {err})", file=sys.stderr)
            result["plot"] = None
            write_json(results_path, result, indent=1)

    try:
        if cfg.json:
            sys.stdout.write(dumps(result, indent=1) + "\n")
        else:
            print_table(result, game, pi_star, pi_nash, names, cfg)
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. `nlhf tabular --json | head`: results.json is complete
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
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
    elif eq["pi_star_tau_error"]:
        print(f"  pi*_tau: not found ({eq['pi_star_tau_error']}); no KL column")
    if pi_nash is not None:
        print(f"  Nash (LP, {eq['nash_lp_seconds']:.2f} s):  {_policy_str(pi_nash, names)}")
    else:
        print(f"  Nash (LP): {eq['nash_lp_skipped']}")
    print()
    header = ("algorithm", "output", "KL(pi*_tau,pi)", "exploitab.", "gap_tau", "matvecs", "time")
    width = max([len(header[0])] + [len(r["label"]) for r in result["algorithms"]])
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
