"""The tournament recovers a known answer: three real GPT-2 checkpoints that each emit
one style, and a judge equal to a known Condorcet style game."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from nlhf.eval import tournament as tournament_module
from nlhf.eval.tournament import TournamentResult, run_tournament
from nlhf.games import solve_nash_lp
from nlhf.models.judge import CallableJudge
from nlhf.models.tokenizer import build_tokenizer

STYLES = ["brief", "list", "story"]
CONTENT = ["rain", "storm", "goal", "team", "price", "bank", "gene", "orbit"]
# Three rater groups (0.40, 0.35, 0.25) with sharp Condorcet tastes (docs/task.md):
# P(brief > list) = 0.65, P(list > story) = 0.75, P(story > brief) = 0.60; Nash (0.5, 0.2, 0.3).
STYLE_GAME = np.array(
    [
        [0.50, 0.65, 0.40],
        [0.35, 0.50, 0.75],
        [0.60, 0.25, 0.50],
    ]
)


def forced_policy(tokenizer, words: list[str], path: Path) -> Path:
    """A real GPT-2 checkpoint whose response after ``<sep>`` is ``words`` then EOS, with
    probability 1 in float32: the blocks are zeroed to the identity (residual only), positions
    are off, token embeddings are one-hot, and the untied LM head maps the layer-normed embedding
    of each token to a logit of 10 * n_embd on its successor."""
    vocab = tokenizer.get_vocab()
    V = len(vocab)
    d = V + 2
    config = GPT2Config(
        vocab_size=V,
        n_positions=64,
        n_embd=d,
        n_layer=1,
        n_head=1,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            for linear in (block.attn.c_proj, block.mlp.c_proj):
                linear.weight.zero_()
                linear.bias.zero_()
        model.transformer.wpe.weight.zero_()
        one_hot = torch.eye(V, d)  # (V, d)
        model.transformer.wte.weight.copy_(one_hot)
        normed = torch.nn.functional.layer_norm(one_hot, (d,))  # what the head sees
        model.lm_head.weight.zero_()
        sequence = ["<sep>", *words, "<eos>"]
        for prev, nxt in zip(sequence, sequence[1:]):
            model.lm_head.weight[vocab[nxt]] = 10.0 * normed[vocab[prev]]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def style_index(response: str) -> int:
    return STYLES.index(response.split()[0])


def style_game_fn(prompts, a, b):
    return [STYLE_GAME[style_index(x), style_index(y)] for x, y in zip(a, b)]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        "<bos> " + " ".join(rng.choice(CONTENT, size=int(rng.integers(2, 6)))) + " <sep>"
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("policies")
    tokenizer = build_tokenizer([" ".join(STYLES + CONTENT)], kind="word")
    return {
        style: forced_policy(tokenizer, [style, CONTENT[i]], root / style)
        for i, style in enumerate(STYLES)
    }


def expected_matrix() -> np.ndarray:
    # policies in STYLES order: M[row, col] = P(col > row) = STYLE_GAME[col, row]
    return STYLE_GAME.T


def test_prob_labels_recover_the_style_game(pool):
    prompts = make_prompts(64)
    result = run_tournament(
        pool, prompts, CallableJudge(style_game_fn), labels="prob", max_new_tokens=4,
        progress=False,
    )  # fmt: skip
    assert result.names == STYLES
    for k, style in enumerate(STYLES):  # each checkpoint really emits its one response
        assert set(result.samples[style]) == {f"{style} {CONTENT[k]}"}
    np.testing.assert_allclose(result.matrix, expected_matrix(), atol=1e-6)
    assert np.array_equal(result.matrix + result.matrix.T, np.ones((3, 3)))
    assert np.all(np.diag(result.matrix) == 0.5)
    # every prompt gives the same probability: the t interval collapses onto the exact value
    np.testing.assert_allclose(result.lower, expected_matrix(), atol=1e-6)
    np.testing.assert_allclose(result.upper, expected_matrix(), atol=1e-6)
    pi, _ = solve_nash_lp(STYLE_GAME)
    np.testing.assert_allclose(result.meta_nash, pi, atol=1e-6)
    np.testing.assert_allclose(result.meta_nash, [0.5, 0.2, 0.3], atol=1e-6)
    # worst case of each style = its losing pair; exploitability = 1/2 - worst case
    np.testing.assert_allclose(result.worst_case, [0.40, 0.35, 0.25], atol=1e-6)
    assert result.worst_opponent == ["story", "brief", "list"]
    np.testing.assert_allclose(result.exploitability, [0.10, 0.15, 0.25], atol=1e-6)
    assert result.meta_nash_exploitability < 1e-6


def test_sampled_labels_intervals_contain_the_truth(pool):
    n = 1500
    result = run_tournament(
        pool, make_prompts(n), CallableJudge(style_game_fn), labels="sampled", max_new_tokens=4,
        confidence=0.9999, progress=False,
    )  # fmt: skip
    truth = expected_matrix()
    # 99.99% Clopper-Pearson intervals: all three pairs cover with probability >= 0.9997
    assert np.all(result.lower <= truth) and np.all(truth <= result.upper)
    off = ~np.eye(3, dtype=bool)
    assert np.all((result.upper - result.lower)[off] < 0.12)  # and they are informative
    assert np.all(result.lower <= result.matrix) and np.all(result.matrix <= result.upper)
    assert np.array_equal(result.matrix + result.matrix.T, np.ones((3, 3)))
    np.testing.assert_allclose(result.lower + result.upper.T, 1.0, atol=1e-12)
    # the 0/1 labels make every estimate a multiple of 1/n
    np.testing.assert_allclose(result.matrix * n, np.round(result.matrix * n), atol=1e-9)
    assert math.isclose(result.meta_nash.sum(), 1.0, abs_tol=1e-9)


def noisy_judge(prompts, a, b):
    """Antisymmetric per-prompt probabilities around the style game: logit shifted by a
    prompt-dependent amount times (index(a) - index(b))."""
    out = []
    for p, x, y in zip(prompts, a, b):
        i, j = style_index(x), style_index(y)
        shift = 0.4 * math.sin(len(p) * 1.7 + p.count("rain")) * (i - j)
        logit = math.log(STYLE_GAME[i, j] / (1 - STYLE_GAME[i, j]))
        out.append(1 / (1 + math.exp(-(logit + shift))))
    return out


@pytest.mark.parametrize("interval", ["t", "bootstrap"])
def test_probability_intervals_contain_point_estimates(pool, interval):
    result = run_tournament(
        pool, make_prompts(200), CallableJudge(noisy_judge), labels="prob", interval=interval,
        max_new_tokens=4, progress=False,
    )  # fmt: skip
    off = ~np.eye(3, dtype=bool)
    assert np.all(result.lower <= result.matrix) and np.all(result.matrix <= result.upper)
    assert np.all((result.upper - result.lower)[off] > 1e-3)  # the spread is real
    assert np.array_equal(result.matrix + result.matrix.T, np.ones((3, 3)))
    np.testing.assert_allclose(result.lower + result.upper.T, 1.0, atol=1e-12)


def test_position_balancing_cancels_a_position_bias(pool):
    def first_wins(prompts, a, b):  # prefers whatever is shown first, whatever it is
        return [0.7] * len(a)

    kwargs = dict(labels="prob", max_new_tokens=4, progress=False)
    fair = run_tournament(pool, make_prompts(40), CallableJudge(first_wins), **kwargs)
    np.testing.assert_allclose(fair.matrix, 0.5, atol=1e-6)
    biased = run_tournament(
        pool, make_prompts(40), CallableJudge(first_wins), balance_positions=False, **kwargs
    )
    np.testing.assert_allclose(biased.matrix[0, 1], 0.7, atol=1e-6)


def test_samples_are_seeded_per_policy(pool):
    """Same seed -> same result; a policy's samples do not depend on the rest of the pool."""
    prompts = make_prompts(30)
    judge = CallableJudge(style_game_fn)
    kw = dict(labels="sampled", max_new_tokens=4, progress=False, seed=3)
    a = run_tournament(pool, prompts, judge, **kw)
    b = run_tournament(pool, prompts, judge, **kw)
    assert np.array_equal(a.matrix, b.matrix)
    two = run_tournament({k: pool[k] for k in STYLES[:2]}, prompts, judge, **kw)
    assert two.matrix[0, 1] == a.matrix[0, 1]


@pytest.mark.parametrize("damage", ["missing", "truncated weights", "bad config", "no weights"])
def test_bad_checkpoint_fails_before_sampling(pool, tmp_path, monkeypatch, damage):
    import shutil

    bad = tmp_path / "broken-policy"
    if damage != "missing":
        shutil.copytree(pool["list"], bad)
    if damage == "truncated weights":
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "bad config":
        (bad / "config.json").write_text('{"model_type": "gpt2", "n_embd": ')
    elif damage == "no weights":
        (bad / "model.safetensors").unlink()
    calls = []
    monkeypatch.setattr(tournament_module, "_generate_texts", lambda *a, **k: calls.append(a))
    policies = {"brief": pool["brief"], "story": pool["story"], "broken": bad}
    with pytest.raises(ValueError, match=r"policy 'broken' \(.*broken-policy\)") as err:
        run_tournament(policies, make_prompts(4), CallableJudge(style_game_fn), progress=False)
    assert calls == [], "sampling started before every checkpoint was checked"
    expected = {
        "missing": "does not exist",
        "truncated weights": "corrupted weight file model.safetensors",
        "bad config": "corrupted config.json",
        "no weights": "no weights",
    }[damage]
    assert expected in str(err.value)


def test_bad_arguments_are_named(pool):
    judge = CallableJudge(style_game_fn)
    with pytest.raises(ValueError, match="at least 2 policies"):
        run_tournament({"brief": pool["brief"]}, make_prompts(4), judge)
    with pytest.raises(ValueError, match="n_prompts=10"):
        run_tournament(pool, make_prompts(4), judge, n_prompts=10)
    with pytest.raises(ValueError, match="labels"):
        run_tournament(pool, make_prompts(4), judge, labels="soft")
    with pytest.raises(ValueError, match="prompt 1"):
        run_tournament(pool, ["<bos> rain <sep>", "  "], judge)


def test_result_json_round_trip(pool, tmp_path):
    result = run_tournament(
        pool, make_prompts(20), CallableJudge(style_game_fn), labels="prob", max_new_tokens=4,
        progress=False,
    )  # fmt: skip
    back = TournamentResult.from_json(result.to_json(tmp_path / "t.json", include_samples=True))
    assert back.names == result.names and back.samples == result.samples
    for key in ("matrix", "lower", "upper", "meta_nash", "exploitability", "worst_case"):
        np.testing.assert_array_equal(getattr(back, key), getattr(result, key))
    rows = (result.to_csv(tmp_path / "m.csv")).read_text().splitlines()
    assert rows[0].startswith("row,column,p_column_beats_row") and len(rows) == 1 + 9
    assert "brief" in result.summary_table() and "meta-Nash" in result.summary_table()


def test_random_policy_samples_are_reproducible(pool, tmp_path):
    tokenizer = build_tokenizer([" ".join(STYLES + CONTENT)], kind="word")
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "noise")
    tokenizer.save_pretrained(tmp_path / "noise")
    policies = {"noise": tmp_path / "noise", "brief": pool["brief"]}
    judge = CallableJudge(lambda p, a, b: [0.5] * len(a))
    kw = dict(labels="prob", max_new_tokens=6, progress=False)
    a = run_tournament(policies, make_prompts(16), judge, seed=1, **kw)
    b = run_tournament(policies, make_prompts(16), judge, seed=1, **kw)
    c = run_tournament(policies, make_prompts(16), judge, seed=2, **kw)
    assert a.samples["noise"] == b.samples["noise"]
    assert a.samples["noise"] != c.samples["noise"]
    assert len(set(a.samples["noise"])) > 1  # a real sampled policy, not a fixed one
