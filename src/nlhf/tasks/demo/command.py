"""``nlhf demo``: the driver that wires the stages into the stage cache, and its command line."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nlhf.config import add_config_arguments, config_from_args, to_dict
from nlhf.jsonio import write_text
from nlhf.locking import LOCK, DirectoryLock, check_output_dir
from nlhf.tasks.demo import stages
from nlhf.tasks.demo.config import QUICK_PRESET, DemoConfig, policy_specs
from nlhf.tasks.demo.pipeline import MARKER, Pipeline, Stage

TOTAL = 7


def _policy_bar(group: list[Stage], steps: int, parallel: bool):
    """A queue the workers report ``(name, step)`` to, and a poll function that advances one
    progress bar over all pending policies' steps (created at the first poll, after the
    stage log lines)."""
    if not parallel:
        return None, None
    import multiprocessing

    from tqdm.auto import tqdm

    manager = multiprocessing.Manager()
    queue = manager.Queue()
    bar = None
    done: dict[str, int] = {}

    def poll() -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=steps * len(group), desc="policies", unit="step", dynamic_ncols=True)
        while not queue.empty():
            name, step = queue.get()
            done[name] = step
        bar.update(sum(done.values()) - bar.n)

    def close() -> None:
        if bar is not None:
            bar.close()
        manager.shutdown()

    poll.close = close  # type: ignore[attr-defined]
    return queue, poll


def check_demo_dir(cfg: DemoConfig) -> Path:
    """Validate ``cfg.output_dir`` before anything is written: a directory (or a path that can
    be created) that is empty, absent or holds a demo run, unless ``cfg.overwrite``."""
    root = check_output_dir(cfg.output_dir)
    if not root.is_dir() or cfg.overwrite or is_demo_run(root):
        return root
    foreign = sorted(p.name for p in root.iterdir() if p.name != LOCK)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f", ... ({len(foreign)} entries)" * (len(foreign) > 5))
        raise ValueError(
            f"output_dir: {root} holds files that are not a demo run ({shown}); choose another "
            "--output-dir, or pass --overwrite to run the demo there anyway"
        )
    return root


def is_demo_run(root: Path) -> bool:
    """Whether ``root`` holds (part of) a demo run: a stage marker, or the ``config.yaml`` of a
    demo (written before the first stage runs)."""
    import yaml

    if any(root.glob(f"0[1-7]_*/{MARKER}")):
        return True
    try:
        data = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and {"task", "sft", "policy", "tournament"} <= set(data)


def run_demo(cfg: DemoConfig, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) the stages of the demo up to ``cfg.until``; returns the path of
    ``report.md`` (or of the output directory when stopping earlier). The output directory is
    checked first and locked while the demo runs (a second demo into it stops at once)."""
    root = check_demo_dir(cfg)
    with DirectoryLock(root):
        return _run_stages(cfg, root, log)


def _run_stages(cfg: DemoConfig, root: Path, log: Callable[[str], None] | None) -> Path:
    import torch

    from nlhf import __version__

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    write_text(root / "config.yaml", yaml_text(cfg))
    specs = policy_specs(cfg)
    pipe = Pipeline(root, log=log, version=__version__, rerun=cfg.overwrite)
    sec = to_dict  # config sections enter the hashes as plain dicts
    workers = cfg.n_workers
    dirs: dict[str, Path] = {}

    def stage(index: int, name: str, title: str, inputs: Any, upstream: list[str], fn) -> Stage:
        return Stage(name, title, inputs, upstream, fn, index=index, total=TOTAL)

    dirs["task"] = pipe.run(
        stage(
            1, "01_task", "task data", {"task": sec(cfg.task), "data": sec(cfg.data)}, [],
            functools.partial(stages.stage_task, cfg),
        )
    )  # fmt: skip
    if cfg.until == 1:
        return root
    dirs["sft"] = pipe.run(
        stage(
            2, "02_sft", "SFT", {"sft": {**sec(cfg.sft), "output_dir": None}, "seed": cfg.seed},
            ["01_task:demonstrations.jsonl,tokenizer"],
            functools.partial(stages.stage_sft, cfg, dirs["task"]),
        )
    )  # fmt: skip
    if cfg.until == 2:
        return root
    d = cfg.data
    dirs["comparisons"] = pipe.run(
        stage(
            3, "03_comparisons", "comparisons from sampled raters",
            {
                "task": sec(cfg.task),
                "n_comparisons": d.n_comparisons,
                "max_new_tokens": d.max_new_tokens,
                "seed": cfg.seed,
            },
            ["01_task:comparison_prompts.txt", "02_sft"],
            functools.partial(stages.stage_comparisons, cfg, dirs["task"], dirs["sft"]),
        )
    )  # fmt: skip
    need_reward = any(s.reward_model for s in specs)
    kinds = [("preference", "pairwise")] + ([("reward", "reward")] if need_reward else [])
    group = [
        stage(
            4, f"04_{key}", f"{key} model",
            {"preference": sec(cfg.preference), "kind": kind, "seed": cfg.seed},
            ["02_sft", "03_comparisons"],
            functools.partial(
                stages.stage_preference, cfg, kind, dirs["sft"], dirs["comparisons"]
            ),
        )
        for key, kind in kinds
    ]  # fmt: skip
    pending = pipe.pending(group)
    poll = None
    bar = None
    if workers > 1 and len(pending) > 1:
        from tqdm.auto import tqdm

        start = time.time()

        def poll() -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(total=len(pending), desc="judges", unit="model")
            bar.update(sum(s.name in pipe.ran for s in pending) - bar.n)
            bar.set_postfix_str(f"{time.time() - start:.0f} s in workers", refresh=True)

    out = pipe.run_parallel(group, workers, cfg.threads, poll=poll)
    if bar is not None:
        bar.close()
    for key, _ in kinds:
        dirs[key] = out[f"04_{key}"]
    if cfg.until <= 4:
        return root

    pc = cfg.policy
    dirs["targets"] = pipe.run(
        stage(
            5, "05_targets", "exact targets in the style game",
            {
                "tau": pc.tau,
                "rlhf_tau": pc.rlhf_tau,
                "temperature": pc.temperature,
                "specs": [dataclasses.asdict(s) for s in specs],
            },
            ["01_task:probe_prompts.txt", "02_sft", *[f"04_{k}" for k, _ in kinds]],
            functools.partial(
                stages.stage_targets, cfg, specs, dirs["task"], dirs["sft"],
                dirs["preference"], dirs.get("reward"),
            ),
        )
    )  # fmt: skip
    policy_common = {k: v for k, v in sec(pc).items() if k not in ("methods", "betas")}

    def policy_stage(spec, queue) -> Stage:
        judge_key = "reward" if spec.reward_model else "preference"
        return stage(
            5, spec.stage, f"policy {spec.name}",
            {
                "spec": dataclasses.asdict(spec),
                "policy": policy_common,
                "max_new_tokens": cfg.data.max_new_tokens,
                "seed": cfg.seed,
            },
            ["01_task:policy_prompts.txt,probe_prompts.txt", "02_sft", f"04_{judge_key}"],
            functools.partial(
                stages.stage_policy, cfg, spec, dirs["task"], dirs["sft"], dirs[judge_key],
                progress=queue,
            ),
        )  # fmt: skip

    pending = pipe.pending([policy_stage(s, None) for s in specs])
    parallel = workers > 1 and len(pending) > 1
    queue, poll = _policy_bar(pending, pc.steps, parallel)
    try:
        out = pipe.run_parallel(
            [policy_stage(s, queue) for s in specs], workers, cfg.threads, poll=poll
        )
    finally:
        if poll is not None:
            poll.close()
    pool: dict[str, Path] = {"SFT": dirs["sft"]}
    for spec in specs:
        pool[spec.name] = out[spec.stage]
        if spec.averaged_name:
            pool[spec.averaged_name] = out[spec.stage] / "ema"
    if cfg.until == 5:
        return root
    dirs["tournament"] = pipe.run(
        stage(
            6, "06_tournament", "tournament under the exact judge",
            {
                "tournament": sec(cfg.tournament),
                "task": sec(cfg.task),
                "pool": {k: str(v.relative_to(root)) for k, v in pool.items()},
                "max_new_tokens": cfg.data.max_new_tokens,
                "seed": cfg.seed,
            },
            ["01_task:eval_prompts.txt", "02_sft", *[s.stage for s in specs]],
            functools.partial(stages.stage_tournament, cfg, dirs["task"], pool),
        )
    )  # fmt: skip
    if cfg.until == 6:
        return root
    from nlhf.tasks.demo.report import stage_report

    ignored = ("output_dir", "until", "threads", "workers", "overwrite")
    report_dir = pipe.run(
        stage(
            7, "07_report", "report",
            {"config": {k: v for k, v in sec(cfg).items() if k not in ignored}},
            [
                "01_task:task.json,probe_prompts.txt",
                "03_comparisons:stats.json",
                *[f"04_{k}" for k, _ in kinds],
                "05_targets",
                *[f"{s.stage}:convergence.jsonl,metrics.jsonl" for s in specs],
                "06_tournament",
            ],
            functools.partial(stage_report, cfg, specs, root, dirs, pool),
        )
    )  # fmt: skip
    return report_dir / "report.md"


def yaml_text(cfg: DemoConfig) -> str:
    """The resolved configuration as YAML (what ``OUTPUT_DIR/config.yaml`` holds)."""
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"the smoke-test preset: the same as --config {QUICK_PRESET.parent.name}/"
        f"{QUICK_PRESET.name} (under 3 minutes); flags still override it",
    )
    add_config_arguments(parser, DemoConfig)


def resolve_config(args: argparse.Namespace) -> DemoConfig:
    """defaults < YAML (``--config FILE``, or ``--quick`` = configs/demo-quick.yaml) < flags."""
    if getattr(args, "quick", False):
        if getattr(args, "config", None) is not None:
            raise ValueError(
                f"--quick is --config {QUICK_PRESET}: give one of them (and flags on top)"
            )
        if not QUICK_PRESET.is_file():
            raise FileNotFoundError(
                f"--quick reads {QUICK_PRESET}, which is missing (nlhf installed without its "
                "configs/ directory?); pass --config FILE instead"
            )
        args = argparse.Namespace(**{**vars(args), "config": QUICK_PRESET})
    return config_from_args(DemoConfig, args)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    start = time.time()
    report = run_demo(cfg)
    what = "report" if cfg.until == 7 else f"stopped after stage {cfg.until}"
    print(f"{what}: {report}  ({time.time() - start:.0f} s)")
    return 0
