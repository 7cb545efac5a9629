"""The ``nlhf`` command.

Each sub-command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``nlhf --help`` is
instant. Hyper-parameters come from one config dataclass per command (see ``nlhf.config``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order of the data flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "tabular": ("nlhf.games.command", "Nash-MD and baselines on tabular preference games"),
    "sft": (
        "nlhf.train.sft_command",
        "supervised fine-tuning on demonstrations (the reference mu)",
    ),
    "train-preference": (
        "nlhf.train.preference_command",
        "train a pairwise preference model or a Bradley-Terry reward model",
    ),
    "train": ("nlhf.train.policy_command", "Nash-MD-PG / Nash-EMA-PG / SP / BR / RLHF policy"),
    "tournament": ("nlhf.eval.command", "compare policies pairwise under a judge"),
    "demo": ("nlhf.tasks.demo", "the paper's experiment end to end on the built-in task"),
}
# Commands that resolve --judge (nlhf.models.judges.resolve_judge).
JUDGE_COMMANDS = ("train", "tournament")


def register_plugins() -> None:
    """The composition root: what the built-in task adds to the shared registries (the
    ``builtin`` judge scheme). ``nlhf.eval`` and ``nlhf.models`` know nothing of the task."""
    from nlhf.tasks.builtin import register

    register()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nlhf",
        description="Nash learning from human feedback (Munos et al., ICML 2024).",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _version() -> str:
    from nlhf import __version__

    return f"nlhf {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        build_parser().parse_args(argv or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(
        prog=f"nlhf {name}",
        description=(module.__doc__ or help_text).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    if name in JUDGE_COMMANDS:
        register_plugins()
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: one clear line naming what is wrong, no traceback.
        print(f"nlhf {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nlhf {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
