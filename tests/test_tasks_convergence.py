"""Convergence in a feature game: exact targets, distances, the probe and the recorder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nlhf.tasks import convergence as cv
from nlhf.tasks.summaries import STYLES, SummaryTask

# A cyclic 3x3 game like a learned style game (P(row > column)) and a reference mu.
G = np.array([[0.5, 0.6, 0.466], [0.4, 0.5, 0.71], [0.534, 0.29, 0.5]])
MU = np.array([0.205, 0.498, 0.297])
TAU = 0.01


def expected_softmax_pg(beta: float, steps: int = 60_000, lr: float = 0.5) -> np.ndarray:
    """The exact expected Nash-MD-PG update of a tabular softmax policy (one logit per
    category): z += lr * pi * (A - E_pi A), A = G pi^beta - tau log(pi / mu)."""
    z = np.log(MU).copy()
    for _ in range(steps):
        pi = np.exp(z - z.max())
        pi /= pi.sum()
        A = G @ cv.geometric_mixture(pi, MU, beta) - TAU * (np.log(pi) - np.log(MU))
        z += lr * pi * (A - pi @ A)
    return pi


def test_targets_are_the_fixed_points_of_their_dynamics():
    pi_star = cv.regularized_nash(G, MU, TAU)
    # pi*_tau ∝ mu exp(G pi*_tau / tau)
    np.testing.assert_allclose(
        pi_star, cv.regularized_best_response(G, MU, TAU, pi_star), atol=1e-9
    )
    np.testing.assert_allclose(cv.mixture_fixed_point(G, MU, TAU, 0.0), pi_star, atol=1e-9)
    br = cv.mixture_fixed_point(G, MU, TAU, 1.0)
    np.testing.assert_allclose(br, cv.regularized_best_response(G, MU, TAU, MU), atol=1e-9)
    for beta in (0.0, 0.125):  # the expected policy gradient settles exactly there
        np.testing.assert_allclose(
            expected_softmax_pg(beta), cv.mixture_fixed_point(G, MU, TAU, beta), atol=1e-4
        )


def test_fixed_beta_bias_is_second_order():
    pi_star = cv.regularized_nash(G, MU, TAU)
    ratios = [cv.kl_to(cv.mixture_fixed_point(G, MU, TAU, b), pi_star) / b**2 for b in (0.01, 0.02)]
    assert ratios[0] > 0 and ratios[1] == pytest.approx(ratios[0], rel=0.05)
    big = cv.kl_to(cv.mixture_fixed_point(G, MU, TAU, 0.25), pi_star)
    assert big > 10 * cv.kl_to(cv.mixture_fixed_point(G, MU, TAU, 0.02), pi_star)


def test_reward_optimum_and_distances():
    r = np.array([0.1, 0.1, -0.4])
    opt = cv.reward_optimum(r, MU, 0.05)
    np.testing.assert_allclose(opt, MU * np.exp(r / 0.05) / (MU * np.exp(r / 0.05)).sum())
    target = np.array([0.5, 0.2, 0.3])
    shares = np.array([0.4, 0.2, 0.3, 0.1])  # 0.1 on no category
    assert cv.tv_to(target, shares) == pytest.approx(0.1)
    assert cv.kl_to(target, shares) == pytest.approx(0.5 * np.log(0.5 / 0.4))
    assert cv.kl_to(target, target) == 0.0 and cv.tv_to(target, target) == 0.0
    both = cv.kl_to(target, np.stack([shares, np.append(target, 0.0)]))
    np.testing.assert_allclose(both, [0.5 * np.log(0.5 / 0.4), 0.0], atol=1e-15)
    with pytest.raises(ValueError, match="tau must be > 0"):
        cv.regularized_nash(G, MU, 0.0)
    with pytest.raises(ValueError, match="shares have 5 entries"):
        cv.kl_to(target, np.ones(5) / 5)


def test_feature_game_of_the_exact_raters_is_their_style_game():
    task = SummaryTask(seed=0)
    prompts = task.prompts(40, seed=9)
    game = cv.feature_game(
        task.judge(), prompts, lambda p, s: " ".join([s, *task.salient_words(p)]), STYLES
    )
    np.testing.assert_allclose(game, task.style_game(), atol=1e-6)


@pytest.fixture(scope="module")
def tiny_policy():
    from transformers import GPT2Config, GPT2LMHeadModel

    task = SummaryTask(seed=0)
    tokenizer = task.tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_layer=1, n_embd=16, n_head=2, n_positions=32,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make the first token matter: style words get large logits
        bias = torch.zeros(len(tokenizer))
        for i, s in enumerate(STYLES):
            bias[tokenizer.convert_tokens_to_ids(s)] = 2.0 + i
        model.lm_head.weight.mul_(0.1)
        model.transformer.ln_f.bias.zero_()
    return task, tokenizer, model


def test_probe_exact_and_sampled_shares_agree(tiny_policy):
    task, tokenizer, model = tiny_policy
    prompts = task.prompts(30, seed=11)
    ids = [tokenizer.convert_tokens_to_ids(s) for s in STYLES]
    exact = cv.FeatureProbe(prompts, list(STYLES), token_ids=ids).shares(model, tokenizer)
    assert exact.shape == (4,) and exact.sum() == pytest.approx(1.0)
    # the exact path is the first-token softmax, averaged over prompts
    from nlhf.sampling import encode_prompts

    direct = np.zeros(3)
    for p in prompts:
        (ids_p,) = encode_prompts(tokenizer, [p])
        logits = model(input_ids=torch.tensor([ids_p])).logits[0, -1]
        direct += torch.softmax(logits, -1)[ids].detach().numpy() / len(prompts)
    np.testing.assert_allclose(exact[:3], direct, atol=1e-5)
    sampled = cv.FeatureProbe(
        prompts, list(STYLES), feature=lambda p, r: task.style_of(r), samples=200,
        max_new_tokens=2,
    ).shares(model, tokenizer)  # fmt: skip
    assert np.abs(sampled - exact).max() < 0.03  # 6000 draws: 3 standard errors
    with pytest.raises(ValueError, match="exactly one of"):
        cv.FeatureProbe(prompts, list(STYLES))


def test_recorder_writes_rows_and_records_the_trainers_average(tiny_policy, tmp_path):
    """The trainer calls the recorder at step 0 and passes Nash-EMA-PG's averaged policy: the
    recorded average is the EMA the trainer saves."""
    import copy

    from nlhf.train.policy import PolicyTrainConfig, train_policy

    task, tokenizer, model = tiny_policy
    ids = [tokenizer.convert_tokens_to_ids(s) for s in STYLES]
    probe = cv.FeatureProbe(task.prompts(12, seed=12), list(STYLES), token_ids=ids)
    cfg = PolicyTrainConfig(
        output_dir=str(tmp_path / "run"), alternative="ema", ema_decay=0.8, tau=0.05, steps=5,
        batch_size=4, max_new_tokens=3, lr=1e-2, checkpoint_every=0, cpu=True, progress=False,
    )  # fmt: skip
    run = dict(prompts=task.prompts(20, seed=13), judge=task.judge(), tokenizer=tokenizer)
    recorder = cv.ConvergenceRecorder(
        probe, tokenizer, tmp_path / "convergence.jsonl", every=2, last=5
    )
    train_policy(cfg, policy_model=copy.deepcopy(model), callback=recorder, **run)
    steps, shares = cv.read_trajectory(tmp_path / "convergence.jsonl")
    assert steps.tolist() == [0, 2, 4, 5]
    assert not np.allclose(shares[0], shares[-1])  # it moved
    _, average = cv.read_trajectory(tmp_path / "convergence.jsonl", key="average_shares")
    saved = load_saved(tmp_path / "run" / "ema")
    np.testing.assert_allclose(average[-1], probe.shares(saved, tokenizer), atol=1e-6)
    np.testing.assert_allclose(average[0], shares[0], atol=1e-7)  # EMA = policy before step 1

    # a 3-argument callback that keeps its own average (and records step 0 itself) gets the
    # same rows: every step once, the same average
    from nlhf.sampling import EMAPolicy

    policy = copy.deepcopy(model)
    own = cv.ConvergenceRecorder(
        probe, tokenizer, tmp_path / "own.jsonl", every=2, last=5,
        average=EMAPolicy(copy.deepcopy(policy), decay=0.8),
    )  # fmt: skip
    own.record(0, policy)
    cfg = PolicyTrainConfig(**{**vars(cfg), "output_dir": str(tmp_path / "run2")})
    train_policy(
        cfg, policy_model=policy, callback=lambda step, p, record: own(step, p, record), **run
    )
    own_steps, own_shares = cv.read_trajectory(tmp_path / "own.jsonl")
    assert own_steps.tolist() == [0, 2, 4, 5]
    np.testing.assert_allclose(own_shares, shares, atol=1e-6)
    _, own_average = cv.read_trajectory(tmp_path / "own.jsonl", key="average_shares")
    np.testing.assert_allclose(own_average, average, atol=1e-6)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"step": 1}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 1"):
        cv.read_trajectory(tmp_path / "bad.jsonl")


def load_saved(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()
