"""The report's prose, computed from the numbers: the paper's findings checked on the matrix,
and what the convergence measures and the style game say about why it looks the way it does."""

from __future__ import annotations

import numpy as np

from nlhf.tasks.convergence import kl_to, tv_to
from nlhf.tasks.summaries import STYLES

# The three pairs around the style game's cycle (indices into STYLES).
CYCLE_PAIRS = ((0, 1), (1, 2), (2, 0))


def is_cyclic(G: np.ndarray) -> bool:
    """Whether the style game ``G`` (``G[i, j] = P(style i > style j)``) is a Condorcet cycle."""
    return all(G[i, j] > 0.5 for i, j in CYCLE_PAIRS) or all(G[i, j] < 0.5 for i, j in CYCLE_PAIRS)


def fmt_shares(p) -> str:
    """``brief 0.33, list 0.33, story 0.33``: a distribution over the styles."""
    return ", ".join(f"{s} {x:.2f}" for s, x in zip(STYLES, p))


def _p(result, a: str, b: str) -> tuple[float, float, float]:
    """P(a > b) with its interval (the matrix holds P(column > row))."""
    i, j = result.names.index(b), result.names.index(a)
    return float(result.matrix[i, j]), float(result.lower[i, j]), float(result.upper[i, j])


def _fmt(p: tuple[float, float, float]) -> str:
    return f"{p[0]:.3f} [{p[1]:.3f}, {p[2]:.3f}]"


def paper_reading(result, md_betas: dict[str, float]) -> str:
    """Each of the paper's §7 findings, checked against this tournament's numbers.

    ``md_betas``: the Nash-MD-PG policies of the pool and their ``beta``."""
    names = list(result.names)
    trained = [n for n in names if n != "SFT"]
    lines = [
        "Each finding of the paper (§7, Table 1) is checked on this run's matrix. *agrees*: "
        "every interval involved excludes 1/2 in the paper's direction; *disagrees*: some "
        "interval excludes 1/2 in the opposite direction (for BR: another trained policy has a "
        "lower mean win rate); *inconclusive*: otherwise.",
        "",
        "| paper's finding | this run | verdict |",
        "|---|---|---|",
    ]
    verdicts: dict[str, bool | None] = {}

    def agg(ps: list[tuple[float, float, float]]) -> bool | None:
        if all(p[1] > 0.5 for p in ps):
            return True
        if any(p[2] < 0.5 for p in ps):
            return False
        return None

    if "SFT" in names and trained:
        ps = {n: _p(result, n, "SFT") for n in trained}
        verdicts["sft"] = agg(list(ps.values()))
        worst = min(ps, key=lambda n: ps[n][0])
        lines.append(
            "| every method beats SFT | "
            + f"{sum(p[1] > 0.5 for p in ps.values())}/{len(ps)} significantly; weakest "
            + f"{worst} {_fmt(ps[worst])} | {_v(verdicts['sft'])} |"
        )
    md1 = min(md_betas, key=md_betas.get) if md_betas else None
    if md1 is not None:
        others = [n for n in names if n != md1]
        ps = {n: _p(result, md1, n) for n in others}
        verdicts["md1"] = agg(list(ps.values()))
        worst = min(ps, key=lambda n: ps[n][0])
        lines.append(
            f"| small-beta Nash-MD ({md1}) beats every other policy | "
            f"{sum(p[1] > 0.5 for p in ps.values())}/{len(ps)} significantly; closest "
            f"{worst} {_fmt(ps[worst])} | {_v(verdicts['md1'])} |"
        )
    if "BR" in names and len(trained) > 1:
        win = {n: float(result.mean_win_rate[names.index(n)]) for n in trained}
        lowest = min(win, key=win.get)
        verdicts["br"] = lowest == "BR"
        also = "" if lowest == "BR" else f"; BR {win['BR']:.3f}"
        lines.append(
            "| BR is the worst trained policy | lowest mean win rate among trained policies: "
            f"{lowest} ({win[lowest]:.3f}{also}) | {_v(verdicts['br'])} |"
        )
    emas = [n for n in names if n.startswith("EMA")]
    if md1 is not None and emas:
        ps = {n: _p(result, md1, n) for n in emas}
        verdicts["ema"] = agg(list(ps.values()))
        lines.append(
            f"| EMA trails Nash-MD | P({md1} > ·): "
            + "; ".join(f"{n} {_fmt(p)}" for n, p in ps.items())
            + f" | {_v(verdicts['ema'])} |"
        )
    mid = [n for n, b in md_betas.items() if 0.1 <= b <= 0.4]
    if mid and "SP" in names and "BR" in names:
        ps = [_p(result, n, o) for n in mid for o in ("SP", "BR")]
        verdicts["mid"] = agg(ps)
        lines.append(
            "| intermediate beta (0.125-0.375) beats both SP and BR | "
            + "; ".join(f"{n} vs {o}: {_fmt(_p(result, n, o))}" for n in mid for o in ("SP", "BR"))
            + f" | {_v(verdicts['mid'])} |"
        )
    agree = sum(v is True for v in verdicts.values())
    against = sum(v is False for v in verdicts.values())
    lines += [
        "",
        f"**Summary:** {agree} of {len(verdicts)} findings reproduced significantly, "
        f"{against} contradicted, {len(verdicts) - agree - against} inconclusive at "
        f"{result.n_prompts} prompts per pair.",
    ]
    return "\n".join(lines)


def _v(v: bool | None) -> str:
    return {True: "agrees", False: "disagrees", None: "inconclusive"}[v]


# --------------------------------------------------------------------------------------------
# convergence in the style game (the tracks of nlhf.tasks.demo.report)

NEAR = 0.05  # KL below which a policy is said to be at a target (about 0.15 in TV)


def _worst(result, name: str) -> str:
    k = list(result.names).index(name)
    r = list(result.names).index(result.worst_opponent[k])
    return (
        f"{result.worst_case[k]:.3f} [{result.lower[r, k]:.3f}, {result.upper[r, k]:.3f}] "
        f"(vs {result.worst_opponent[k]})"
    )


def _peaks(values: np.ndarray) -> list[float]:
    """Local maxima of a curve (interior points higher than both neighbours)."""
    v = np.asarray(values)
    return [float(v[i]) for i in range(1, len(v) - 1) if v[i] > v[i - 1] and v[i] >= v[i + 1]]


def headline(result, tracks) -> str:
    """Each policy's distance to the Nash of what it trained against at the end of training,
    next to its worst-case win rate in the tournament."""
    names = list(result.names)
    by_name = {t.name: t for t in tracks}
    lines = [
        "Training side: each policy's distance at its last step to the Nash of what it trained "
        "against (NLHF methods: pi*_tau of the learned preference model's style game; RLHF: "
        "the reward model's regularised optimum), KL(target, policy) with its range over the "
        "last quarter of training, and to the raters' exact style Nash (total variation). "
        "Tournament side: its worst-case win rate under the exact raters with the 95% interval "
        "of that cell (a Nash policy's worst case is at least 1/2).",
        "",
        "| policy | trained against | KL to the Nash of what it trained against [last quarter] "
        "| TV to the raters' Nash | worst-case win rate [95% CI] |",
        "|---|---|---:|---:|---:|",
    ]
    for n in names:
        t = by_name.get(n)
        if t is None:
            if n == "SFT" and tracks:
                t0 = tracks[0]
                lines.append(
                    f"| SFT | — | {kl_sft(t0):.3f} (to pi*_tau) | {t0.tv(t0.raters_nash)[0]:.2f} "
                    f"| {_worst(result, n)} |"
                )
            continue
        kl = t.kl(t.target)
        lo, hi = t.tail_range(kl)
        lines.append(
            f"| {n} | {t.against} ({t.target_name}) | {kl[-1]:.3f} [{lo:.3f}, {hi:.3f}] "
            f"| {t.tv(t.raters_nash)[-1]:.2f} | {_worst(result, n)} |"
        )
    nlhf = [t for t in tracks if t.against == "preference model"]
    if nlhf:
        lines.append("")
        closest = min(nlhf, key=lambda t: t.kl(t.pi_star)[-1])
        near = [t.name for t in nlhf if t.kl(t.pi_star)[-1] < NEAR]
        lines.append(
            f"- Closest to pi*_tau at the end: **{closest.name}** (KL "
            f"{closest.kl(closest.pi_star)[-1]:.3f}); within KL {NEAR:g} of it: "
            + (", ".join(near) if near else "none")
            + "."
        )
        mds = [t for t in nlhf if t.beta is not None and 0 < t.beta < 1]
        for t in mds:
            lines.append(
                f"- {t.name}: KL {t.kl(t.pi_star)[-1]:.3f} to pi*_tau and "
                f"{t.kl(t.own)[-1]:.3f} to its own fixed-beta point, which itself lies at KL "
                f"{kl_to(t.own, t.pi_star):.3f} from pi*_tau."
            )
    unsettled = [t.name for t in tracks if not t.settled()]
    if unsettled:
        lines.append(
            f"- Not settled at its own target by the end of training: {', '.join(unsettled)} "
            "(see *Convergence in the learned style game*)."
        )
    k = int(np.argmax(result.worst_case))
    lines.append(
        f"- Best worst case in the tournament: **{names[k]}**, {_worst(result, names[k])}."
    )
    above, below = [], []
    for c, n in enumerate(names):
        r = names.index(result.worst_opponent[c])
        (below if result.upper[r, c] < 0.5 else above).append(n)
    lines.append(
        "- Worst case not significantly below 1/2 (its interval reaches 1/2): "
        + (", ".join(above) or "none")
        + "; significantly below 1/2 (exploited by another policy of the pool): "
        + (", ".join(below) or "none")
        + "."
    )
    return "\n".join(lines)


def kl_sft(track) -> float:
    """KL(pi*_tau, SFT): the first recorded point of any track is the SFT policy."""
    return float(track.kl(track.pi_star)[0])


def convergence_reading(tracks) -> str:
    """Sentences on how each policy moved in the style game."""
    lines = []
    for t in tracks:
        kl_star, kl_own = t.kl(t.pi_star), t.kl(t.own)
        lo, hi = t.tail_range(kl_own)
        if t.settled():
            state = f"settled: within KL {hi:.3f} of its own target over the last quarter"
        else:
            state = f"not settled: KL {lo:.3f}-{hi:.3f} to its own target over the last quarter"
        text = (
            f"- **{t.name}** {state} (at the end: {kl_own[-1]:.3f}; to pi*_tau {kl_star[-1]:.3f})."
        )
        swings = [p for p in _peaks(kl_own) if p > NEAR]
        if len(swings) >= 2:
            closing = swings[-1] < 0.5 * swings[0]
            text += (
                f" It circled its target: KL rose above {NEAR:g} {len(swings)} times, peaking at "
                f"{swings[0]:.3f} first and {swings[-1]:.3f} last"
                + (" (a spiral closing in)." if closing else ".")
            )
        lines.append(text)
    return "\n".join(lines)


def nash_md_reading(tracks, targets: dict) -> str:
    """Nash-MD-PG against its two targets: the fixed-beta bias and what remains."""
    mixers = sorted((t for t in tracks if t.beta is not None), key=lambda t: t.beta)
    if not mixers:
        return ""
    pi_star = np.asarray(targets["pi_star_tau"])
    lines = [
        "**Nash-MD-PG with a fixed beta.** Its expected update is stationary at the regularised "
        "best response to the beta-mixture (its own target), not at pi*_tau; the two differ by "
        "O(beta^2) in KL (tabular Nash-MD ties beta = eta tau with eta -> 0). The table "
        "separates that bias from what the dynamics left undone: *bias* = KL(own target, "
        "pi*_tau); *band* = the range of KL(own target, ·) over the last quarter of training.",
        "",
        "| policy | beta | bias KL(own, pi*_tau) | end KL(pi*_tau, ·) | end KL(own, ·) [band] "
        "| settled? |",
        "|---|---:|---:|---:|---:|---|",
    ]
    settled, unsettled = [], []
    for t in mixers:
        bias = kl_to(t.own, pi_star)
        kl_own = t.kl(t.own)
        lo, hi = t.tail_range(kl_own)
        ok = t.settled()
        (settled if ok else unsettled).append(t)
        lines.append(
            f"| {t.name} | {t.beta:g} | {bias:.3f} | {t.kl(pi_star)[-1]:.3f} "
            f"| {kl_own[-1]:.3f} [{lo:.3f}, {hi:.3f}] | {'yes' if ok else 'no'} |"
        )
    lines.append("")
    if settled:
        biased = [t for t in settled if t.beta > 0 and kl_to(t.own, pi_star) > hi_band(t)]
        lines.append(
            f"Settled (the whole last quarter within KL {NEAR:g} of the own target): "
            f"{', '.join(t.name for t in settled)}."
            + (
                f" For {', '.join(t.name for t in biased)} the fixed-beta bias is larger than "
                "the band: the remaining distance to pi*_tau is the bias of a fixed beta "
                "(it shrinks as beta -> 0), not a failure of the dynamics."
                if biased
                else ""
            )
        )
    if unsettled:
        lines.append(
            f"Not settled by the end of training: {', '.join(t.name for t in unsettled)} "
            f"(a KL above {NEAR:g} to the own target in the last quarter)."
        )
    return "\n".join(lines)


def hi_band(track) -> float:
    """Top of KL(own target, ·) over the last quarter."""
    return track.tail_range(track.kl(track.own))[1]


def _style_corr(result, task) -> float:
    """Correlation of the mean win rate with each policy's total variation to the raters'
    style Nash (from its tournament samples)."""
    from nlhf.tasks.builtin import style_shares

    nash = task.nash_style_mixture()
    tv = [tv_to(nash, style_shares(task, result.samples[n])) for n in result.names]
    return _corr(result.mean_win_rate, tv)


def _corr(x, y) -> float:
    """Pearson correlation; NaN when either side has no spread."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _fmt_corr(r: float) -> str:
    return f"{r:.2f}" if np.isfinite(r) else "undefined (no spread)"


def what_happened(result, task, tracks, games: dict, accuracy: dict, bayes: float) -> str:
    """A few sentences, computed from the numbers, on why the matrix looks the way it does."""
    names = list(result.names)
    quality = {}
    for n in names:
        resp = result.samples.get(n, [])
        if resp:
            quality[n] = float(np.mean([task.quality(p, r) for p, r in zip(result.prompts, resp)]))
    lines = []
    if len(quality) >= 3 and len(quality) == len(names):
        q = np.array([quality[n] for n in names])
        r_q = _corr(result.mean_win_rate, q)
        lines.append(
            f"- Across the {len(names)} policies the correlation of the mean win rate with "
            f"the mean quality of their responses is {_fmt_corr(r_q)}; with their total "
            f"variation to the raters' style Nash it is {_fmt_corr(_style_corr(result, task))}."
        )
    if "SFT" in quality:
        q0 = quality["SFT"]
        better = [n for n in quality if n != "SFT" and quality[n] > q0]
        lines.append(
            f"- Quality: SFT {q0:.2f}; "
            + ", ".join(f"{n} {quality[n]:.2f}" for n in quality if n != "SFT")
            + f" ({len(better)}/{len(quality) - 1} trained policies above SFT; an ideal summary "
            "scores 2.0)."
        )
    if tracks:
        t0 = tracks[0]
        gap = float(0.5 * np.abs(t0.pi_star - t0.raters_nash).sum())
        lines.append(
            "- Styles: the NLHF policies are pulled toward pi*_tau of the *learned* preference "
            f"model ({fmt_shares(t0.pi_star)}), which "
            f"lies at total variation {gap:.2f} from the raters' exact style Nash "
            f"({fmt_shares(t0.raters_nash)}): even "
            "exact convergence inherits the learned model's errors about the style cycle."
        )
        corner = [t for t in tracks if t.shares[-1, : len(STYLES)].max() >= 0.8]
        for t in corner:
            top = STYLES[int(np.argmax(t.shares[-1, : len(STYLES)]))]
            lines.append(
                f"- {t.name} ends mostly on one style ({t.shares[-1].max():.0%} `{top}`), its "
                f"own target being {fmt_shares(t.own)}."
            )
    # the exact raters' style game: the Nash mixture is an equaliser
    exact = games.get("exact raters")
    if exact is not None:
        nash = task.nash_style_mixture()
        values = exact @ nash  # P(style > Nash mixture) for each style
        lines.append(
            "- Under the exact raters the style game's Nash mixture wins "
            + ", ".join(f"{1 - v:.3f} against `{s}`" for s, v in zip(STYLES, values))
            + ": it is an equaliser, so a Nash-like style mix gains in the worst case, not in "
            "head-to-head wins; those come from quality."
        )
    for name, G in games.items():
        if name == "exact raters":
            continue
        cyclic = is_cyclic(G)
        wins = {s: sum(G[STYLES.index(s), j] > 0.5 for j in range(len(STYLES))) for s in STYLES}
        order = sorted(STYLES, key=lambda s: (-wins[s], -G[STYLES.index(s)].mean()))
        if cyclic:
            text = "learned a style cycle, so its Nash solution is a mixture."
        else:
            top, second = STYLES.index(order[0]), STYLES.index(order[1])
            steps = ", ".join(
                f"{a} > {b} (P {G[STYLES.index(a), STYLES.index(b)]:.3f})"
                for a, b in zip(order, order[1:])
            )
            text = f"ranks the styles transitively: {steps}"
            text += (
                f", so a policy that optimises it is pushed toward `{order[0]}`."
                if G[top, second] > 0.55
                else f"; it barely separates `{order[0]}` from `{order[1]}`, so a policy that "
                "optimises it drops the rest and keeps about the reference's ratio of those two."
            )
        lines.append(f"- The {name} {text}")
    if accuracy:
        worst = min(accuracy.values())
        lines.append(
            "- Held-out accuracy of the learned models: "
            + ", ".join(f"{k} {v:.3f}" for k, v in accuracy.items())
            + f" against a label-noise ceiling of {bayes:.3f}"
            + (
                ". The gap means the small models miss much of what the raters reward "
                "(mostly content: whether a word is in the document, which needs matching "
                "words across the prompt), so the policies optimise what the models did learn."
                if bayes - worst > 0.05
                else "."
            )
        )
    return "\n".join(lines)
