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
from pathlib import Path

from nlhf.config import add_config_arguments, config_from_args
from nlhf.data.prompts import load_prompts
from nlhf.eval.tournament import (
    TournamentConfig,
    check_checkpoint,
    parse_policy_specs,
    run_tournament,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TournamentConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from nlhf.eval.report import report_extras, write_report
    from nlhf.models.judges import resolve_judge

    cfg = config_from_args(TournamentConfig, args)
    if not cfg.policies:
        raise ValueError("--policies: give at least two checkpoints (NAME=PATH or PATH)")
    policies = parse_policy_specs(cfg.policies)
    for name, path in policies.items():  # fail fast, before the judge loads
        check_checkpoint(name, path)
    curves = {}
    for spec in cfg.training_curves:
        name, sep, p = spec.partition("=")
        if not sep:
            name, p = Path(spec).name, spec
        curves[name] = Path(p)
    device = None if cfg.device == "auto" else cfg.device
    judge = resolve_judge(cfg.judge, device=device)
    if cfg.prompts is not None:
        prompts = load_prompts(cfg.prompts)
    elif callable(getattr(judge, "eval_prompts", None)):
        prompts = judge.eval_prompts(cfg.n_prompts or 500, cfg.seed)
    else:
        raise ValueError(
            f"--prompts is required: the judge {cfg.judge!r} brings no prompts of its own"
        )

    result = run_tournament(
        policies,
        prompts,
        judge,
        n_prompts=cfg.n_prompts or None,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed,
        labels=cfg.labels,
        temperature=cfg.temperature,
        interval=cfg.interval,
        confidence=cfg.confidence,
        batch_size=cfg.batch_size,
        judge_batch_size=cfg.judge_batch_size,
        balance_positions=cfg.balance_positions,
        device=cfg.device,
        progress=not args.quiet,
    )
    result.settings["judge_spec"] = cfg.judge
    sections, figures = report_extras(judge, result, cfg.output_dir)
    report = write_report(result, cfg.output_dir, curves, sections=sections, figures=figures)
    print(result.summary_table())
    print(f"\nreport: {report}")
    return 0
