"""The recipes of docs/recipes.md, end to end on SmolLM2-135M-Instruct: configs/tldr/ (SFT on
TL;DR demonstrations, a preference model on summarize-from-feedback comparisons, Nash-MD-PG with
beta 0.125 and tau 0.008, a tournament) and configs/chat/ (the same on UltraFeedback-binarized).

The YAML files are used as they are, with the hub names and download paths swapped for fixtures
in the public schemas (tests/fixtures/recipes/) and a few flags that shrink every stage (LoRA,
a step or two, short sequences). The one change of substance: the preference model's backbone is
a tiny random Llama with SmolLM2's tokenizer (and so its chat template) instead of the SFT model,
because fully fine-tuning a 135M-parameter judge and writing its 2 GB optimizer checkpoint took
most of the test's time; everything else runs on SmolLM2 itself."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from nlhf.cli import main
from nlhf.models import load_judge

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "recipes"
TINY_LLAMA = {
    "model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
    "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 512,
}  # fmt: skip

pytestmark = pytest.mark.slow


def _swap(value, names: dict[str, str]):
    """Every string in a YAML value with the hub names / local paths replaced."""
    if isinstance(value, str):
        for old, new in names.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, list):
        return [_swap(v, names) for v in value]
    return value


def _config(recipe: str, stage: str, names: dict[str, str], tmp: Path) -> str:
    data = yaml.safe_load((ROOT / "configs" / recipe / f"{stage}.yaml").read_text())
    path = tmp / f"{recipe}-{stage}.yaml"
    path.write_text(yaml.safe_dump({k: _swap(v, names) for k, v in data.items()}))
    return str(path)


def _run(*argv: str) -> None:
    assert main(list(argv)) == 0, argv


def _recipe(recipe: str, names: dict[str, str], tmp: Path) -> Path:
    runs = tmp / "runs" / recipe
    cfg = {
        s: _config(recipe, s, names, tmp) for s in ("sft", "preference", "nash_md", "tournament")
    }
    (tmp / "tiny_llama.json").write_text(json.dumps(TINY_LLAMA))
    _run("sft", "--config", cfg["sft"], "--lora", "--steps", "2", "--batch-size", "2",
         "--max-length", "192", "--eval-every", "0", "--save-every", "0", "--no-progress",
         "--mixed-precision", "no")  # fmt: skip
    _run("train-preference", "--config", cfg["preference"], "--model", "none", "--random-init",
         str(tmp / "tiny_llama.json"), "--tokenizer", str(runs / "sft"), "--steps", "2",
         "--batch-size", "2", "--max-length", "320", "--mixed-precision", "no")  # fmt: skip
    _run("train", "--config", cfg["nash_md"], "--lora", "--steps", "1", "--batch-size", "2",
         "--max-new-tokens", "6", "--checkpoint-every", "0", "--judge-batch-size", "4",
         "--no-progress")  # fmt: skip
    _run("tournament", "--config", cfg["tournament"], "--policies", f"sft={runs / 'sft'}",
         f"md1={runs / 'md1'}", "--n-prompts", "2", "--max-new-tokens", "6", "--quiet")  # fmt: skip
    for stage in ("sft", "pm", "md1"):
        assert (runs / stage / "model.safetensors").is_file(), stage
    result = json.loads((runs / "tournament" / "tournament.json").read_text())
    assert result["names"] == ["sft", "md1"] and len(result["matrix"]) == 2
    assert (runs / "tournament" / "report.md").is_file()
    return runs


def test_tldr_recipe(smollm2_dir, tmp_path, capsys):
    # the Parquet copy of summarize-from-feedback, laid out as `hf download` writes it
    for split in ("train", "validation"):
        rows = [
            json.loads(x)
            for x in (
                FIXTURES / "summarize_from_feedback" / "comparisons" / f"{split}.jsonl"
            ).open()
        ]
        out = tmp_path / "summarize_from_feedback" / "comparisons" / split / "0000.parquet"
        out.parent.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), out)
    names = {
        "models/SmolLM2-135M": str(smollm2_dir),
        "trl-lib/tldr": str(FIXTURES / "tldr"),
        "data/summarize_from_feedback": str(tmp_path / "summarize_from_feedback"),
        "runs/": f"{tmp_path}/runs/",
    }
    runs = _recipe("tldr", names, tmp_path)
    sft = json.loads((runs / "sft" / "eval.json").read_text())
    assert (
        sft["eval/demonstrations"] == 2 and sft["train/demonstrations"] == 6
    )  # validation / train
    pm = json.loads((runs / "pm" / "eval.json").read_text())
    assert pm["eval/comparisons"] == 4 and pm["eval/antisymmetry_error"] == 0.0
    samples = [json.loads(x) for x in (runs / "tournament" / "samples.jsonl").open()]
    assert samples[0]["prompt"].startswith("SUBREDDIT: r/college\n\nTITLE: ")  # trl-lib/tldr test


def test_chat_recipe(smollm2_dir, tmp_path):
    names = {
        "models/SmolLM2-135M-Instruct": str(smollm2_dir),
        "HuggingFaceH4/ultrafeedback_binarized": str(FIXTURES / "ultrafeedback_binarized"),
        "runs/": f"{tmp_path}/runs/",
    }
    runs = _recipe("chat", names, tmp_path)
    sft = json.loads((runs / "sft" / "eval.json").read_text())
    assert sft["eval/demonstrations"] == 4 and sft["train/demonstrations"] == 8
    # the preference model reads chat prompts through SmolLM2's template
    judge = load_judge(runs / "pm", device="cpu")
    question = [{"role": "user", "content": "What is the capital of Canada?"}]
    (seg,) = judge.model.encode([question], ["Ottawa."], ["Toronto."])
    assert seg.templated and "<|im_start|>assistant" in judge.tokenizer.decode(seg.responses[0])
    samples = [json.loads(x) for x in (runs / "tournament" / "samples.jsonl").open()]
    assert samples[0]["prompt"] == question  # test_gen's user turn, a chat prompt
    assert all("<|im_end|>" not in r for s in samples for r in s["responses"].values())
