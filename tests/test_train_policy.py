"""The policy trainer: estimator, bad inputs, bit-for-bit resume, RLHF mode, LoRA, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from nlhf.cli import main as cli_main
from nlhf.config import from_dict, replace
from nlhf.models.judge import CallableJudge
from nlhf.models.tokenizer import build_tokenizer
from nlhf.sampling import AdaptersDisabled, generate
from nlhf.train.policy import (
    PolicyTrainConfig,
    load_prompts,
    policy_gradient_loss,
    train_policy,
)

WORDS = ["good", "bad", "the", "cat", "sat", "on", "a", "mat"]
PROMPTS = ["the cat <sep>", "a mat <sep>", "sat on the mat <sep>", "cat <sep>", "a <sep>"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer([" ".join(WORDS)], kind="word")


def make_lm(tok, seed=0, n_positions=32, vocab_size=None) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=vocab_size or len(tok),
        n_positions=n_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def count_judge() -> CallableJudge:
    """Prefers the response with more "good" words (ties: 1/2), a known preference."""

    def prob(prompts, a, b):
        out = []
        for x, y in zip(a, b):
            nx, ny = x.split().count("good"), y.split().count("good")
            out.append(0.5 + 0.4 * ((nx > ny) - (nx < ny)))
        return out

    return CallableJudge(prob)


class CountReward:
    """A reward judge: r = number of "good" words; prob through Bradley-Terry."""

    def reward(self, prompts, responses):
        return torch.tensor([float(r.split().count("good")) for r in responses])

    def prob(self, prompts, a, b):
        return torch.sigmoid(self.reward(prompts, a) - self.reward(prompts, b))


def base_cfg(tmp_path, **changes) -> PolicyTrainConfig:
    cfg = PolicyTrainConfig(
        output_dir=str(tmp_path / "run"),
        steps=4,
        batch_size=4,
        max_new_tokens=6,
        lr=1e-3,
        tau=0.05,
        checkpoint_every=0,
        progress=False,
    )
    return replace(cfg, **changes)


def read_metrics(path):
    return [json.loads(line) for line in open(path)]


# ------------------------------------------------------------------------------ the estimator


def test_estimator_weights_each_token_by_the_kl_to_go():
    torch.manual_seed(0)
    B, T, tau = 3, 5, 0.3
    logp = (-torch.rand(B, T)).requires_grad_()
    ref_logp = -torch.rand(B, T)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    score = torch.tensor([0.3, -0.2, 0.1])
    loss, terms = policy_gradient_loss(logp, ref_logp, mask, score, tau)
    loss.backward()
    expected = torch.zeros(B, T)
    for b in range(B):
        for n in range(T):
            if mask[b, n]:
                to_go = sum(
                    float(logp[b, m].detach() - ref_logp[b, m]) for m in range(n, T) if mask[b, m]
                )
                expected[b, n] = -(float(score[b]) - tau * to_go) / B
    assert torch.allclose(logp.grad, expected, atol=1e-6)
    kl = ((logp - ref_logp) * mask).sum(-1).mean()
    assert torch.allclose(terms["kl/ref"], kl.detach())


# ------------------------------------------------------------------------------ bad input


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="beta must be in"):
        PolicyTrainConfig(beta=1.5)
    with pytest.raises(ValueError, match="beta must be in"):
        PolicyTrainConfig(beta=-0.1)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        PolicyTrainConfig(tau=-0.01)
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        PolicyTrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="ema_decay"):
        PolicyTrainConfig(ema_decay=2.0)
    with pytest.raises(ValueError, match="alternative"):
        from_dict(PolicyTrainConfig, {"alternative": "other"})
    assert PolicyTrainConfig(alternative="self").mixture_beta == 0.0
    assert PolicyTrainConfig(alternative="reference").mixture_beta == 1.0


def test_train_policy_rejects_bad_inputs(tmp_path, tok):
    judge = count_judge()
    cfg = base_cfg(tmp_path)
    with pytest.raises(ValueError, match="prompt set is empty"):
        train_policy(cfg, prompts=[], judge=judge, policy_model=make_lm(tok), tokenizer=tok)
    with pytest.raises(ValueError, match="vocabulary size"):
        train_policy(
            cfg,
            prompts=PROMPTS,
            judge=judge,
            policy_model=make_lm(tok),
            reference_model=make_lm(tok, vocab_size=len(tok) + 3),
            tokenizer=tok,
        )
    with pytest.raises(ValueError, match="prompt 2 has 5 tokens.*context of 9"):
        train_policy(
            cfg, prompts=PROMPTS, judge=judge, policy_model=make_lm(tok, n_positions=9),
            tokenizer=tok,
        )  # fmt: skip
    with pytest.raises(ValueError, match="no .reward"):
        train_policy(
            replace(cfg, reward_model=True),
            prompts=PROMPTS,
            judge=judge,
            policy_model=make_lm(tok),
            tokenizer=tok,
        )
    with pytest.raises(ValueError, match="policy: give a policy checkpoint"):
        train_policy(cfg, prompts=PROMPTS, judge=judge)
    with pytest.raises(ValueError, match="policy .*missing.*does not exist"):
        train_policy(replace(cfg, policy=str(tmp_path / "missing")), prompts=PROMPTS, judge=judge)


def test_load_prompts_formats_and_errors(tmp_path):
    (tmp_path / "p.txt").write_text("first <sep>\n\nsecond <sep>\n")
    assert load_prompts(tmp_path / "p.txt") == ["first <sep>", "second <sep>"]
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n"b"\n')
    assert load_prompts(tmp_path / "p.jsonl") == ["a", "b"]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(ValueError, match="line 2|row 2"):
        load_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(tmp_path / "empty.txt")


# ------------------------------------------------------------------------------ resume


def test_resume_after_a_kill_is_bit_for_bit(tmp_path, tok):
    """A run killed after step 3 (last checkpoint at step 2) and resumed ends with exactly the
    weights, EMA weights and metrics of an uninterrupted run."""
    cfg = base_cfg(
        tmp_path,
        steps=6,
        grad_accum=2,
        alternative="ema",
        ema_decay=0.5,
        model_free=True,
        checkpoint_every=2,
        lr_schedule="cosine",
        warmup_steps=2,
    )
    judge = count_judge()
    full = train_policy(
        replace(cfg, output_dir=str(tmp_path / "full")),
        prompts=PROMPTS,
        judge=judge,
        policy_model=make_lm(tok),
        tokenizer=tok,
    )

    class KilledError(Exception):
        pass

    def kill_at_3(step, policy, record):
        if step == 3:
            raise KilledError

    split = replace(cfg, output_dir=str(tmp_path / "split"))
    with pytest.raises(KilledError):
        train_policy(
            split, prompts=PROMPTS, judge=judge, policy_model=make_lm(tok), tokenizer=tok,
            callback=kill_at_3,
        )  # fmt: skip
    marker = json.loads((tmp_path / "split/checkpoint/nlhf_checkpoint.json").read_text())
    assert marker["step"] == 2
    with pytest.raises(ValueError, match="reference differs"):
        train_policy(
            replace(split, resume=True), prompts=PROMPTS, judge=judge,
            policy_model=make_lm(tok, seed=123), tokenizer=tok,
        )  # fmt: skip
    # resume with a differently initialised policy object: its weights come from the checkpoint
    # (the reference, by default a copy of the given policy, is passed explicitly here)
    resumed = train_policy(
        replace(split, resume=True),
        prompts=PROMPTS,
        judge=judge,
        policy_model=make_lm(tok, seed=123),
        reference_model=make_lm(tok),
        tokenizer=tok,
    )
    for name in ("model.safetensors", "ema/model.safetensors"):
        a, b = load_file(full / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    ma, mb = read_metrics(full / "metrics.jsonl"), read_metrics(resumed / "metrics.jsonl")
    assert [m["step"] for m in mb] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(ma, mb):
        for k in ra:
            if not k.startswith("time/"):
                assert ra[k] == rb[k], (ra["step"], k)


def test_stop_after_then_resume_and_outputs(tmp_path, tok):
    cfg = base_cfg(tmp_path, steps=4, stop_after=2, alternative="mixture", beta=0.25)
    out = train_policy(
        cfg, prompts=PROMPTS, judge=count_judge(), policy_model=make_lm(tok), tokenizer=tok
    )
    assert not (out / "model.safetensors").exists()  # not finished: only the checkpoint
    assert (out / "checkpoint" / "nlhf_checkpoint.json").is_file()
    train_policy(
        replace(cfg, stop_after=None, resume=True),
        prompts=PROMPTS,
        judge=count_judge(),
        policy_model=make_lm(tok),
        tokenizer=tok,
    )
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in (
        "pref/mean",
        "kl/ref",
        "policy/entropy",
        "policy/length",
        "policy/eos_rate",
        "loss/total",
        "loss/pref",
        "loss/kl",
        "grad/norm",
        "lr",
    ):
        assert key in rows[-1], key
    assert rows[0]["kl/ref"] == pytest.approx(0.0, abs=1e-5)  # pi = mu before the first step
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size == len(tok)
    assert (out / "config.yaml").is_file() and (out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------ algorithms


def test_rlhf_reward_mode_increases_the_reward(tmp_path, tok):
    cfg = base_cfg(
        tmp_path, steps=30, batch_size=16, lr=1e-2, tau=0.0, reward_model=True, max_grad_norm=0
    )
    policy = make_lm(tok)
    out = train_policy(
        cfg, prompts=PROMPTS, judge=CountReward(), policy_model=policy, tokenizer=tok
    )
    rows = read_metrics(out / "metrics.jsonl")
    assert "reward/mean" in rows[0] and "pref/mean" not in rows[0]
    first = sum(r["reward/mean"] for r in rows[:5]) / 5
    last = sum(r["reward/mean"] for r in rows[-5:]) / 5
    assert last > first + 0.5, (first, last)


def test_nash_md_pg_learns_the_preference(tmp_path, tok):
    """Against the count judge, the policy's responses come to beat the initial policy's."""
    cfg = base_cfg(tmp_path, steps=25, batch_size=16, lr=1e-2, tau=0.01, beta=0.125)
    policy, initial = make_lm(tok), make_lm(tok)
    train_policy(cfg, prompts=PROMPTS, judge=count_judge(), policy_model=policy, tokenizer=tok)
    gen = torch.Generator().manual_seed(0)
    a = generate(policy, tok, PROMPTS * 20, max_new_tokens=6, generator=gen)
    b = generate(initial.eval(), tok, PROMPTS * 20, max_new_tokens=6, generator=gen)
    win = count_judge().prob(a.prompts, a.texts, b.texts).mean().item()
    assert win > 0.6, win


def test_lora_reference_is_the_base_model_with_adapters_disabled(tmp_path, tok):
    base = make_lm(tok)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    cfg = base_cfg(tmp_path, steps=3, lora=True, lora_r=4, lr=5e-2, max_grad_norm=0)
    out = train_policy(cfg, prompts=PROMPTS, judge=count_judge(), policy_model=base, tokenizer=tok)
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["kl/ref"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["kl/ref"] != pytest.approx(0.0, abs=1e-4)  # the adapters moved the policy
    merged = AutoModelForCausalLM.from_pretrained(out)  # a standard checkpoint, adapters merged
    assert (out / "adapter" / "adapter_config.json").is_file()
    fresh = make_lm(tok)
    fresh.load_state_dict(original)
    x = torch.tensor([[tok.bos_token_id, 5, 6, 7]])
    with torch.no_grad():
        assert not torch.allclose(merged(x).logits, fresh.eval()(x).logits, atol=1e-4)
    # AdaptersDisabled(peft model) reproduces the base model exactly
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(make_lm(tok), LoraConfig(r=4, task_type="CAUSAL_LM")).eval()
    with torch.no_grad():
        for p in peft_model.parameters():
            if p.requires_grad:
                p.add_(0.5)
        assert torch.equal(AdaptersDisabled(peft_model)(x).logits, fresh(x).logits)
        assert not torch.allclose(peft_model(x).logits, fresh(x).logits)


# ------------------------------------------------------------------------------ the command


def test_nlhf_train_command_end_to_end(tmp_path, tok):
    from nlhf.models import RewardModel, random_backbone

    policy_dir, judge_dir = tmp_path / "sft", tmp_path / "rm"
    make_lm(tok).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    arch = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64}
    RewardModel(random_backbone(arch, tok), tok).save_pretrained(judge_dir)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "out"
    args = ["train", "--policy", str(policy_dir), "--judge", str(judge_dir)]
    args += ["--prompts", str(tmp_path / "prompts.txt"), "--output-dir", str(out)]
    args += ["--steps", "2", "--batch-size", "4", "--max-new-tokens", "5", "--no-progress"]
    assert cli_main(args + ["--alternative", "mixture", "--beta", "0.25"]) == 0
    assert (out / "model.safetensors").is_file() and len(read_metrics(out / "metrics.jsonl")) == 2
    assert cli_main(args + ["--reward-model", "--output-dir", str(tmp_path / "rlhf")]) == 0
    assert "reward/mean" in read_metrics(tmp_path / "rlhf" / "metrics.jsonl")[0]
    # bad input: one line, exit 2
    assert cli_main(args + ["--beta", "2"]) == 2
    assert cli_main(args + ["--log-with", "no-such-tracker"]) == 2
    assert cli_main(args + ["--prompts", str(tmp_path / "none.txt")]) == 2


def test_bf16_mixed_precision_then_full_precision_in_one_process(tmp_path, tok):
    for precision in ("bf16", "no"):  # accelerate's process-wide state is reset between runs
        cfg = base_cfg(tmp_path, steps=2, mixed_precision=precision, overwrite=True)
        out = train_policy(
            cfg, prompts=PROMPTS, judge=count_judge(), policy_model=make_lm(tok), tokenizer=tok
        )
        rows = read_metrics(out / "metrics.jsonl")
        assert len(rows) == 2 and all(abs(r["loss/total"]) < 1e3 for r in rows)
