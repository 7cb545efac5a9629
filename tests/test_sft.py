"""SFT (`nlhf sft`): response-only loss, the trainer's accounting, resume, the command, and the
demo's call (a GPT-2-shaped policy trained on the task's demonstrations reproduces their style
prior). Real-model SFT (SmolLM2, chat template, bf16) is in test_chat_templates.py."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from nlhf.cli import main
from nlhf.data import Demonstration
from nlhf.models.chat import render_prompt_ids, render_response_ids
from nlhf.sampling import generate
from nlhf.tasks.summaries import STYLES, SummaryTask
from nlhf.train import sft
from nlhf.train.sft import (
    SFTConfig,
    SFTTrainConfig,
    collate,
    encode_demonstrations,
    response_nll,
    train_sft,
)

TINY = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 48}
TINY.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


@pytest.fixture(scope="module")
def task() -> SummaryTask:
    return SummaryTask(seed=0)


@pytest.fixture
def demo_file(task, tmp_path) -> Path:
    prompts = task.prompts(60, seed=5)
    path = tmp_path / "demos.jsonl"
    rows = [{"prompt": p, "completion": r} for p, r in zip(prompts, task.demonstrations(prompts))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_loss_is_on_response_tokens_only(task):
    tok = task.tokenizer()
    prompts = task.prompts(3, seed=0)
    demos = [Demonstration(p, r) for p, r in zip(prompts, ["brief rain", "list", "story a b"])]
    rows, truncated = encode_demonstrations(tok, demos, max_length=64)
    assert truncated == 0
    batch = collate(rows, tok.pad_token_id)
    for i, (p, r) in enumerate(rows):
        labels = batch["labels"][i]
        assert p == tok(prompts[i], add_special_tokens=False)["input_ids"]
        # the batched text path renders like the policy's helpers
        assert (p, r) == (
            render_prompt_ids(tok, demos[i].prompt),
            render_response_ids(tok, demos[i].prompt, demos[i].response),
        )
        assert r[-1] == tok.eos_token_id  # the response ends with EOS, which is learnt too
        assert torch.all(labels[: len(p)] == -100)
        assert labels[len(p) : len(p) + len(r)].tolist() == r
        assert torch.all(labels[len(p) + len(r) :] == -100)
        assert batch["attention_mask"][i].sum() == len(p) + len(r)
    # too long: the prompt's beginning goes first, the response stays whole
    long = [Demonstration(prompts[0], "brief " + "rain " * 5)]
    [(p, r)], truncated = encode_demonstrations(tok, long, max_length=10)
    assert truncated == 1 and len(p) + len(r) == 10 and len(r) == 7 and r[-1] == tok.eos_token_id
    assert p == tok(prompts[0], add_special_tokens=False)["input_ids"][-len(p) :]
    # a response longer than the room keeps one prompt token and loses its end
    [(p, r)], _ = encode_demonstrations(tok, long, max_length=4)
    assert len(p) == 1 and len(r) == 3 and r[-1] != tok.eos_token_id


def test_response_nll_equals_the_full_sequence_loss(task):
    tok = task.tokenizer()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2))
    model.eval()  # no dropout: the two computations see the same function
    prompts = task.prompts(4, seed=3)
    demos = [Demonstration(p, r) for p, r in zip(prompts, task.demonstrations(prompts))]
    rows, _ = encode_demonstrations(tok, demos, max_length=64)
    batch = collate(rows, tok.pad_token_id)
    full = model(**batch).loss  # transformers' mean over all label tokens, full logits
    for keep in (True, False):
        nll, n = response_nll(model, batch, keep_logits=keep)
        assert n == sum(len(r) for _, r in rows)
        torch.testing.assert_close(nll / n, full, rtol=1e-6, atol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="model / random_init"):
        SFTTrainConfig(model="m", random_init=Path("c.json"))
    with pytest.raises(ValueError, match="batch_size: 6 is not divisible by grad_accum 4"):
        SFTTrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="eval_fraction"):
        SFTTrainConfig(eval_fraction=1.0)
    with pytest.raises(ValueError, match="min_lr_ratio"):
        SFTTrainConfig(min_lr_ratio=2.0)
    with pytest.raises(ValueError, match="n_embd"):
        SFTConfig(n_embd=30, n_head=4)
    assert SFTTrainConfig(lr_schedule="constant").may_change >= {"steps", "epochs"}
    assert "steps" not in SFTTrainConfig(lr_schedule="cosine").may_change


def test_nlhf_sft_command_random_init(tmp_path, demo_file, tiny_config, capsys):
    out = tmp_path / "sft"
    argv = ["sft", "--data", str(demo_file), "--random-init", str(tiny_config)]
    argv += ["--tokenizer-kind", "word", "--steps", "60", "--batch-size", "8", "--lr", "1e-2"]
    argv += ["--eval-fraction", "0.2", "--eval-every", "20", "--log-every", "10"]
    assert main([*argv, "--output-dir", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "eval.json").read_text())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in log if "train/loss" in r]
    evals = [r for r in log if "eval/loss" in r]
    assert len(train_losses) == 6 and train_losses[-1] < 0.7 * train_losses[0]
    assert [r["step"] for r in evals] == [20, 40, 60] and evals[-1]["eval/loss"] < evals[0][
        "eval/loss"
    ]
    assert metrics["eval/loss"] == evals[-1]["eval/loss"] and metrics["eval/demonstrations"] == 12
    assert metrics["train/demonstrations"] == 48
    # a standard checkpoint, float32, no marker that would make it look like a judge
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.n_layer == 1 and model.dtype == torch.float32
    assert not (out / "nlhf_model.json").exists() and not (out / "checkpoint").exists()
    assert (out / "config.yaml").is_file() and AutoTokenizer.from_pretrained(out).eos_token
    # bad input: a clear error naming the file, line and field; nothing written
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a b", "completion": "c"}\n{"prompt": "x"}\n')
    rc = main(
        ["sft", "--data", str(bad), "--random-init", str(tiny_config)]
        + ["--output-dir", str(tmp_path / "bad_out")]
    )
    assert rc == 2 and not (tmp_path / "bad_out").exists()
    assert "bad.jsonl: line 2: field '*': cannot tell the format" in capsys.readouterr().err
    rc = main(["sft", "--data", str(demo_file), "--output-dir", str(tmp_path / "none")])
    assert rc == 2 and "model / random_init" in capsys.readouterr().err
    rc = main(["sft", "--data", str(demo_file), "--model", "HuggingFaceTB/SmolLM2-135M"]
              + ["--output-dir", str(tmp_path / "hub")])  # fmt: skip
    assert rc == 2 and "hf download HuggingFaceTB/SmolLM2-135M" in capsys.readouterr().err
    # a datasets object in memory (any demonstration format)
    import datasets

    rows = [json.loads(x) for x in demo_file.open()]
    cfg = SFTTrainConfig(random_init=tiny_config, tokenizer_kind="word", steps=1,
                         eval_fraction=0.0, save_every=0, output_dir=tmp_path / "mem")  # fmt: skip
    assert train_sft(cfg, train=datasets.Dataset.from_list(rows))["train/demonstrations"] == 60


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_resume_and_gradient_accumulation(tmp_path, demo_file, tiny_config, monkeypatch):
    TINY_DROPOUT = {**TINY, "resid_pdrop": 0.1}  # dropout on: the RNG state must resume too
    tiny_config.write_text(json.dumps(TINY_DROPOUT))

    def config(out: str, **kw) -> SFTTrainConfig:
        base = dict(
            data=str(demo_file), random_init=tiny_config, tokenizer_kind="word", steps=6,
            batch_size=8, lr=3e-3, warmup_steps=2, save_every=3, eval_every=4, log_every=1,
            eval_fraction=0.2, progress=False, output_dir=tmp_path / out,
        )  # fmt: skip
        return SFTTrainConfig(**{**base, **kw})

    straight = train_sft(config("straight"))
    real_evaluate = sft.evaluate_sft

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the run dies at its step-4 evaluation, after the step-3 save

    monkeypatch.setattr(sft, "evaluate_sft", crash)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config("resumed"))
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "nlhf_checkpoint.json").read_text())
    assert state["step"] == 3
    monkeypatch.setattr(sft, "evaluate_sft", real_evaluate)
    resumed = train_sft(config("resumed", resume=True))
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert resumed["eval/loss"] == pytest.approx(straight["eval/loss"], abs=1e-6)
    rows = [
        json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]

    # 4 micro-batches of 2 give the step of one batch of 8 (the loss is per response token of
    # the whole step); no dropout, so the two runs see the same function
    tiny_config.write_text(json.dumps(TINY))
    full = train_sft(config("full", save_every=0, eval_every=0))
    accum = train_sft(config("accum", save_every=0, eval_every=0, grad_accum=4))
    assert accum["eval/loss"] == pytest.approx(full["eval/loss"], abs=1e-5)
    other = train_sft(config("other", save_every=0, eval_every=0, seed=1))
    assert abs(other["eval/loss"] - full["eval/loss"]) > 1e-3  # not vacuous


# ----------------------------------------------------------------------------- the demo's call


def test_sft_policy_reproduces_the_demonstration_style_prior(task, tmp_path):
    torch.manual_seed(0)
    prompts = task.prompts(1500, seed=1)
    demos = task.demonstrations(prompts, seed=1)
    cfg = SFTConfig(
        output_dir=tmp_path / "sft", steps=250, n_layer=1, n_embd=32, n_head=2, n_positions=32
    )
    out = train_sft(cfg, prompts, demos, tokenizer=task.tokenizer())  # the demo's call

    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train/loss"] < 0.7 * metrics[0]["train/loss"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.n_layer == 1 and model.config.vocab_size == len(tok)

    eval_prompts = task.prompts(800, seed=2)
    gen = torch.Generator().manual_seed(0)
    texts = generate(model, tok, eval_prompts, max_new_tokens=10, generator=gen).texts
    counts = Counter(task.style_of(t) for t in texts)
    freq = np.array([counts[s] for s in STYLES]) / len(texts)
    # the demonstrations' prior (0.2, 0.5, 0.3), not the Nash mixture (~0.53, 0.18, 0.29)
    np.testing.assert_allclose(freq, task.config.demo_style_prior, atol=0.06)
    assert counts["none"] / len(texts) < 0.05
    # responses are mostly made of the document's words
    words = [w for p, t in zip(eval_prompts, texts) for w in t.split()[1:]]
    in_doc = [w in p.split() for p, t in zip(eval_prompts, texts) for w in t.split()[1:]]
    assert len(words) > 500 and np.mean(in_doc) > 0.4


def test_demo_call_with_a_model_config_file(task, tmp_path):
    GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=24).to_json_file(tmp_path / "c.json")
    prompts = task.prompts(20, seed=0)
    cfg = SFTConfig(output_dir=tmp_path / "o", model_config=tmp_path / "c.json", steps=2)
    out = train_sft(cfg, prompts, task.demonstrations(prompts), tokenizer=task.tokenizer())
    assert AutoModelForCausalLM.from_pretrained(out).config.n_embd == 16
    with pytest.raises(FileNotFoundError, match="model_config"):
        train_sft(
            SFTConfig(output_dir=tmp_path / "x", model_config=tmp_path / "nope.json"),
            prompts,
            task.demonstrations(prompts),
            tokenizer=task.tokenizer(),
        )


DDP_WORKER = """
import json, sys
import torch
from nlhf.data import Demonstration
from nlhf.models.chat import render_prompt_ids, render_response_ids
from nlhf.train.sft import SFTTrainConfig, train_sft

torch.set_num_threads(1)
base = sys.argv[1]
demos = [Demonstration(p, r) for p, r in json.load(open(base + "/demos.json"))]
cfg = SFTTrainConfig(random_init=base + "/tiny.json", tokenizer=base + "/tok", steps=3,
                     batch_size=4, grad_accum=2, lr=1e-2, eval_fraction=0.0, save_every=0,
                     log_every=1, cpu=True, progress=False, output_dir=base + "/" + sys.argv[2])
train_sft(cfg, train=demos)
"""


def test_two_processes_take_the_step_of_one(tmp_path, task, tiny_config):
    """DDP (2 CPU processes, gloo) with the same global batch ends where one process ends: the
    loss is normalised by the step's response tokens over all processes."""
    import os
    import socket
    import subprocess
    import sys

    prompts = task.prompts(16, seed=9)
    demos = list(zip(prompts, task.demonstrations(prompts, seed=9)))
    (tmp_path / "demos.json").write_text(json.dumps(demos))
    (tmp_path / "tiny.json").write_text(tiny_config.read_text())
    task.tokenizer().save_pretrained(tmp_path / "tok")
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(port), str(script), str(tmp_path), "ddp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = SFTTrainConfig(random_init=tmp_path / "tiny.json", tokenizer=str(tmp_path / "tok"),
                         steps=3, batch_size=4, grad_accum=2, lr=1e-2, eval_fraction=0.0,
                         save_every=0, log_every=1, cpu=True, progress=False,
                         output_dir=tmp_path / "one")  # fmt: skip
    train_sft(cfg, train=[Demonstration(p, r) for p, r in demos])  # the same, one process
    # the same loss at every step, and the same learned function (weights with ~0 gradient,
    # e.g. the key bias under the softmax, carry float noise that Adam amplifies: compare outputs)
    losses = [
        [json.loads(x)["train/loss"] for x in (tmp_path / run / "metrics.jsonl").open()]
        for run in ("ddp", "one")
    ]
    assert len(losses[0]) == 3 and losses[0][0] != losses[0][2]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    batch = tok(prompts[:4], return_tensors="pt", padding=True)
    logits = [
        AutoModelForCausalLM.from_pretrained(tmp_path / run)(**batch).logits
        for run in ("ddp", "one")
    ]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-4)
