"""Preference model, reward model, embedding model and judges: antisymmetry, truncation,
checkpoints, evaluation metrics."""

from __future__ import annotations

import json
import random
import warnings

import pytest
import torch
from transformers import BertConfig, GPT2Config

from nlhf.data import Comparison
from nlhf.models import (
    CallableJudge,
    EmbeddingPreferenceModel,
    Judge,
    PairwisePreferenceModel,
    PreferenceModelJudge,
    RewardModel,
    RewardModelJudge,
    antisymmetric_sigmoid,
    evaluate_judge,
    load_judge,
    load_model,
    random_backbone,
)
from nlhf.models.preference import share_room
from nlhf.models.tokenizer import build_tokenizer

WORDS = "the a river bank loan storm harbor ship vote council school teacher garden flower"
WORDS = WORDS.split()
GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 64}
BERT = {
    "model_type": "bert",
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer([" ".join(WORDS)] * 2, kind="word")


def _random_texts(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(lo, hi))) for _ in range(n)]


def _model(kind: str, tokenizer, config=GPT2, **kw):
    torch.manual_seed(0)
    cls = {"pairwise": PairwisePreferenceModel, "reward": RewardModel}.get(
        kind, EmbeddingPreferenceModel
    )
    backbone = random_backbone(config, tokenizer, num_labels=4 if kind == "embedding" else 1)
    return cls(backbone, tokenizer, **kw)


@pytest.mark.parametrize("kind", ["pairwise", "reward", "embedding"])
def test_antisymmetry_is_exact_on_random_inputs(tokenizer, kind):
    rng = random.Random(0)
    judge = PreferenceModelJudge(_model(kind, tokenizer), device="cpu", batch_size=16)
    prompts = _random_texts(rng, 40, 1, 12)
    a = _random_texts(rng, 40, 1, 8)
    b = _random_texts(rng, 40, 1, 8)
    p_ab = judge.prob(prompts, a, b)
    p_ba = judge.prob(prompts, b, a)
    assert p_ab.dtype == torch.float32 and p_ab.shape == (40,) and p_ab.device.type == "cpu"
    assert torch.equal(p_ba, 1 - p_ab)  # exact, not approximately
    assert torch.equal(judge.logit(prompts, b, a), -judge.logit(prompts, a, b))
    assert torch.equal(judge.prob(prompts, a, a), torch.full((40,), 0.5))
    # batching does not change results: one pair alone gives the same number
    assert torch.allclose(judge.prob(prompts[:1], a[:1], b[:1]), p_ab[:1], atol=1e-6)
    # an untrained model still distinguishes inputs (the test is not vacuous)
    assert p_ab.std() > 0
    assert isinstance(judge, Judge)


def test_antisymmetric_sigmoid_is_exact():
    d = torch.randn(10_000) * 30
    assert torch.equal(antisymmetric_sigmoid(-d), 1 - antisymmetric_sigmoid(d))
    assert torch.allclose(antisymmetric_sigmoid(d), torch.sigmoid(d), atol=1e-7)


def test_pairwise_model_is_order_sensitive(tokenizer):
    """Not a symmetric function in disguise: v(x, y, y') != v(x, y', y) in general."""
    model = _model("pairwise", tokenizer)
    batch = model.tokenize(["the river"], ["a bank"], ["storm ship vote"])
    # the two sequences hold both responses in opposite orders
    ids = batch["input_ids"]
    assert ids.shape[0] == 2 and not torch.equal(ids[0], ids[1])
    assert sorted(ids[0].tolist()) == sorted(ids[1].tolist())


def test_truncation_keeps_both_responses_and_warns_once(tokenizer):
    model = _model("pairwise", tokenizer, max_length=16)
    sep = model.sep_id
    long_prompt = " ".join(WORDS * 3)  # 42 tokens
    with pytest.warns(UserWarning, match="truncating the prompt first") as record:
        batch = model.tokenize([long_prompt], ["river bank"], ["storm ship vote"])
        model.tokenize([long_prompt], ["river bank"], ["storm ship vote"])
    assert len(record) == 1
    seq = batch["input_ids"][0].tolist()
    assert len(seq) == 16 and seq.count(sep) == 2
    # both responses intact, the prompt's end kept: 16 = <bos> + 7 prompt tokens + 2 <sep>
    # + 2 + 3 response tokens + <eos>
    expected = ["<bos>", *WORDS[-7:], "<sep>", "river", "bank", "<sep>", "storm", "ship", "vote"]
    assert tokenizer.convert_ids_to_tokens(seq) == [*expected, "<eos>"]
    # responses too long even without the prompt: shared equally, both visible
    long_a, long_b = " ".join(WORDS[:10]), " ".join(WORDS[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # already warned once: no second warning
        batch = model.tokenize(["the"], [long_a], [long_b])
    seq = batch["input_ids"][0].tolist()
    assert len(seq) == 16
    parts = tokenizer.decode(seq).split("<sep>")
    assert len(parts) == 3 and all(p.replace("<eos>", "").strip() for p in parts[1:])
    assert share_room([10, 2], 12) == [10, 2] and share_room([10, 20], 12) == [6, 6]
    assert share_room([3, 20], 12) == [3, 9] and share_room([7, 7], 9) == [4, 4]


def test_reward_judge_is_bradley_terry(tokenizer):
    judge = load_judge_from(_model("reward", tokenizer))
    assert isinstance(judge, RewardModelJudge)
    prompts, a, b = ["the river", "a ship"], ["bank loan", "vote"], ["storm", "school teacher"]
    r_a, r_b = judge.reward(prompts, a), judge.reward(prompts, b)
    assert r_a.shape == (2,)
    assert torch.allclose(judge.prob(prompts, a, b), torch.sigmoid(r_a - r_b), atol=1e-6)
    with pytest.raises(ValueError, match="equal batch sizes"):
        judge.reward(prompts, a[:1])
    with pytest.raises(ValueError, match="equal batch sizes"):
        judge.prob(prompts, a, b[:1])


def load_judge_from(model):
    from nlhf.models import make_judge

    return make_judge(model, device="cpu")


@pytest.mark.parametrize(
    ("kind", "config"),
    [("pairwise", GPT2), ("reward", GPT2), ("embedding", GPT2), ("pairwise", BERT)],
)
def test_save_load_identical_predictions(tmp_path, tokenizer, kind, config):
    model = _model(kind, tokenizer, config=config, max_length=40)
    rng = random.Random(1)
    prompts, a, b = (_random_texts(rng, 12, 1, 6) for _ in range(3))
    before = load_judge_from(model).prob(prompts, a, b)
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "nlhf_model.json"} <= files
    marker = json.loads((tmp_path / "m" / "nlhf_model.json").read_text())
    assert marker["kind"] == kind and marker["max_length"] == 40
    judge = load_judge(tmp_path / "m", device="cpu", batch_size=5)
    assert judge.kind == kind
    assert torch.equal(judge.prob(prompts, a, b), before)
    # a plain HF checkpoint: the Auto classes read it
    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m")
    assert isinstance(plain.config, BertConfig if config is BERT else GPT2Config)


def test_load_errors(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no such model directory"):
        load_judge(tmp_path / "missing")
    model = _model("reward", tokenizer)
    model.backbone.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="no nlhf_model.json marker"):
        load_judge(tmp_path / "plain")
    assert isinstance(load_judge(tmp_path / "plain", kind="reward", device="cpu"), RewardModelJudge)
    (tmp_path / "plain" / "nlhf_model.json").write_text('{"kind": "oracle"}')
    with pytest.raises(ValueError, match="unknown model kind 'oracle'"):
        load_model(tmp_path / "plain")
    (tmp_path / "plain" / "model.safetensors").write_text("corrupt")
    (tmp_path / "plain" / "nlhf_model.json").write_text('{"kind": "reward"}')
    with pytest.raises(ValueError, match="cannot load the checkpoint"):
        load_model(tmp_path / "plain")
    with pytest.raises(ValueError, match="embedding_dim"):
        from nlhf.models.preference import num_labels_for

        num_labels_for("embedding", 3)


def test_evaluate_judge_metrics_and_cycles():
    x = "prompt"
    # a judge with a rock-paper-scissors preference over three responses
    beats = {("r", "s"): 0.8, ("s", "p"): 0.7, ("p", "r"): 0.9}

    def rps(prompts, a, b):
        return [
            0.5 if u == v else beats.get((u, v), 1 - beats.get((v, u), 0.5)) for u, v in zip(a, b)
        ]

    data = [
        Comparison(x, "r", "s", 1.0),
        Comparison(x, "s", "p", 0.0),  # the judge says 0.7: wrong
        Comparison(x, "p", "r", 1.0),
        Comparison(x, "r", "p", 0.5),  # a tie: not counted in accuracy
    ]
    m = evaluate_judge(CallableJudge(rps), data)
    assert m["eval/accuracy"] == pytest.approx(2 / 3)
    expected = (
        -(torch.tensor([0.8, 0.3, 0.9]).log().sum() + 0.5 * torch.tensor(0.1 * 0.9).log()) / 4
    )
    assert m["eval/log_loss"] == pytest.approx(float(expected), rel=1e-5)
    assert m["eval/antisymmetry_error"] == pytest.approx(0.0, abs=1e-7)
    assert m["eval/triples"] == 1 and m["eval/cycles"] == 1
    # the data's mean labels: r > s, p > s (1 - 0), p > r (mean of 1.0 and 0.5): no cycle
    assert m["eval/data_cycles"] == 0
    # a transitive judge has no cycles; a broken one shows its antisymmetry error
    m = evaluate_judge(
        CallableJudge(lambda p, a, b: [0.5 + 0.1 * (u < v) for u, v in zip(a, b)]), data
    )
    assert m["eval/cycles"] == 0
    assert m["eval/antisymmetry_error"] == pytest.approx(0.1, abs=1e-6)
    # ECE: a constant 0.5 judge on labels averaging 0.625 in the single bin
    m = evaluate_judge(CallableJudge(lambda p, a, b: [0.5] * len(a)), data)
    assert m["eval/ece"] == pytest.approx(0.125)
