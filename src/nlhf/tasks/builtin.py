"""What the built-in task (:mod:`nlhf.tasks.summaries`) contributes to the general commands.

- the judge scheme ``builtin`` of ``--judge`` (``nlhf tournament``, ``nlhf train``): ``builtin``
  is the task's exact simulated raters with default settings, ``builtin:FILE.yaml`` with the
  task settings of a YAML file (``SummaryTaskConfig`` fields, or a file with a ``task:``
  section such as a demo config). :func:`register` adds it to
  :func:`nlhf.models.judges.register_judge_scheme`; the ``nlhf`` command does so before a
  command that resolves ``--judge`` runs;
- the judge it returns brings its own evaluation prompts (``eval_prompts``) and report sections
  (``report_sections``: each policy's style shares against the style game's Nash mixture,
  style exploitability, quality), which ``nlhf tournament`` adds to its report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Prompts drawn for --judge builtin without --prompts use their own stream of the task, so they
# differ from the prompts the demo trains on (seed 0, 1, ...).
BUILTIN_EVAL_PROMPT_SEED = 7_919


def load_task(task_config: str | Path | None = None):
    """The built-in task from a YAML file (``SummaryTaskConfig`` fields or a ``task:``
    section), or with its defaults."""
    from nlhf.tasks.summaries import SummaryTask, SummaryTaskConfig

    if task_config is None or str(task_config) == "":
        return SummaryTask()
    import yaml

    from nlhf.config import from_dict

    path = Path(task_config)
    if not path.is_file():
        raise FileNotFoundError(f"--judge builtin:{path}: the task config file does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"--judge builtin:{path}: not a valid YAML file ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("task"), dict):
        data = data["task"]
    if not isinstance(data, dict):
        raise ValueError(f"--judge builtin:{path}: expected a mapping of SummaryTaskConfig fields")
    return SummaryTask.from_config(from_dict(SummaryTaskConfig, data, where=str(path)))


def builtin_judge(rest: str = "", device=None, batch_size: int = 64):
    """``--judge builtin[:FILE.yaml]``: the task's exact population preference (a
    :class:`nlhf.tasks.summaries.SimulatedRaters`; ``device`` and ``batch_size`` are unused)."""
    return load_task(rest or None).judge()


def register() -> None:
    """Register the ``builtin`` judge scheme (idempotent)."""
    from nlhf.models.judges import register_judge_scheme

    register_judge_scheme("builtin", builtin_judge)


def style_shares(task, responses) -> np.ndarray:
    """``(S + 1,)`` shares of the responses in each of ``task.styles`` and, last, of those
    without a style word."""
    styles = list(task.styles)
    counts = np.zeros(len(styles) + 1)
    for r in responses:
        style = task.style_of(r)
        counts[styles.index(style) if style in styles else len(styles)] += 1
    return counts / counts.sum()


def style_sections(
    result, task, out_dir: str | Path
) -> tuple[list[tuple[str, str]], dict[str, Path]]:
    """Extra report material for the built-in task (``nlhf.tasks.summaries.SummaryTask``): each
    policy's style distribution next to the exact Nash mixture of the style game (a figure), and
    a table of style shares, style exploitability in the style game, mean quality and length.

    Returns ``(sections, figures)`` ready for ``nlhf.eval.report.write_report``."""
    from nlhf.eval.report import markdown_cell
    from nlhf.games import exploitability
    from nlhf.tasks.convergence import tv_to
    from nlhf.tasks.plots import plot_style_distribution

    if not result.samples:
        return [], {}
    names = result.names
    styles = list(task.styles)
    cols = styles + ["none"]
    K, S = len(names), len(styles)
    dist = np.zeros((K, S + 1))
    quality_mean, quality_half, length = np.zeros(K), np.zeros(K), np.zeros(K)
    for k, name in enumerate(names):
        responses = result.samples[name]
        dist[k] = style_shares(task, responses)
        q = np.array([task.quality(p, r) for p, r in zip(result.prompts, responses)])
        quality_mean[k] = q.mean()
        quality_half[k] = 1.96 * q.std(ddof=1) / np.sqrt(q.size) if q.size > 1 else 0.0
        length[k] = np.mean([len(r.split()) for r in responses])
    nash = np.asarray(task.nash_style_mixture(), dtype=np.float64)  # (S,)
    game = np.asarray(task.style_game(), dtype=np.float64)  # (S, S)
    has_none = bool(dist[:, S].sum() > 0)
    shown = cols if has_none else styles
    figure = plot_style_distribution(
        names,
        dist if has_none else dist[:, :S],
        shown,
        np.append(nash, 0.0) if has_none else nash,
        Path(out_dir) / "styles.png",
    )
    style_expl = []
    for k in range(K):
        styled = dist[k, :S]
        style_expl.append(
            exploitability(game, styled / styled.sum()) if styled.sum() > 0 else float("nan")
        )
    head = (
        "| policy | "
        + " | ".join(shown)
        + " | TV to Nash | style exploitability | mean quality [95% CI] | mean length |"
    )
    lines = [head, "|---|" + "---:|" * (len(shown) + 4)]
    lines.append(
        "| *Nash mixture of the style game* | "
        + " | ".join(f"{x:.2f}" for x in (list(nash) + [0.0] * has_none))
        + " | 0 | 0 | | |"
    )
    for k, name in enumerate(names):
        tv = tv_to(nash, dist[k])
        lines.append(
            f"| {markdown_cell(name)} | "
            + " | ".join(f"{x:.2f}" for x in dist[k, : len(shown)])
            + f" | {tv:.2f} | {_num(style_expl[k], '.3f')} "
            f"| {quality_mean[k]:.2f} [{quality_mean[k] - quality_half[k]:.2f}, "
            f"{quality_mean[k] + quality_half[k]:.2f}] | {length[k]:.1f} |"
        )
    body = (
        "The built-in task's raters agree on quality but their style tastes form a Condorcet "
        "cycle, so the style game (two summaries of equal quality) has a mixed Nash equilibrium "
        f"({', '.join(f'{s} {w:.2f}' for s, w in zip(styles, nash))}). A reward-model optimum "
        "picks one style; a Nash policy mixes them. *Style exploitability*: how much a best "
        "responding style beats the policy's style mix in the style game (0 at the Nash "
        "mixture). *Quality* is the task's shared quality score of each response (higher is "
        "better); length counts words including the style word.\n\n" + "\n".join(lines)
    )
    sections = [("Built-in task: response styles and quality", body)]
    return sections, {"Style distribution of each policy vs the Nash mixture": figure}


def _num(x: float, spec: str) -> str:
    """A number for a report table; "—" for a non-finite one (e.g. no styled response)."""
    return format(x, spec) if np.isfinite(x) else "—"
