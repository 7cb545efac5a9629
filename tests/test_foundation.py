"""The CLI entry point, the judge helpers and the local tokenizers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from nlhf.cli import COMMANDS, main
from nlhf.models.judge import CallableJudge, Judge, sample_labels
from nlhf.models.tokenizer import build_tokenizer


def test_cli_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_console_script_runs() -> None:
    bin_dir = Path(sys.executable).parent
    out = subprocess.run([bin_dir / "nlhf", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("nlhf ")


def test_callable_judge_checks_its_output() -> None:
    judge = CallableJudge(lambda p, a, b: [1.0 if x > y else 0.0 for x, y in zip(a, b)])
    assert isinstance(judge, Judge)
    assert judge.prob(["q", "q"], ["b", "a"], ["a", "b"]).tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="equal batch sizes"):
        judge.prob(["q"], ["a", "b"], ["a"])
    with pytest.raises(ValueError, match="P = 2.0 at index 0"):
        CallableJudge(lambda p, a, b: [2.0]).prob(["q"], ["a"], ["b"])


def test_sample_labels_frequency() -> None:
    judge = CallableJudge(lambda p, a, b: [0.3] * len(p))
    gen = torch.Generator().manual_seed(0)
    labels = sample_labels(judge, ["q"] * 20000, ["a"] * 20000, ["b"] * 20000, generator=gen)
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert abs(labels.mean().item() - 0.3) < 0.015  # 4.6 standard errors


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_tokenizer_round_trip(tmp_path: Path, kind: str) -> None:
    texts = ["brief cat dog sat", "list mat , cat ran", "story the dog sat on the mat"] * 20
    tok = build_tokenizer(texts, kind=kind, vocab_size=400)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    ids = again("story cat sat <eos>").input_ids
    assert ids[-1] == again.eos_token_id and ids == tok("story cat sat <eos>").input_ids
    assert again.decode(ids, skip_special_tokens=True).strip() == "story cat sat"
    assert again.padding_side == "left" and again.pad_token == "<pad>"
