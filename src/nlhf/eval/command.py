"""Compare policies pairwise under a judge and write a report (Munos et al. 2024, §7).

Every pair of policy checkpoints answers the same prompts (one sampled response per prompt per
policy, reused across that policy's pairs); the judge compares each pair of responses; the result
is the matrix of P(column beats row) with 95% intervals (Clopper-Pearson for sampled 0/1 labels,
Student-t or bootstrap for the judge's probabilities), each policy's worst-case win rate, the
Nash mixture of the pool's meta-game and each policy's exploitability within the pool.

Judges (nlhf.models.judges.resolve_judge): --judge PATH (a trained preference- or reward-model
directory), --judge python:MODULE:FUNCTION (any callable fn(prompts, a, b) returning P(a > b)
per item, or a Judge object; MODULE may be a .py file), --judge openai:MODEL@BASE_URL or
--judge judge.yaml (an LLM over an OpenAI-compatible server, docs/judges.md), or a registered
scheme such as --judge builtin[:TASK.yaml] (the built-in task's exact simulated raters). A judge
that brings its own evaluation prompts (an ``eval_prompts(n, seed)`` method) makes --prompts
optional; one with a ``report_sections(result, out_dir)`` method adds its sections to the report.

Example:
  nlhf tournament --policies sft=runs/demo/sft md1=runs/demo/nash-md-0.125 \\
      --judge builtin --n-prompts 1000 --output-dir runs/tournament
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from nlhf.config import add_config_arguments, config_from_args
from nlhf.data.prompts import load_prompts
from nlhf.devices import resolve_device
from nlhf.eval.tournament import (
    TournamentConfig,
    check_pool,
    check_prompts,
    parse_policy_specs,
    run_tournament,
)
from nlhf.locking import DirectoryLock, check_output_dir, is_inside


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TournamentConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_training_curves(specs: list[str]) -> dict[str, Path]:
    """``--training-curves NAME=PATH ...`` -> ``{name: metrics.jsonl}``, each file read now, so
    that a missing or malformed one fails before any sampling (errors name the file and line)."""
    from nlhf.eval.plots import read_metrics

    curves: dict[str, Path] = {}
    for spec in specs:
        name, sep, p = str(spec).partition("=")
        if not sep or not name:
            name, p = Path(spec).name, spec
        path = Path(p)
        file = path / "metrics.jsonl" if path.is_dir() else path
        if not file.is_file():
            where = f"{path} has no metrics.jsonl" if path.is_dir() else f"{path} does not exist"
            raise ValueError(f"--training-curves {spec}: {where}")
        if name in curves:
            raise ValueError(f"--training-curves: the name {name!r} appears twice")
        read_metrics(file)
        curves[name] = file
    return curves


def run(args: argparse.Namespace) -> int:
    from nlhf.eval.report import clear_stale_staging, report_extras, write_report
    from nlhf.models.judges import resolve_judge

    # Everything is checked before the output directory is touched and before any sampling.
    cfg = config_from_args(TournamentConfig, args)
    out = check_output_dir(cfg.output_dir)
    device = resolve_device(cfg.device)
    if not cfg.policies:
        raise ValueError("--policies: give at least two checkpoints (NAME=PATH or PATH)")
    policies = parse_policy_specs(cfg.policies)
    check_pool(policies)  # fail fast, before the judge loads
    inputs = {f"policy {n!r}": Path(p) for n, p in policies.items()}
    if Path(cfg.judge).is_dir():
        inputs[f"--judge {cfg.judge}"] = Path(cfg.judge)
    for what, src in inputs.items():
        if is_inside(out, src):
            raise ValueError(
                f"--output-dir: {out} is inside the {what} ({src}); the report would be written "
                "into an input: choose another --output-dir"
            )
    curves = parse_training_curves(cfg.training_curves)
    judge = resolve_judge(cfg.judge, device=device)
    if cfg.prompts is not None:
        prompts = load_prompts(cfg.prompts)
    elif callable(getattr(judge, "eval_prompts", None)):
        prompts = judge.eval_prompts(cfg.n_prompts or 500, cfg.seed)
    else:
        raise ValueError(
            f"--prompts is required: the judge {cfg.judge!r} brings no prompts of its own"
        )
    if cfg.n_prompts > len(prompts):
        raise ValueError(
            f"--n-prompts {cfg.n_prompts}: {cfg.prompts} has only {len(prompts)} prompts"
        )
    prompts = prompts[: cfg.n_prompts or None]
    check_prompts(policies, prompts, cfg.max_new_tokens)

    # One tournament at a time per output directory: a second one stops here, at once.
    with DirectoryLock(out):
        clear_stale_staging(out)
        result = run_tournament(
            policies,
            prompts,
            judge,
            max_new_tokens=cfg.max_new_tokens,
            seed=cfg.seed,
            labels=cfg.labels,
            temperature=cfg.temperature,
            interval=cfg.interval,
            confidence=cfg.confidence,
            batch_size=cfg.batch_size,
            judge_batch_size=cfg.judge_batch_size,
            balance_positions=cfg.balance_positions,
            device=device,
            progress=not args.quiet,
            judge_spec=cfg.judge,
        )
        with tempfile.TemporaryDirectory(prefix="nlhf-report-") as extras:
            sections, figures = report_extras(judge, result, extras)
            report = write_report(result, out, curves, sections=sections, figures=figures)
    print(result.summary_table())
    print(f"\nreport: {report}")
    return 0
