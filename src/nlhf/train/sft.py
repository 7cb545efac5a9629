"""Supervised fine-tuning (SFT): the reference policy ``mu`` of NLHF (Munos et al. 2024, §7).

The paper initialises every policy and the regularisation anchor from an SFT checkpoint; here a
small GPT-2-shaped causal LM is built from a config and trained on (prompt, demonstration) pairs.

One step:
1. draw a batch of pairs; tokenize ``prompt`` as-is and ``response + <eos>``;
2. right-pad; labels are the response tokens only (prompt and padding are ``-100``);
3. next-token cross-entropy on the labels, AdamW step with linear warm-up and cosine decay.

The result is a standard Hugging Face checkpoint (safetensors + ``config.json`` + tokenizer)
with an ``nlhf_model.json`` marker ``{"kind": "policy"}``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from nlhf.config import save_yaml


@dataclass
class SFTConfig:
    """Supervised fine-tuning of a small GPT-2-shaped policy."""

    output_dir: Path = Path("runs/sft")
    """directory for the checkpoint, tokenizer, metrics.jsonl and config.yaml"""
    tokenizer: Path | None = None
    """tokenizer directory; None: use the tokenizer passed in, else build a word-level one"""
    model_config: Path | None = None
    """a GPT-2 config (config.json) to build the model from; None: use the sizes below"""
    n_layer: int = 2
    """transformer blocks"""
    n_embd: int = 64
    """hidden size"""
    n_head: int = 4
    """attention heads"""
    n_positions: int = 64
    """maximum prompt + response length in tokens"""
    dropout: float = 0.0
    """dropout of residual, embedding and attention (GPT-2 uses 0.1; small data needs none)"""
    steps: int = 10000
    """optimizer steps (copying document words needs many: at 3000 steps on the built-in task
    the policy still invents words the document does not contain)"""
    batch_size: int = 32
    """pairs per step"""
    lr: float = 3e-3
    """peak learning rate (AdamW)"""
    weight_decay: float = 0.01
    """AdamW weight decay"""
    warmup_steps: int = 20
    """linear warm-up steps before cosine decay"""
    seed: int = 0
    """seed for model initialisation and batch order"""
    log_every: int = 25
    """write a metrics line every this many steps"""

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or self.log_every < 1:
            raise ValueError("warmup_steps must be >= 0 and log_every >= 1")


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int):
    """Token ids of ``prompt`` and ``response + <eos>`` per pair; errors name the row."""
    if len(prompts) != len(responses):
        raise ValueError(
            f"SFT needs one response per prompt, got {len(prompts)} and {len(responses)}"
        )
    if not prompts:
        raise ValueError("SFT needs at least one (prompt, response) pair")
    eos = tokenizer.eos_token_id
    rows = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        p_ids = tokenizer(p, add_special_tokens=False)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"]
        if not r_ids or r_ids[-1] != eos:
            r_ids = r_ids + [eos]
        if len(p_ids) + len(r_ids) > max_len:
            raise ValueError(
                f"SFT pair {i}: {len(p_ids) + len(r_ids)} tokens exceed n_positions={max_len}"
            )
        rows.append((p_ids, r_ids))
    return rows


def collate(rows, pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 off the response)."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
    for i, (p, r) in enumerate(rows):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(r)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def build_policy(cfg: SFTConfig, tokenizer):
    """A randomly initialised GPT-2-shaped causal LM sized for ``tokenizer``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if cfg.model_config is not None:
        path = Path(cfg.model_config)
        if not path.is_file():
            raise FileNotFoundError(f"SFT model_config {path} does not exist")
        try:
            config = GPT2Config.from_json_file(str(path))
        except (ValueError, OSError) as err:
            raise ValueError(f"SFT model_config {path}: not a GPT-2 config: {err}") from None
    else:
        config = GPT2Config(
            n_layer=cfg.n_layer,
            n_embd=cfg.n_embd,
            n_head=cfg.n_head,
            n_positions=cfg.n_positions,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
        )
    config.vocab_size = len(tokenizer)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    return GPT2LMHeadModel(config)


def train_sft(
    cfg: SFTConfig, prompts: Sequence[str], responses: Sequence[str], tokenizer=None
) -> Path:
    """Train an SFT policy on (prompt, response) pairs; returns ``cfg.output_dir``."""
    from accelerate import Accelerator
    from transformers import AutoTokenizer

    if cfg.tokenizer is not None:
        tokenizer = AutoTokenizer.from_pretrained(str(cfg.tokenizer))
    elif tokenizer is None:
        from nlhf.models.tokenizer import build_tokenizer

        tokenizer = build_tokenizer(list(prompts) + list(responses), kind="word")
    torch.manual_seed(cfg.seed)
    model = build_policy(cfg, tokenizer)
    rows = encode_pairs(tokenizer, prompts, responses, model.config.n_positions)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, cfg.warmup_steps, cfg.steps)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(cfg.seed)
    metrics_file = (out / "metrics.jsonl").open("w")
    start, running = time.time(), []
    bar = tqdm(range(cfg.steps), desc="sft", unit="step", leave=False)
    for step in bar:
        idx = torch.randint(len(rows), (min(cfg.batch_size, len(rows)),), generator=gen)
        batch = collate([rows[i] for i in idx.tolist()], tokenizer.pad_token_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        loss = model(**batch).loss
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            line = {
                "step": step + 1,
                "loss/sft": sum(running) / len(running),
                "lr": scheduler.get_last_lr()[0],
                "time/elapsed_s": time.time() - start,
            }
            metrics_file.write(json.dumps(line) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{line['loss/sft']:.3f}")
            running = []
    metrics_file.close()

    model = accelerator.unwrap_model(model)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "nlhf_model.json").write_text(json.dumps({"kind": "policy", "trained_by": "sft"}))
    save_yaml(cfg, out / "config.yaml")
    return out
