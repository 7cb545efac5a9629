"""Benchmark: solving the regularised preference game on dense random matrices (float64).

For random games ``P[i, j] ~ U[0, 1]`` (i < j) with n responses and every ``tau``:

1. seconds per iteration of every tabular algorithm (Nash-MD, self-play, fictitious play, EMA
   opponent, magnetic MD, extragradient, optimistic MD);
2. time and number of matrix-vector products with ``P`` to reach duality gap 1e-6 and 1e-9 for
   - Nash-MD with Theorem 1's schedule ``eta_t = 2 / (tau (t + 2))`` (the paper's algorithm),
   - plain extragradient with a constant step tuned on a grid (the tuning runs are not timed),
   - the project's fastest solver, ``solve_regularized`` (Newton-Krylov with continuation);
   each run capped at ``--cap`` seconds; a run that stops short reports "not reached" and the
   gap it got;
3. the LP solver's time on the unregularised game (HiGHS, capped too).

The gap is checked on a geometric grid of iterations; that checking is not timed. Writes JSON
(with ``os.getloadavg()`` before and after, since the cores may be shared) and prints a markdown
table. ``--quick`` is a few-second smoke version.

usage:
  python benchmarks/bench_tabular.py                       # the full benchmark (~10 min)
  python benchmarks/bench_tabular.py --quick --out /tmp/b.json
  python benchmarks/bench_tabular.py --sizes 4096 --taus 0.001 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

TARGETS = (1e-6, 1e-9)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", help="default 100 1000 4096")
    parser.add_argument("--taus", type=float, nargs="+", help="default 0.1 0.01 0.001")
    parser.add_argument("--cap", type=float, help="seconds per run at most (default 60)")
    parser.add_argument(
        "--lp-cap", type=float, default=None, help="seconds for the LP (default --cap)"
    )
    parser.add_argument(
        "--eta-grid",
        type=float,
        nargs="+",
        default=[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
        help="extragradient steps tried when tuning",
    )
    parser.add_argument(
        "--tune-iterations", type=int, default=100, help="extragradient iterations per tuning run"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="small sizes and caps (smoke test)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (sets env vars)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_tabular.json"))
    args = parser.parse_args(argv)
    quick = {"sizes": [50, 200], "taus": [0.1, 0.01], "cap": 2.0}
    full = {"sizes": [100, 1000, 4096], "taus": [0.1, 0.01, 0.001], "cap": 60.0}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.eta_grid, args.tune_iterations = [0.5, 1.0, 2.0], 30
    args.lp_cap = args.cap if args.lp_cap is None else args.lp_cap
    return args


class GapWatch:
    """Callback: checks the duality gap on a geometric grid of iterations (not timed)."""

    def __init__(self, game, cap: float, targets=TARGETS):
        from nlhf.games.game import duality_gap

        self.game, self.cap, self.targets, self.gap_fn = game, cap, targets, duality_gap
        self.start = time.perf_counter()
        self.spent = 0.0  # seconds inside this callback
        self.next_check = 1
        self.reached: dict[float, dict] = {}
        self.best_gap = float("inf")
        self.last_gap = float("inf")

    def __call__(self, t, pi3, matvecs) -> bool:
        begin = time.perf_counter()
        elapsed = begin - self.start - self.spent
        stop = elapsed > self.cap
        if t >= self.next_check or stop:
            self.next_check = max(t + 1, int(t * 1.05))
            gap = self.gap_fn(self.game, self.game.from_batch(pi3))
            self.last_gap, self.best_gap = gap, min(self.best_gap, gap)
            for target in self.targets:
                if gap <= target and target not in self.reached:
                    self.reached[target] = {"seconds": elapsed, "matvecs": matvecs, "iterations": t}
            stop = stop or len(self.reached) == len(self.targets) or not (gap < 1.0)
        self.spent += time.perf_counter() - begin
        return stop


def reach_summary(watch: GapWatch, total_seconds: float, iterations: int, matvecs: float) -> dict:
    out = {}
    for target in TARGETS:
        hit = watch.reached.get(target)
        key = f"{target:g}"
        if hit:
            out[key] = {"reached": True, **hit}
        else:
            out[key] = {
                "reached": False,
                "seconds": total_seconds,
                "matvecs": matvecs,
                "iterations": iterations,
                "gap_achieved": watch.best_gap,
            }
    return out


def bench_per_iteration(game, n: int) -> dict:
    """Seconds per iteration of every iterative algorithm."""
    from nlhf.games.baselines import ema_opponent, fictitious_play, self_play
    from nlhf.games.last_iterate import extragradient, magnetic_md, optimistic_md
    from nlhf.games.nash_md import nash_md

    iters = max(5, min(2000, int(4e7 / n**2)))
    algorithms = {
        "nash-md": lambda: nash_md(game, iters),
        "self-play": lambda: self_play(game, iters),
        "fictitious-play": lambda: fictitious_play(game, iters),
        "ema-opponent": lambda: ema_opponent(game, iters),
        "magnetic-md": lambda: magnetic_md(game, iters),
        "extragradient": lambda: extragradient(game, iters),
        "optimistic-md": lambda: optimistic_md(game, iters),
    }
    out = {}
    for name, fn in algorithms.items():
        traj = fn()
        out[name] = {
            "seconds_per_iteration": traj.seconds / iters,
            "matvecs_per_iteration": traj.matvecs / iters,
        }
    return out


def bench_nash_md(game, cap: float) -> dict:
    from nlhf.games.nash_md import nash_md

    watch = GapWatch(game, cap)
    traj = nash_md(game, 10**9, callback=watch)
    return {
        "schedule": "eta_t = 2/(tau(t+2))",
        "targets": reach_summary(watch, traj.seconds, traj.iterations, traj.matvecs),
        "final_gap": watch.last_gap,
    }


def bench_extragradient(game, cap: float, eta_grid, tune_iterations: int) -> dict:
    import numpy as np

    from nlhf.games.game import duality_gap
    from nlhf.games.last_iterate import extragradient

    tuning = {}
    for eta in eta_grid:
        with np.errstate(all="ignore"):
            traj = extragradient(game, tune_iterations, eta=eta)
            gap = duality_gap(game, traj.last)
        tuning[f"{eta:g}"] = gap if np.isfinite(gap) else float("inf")
    best_eta = min(eta_grid, key=lambda e: tuning[f"{e:g}"])
    watch = GapWatch(game, cap)
    with np.errstate(all="ignore"):
        traj = extragradient(game, 10**9, eta=best_eta, callback=watch)
    return {
        "eta": best_eta,
        "tuning_gaps_after_iterations": tune_iterations,
        "tuning": tuning,
        "targets": reach_summary(watch, traj.seconds, traj.iterations, traj.matvecs),
        "final_gap": watch.last_gap,
    }


def bench_newton(game) -> dict:
    from nlhf.games.exact import solve_regularized

    pi, info = solve_regularized(game, tol=1e-12, return_info=True)
    targets = {}
    for target in TARGETS:
        hit = next(((s, m) for s, m, g in info.trace if g <= target), None)
        key = f"{target:g}"
        if hit is None:
            targets[key] = {"reached": False, "seconds": info.seconds, "gap_achieved": info.gap}
        else:
            targets[key] = {"reached": True, "seconds": hit[0], "matvecs": hit[1]}
    return {
        "method": "Newton-Krylov (GMRES, heavy-block float32 LU preconditioner), continuation "
        "in tau with a tangent predictor",
        "targets": targets,
        "seconds_to_1e-12": info.seconds,
        "final_gap": info.gap,
        "newton_steps": info.newton_steps,
        "gmres_iterations": info.gmres_iterations,
        "matvecs": info.matvecs,
        "lu_sizes": info.factorizations,
    }


def bench_lp(P, cap: float) -> dict:
    from nlhf.games import exploitability, solve_nash_lp

    start = time.perf_counter()
    try:
        pi, value = solve_nash_lp(P, time_limit=cap)
    except TimeoutError as err:
        return {"reached": False, "seconds": time.perf_counter() - start, "message": str(err)}
    return {
        "reached": True,
        "seconds": time.perf_counter() - start,
        "exploitability": exploitability(P, pi),
        "support": int((pi > 1e-9).sum()),
    }


def fmt_target(entry: dict) -> str:
    if entry["reached"]:
        return f"{entry['seconds']:.3g} s / {entry['matvecs']:.0f} mv"
    return f"not reached ({entry['gap_achieved']:.1e}) in {entry['seconds']:.3g} s"


def markdown(results: dict) -> str:
    lines = [
        "| n | tau | LP (tau=0) | Nash-MD gap 1e-6 | Nash-MD gap 1e-9 | extragradient (eta) "
        "1e-6 | extragradient 1e-9 | Newton-Krylov 1e-6 | Newton-Krylov 1e-9 | speed-up vs EG "
        "at 1e-9 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["runs"]:
        lp = row["lp"]
        lp_s = f"{lp['seconds']:.3g} s" if lp["reached"] else f"> {lp['seconds']:.3g} s"
        nmd, eg, nk = row["nash_md"], row["extragradient"], row["newton"]
        eg9, nk9 = eg["targets"]["1e-09"], nk["targets"]["1e-09"]
        if nk9["reached"]:
            ratio = eg9["seconds"] / nk9["seconds"]
            speed = f"{ratio:.2g}x" if eg9["reached"] else f"> {ratio:.2g}x"
        else:
            speed = "-"
        lines.append(
            f"| {row['n']} | {row['tau']:g} | {lp_s} | {fmt_target(nmd['targets']['1e-06'])} | "
            f"{fmt_target(nmd['targets']['1e-09'])} | "
            f"({eg['eta']:g}) {fmt_target(eg['targets']['1e-06'])} | {fmt_target(eg9)} | "
            f"{fmt_target(nk['targets']['1e-06'])} | {fmt_target(nk9)} | {speed} |"
        )
    lines += ["", "Seconds per iteration (mat-vecs per iteration in brackets):", ""]
    names = list(results["runs"][0]["per_iteration"]) if results["runs"] else []
    lines.append("| n | tau | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for row in results["runs"]:
        cells = [
            f"{row['per_iteration'][k]['seconds_per_iteration']:.2e} "
            f"({row['per_iteration'][k]['matvecs_per_iteration']:g})"
            for k in names
        ]
        lines.append(f"| {row['n']} | {row['tau']:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:  # must happen before numpy loads its BLAS
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    import numpy as np
    import scipy

    from nlhf.games import PreferenceGame
    from nlhf.games.builders import random_game

    meta = {
        "loadavg_before": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas_threads_env": os.environ.get("OPENBLAS_NUM_THREADS"),
        "machine": platform.machine(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    runs = []
    for n in args.sizes:
        P = random_game(n, seed=args.seed)
        lp = bench_lp(P, args.lp_cap)
        print(f"n={n}: LP {lp['seconds']:.2f} s (reached: {lp['reached']})", file=sys.stderr)
        for tau in args.taus:
            game = PreferenceGame(P, tau=tau)
            row = {"n": n, "tau": tau, "lp": lp}
            row["per_iteration"] = bench_per_iteration(game, n)
            row["newton"] = bench_newton(game)
            row["nash_md"] = bench_nash_md(game, args.cap)
            row["extragradient"] = bench_extragradient(
                game, args.cap, args.eta_grid, args.tune_iterations
            )
            runs.append(row)
            print(
                f"n={n} tau={tau:g}: newton {fmt_target(row['newton']['targets']['1e-09'])}; "
                f"nash-md {fmt_target(row['nash_md']['targets']['1e-09'])}; "
                f"extragradient {fmt_target(row['extragradient']['targets']['1e-09'])}",
                file=sys.stderr,
                flush=True,
            )
    meta["loadavg_after"] = os.getloadavg()
    results = {"meta": meta, "runs": runs}
    results["markdown"] = markdown(results)
    from nlhf.jsonio import write_json

    write_json(args.out, results, indent=1)  # non-finite numbers as null
    print(results["markdown"])
    print(f"\nload average before {meta['loadavg_before']}, after {meta['loadavg_after']}")
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
