"""Stage 7: the demo's report, ``nlhf.eval.report.write_report`` plus the demo's own sections:
the headline (each policy's distance to the Nash of what it trained against, next to its
worst-case win rate), the paper's findings, convergence in the learned style game (a ternary
plot of the trajectories and distance-vs-step curves), styles and quality, data and set-up."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nlhf.tasks.convergence import kl_to, read_trajectory, tv_to
from nlhf.tasks.demo.config import DemoConfig, PolicySpec
from nlhf.tasks.demo.pipeline import MARKER, read_marker
from nlhf.tasks.demo.reading import (
    CYCLE_PAIRS,
    NEAR,
    convergence_reading,
    fmt_shares,
    headline,
    is_cyclic,
    nash_md_reading,
    paper_reading,
    what_happened,
)
from nlhf.tasks.summaries import STYLES, SummaryTask

TAIL = 0.25  # "the end of training": the last quarter of the recorded points


@dataclass
class Track:
    """One policy's style shares during training and its distances to the targets."""

    name: str
    against: str  # "preference model" or "reward model"
    steps: np.ndarray  # (N,)
    shares: np.ndarray  # (N, S + 1), the last column: no style word
    target: np.ndarray  # (S,) the Nash of what it trained against
    target_name: str
    own: np.ndarray  # (S,) its own stationary point (fixed-beta point, BR, reward optimum)
    pi_star: np.ndarray  # (S,) pi*_tau of the learned preference model's style game
    raters_nash: np.ndarray  # (S,)
    beta: float | None = None  # the alternative's mixture weight (SP 0, MD beta, BR 1)

    def kl(self, point: np.ndarray) -> np.ndarray:
        return np.asarray(kl_to(point, self.shares))

    def tv(self, point: np.ndarray) -> np.ndarray:
        return np.asarray(tv_to(point, self.shares))

    @property
    def tail(self) -> slice:
        n = len(self.steps)
        return slice(max(0, n - max(3, int(round(TAIL * n)))), n)

    def tail_range(self, values: np.ndarray) -> tuple[float, float]:
        v = values[self.tail]
        return float(v.min()), float(v.max())

    def settled(self) -> bool:
        """Whether KL(own target, ·) stayed below ``NEAR`` over the whole last quarter."""
        return self.tail_range(self.kl(self.own))[1] < NEAR


def load_tracks(specs: list[PolicySpec], targets: dict, pool: dict[str, Path]) -> list[Track]:
    """Every policy's trajectory (and EMA*'s, from the recorder's average) with its targets."""
    pi_star = np.asarray(targets["pi_star_tau"])
    raters = np.asarray(targets["raters_nash"])
    tracks = []
    for spec in specs:
        path = pool[spec.name] / "convergence.jsonl"
        if not path.is_file():
            continue
        own = np.asarray(targets["policies"][spec.name]["own_target"])
        against = "reward model" if spec.reward_model else "preference model"
        target = own if spec.reward_model else pi_star
        target_name = "mu exp(r / tau)" if spec.reward_model else "pi*_tau"
        beta = None if spec.method in ("ema", "rlhf") else spec.beta
        steps, shares = read_trajectory(path)
        tracks.append(
            Track(spec.name, against, steps, shares, target, target_name, own, pi_star, raters,
                  beta)
        )  # fmt: skip
        if spec.averaged_name:
            steps, shares = read_trajectory(path, key="average_shares")
            tracks.append(
                Track(spec.averaged_name, against, steps, shares, pi_star, "pi*_tau", pi_star,
                      pi_star, raters)
            )  # fmt: skip
    return tracks


def convergence_section(tracks: list[Track], targets: dict, out: Path) -> str:
    """The section's Markdown; writes ``trajectories.png`` and ``distances.png`` into ``out``."""
    from nlhf.tasks.plots import plot_distance_curves, plot_simplex_trajectories

    pi_star = np.asarray(targets["pi_star_tau"])
    raters = np.asarray(targets["raters_nash"])
    mu = np.asarray(targets["mu"])
    plot_simplex_trajectories(
        {t.name: t.shares for t in tracks},
        STYLES,
        {
            f"pi*_tau of the learned preference model (tau {targets['tau']:g})": pi_star,
            "raters' style Nash (exact)": raters,
        },
        out / "trajectories.png",
        own_targets={t.name: t.own for t in tracks if not np.allclose(t.own, pi_star)},
        start=mu,
        title="Style shares every few steps, from SFT (circle) to the last step (filled)",
    )
    plot_distance_curves(
        {
            "KL(pi*_tau, policy): learned preference model": {
                t.name: (t.steps, t.kl(pi_star)) for t in tracks
            },
            "KL(own target, policy)": {t.name: (t.steps, t.kl(t.own)) for t in tracks},
            "TV(raters' Nash, policy)": {t.name: (t.steps, t.tv(raters)) for t in tracks},
        },
        out / "distances.png",
        log_scale=("KL(pi*_tau, policy): learned preference model", "KL(own target, policy)"),
    )
    G = np.asarray(targets["learned_game"])
    rows = [
        "| policy | trained against | style shares at the end (brief, list, story, none) "
        "| KL(pi*_tau, ·) [last quarter] | KL(own target, ·) [last quarter] | settled? "
        "| TV(raters' Nash, ·) |",
        "|---|---|---|---:|---:|---|---:|",
    ]
    for t in tracks:
        kl_star, kl_own = t.kl(pi_star), t.kl(t.own)
        lo, hi = t.tail_range(kl_star)
        lo2, hi2 = t.tail_range(kl_own)
        rows.append(
            f"| {t.name} | {t.against} | {', '.join(f'{x:.2f}' for x in t.shares[-1])} "
            f"| {kl_star[-1]:.3f} [{lo:.3f}, {hi:.3f}] | {kl_own[-1]:.3f} [{lo2:.3f}, {hi2:.3f}] "
            f"| {'yes' if t.settled() else 'no'} | {t.tv(raters)[-1]:.2f} |"
        )
    target_rows = [
        "| point | brief | list | story | what it is |",
        "|---|---:|---:|---:|---|",
        f"| mu (SFT) | {' | '.join(f'{x:.3f}' for x in mu)} | the reference: SFT's style "
        f"shares on the {targets['n_probe_prompts']} probe prompts |",
        f"| pi*_tau | {' | '.join(f'{x:.3f}' for x in pi_star)} | regularised Nash of the learned "
        f"preference model's style game, tau {targets['tau']:g}, mu = SFT |",
        f"| learned Nash | {' | '.join(f'{x:.3f}' for x in targets['learned_nash'])} | its "
        "unregularised Nash (tau -> 0) |",
        f"| raters' Nash | {' | '.join(f'{x:.3f}' for x in raters)} | the exact raters' style "
        "game's Nash (what the tournament's judge rewards) |",
    ]
    seen = set()
    for t in tracks:
        key = tuple(np.round(t.own, 6))
        if key in seen or np.allclose(t.own, pi_star):
            continue
        seen.add(key)
        what = targets["policies"].get(t.name, {}).get("own_target_is", "")
        target_rows.append(
            f"| {t.name}'s own target | {' | '.join(f'{x:.3f}' for x in t.own)} | {what} |"
        )
    game = ", ".join(f"P({STYLES[i]} > {STYLES[j]}) = {G[i, j]:.3f}" for i, j in CYCLE_PAIRS)
    return "\n".join(
        [
            "The paper's theory, checked in the deep setting against a known target. Every "
            f"{targets.get('probe_every', 'few')} steps each policy's style shares are measured "
            f"on {targets['n_probe_prompts']} fixed probe prompts (exactly: the style word is "
            "the first response token, so its probability is read off the first-token "
            "distribution). The learned preference model, asked about two summaries that "
            f"differ only in their style word, plays a 3x3 style game ({game}). Its regularised "
            "Nash equilibrium pi*_tau (at the training tau, with mu = SFT's shares; "
            "`nlhf.games.solve_regularized`) is where Nash-MD's last iterate should go "
            "(Theorem 1). With a fixed beta the expected Nash-MD-PG update is stationary at "
            "the regularised best response to the beta-mixture instead (*own target*; beta 0 "
            "= SP: pi*_tau; beta 1 = BR: the best response to SFT); RLHF's is mu exp(r / tau) "
            "with the reward model's reward per style. KL(target, policy) is Theorem 1's "
            "measure; the interval is its range over the last quarter of the recorded points; "
            f"*settled*: KL(own target, ·) below {NEAR:g} over the whole last quarter.",
            "",
            *target_rows,
            "",
            *rows,
            "",
            "![style trajectories](trajectories.png)",
            "",
            "![distances to the targets](distances.png)",
            "",
            convergence_reading(tracks),
            "",
            nash_md_reading(tracks, targets),
        ]
    )


def _stage_seconds(root: Path) -> dict[str, tuple[float, float]]:
    """(wall, CPU) seconds of every finished stage under ``root``, from its marker."""
    out = {}
    for marker in sorted(root.glob(f"*/{MARKER}")):
        m = read_marker(marker.parent)
        with contextlib.suppress(TypeError, ValueError, KeyError):  # None: unreadable marker
            out[marker.parent.name] = (float(m["seconds"]), float(m.get("cpu_seconds", 0.0)))
    return out


def _data_section(cfg: DemoConfig, dirs: dict[str, Path], targets: dict, task: SummaryTask):
    task_info = json.loads((dirs["task"] / "task.json").read_text())
    comp = json.loads((dirs["comparisons"] / "stats.json").read_text())
    rows, accuracy = [], {}
    for kind in ("preference", "reward"):
        f = dirs[kind] / "eval.json" if kind in dirs else None
        m = json.loads(f.read_text()) if f is not None and f.is_file() else {}
        acc, ll = m.get("eval/accuracy"), m.get("eval/log_loss")
        if isinstance(acc, float) and isinstance(ll, float):
            rows.append(f"| {kind} model | {acc:.3f} | {ll:.3f} |")
            accuracy[f"{kind} model"] = acc
        elif kind in dirs:
            rows.append(f"| {kind} model | n/a | n/a |")
    games = {"exact raters": np.asarray(targets["raters_game"])}
    games["learned preference model"] = np.asarray(targets["learned_game"])
    if "reward_game" in targets:
        games["learned reward model"] = np.asarray(targets["reward_game"])
    md = "\n".join(
        [
            f"- SFT demonstrations: {cfg.data.n_demonstrations}, mean quality "
            f"{task_info['demo_quality']:.2f}, style frequencies "
            + fmt_shares(task_info["demo_style_freq"])
            + " (the Nash mixture of the style game is "
            + fmt_shares(task_info["nash_style_mixture"])
            + ").",
            f"- Comparisons: {comp['n']} pairs of SFT samples, one sampled rater each "
            f"({comp['dropped_identical_or_empty']} identical or empty pairs redrawn); a sampled "
            f"label agrees with the exact majority preference {comp['label_agrees_with_exact']:.3f}"
            f" of the time (expected {comp['bayes_accuracy']:.3f}): the ceiling for any learned "
            "model's held-out accuracy.",
            "",
            "| model | held-out accuracy | held-out log-loss |",
            "|---|---:|---:|",
            *rows,
            "",
            "Paper (TL;DR, same-size T5X-XL models): preference model ~0.78, reward model ~0.76.",
            "",
            "What the learned models believe about style: two summaries with the same content "
            f"(every salient word) that differ only in their style word, averaged over the "
            f"{targets['n_probe_prompts']} probe prompts. The exact raters' style game is a "
            "Condorcet cycle; a reward model (Bradley-Terry) cannot represent one, a pairwise "
            "preference model can.",
            "",
            _style_game_md(games),
        ]
    )
    return md, games, accuracy, comp["bayes_accuracy"]


def _style_game_md(games: dict[str, np.ndarray]) -> str:
    from nlhf.games import solve_nash_lp

    head = "| judge | " + " | ".join(f"P({STYLES[i]} > {STYLES[j]})" for i, j in CYCLE_PAIRS)
    lines = [head + " | cyclic? | Nash of its style game |", "|---|" + "---:|" * 5]
    for name, G in games.items():
        nash, _ = solve_nash_lp(G)
        lines.append(
            f"| {name} | "
            + " | ".join(f"{G[i, j]:.3f}" for i, j in CYCLE_PAIRS)
            + f" | {'yes' if is_cyclic(G) else 'no'} | {fmt_shares(nash)} |"
        )
    return "\n".join(lines)


def stage_report(
    cfg: DemoConfig,
    specs: list[PolicySpec],
    root: Path,
    dirs: dict[str, Path],
    pool: dict[str, Path],
    out: Path,
) -> None:
    """Stage 7: ``report.md`` and its figures."""
    from nlhf.eval.report import write_report
    from nlhf.eval.tournament import TournamentResult
    from nlhf.tasks.builtin import style_sections

    task = SummaryTask.from_config(cfg.task)
    result = TournamentResult.from_json(dirs["tournament"] / "tournament.json")
    targets = json.loads((dirs["targets"] / "targets.json").read_text())
    targets["probe_every"] = cfg.policy.probe_every
    tracks = load_tracks(specs, targets, pool)
    style_md, figures = style_sections(result, task, out)
    data_md, games, accuracy, bayes = _data_section(cfg, dirs, targets, task)
    md_betas = {s.name: s.beta for s in specs if s.method == "md"}
    sections = [
        ("Against the paper's findings", paper_reading(result, md_betas)),
        ("What happened, and why", what_happened(result, task, tracks, games, accuracy, bayes)),
        ("Convergence in the learned style game", convergence_section(tracks, targets, out)),
        *style_md,
        ("Data, preference model and reward model", data_md),
    ]
    secs = _stage_seconds(root)
    timing = "\n".join(
        [
            "| stage | wall seconds | CPU seconds |",
            "|---|---:|---:|",
            *[f"| {k} | {w:.1f} | {c:.1f} |" for k, (w, c) in secs.items()],
            f"| **sum** | {sum(w for w, _ in secs.values()):.1f} | "
            f"{sum(c for _, c in secs.values()):.1f} |",
        ]
    )
    pc = cfg.policy
    setup = (
        f"Every policy starts from SFT and takes {pc.steps} steps of {pc.batch_size} prompts "
        f"(lr {pc.lr:g}); NLHF methods (SP, Nash-MD, BR, EMA) train against the learned "
        f"preference model with tau = {pc.tau:g}, RLHF against the reward model with tau = "
        f"{pc.rlhf_tau:g}; EMA decay {pc.ema_decay:g} (EMA = last iterate, EMA* = the averaged "
        "policy). Nash-MD-PG: the alternative samples from the token-level mixture "
        "pi^(1-beta) mu^beta; SP = beta 0, BR = beta 1. The judge of the tournament is the "
        "task's exact population preference, which no policy ever trained against. Policies "
        "train in parallel worker processes, so the stage seconds add up to more than the "
        "run's wall time; CPU seconds are those of the stage's own process.\n\n" + timing
    )
    sections.append(("Set-up and stage timings", setup))
    curves = {n: p / "metrics.jsonl" for n, p in pool.items() if (p / "metrics.jsonl").is_file()}
    write_report(
        result,
        out,
        training_curves=curves,
        sections=sections,
        figures=figures,
        title="nlhf demo: the paper's experiment on the simulated summary raters",
        lead_sections=[("Headline", headline(result, tracks))],
    )
