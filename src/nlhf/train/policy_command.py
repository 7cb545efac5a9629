"""Train a policy against a preference model: Nash-MD-PG, Nash-EMA-PG, SP, BR, or RLHF.

Munos et al., "Nash Learning from Human Feedback" (ICML 2024), §6. The alternative policy
names the algorithm: --alternative mixture (Nash-MD-PG, --beta), ema (Nash-EMA-PG,
--ema-decay), self (self-play), reference (best response to the reference); --reward-model
turns the judge's reward into the RLHF baseline. Runs on CPU, one GPU, or under
`accelerate launch` (DDP / FSDP / DeepSpeed). Writes the final policy as a Hugging Face
checkpoint, metrics.jsonl, config.yaml, a resumable checkpoint/ and (last) nlhf_finished.json
to --output-dir. An --output-dir that holds a run needs --resume (continue it; a finished run is
left as it is) or --overwrite (replace it).

examples:
  nlhf train --policy runs/sft --judge runs/pm --prompts prompts.txt --beta 0.125 --tau 0.008
  nlhf train --config configs/train.yaml --output-dir runs/md1 --resume
  accelerate launch -m nlhf.cli train --config configs/train.yaml
"""

from __future__ import annotations

import argparse
import sys

from nlhf.config import add_config_arguments, config_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: one per field of ``PolicyTrainConfig`` (help from the field docstrings)."""
    from nlhf.train.policy import PolicyTrainConfig

    add_config_arguments(parser, PolicyTrainConfig)


def run(args: argparse.Namespace) -> int:
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    cfg = config_from_args(PolicyTrainConfig, args)
    try:
        out = train_policy(cfg)
    except FileNotFoundError:
        raise  # a missing input: bad input (exit 2)
    except OSError as err:  # e.g. disk full while saving: the message says what was kept
        print(f"nlhf train: error: {err.strerror or err}", file=sys.stderr)
        return 1
    print(f"policy written to {out}")
    return 0
