"""Precision of the policy trainer: float32 master weights and EMA whatever the checkpoint's
dtype, the saved dtype, a half-precision reference, bf16 autocast."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from nlhf.config import replace
from nlhf.models.checkpoint import load_causal_lm
from nlhf.models.judge import CallableJudge
from nlhf.models.tokenizer import build_tokenizer
from nlhf.train.policy import PolicyTrainConfig, train_policy

WORDS = ["good", "bad", "the", "cat", "sat", "on", "a", "mat"]
PROMPTS = ["the cat <sep>", "a mat <sep>", "sat on the mat <sep>", "cat <sep>", "a <sep>"]


def count_judge() -> CallableJudge:
    def prob(prompts, a, b):
        return [
            0.5 + 0.4 * ((x.count("good") > y.count("good")) - (x.count("good") < y.count("good")))
            for x, y in zip(a, b)
        ]

    return CallableJudge(prob)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One tiny Llama saved twice with the SAME values: in bf16 (like most public checkpoints)
    and in float32."""
    tok = build_tokenizer([" ".join(WORDS)], kind="word")
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=64,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    root = tmp_path_factory.mktemp("precision")
    paths = {}
    for dtype in (torch.bfloat16, torch.float32):
        path = root / str(dtype).removeprefix("torch.")
        model.to(dtype).save_pretrained(path)
        tok.save_pretrained(path)
        paths[dtype] = path
    return paths


def run(tmp_path, policy, name, **changes):
    """5 AdamW steps at lr 1e-5 (the paper's scale) of Nash-EMA-PG (EMA decay 0.999); returns
    the output directory and the trainer's own (master) policy weights after every step."""
    cfg = PolicyTrainConfig(
        policy=str(policy), output_dir=str(tmp_path / name), alternative="ema",
        ema_decay=0.999, steps=5, batch_size=4, max_new_tokens=6, lr=1e-5, tau=0.05,
        checkpoint_every=0, progress=False, seed=0,
    )  # fmt: skip
    cfg = replace(cfg, **changes)
    after_step: list[dict[str, torch.Tensor]] = []

    def keep(step, model, record):
        after_step.append({n: p.detach().clone() for n, p in model.named_parameters()})

    out = train_policy(cfg, prompts=PROMPTS, judge=count_judge(), callback=keep)
    return out, after_step


def changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    total = sum(t.numel() for t in a.values())
    return sum(int((a[n].float() != b[n].float()).sum()) for n in a) / total


def test_a_bf16_checkpoint_trains_exactly_like_float32(tmp_path, checkpoints):
    initial = dict(
        load_causal_lm(checkpoints[torch.float32], with_tokenizer=False)[0].named_parameters()
    )
    out_bf16, steps_bf16 = run(tmp_path, checkpoints[torch.bfloat16], "bf16")
    out_fp32, steps_fp32 = run(tmp_path, checkpoints[torch.float32], "fp32")
    assert all(p.dtype == torch.float32 for p in steps_bf16[-1].values())  # master copies
    frac_bf16, frac_fp32 = changed(steps_bf16[-1], initial), changed(steps_fp32[-1], initial)
    assert frac_bf16 > 0.9 and frac_bf16 == frac_fp32, (frac_bf16, frac_fp32)
    for name, value in steps_fp32[-1].items():  # the same values in, the same run
        assert torch.equal(steps_bf16[-1][name], value), name
    # saved in the input checkpoint's dtype by default
    for out, dtype in ((out_bf16, "bfloat16"), (out_fp32, "float32")):
        assert json.loads((out / "config.json").read_text())["dtype"] == dtype
        assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {
            getattr(torch, dtype)
        }
        assert json.loads((out / "ema" / "config.json").read_text())["dtype"] == dtype


def test_the_ema_moves_by_exactly_the_expected_lerp(tmp_path, checkpoints):
    """theta_bar <- theta_bar + (1 - d) (theta - theta_bar) after every step, in float32 even for
    a bf16 checkpoint (a bf16 EMA at d = 0.999 would not move at all)."""
    out, steps = run(tmp_path, checkpoints[torch.bfloat16], "ema", save_dtype="float32")
    model, _ = load_causal_lm(checkpoints[torch.bfloat16], dtype="float32", with_tokenizer=False)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    initial = {n: t.clone() for n, t in expected.items()}
    for theta in steps:
        for name in expected:
            expected[name].lerp_(theta[name], 1.0 - 0.999)
    saved = load_file(out / "ema" / "model.safetensors")
    for name, value in expected.items():
        assert torch.equal(saved[name], value), name
    assert changed(expected, initial) > 0.9
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"  # --save-dtype
    final = load_file(out / "model.safetensors")
    for name, value in steps[-1].items():
        assert torch.equal(final[name], value), name


def test_half_precision_reference_and_bf16_autocast(tmp_path, checkpoints):
    """reference_dtype=auto keeps the reference in bf16 (memory); bf16 autocast computes in
    bf16 while the weights stay float32 and still absorb the small steps."""
    initial = dict(
        load_causal_lm(checkpoints[torch.float32], with_tokenizer=False)[0].named_parameters()
    )
    out, steps = run(
        tmp_path, checkpoints[torch.bfloat16], "auto", reference_dtype="auto",
        mixed_precision="bf16", alternative="mixture", save_dtype="bfloat16",
    )  # fmt: skip
    assert all(p.dtype == torch.float32 for p in steps[-1].values())
    assert changed(steps[-1], initial) > 0.9
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["kl/ref"]) < 1.0 for r in rows)  # rounding noise, not a diverging ratio
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
