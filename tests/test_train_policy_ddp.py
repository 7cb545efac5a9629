"""DDP through accelerate on CPU (2 processes, gloo): training runs, and a run stopped after 2
steps and resumed ends bit for bit where an uninterrupted 2-process run ends."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import torch
from safetensors.torch import load_file

WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    from nlhf.config import replace
    from nlhf.models.judge import CallableJudge
    from nlhf.models.tokenizer import build_tokenizer
    from nlhf.train.policy import PolicyTrainConfig, train_policy

    torch.set_num_threads(1)
    tok = build_tokenizer(["good bad the cat sat on a mat"], kind="word")

    def lm():
        torch.manual_seed(0)
        config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=len(tok), n_positions=32,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
        return GPT2LMHeadModel(config)

    def prob(prompts, a, b):
        n = [(x.count("good"), y.count("good")) for x, y in zip(a, b)]
        return [0.5 + 0.4 * ((nx > ny) - (nx < ny)) for nx, ny in n]

    prompts = ["the cat <sep>", "a mat <sep>", "sat on the mat <sep>", "cat <sep>", "a <sep>"]
    base = sys.argv[1]
    cfg = PolicyTrainConfig(output_dir=base + "/full", steps=4, batch_size=4, grad_accum=2,
                            max_new_tokens=6, lr=1e-3, tau=0.05, alternative="ema", ema_decay=0.5,
                            checkpoint_every=2, progress=False, cpu=True)
    run = dict(prompts=prompts, judge=CallableJudge(prob), tokenizer=tok)
    train_policy(cfg, policy_model=lm(), **run)
    split = replace(cfg, output_dir=base + "/split")
    train_policy(replace(split, stop_after=2), policy_model=lm(), **run)
    train_policy(replace(split, resume=True), policy_model=lm(), **run)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_resume_bit_for_bit(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    split = tmp_path / "split" / "checkpoint"
    assert (split / "nlhf_state_rank0.pt").is_file() and (split / "nlhf_state_rank1.pt").is_file()
    ranks = [torch.load(split / f"nlhf_state_rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert not torch.equal(ranks[0]["generators"]["label"], ranks[1]["generators"]["label"])
    for name in ("model.safetensors", "ema/model.safetensors"):
        a, b = load_file(tmp_path / "full" / name), load_file(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
