"""Train a pairwise preference model or a Bradley-Terry reward model on pairwise comparisons.

NLHF (Munos et al. 2024, §5) learns P(y > y' | x) from pairwise human labels with a model that
reads the prompt and both responses, antisymmetric by construction:
P(y > y' | x) = sigmoid(v(x, y, y') - v(x, y', y)). `--kind reward` trains the RLHF baseline's
Bradley-Terry reward model r(x, y) on the same data; `--kind embedding` a skew-symmetric
embedding preference model. Runs on CPU, one GPU or many (launch with `accelerate launch -m
nlhf.cli train-preference ...` for several).

Examples:
  nlhf train-preference --kind pairwise --data comparisons.jsonl --model runs/sft \\
      --output-dir runs/pm --steps 2000 --batch-size 32 --lr 2e-5
  nlhf train-preference --kind reward --data Anthropic/hh-rlhf --format hh_rlhf --split train \\
      --eval-split test --model gpt2 --output-dir runs/rm
  nlhf train-preference --data tests/fixtures/data/native.jsonl --random-init tiny-gpt2.json \\
      --tokenizer-kind word --steps 20 --output-dir runs/tiny

Outputs in --output-dir: the model (HF checkpoint + tokenizer + nlhf_model.json, load it with
nlhf.models.load_judge), eval.json, metrics.jsonl, config.yaml, checkpoint/ (for --resume),
nlhf_finished.json (written last). An --output-dir that holds a run needs --resume (continue it;
a finished run is left as it is) or --overwrite (replace it).
"""

from __future__ import annotations

import argparse
import sys

from nlhf.config import add_config_arguments, config_from_args
from nlhf.jsonio import dumps
from nlhf.train.preference import PreferenceTrainConfig, train_preference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, PreferenceTrainConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(PreferenceTrainConfig, args)
    try:
        metrics = train_preference(cfg)
    except FileNotFoundError:
        raise  # a missing input: bad input (exit 2)
    except OSError as err:  # e.g. disk full while saving: the message says what was kept
        print(f"nlhf train-preference: error: {err.strerror or err}", file=sys.stderr)
        return 1
    print(dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2))  # NaN as null
    print(f"model written to {cfg.output_dir}")
    return 0
