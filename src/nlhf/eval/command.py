"""Compare policies pairwise under a judge and write a report (Munos et al. 2024, §7).

Every pair of policy checkpoints answers the same prompts (one sampled response per prompt per
policy, reused across that policy's pairs); the judge compares each pair of responses; the result
is the matrix of P(column beats row) with 95% intervals (Clopper-Pearson for sampled 0/1 labels,
Student-t or bootstrap for the judge's probabilities), each policy's worst-case win rate, the
Nash mixture of the pool's meta-game and each policy's exploitability within the pool.

Judges: --judge builtin (the built-in task's exact simulated raters), --judge PATH (a trained
preference- or reward-model directory), --judge python:MODULE:FUNCTION (any callable
fn(prompts, a, b) returning P(a > b) per item, or a Judge object; MODULE may be a .py file),
--judge openai:MODEL@BASE_URL or --judge judge.yaml (an LLM over an OpenAI-compatible server).

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
from nlhf.models.judge import Judge

# Prompts drawn for --judge builtin without --prompts use their own stream of the task, so they
# differ from the prompts the demo trains on (seed 0, 1, ...).
BUILTIN_EVAL_PROMPT_SEED = 7_919


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, TournamentConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_task(task_config: Path | None):
    """The built-in task (``nlhf.tasks.summaries.SummaryTask``) from a YAML file or defaults."""
    from nlhf.tasks.summaries import SummaryTask, SummaryTaskConfig

    if task_config is None:
        return SummaryTask()
    import yaml

    from nlhf.config import from_dict

    path = Path(task_config)
    if not path.is_file():
        raise FileNotFoundError(f"task config {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and isinstance(data.get("task"), dict):
        data = data["task"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of SummaryTaskConfig fields")
    return SummaryTask.from_config(from_dict(SummaryTaskConfig, data, where=str(path)))


def build_judge(spec: str, task=None, device: str | None = None) -> Judge:
    """``builtin`` (the built-in task's raters) or any spec of
    :func:`nlhf.models.judges.resolve_judge` -> a ``Judge``."""
    if spec == "builtin":
        if task is None:
            task = load_task(None)
        return task.judge()
    from nlhf.models.judges import resolve_judge

    return resolve_judge(spec, device=device)


def run(args: argparse.Namespace) -> int:
    from nlhf.eval.report import task_sections, write_report

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
    task = None
    if cfg.judge == "builtin":
        task = load_task(cfg.task_config)
    device = None if cfg.device == "auto" else cfg.device
    judge = build_judge(cfg.judge, task=task, device=device)
    if cfg.prompts is not None:
        prompts = load_prompts(cfg.prompts)
    elif task is not None:
        prompts = task.prompts(cfg.n_prompts or 500, seed=BUILTIN_EVAL_PROMPT_SEED + cfg.seed)
    else:
        raise ValueError("--prompts is required unless --judge builtin")

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
    sections, figures = [], {}
    if task is not None:
        sections, figures = task_sections(result, task, cfg.output_dir)
    report = write_report(result, cfg.output_dir, curves, sections=sections, figures=figures)
    print(result.summary_table())
    print(f"\nreport: {report}")
    return 0
