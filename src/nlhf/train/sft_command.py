"""Supervised fine-tuning (SFT) of a causal language model on demonstrations: the reference
policy mu that NLHF starts from (Munos et al. 2024, §7).

Data: prompt/response pairs (`prompt` with `response`, `completion` or `label`) or chat
conversations (`messages`), from JSONL/JSON/CSV/TSV/Parquet, a `datasets` directory, or a hub
name. The loss is on the response tokens only; with a chat template, on the assistant turn up to
and including its end-of-turn token, exactly what `nlhf train` will sample. Full fine-tuning or
LoRA, float32 master weights with bf16/fp16 autocast, accelerate (CPU, one GPU or many:
`accelerate launch -m nlhf.cli sft ...`), a held-out loss on prompts never trained on, resume.

Examples:
  nlhf sft --model path/to/model --data trl-lib/tldr --split train --eval-split validation \\
      --max-length 640 --batch-size 64 --lr 2e-5 --output-dir runs/sft
  nlhf sft --model path/to/chat-model --data HuggingFaceH4/ultrafeedback_binarized \\
      --split train_sft --eval-split test_sft --lora --output-dir runs/sft-chat
  nlhf sft --random-init gpt2-tiny.json --tokenizer-kind word --data demos.jsonl --steps 500
  nlhf sft --config configs/tldr/sft.yaml --resume

Outputs in --output-dir: the model (a Hugging Face checkpoint + tokenizer; LoRA adapters merged,
and also in adapter/), eval.json, metrics.jsonl, config.yaml, checkpoint/ (while unfinished),
nlhf_finished.json (written last). An --output-dir that holds a run needs --resume (continue it;
a finished run is left as it is) or --overwrite (replace it).
"""

from __future__ import annotations

import argparse
import sys

from nlhf.config import add_config_arguments, config_from_args
from nlhf.jsonio import dumps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags: one per field of ``SFTTrainConfig`` (help from the field docstrings)."""
    from nlhf.train.sft import SFTTrainConfig

    add_config_arguments(parser, SFTTrainConfig)


def run(args: argparse.Namespace) -> int:
    from nlhf.train.sft import SFTTrainConfig, train_sft

    cfg = config_from_args(SFTTrainConfig, args)
    try:
        metrics = train_sft(cfg)
    except FileNotFoundError:
        raise  # a missing input: bad input (exit 2)
    except OSError as err:  # e.g. disk full while saving: the message says what was kept
        print(f"nlhf sft: error: {err.strerror or err}", file=sys.stderr)
        return 1
    print(dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2))  # NaN as null
    print(f"model written to {cfg.output_dir}")
    return 0
