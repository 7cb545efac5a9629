"""Precision of `nlhf train-preference`: float32 master weights for a bf16 backbone, saved in
the backbone's dtype unless --save-dtype says otherwise."""

from __future__ import annotations

import json

import torch
from cyclic_raters import cyclic_comparisons
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from nlhf.models.tokenizer import build_tokenizer
from nlhf.train.preference import PreferenceTrainConfig, train_preference


def test_a_bf16_backbone_trains_in_float32_and_is_saved_in_bf16(tmp_path):
    data = cyclic_comparisons(n_prompts=12, comparisons_per_prompt=4, seed=0)
    texts = [str(t) for c in data for t in (c.prompt, c.response_a, c.response_b)]
    tok = build_tokenizer(texts, kind="word")
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        num_key_value_heads=1, vocab_size=len(tok), max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    backbone = tmp_path / "backbone"
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(backbone)
    tok.save_pretrained(backbone)
    initial = load_file(backbone / "model.safetensors")

    def train(name, **changes):
        cfg = PreferenceTrainConfig(
            kind="reward", model=str(backbone), output_dir=tmp_path / name, steps=4,
            batch_size=8, lr=1e-5, eval_fraction=0.0, log_every=1, **changes,
        )  # fmt: skip
        train_preference(cfg, train=data)
        return tmp_path / name

    out = train("bf16")
    masters = load_file(out / "checkpoint" / "model" / "model.safetensors")  # resumable state
    body = [k for k in initial if k.startswith("model.") and k in masters]
    assert body and all(masters[k].dtype == torch.float32 for k in body)
    changed = sum(int((masters[k] != initial[k].float()).sum()) for k in body)
    assert changed / sum(initial[k].numel() for k in body) > 0.9  # bf16 would keep ~15%
    saved = load_file(out / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    out32 = train("fp32", save_dtype="float32")
    assert json.loads((out32 / "config.json").read_text())["dtype"] == "float32"
    assert {t.dtype for t in load_file(out32 / "model.safetensors").values()} == {torch.float32}
