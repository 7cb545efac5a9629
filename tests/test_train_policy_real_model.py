"""The policy trainer on a real bf16 chat model (SmolLM2-135M-Instruct stored in bf16): float32
master weights, bf16 autocast, lean log-probs and in-loop reference scores, saved in bf16."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from nlhf.models.judge import CallableJudge
from nlhf.train.policy import PolicyTrainConfig, train_policy

CHAT = [
    [{"role": "user", "content": "Name one fruit."}],
    [{"role": "user", "content": "Say hello."}],
]


def test_nash_md_pg_steps_on_a_real_bf16_chat_model(tmp_path, smollm2_bf16_dir):
    # a judge that prefers shorter answers: a known, real preference over decoded text
    judge = CallableJudge(
        lambda p, a, b: [0.5 + 0.4 * ((len(x) < len(y)) - (len(x) > len(y))) for x, y in zip(a, b)]
    )
    cfg = PolicyTrainConfig(
        policy=str(smollm2_bf16_dir), output_dir=str(tmp_path / "md"), alternative="mixture",
        beta=0.125, tau=0.008, steps=2, batch_size=2, max_new_tokens=8, lr=1e-5, lora=True,
        lora_r=4, mixed_precision="bf16", checkpoint_every=0, progress=False,
    )  # fmt: skip
    dtypes = []
    out = train_policy(
        cfg, prompts=CHAT, judge=judge,
        callback=lambda s, m, r: dtypes.append({p.dtype for p in m.parameters()}),
    )  # fmt: skip
    assert dtypes[-1] == {torch.float32}  # master weights, also the frozen base under LoRA
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(abs(r["kl/ref"]) < 1.0 and r["policy/entropy"] > 0 for r in rows)
    # pi = mu at the first step (LoRA starts at 0) and both are scored by the same forward
    assert rows[0]["kl/ref"] == 0.0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert {t.dtype for t in load_file(out / "model.safetensors").values()} == {torch.bfloat16}
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
