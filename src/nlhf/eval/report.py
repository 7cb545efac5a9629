"""The tournament report: one Markdown file a person can read, plus the same numbers as JSON/CSV.

Layout of ``report.md`` (Munos et al. 2024, §7 reports the same matrix with 95% intervals):
  1. what was compared, on how many prompts, under which judge and interval, then the
     caller's ``lead_sections`` (e.g. a headline);
  2. the preference matrix ``P(column > row)`` as a table with intervals, and its heatmap;
  3. the pool summary: mean and worst-case win rate, the meta-game's Nash mixture and each
     policy's exploitability within the pool;
  4. the caller's sections and figures (e.g. a task's own measures, see ``report_extras``);
  5. training curves of every policy (from their ``metrics.jsonl``);
  6. a few sample responses; 7. the files written next to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nlhf.eval.plots import plot_preference_matrix, plot_training_curves
from nlhf.eval.tournament import TournamentResult


def markdown_cell(text: str) -> str:
    """Escape what would break a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


_md = markdown_cell


def report_extras(source: object, result: TournamentResult, out_dir: str | Path):
    """The hook for extra report material: ``source.report_sections(result, out_dir)`` when
    ``source`` (e.g. a judge that belongs to a task) has that method, else nothing. Returns
    ``(sections, figures)`` for :func:`write_report` (``figures``: ``{caption: png path}``)."""
    make = getattr(source, "report_sections", None)
    if not callable(make):
        return [], {}
    sections, figures = make(result, out_dir)
    return list(sections), dict(figures)


def matrix_table(result: TournamentResult) -> str:
    """The matrix as a Markdown table: rows = opponents, columns = the policy whose win rate is
    shown, each cell ``p [lower, upper]``; bold where the whole interval is above 1/2."""
    names = result.names
    head = "| row \\ column | " + " | ".join(f"**{_md(n)}**" for n in names) + " |"
    sep = "|---|" + "---:|" * len(names)
    lines = [head, sep]
    for r, rn in enumerate(names):
        cells = []
        for c in range(len(names)):
            if r == c:
                cells.append("—")
                continue
            p, lo, hi = result.matrix[r, c], result.lower[r, c], result.upper[r, c]
            cell = f"{p:.3f} [{lo:.3f}, {hi:.3f}]"
            cells.append(f"**{cell}**" if lo > 0.5 else cell)
        lines.append(f"| **{_md(rn)}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pool_table(result: TournamentResult) -> str:
    """One row per policy: mean and worst-case win rate, meta-Nash weight, exploitability; sorted
    by worst-case win rate (the paper's max-min criterion), best first."""
    order = sorted(range(len(result.names)), key=lambda k: -result.worst_case[k])
    lines = [
        "| rank | policy | mean win rate | worst-case win rate (vs) | meta-Nash weight "
        "| exploitability in pool |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    index = {n: i for i, n in enumerate(result.names)}
    for rank, k in enumerate(order, start=1):
        worst = f"{result.worst_case[k]:.3f}"
        r = index.get(result.worst_opponent[k])
        if r is not None and r != k:  # the interval of the cell that attains the worst case
            worst += f" [{result.lower[r, k]:.3f}, {result.upper[r, k]:.3f}]"
        lines.append(
            f"| {rank} | {_md(result.names[k])} | {result.mean_win_rate[k]:.3f} "
            f"| {worst} ({_md(result.worst_opponent[k])}) "
            f"| {result.meta_nash[k]:.3f} | {result.exploitability[k]:.3f} |"
        )
    return "\n".join(lines)


def _reading(result: TournamentResult) -> str:
    """A few factual sentences computed from the numbers (no interpretation of the method)."""
    names = result.names
    K = len(names)
    best = int(np.argmax(result.worst_case))
    lines = []
    beats_all = [
        names[c] for c in range(K) if all(result.lower[r, c] > 0.5 for r in range(K) if r != c)
    ]
    if beats_all:
        lines.append(
            f"- **{beats_all[0]}** beats every other policy in the pool with the whole interval "
            "above 1/2 (a Condorcet winner of the pool)."
        )
    else:
        lines.append(
            f"- No policy beats every other one with its whole interval above 1/2. The best "
            f"worst case is **{names[best]}**'s {result.worst_case[best]:.3f} "
            f"(against {result.worst_opponent[best]})."
        )
    worst = int(np.argmin(result.mean_win_rate))
    lines.append(f"- Lowest mean win rate: **{names[worst]}** ({result.mean_win_rate[worst]:.3f}).")
    order = np.argsort(-result.meta_nash, kind="stable")
    support = [
        f"{names[k]} ({result.meta_nash[k]:.2f})" for k in order if result.meta_nash[k] > 1e-3
    ]
    if len(support) == 1:
        lines.append(f"- The meta-game's Nash equilibrium is the pure policy {support[0]}.")
    else:
        lines.append(f"- The meta-game's Nash mixture: {', '.join(support)}.")
    cycles = _strict_cycles(result)
    if cycles:
        a, b, c = cycles[0]
        more = f" ({len(cycles) - 1} more such cycles)" if len(cycles) > 1 else ""
        lines.append(
            f"- Non-transitive: {a} beats {b}, {b} beats {c} and {c} beats {a}, all three "
            f"intervals excluding 1/2{more}."
        )
    return "\n".join(lines)


def _strict_cycles(result: TournamentResult) -> list[tuple[str, str, str]]:
    """Triples (a, b, c) with a > b > c > a, every interval excluding 1/2 (each cycle once)."""
    K = len(result.names)

    def beats(a: int, b: int) -> bool:  # P(a > b) = matrix[b, a]
        return result.lower[b, a] > 0.5

    out = []
    for a in range(K):
        for b in range(K):
            for c in range(K):
                if a < b and a < c and b != c and beats(a, b) and beats(b, c) and beats(c, a):
                    out.append(tuple(result.names[i] for i in (a, b, c)))
    return out


def _samples_section(result: TournamentResult, n_examples: int) -> str:
    if not result.samples or not result.prompts:
        return ""
    lines = []
    for i in range(min(n_examples, len(result.prompts))):
        lines.append(f"**Prompt {i + 1}:** `{_md(result.prompts[i])}`\n")
        lines.append("| policy | response |")
        lines.append("|---|---|")
        for n in result.names:
            if n in result.samples:
                lines.append(f"| {_md(n)} | {_md(result.samples[n][i]) or '*(empty)*'} |")
        lines.append("")
    return "\n".join(lines)


def write_report(
    result: TournamentResult,
    out_dir: str | Path,
    training_curves: Mapping[str, str | Path] | None = None,
    sections: Sequence[tuple[str, str]] = (),
    figures: Mapping[str, str | Path] | None = None,
    title: str = "Tournament report",
    n_examples: int = 3,
    lead_sections: Sequence[tuple[str, str]] = (),
) -> Path:
    """Write ``out_dir/report.md`` with the matrix, pool summary, heatmap, the caller's
    ``sections`` (``(heading, markdown)`` pairs, after the pool summary), ``lead_sections``
    (before the matrix) and ``figures`` (``{caption: png}``, copied into
    ``out_dir`` when they live elsewhere), training curves of ``training_curves``
    (``{policy: metrics.jsonl or its run dir}``), and next to it ``tournament.json``,
    ``matrix.csv``, ``policies.csv``, ``samples.jsonl``. Returns the path of ``report.md``.

    Everything is written into a staging directory inside ``out_dir`` first and then moved
    into place file by file (atomic renames, ``report.md`` last), so a failure or a kill while
    writing leaves the previous report's files as they were; files of a previous report in
    ``out_dir`` that this one does not write again are removed (``.report-files.json`` lists
    them)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out))
    try:
        _write_report_files(
            result, stage, training_curves, sections, figures, title, n_examples, lead_sections
        )
        return _move_into_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


STAGING_PREFIX = ".report-staging-"
MANIFEST = ".report-files.json"


def clear_stale_staging(out_dir: str | Path) -> None:
    """Remove staging directories that a killed :func:`write_report` left in ``out_dir`` (call
    it only while holding the directory's lock, :class:`nlhf.locking.DirectoryLock`)."""
    out = Path(out_dir)
    if out.is_dir():
        for stale in out.glob(f"{STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


def _move_into_place(stage: Path, out: Path) -> Path:
    """Move the staged files into ``out`` (``report.md`` last), then remove what a previous
    report wrote and this one did not; returns the report's path."""
    from nlhf.jsonio import write_json

    names = sorted(p.name for p in stage.iterdir() if p.is_file())
    names.sort(key=lambda n: n == "report.md")
    old: list[str] = []
    with contextlib.suppress(OSError, ValueError, TypeError):
        old = [str(n) for n in json.loads((out / MANIFEST).read_text(encoding="utf-8"))]
    for name in names:
        os.replace(stage / name, out / name)
    write_json(out / MANIFEST, names)
    for name in old:
        if name not in names and Path(name).name == name and not name.startswith("."):
            (out / name).unlink(missing_ok=True)
    return out / "report.md"


def _write_report_files(
    result: TournamentResult,
    out: Path,
    training_curves: Mapping[str, str | Path] | None,
    sections: Sequence[tuple[str, str]],
    figures: Mapping[str, str | Path] | None,
    title: str,
    n_examples: int,
    lead_sections: Sequence[tuple[str, str]],
) -> None:
    files: list[tuple[str, str]] = []

    heatmap = plot_preference_matrix(
        result.matrix,
        result.names,
        out / "heatmap.png",
        result.lower,
        result.upper,
        title=f"P(column beats row), {result.n_prompts} prompts per pair",
    )
    files.append((heatmap.name, "heatmap of the preference matrix"))
    result.to_json(out / "tournament.json")
    files.append(("tournament.json", "every number in this report"))
    result.to_csv(out / "matrix.csv")
    files.append(("matrix.csv", "one row per (row, column) pair with its interval"))
    result.policies_to_csv(out / "policies.csv")
    files.append(("policies.csv", "one row per policy: win rates, meta-Nash, exploitability"))
    if result.samples and result.prompts:
        result.write_samples(out / "samples.jsonl")
        files.append(("samples.jsonl", "every prompt with each policy's response"))

    curves_png = None
    missing_curves = [k for k, v in (training_curves or {}).items() if _metrics_file(v) is None]
    if training_curves:
        curves = {k: v for k, v in training_curves.items() if _metrics_file(v) is not None}
        if curves:
            curves_png = plot_training_curves(curves, out / "training_curves.png")
            if curves_png is not None:
                files.append((curves_png.name, "training curves"))

    figure_links: list[tuple[str, str]] = []
    for caption, fig_path in (figures or {}).items():
        src = Path(fig_path)
        if not src.is_file():
            raise FileNotFoundError(f"figure {caption!r}: {src} does not exist")
        dst = out / src.name
        if dst.exists():
            raise ValueError(
                f"figure {caption!r}: a file named {src.name} is already in the report"
            )
        shutil.copyfile(src, dst)
        figure_links.append((caption, dst.name))
        files.append((dst.name, caption))

    s = result.settings
    judge = s.get("judge_spec", s.get("judge", "?"))
    label_text = (
        "one sampled 0/1 judgement per prompt"
        if result.labels == "sampled"
        else "the judge's probability P(a > b) per prompt"
    )
    parts = [
        f"# {title}",
        "",
        f"{len(result.names)} policies, every pair compared on the same {result.n_prompts} "
        f"prompts with one response per prompt from each policy (a policy's responses are "
        f"reused in all its pairs). Judge: `{_md(judge)}`, {label_text}; "
        f"{result.confidence:.0%} {result.interval_name()} intervals. Sampling: temperature "
        f"{s.get('temperature', '?')}, at most {s.get('max_new_tokens', '?')} new tokens, seed "
        f"{s.get('seed', '?')}.",
        "",
    ]
    for heading, body in lead_sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    parts += [
        "## Preference matrix",
        "",
        "Each cell is **P(column beats row)**: the probability that the judge prefers the column "
        "policy's response to the row policy's on the same prompt. Rows are opponents; read a "
        "column to see how one policy fares against everyone. The matrix satisfies "
        "M + Mᵀ = 1 and the diagonal is 1/2 by definition. **Bold**: the whole interval is above "
        "1/2.",
        "",
        matrix_table(result),
        "",
        f"![preference matrix]({heatmap.name})",
        "",
        "## The pool as a game",
        "",
        "*Worst-case win rate*: the policy's lowest win rate against another policy of the pool "
        "(the paper's max-min criterion: a Nash policy has worst case at least 1/2 against "
        "everyone); its interval is that of the cell attaining it. *Meta-Nash weight*: the Nash "
        "mixture of the symmetric game whose payoff is this matrix (its point estimates). "
        "*Exploitability in pool*: max over the pool of P(other beats policy) − 1/2 "
        f"(0 for a policy no member beats). The meta-Nash mixture's own exploitability is "
        f"{result.meta_nash_exploitability:.1e}.",
        "",
        pool_table(result),
        "",
        _reading(result),
        "",
        *judge_section(result),
    ]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.strip(), ""]
    for caption, name in figure_links:
        parts += [f"### {caption}", "", f"![{_md(caption)}]({name})", ""]
    if curves_png is not None:
        parts += [
            "## Training curves",
            "",
            "One panel per logged metric, one line per policy (faint: raw; solid: moving average).",
            "",
            f"![training curves]({curves_png.name})",
            "",
        ]
    if missing_curves:
        parts += [f"No metrics.jsonl found for: {', '.join(missing_curves)}.", ""]
    examples = _samples_section(result, n_examples)
    if examples:
        parts += ["## Sample responses", "", examples]
    timing = result.timings
    parts += [
        "## Files",
        "",
        *[f"- `{name}`: {what}" for name, what in files],
        "",
        f"Sampling took {timing.get('sampling_s', float('nan')):.1f} s and judging "
        f"{timing.get('judging_s', float('nan')):.1f} s"
        + (f" on {s['device']}." if "device" in s else "."),
        "",
    ]
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")


def judge_section(result: TournamentResult) -> list[str]:
    """Report lines naming the judge, its settings and template, and its request counters
    (``settings["judge_info"]`` / ``["judge_stats"]``, from judges that keep them, such as the
    LLM judge); empty for other judges."""
    info = dict(result.settings.get("judge_info") or {})
    stats = result.settings.get("judge_stats")
    if not info and not stats:
        return []
    lines = ["## Judge", ""]
    if info:
        lines.append(f"{_md(info.pop('kind', 'judge'))}:")
        lines.append("")
        templates = {k: info.pop(k) for k in ("template", "chat_template") if k in info}
        if not (stats or {}).get("chat_prompts"):
            templates.pop("chat_template", None)  # no chat prompt was judged
        lines += [f"- {k}: `{_md(v)}`" for k, v in info.items() if v is not None]
        for name, text in templates.items():
            lines += ["", f"{name.replace('_', ' ').capitalize()}:", "", "```text", text, "```"]
    if stats:
        lines += [
            "",
            f"During this tournament: {stats.get('pairs', 0)} response pairs judged with "
            f"{stats.get('requests', 0)} HTTP requests ({stats.get('retries', 0)} retries) and "
            f"{stats.get('cache_hits', 0)} answers from the cache; "
            f"{stats.get('unparseable', 0)} replies answered neither 1 nor 2 "
            f"({stats.get('reasks', 0)} re-asked, {stats.get('unresolved', 0)} still "
            "unparseable after the re-asks"
            + (", each counted as a tie J = 1/2" if info.get("on_unparseable") == "tie" else "")
            + ").",
        ]
    return [*lines, ""]


def _metrics_file(path: str | Path) -> Path | None:
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.jsonl"
    return p if p.is_file() else None
