"""Cross-check of the deep trainer against the tabular solvers (paper §4 vs §6).

A policy over n responses is a real Hugging Face causal LM that emits one token: a GPT-2 with
no transformer blocks whose vocabulary holds the n responses (plus the special tokens), and
whose only trainable weight is the output matrix, so the logits of the one prompt are free
parameters. With a known preference matrix P, reference mu and tau, ``train_policy`` with the
Nash-MD-PG alternative (sampled y and y', large batches, small SGD steps) must reach the
regularized equilibrium pi*_tau that ``nlhf.games.solve_regularized`` computes, while self-play
on rock-paper-scissors (tau = 0) keeps cycling.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nlhf.games import PreferenceGame, kl, solve_regularized
from nlhf.models.judge import CallableJudge
from nlhf.models.tokenizer import build_tokenizer
from nlhf.train.policy import PolicyTrainConfig, train_policy

RESPONSES = ["r0", "r1", "r2"]
# A non-transitive 3x3 game that is not symmetric under relabelling (r0 > r1 > r2 > r0).
P_CYCLE = np.array([[0.5, 0.9, 0.2], [0.1, 0.5, 0.7], [0.8, 0.3, 0.5]])
RPS = np.array([[0.5, 0.0, 1.0], [1.0, 0.5, 0.0], [0.0, 1.0, 0.5]])
MU = np.array([0.6, 0.3, 0.1])


def tabular_policy(mu: np.ndarray):
    """A one-token causal LM over RESPONSES with pi(. | <bos>) = mu, logits = W h (W free)."""
    tok = build_tokenizer([" ".join(RESPONSES)], kind="word")
    ids = [tok.convert_tokens_to_ids(r) for r in RESPONSES]
    config = GPT2Config(
        n_layer=0,
        n_embd=16,
        n_head=1,
        vocab_size=len(tok),
        n_positions=4,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    prompt = torch.tensor([[tok.bos_token_id]])
    with torch.no_grad():
        h = model.transformer(prompt).last_hidden_state[0, -1]  # (D,) fixed feature
        target = torch.full((len(tok),), -30.0)  # special tokens: probability ~1e-13
        target[ids] = torch.log(torch.as_tensor(mu, dtype=torch.float32))
        model.lm_head.weight.copy_(target[:, None] * h[None, :] / (h @ h))
    model.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # the logits are the free parameters

    def probs(m) -> np.ndarray:
        with torch.no_grad():
            p = torch.softmax(m(prompt).logits[0, -1].double(), -1)[ids]
        return (p / p.sum()).numpy()

    return model, tok, probs


def matrix_judge(P: np.ndarray) -> CallableJudge:
    index = {r: i for i, r in enumerate(RESPONSES)}
    return CallableJudge(lambda prompts, a, b: [P[index[x], index[y]] for x, y in zip(a, b)])


def md_fixed_point(P, mu, tau, beta, iters=20000):
    """Stationary point of Nash-MD-PG's expected update: pi = BR_tau(pi^(1-beta) mu^beta)."""
    pi = mu.copy()
    for _ in range(iters):
        alt = np.exp((1 - beta) * np.log(pi) + beta * np.log(mu))
        alt /= alt.sum()
        br = mu * np.exp(P @ alt / tau)
        br /= br.sum()
        pi = np.exp(0.95 * np.log(pi) + 0.05 * np.log(br))
        pi /= pi.sum()
    return pi


def test_nash_md_pg_reaches_the_regularized_equilibrium(tmp_path):
    tau, beta = 0.2, 0.05
    model, tok, probs = tabular_policy(MU)
    star = solve_regularized(PreferenceGame(P_CYCLE, mu=MU, tau=tau))
    trajectory = []
    cfg = PolicyTrainConfig(
        output_dir=str(tmp_path / "md"),
        alternative="mixture",
        beta=beta,
        tau=tau,
        steps=150,
        batch_size=1024,
        max_new_tokens=1,
        optimizer="sgd",
        lr=0.15,
        lr_schedule="linear",
        max_grad_norm=0.0,
        checkpoint_every=0,
        progress=False,
    )
    train_policy(
        cfg,
        prompts=["<bos>"],
        judge=matrix_judge(P_CYCLE),
        policy_model=model,
        tokenizer=tok,
        callback=lambda step, m, rec: trajectory.append(kl(star, probs(m))),
    )
    final = kl(star, probs(model))
    print(f"Nash-MD-PG tabular: KL(pi*_tau, pi_T) = {final:.2e}, start {kl(star, MU):.3f}")
    assert kl(star, MU) > 0.1  # the start is far from the equilibrium
    assert final < 1e-3
    # the bias of a constant beta is O(beta^2): the algorithm's own fixed point is even closer
    assert kl(star, md_fixed_point(P_CYCLE, MU, tau, beta)) < 2e-4
    assert max(trajectory[-20:]) < 2e-3  # it settled, not just passed by


def test_self_play_last_iterate_cycles_on_rock_paper_scissors(tmp_path):
    model, tok, probs = tabular_policy(np.array([0.2, 0.7, 0.1]))
    iterates = []
    cfg = PolicyTrainConfig(
        output_dir=str(tmp_path / "sp"),
        alternative="self",
        tau=0.0,
        steps=120,
        batch_size=256,
        max_new_tokens=1,
        optimizer="sgd",
        lr=0.15,
        max_grad_norm=0.0,
        checkpoint_every=0,
        progress=False,
    )
    train_policy(
        cfg,
        prompts=["<bos>"],
        judge=matrix_judge(RPS),
        policy_model=model,
        tokenizer=tok,
        callback=lambda step, m, rec: iterates.append(probs(m)),
    )
    iterates = np.array(iterates)  # (steps, 3)
    uniform = np.full(3, 1 / 3)  # the Nash equilibrium of RPS
    late = iterates[len(iterates) // 2 :]
    distances = np.array([kl(uniform, p) for p in late])
    # the last iterate never settles at the equilibrium: it stays far and keeps rotating through
    # rock -> paper -> scissors (every response is the most likely one at some point)
    assert distances.min() > 0.05, distances.min()
    assert set(np.argmax(late, axis=1)) == {0, 1, 2}
