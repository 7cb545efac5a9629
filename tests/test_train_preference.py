"""`nlhf train-preference`: the command on fixtures, outputs, config checks, resume, grad accum."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cyclic_raters import cyclic_comparisons
from safetensors.torch import load_file

import nlhf.train.preference as preference
from nlhf.cli import main
from nlhf.models import RewardModelJudge, load_judge
from nlhf.train.preference import PreferenceTrainConfig, train_preference

FIXTURES = Path(__file__).parent / "fixtures" / "data"
TINY = {
    "model_type": "gpt2",
    "n_layer": 1,
    "n_embd": 16,
    "n_head": 2,
    "n_positions": 128,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.mark.parametrize("kind", ["pairwise", "reward"])
def test_cli_random_init_on_fixture(tmp_path, tiny_config, kind, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train-preference",
            "--kind",
            kind,
            "--data",
            str(FIXTURES / "native.jsonl"),
            "--random-init",
            str(tiny_config),
            "--tokenizer-kind",
            "word",
            "--steps",
            "3",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--eval-fraction",
            "0.3",
            "--log-every",
            "1",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "eval/accuracy" in printed and f"model written to {out}" in printed
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "nlhf_model.json"} <= files
    assert {"eval.json", "metrics.jsonl", "config.yaml", "checkpoint"} <= files
    metrics = json.loads((out / "eval.json").read_text())
    for key in ("eval/accuracy", "eval/log_loss", "eval/ece", "eval/antisymmetry_error"):
        assert key in metrics
    assert metrics["eval/antisymmetry_error"] == 0.0 and metrics["train/steps"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    judge = load_judge(out, device="cpu")
    assert isinstance(judge, RewardModelJudge) == (kind == "reward")
    p = judge.prob(["Summarize: the river"], ["Rain flooded the mill."], ["A mill exists."])
    assert 0.0 < float(p) < 1.0


def test_cli_config_file_and_errors(tmp_path, tiny_config, capsys):
    config = tmp_path / "pm.yaml"
    config.write_text(
        f"data: {FIXTURES / 'hh_rlhf.jsonl'}\nrandom_init: {tiny_config}\nsteps: 1\n"
        f"batch_size: 2\neval_fraction: 0.4\noutput_dir: {tmp_path / 'run'}\n"
    )
    assert main(["train-preference", "--config", str(config), "--tokenizer-kind", "bpe"]) == 0
    assert (tmp_path / "run" / "nlhf_model.json").is_file()
    capsys.readouterr()
    # bad input -> exit 2 and one line naming the problem
    assert (
        main(
            [
                "train-preference",
                "--data",
                str(tmp_path / "nope.jsonl"),
                "--random-init",
                str(tiny_config),
            ]
        )
        == 2
    )
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert (
        main(
            [
                "train-preference",
                "--data",
                str(FIXTURES / "bad.jsonl"),
                "--random-init",
                str(tiny_config),
            ]
        )
        == 2
    )
    assert "bad.jsonl: line 2: field 'label'" in capsys.readouterr().err
    assert main(["train-preference", "--data", str(FIXTURES / "native.jsonl")]) == 2
    assert "model / random_init" in capsys.readouterr().err
    assert main(["train-preference", "--batch-size", "0"]) == 2
    assert "batch_size: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-preference", "--kind", "oracle"])


def test_skip_invalid_in_training(tmp_path, tiny_config, capsys):
    cfg = PreferenceTrainConfig(
        data=str(FIXTURES / "bad.jsonl"),
        skip_invalid=True,
        random_init=tiny_config,
        steps=1,
        batch_size=2,
        eval_fraction=0.0,
        output_dir=tmp_path / "run",
    )
    metrics = train_preference(cfg)
    assert metrics["train/comparisons"] == 2
    assert "skipped 5 of 7 rows" in capsys.readouterr().err


def test_config_validation():
    with pytest.raises(ValueError, match="batch_size: 6 is not divisible by grad_accum 4"):
        PreferenceTrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="model / random_init"):
        PreferenceTrainConfig(model="gpt2", random_init=Path("x.json"))
    with pytest.raises(ValueError, match="embedding_dim"):
        PreferenceTrainConfig(kind="embedding", embedding_dim=5)
    with pytest.raises(ValueError, match="eval_fraction"):
        PreferenceTrainConfig(eval_fraction=1.0)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    data = cyclic_comparisons(n_prompts=30, comparisons_per_prompt=4, seed=1)
    TINY_DROPOUT = {**TINY, "resid_pdrop": 0.1}  # dropout on: the RNG state must resume too
    tiny_config.write_text(json.dumps(TINY_DROPOUT))

    def config(out: Path, resume: bool = False) -> PreferenceTrainConfig:
        return PreferenceTrainConfig(
            random_init=tiny_config,
            tokenizer_kind="word",
            steps=6,
            batch_size=8,
            lr=1e-2,
            warmup_steps=2,
            save_every=3,
            eval_every=4,
            log_every=1,
            output_dir=out,
            resume=resume,
        )

    straight = train_preference(config(tmp_path / "straight"), train=data)

    real_evaluate = preference.evaluate_judge

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # the run dies at its step-4 evaluation, after the step-3 save

    monkeypatch.setattr(preference, "evaluate_judge", crash)
    with pytest.raises(KeyboardInterrupt):
        train_preference(config(tmp_path / "resumed"), train=data)
    state = json.loads((tmp_path / "resumed" / "checkpoint" / "nlhf_checkpoint.json").read_text())
    assert state["step"] == 3
    monkeypatch.setattr(preference, "evaluate_judge", real_evaluate)
    resumed = train_preference(config(tmp_path / "resumed", resume=True), train=data)

    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert resumed["eval/log_loss"] == pytest.approx(straight["eval/log_loss"], abs=1e-6)
    # the metrics log continues rather than restarts, without the rows after the checkpoint
    rows = [
        json.loads(line)
        for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if "eval/log_loss" in r] == [4, 6]


def test_gradient_accumulation_matches_a_full_batch(tmp_path, tiny_config):
    data = cyclic_comparisons(n_prompts=20, comparisons_per_prompt=4, seed=2)
    prompts = [c.prompt for c in data]
    a, b = [c.response_a for c in data], [c.response_b for c in data]

    def run(grad_accum: int, out: str, seed: int = 0) -> torch.Tensor:
        cfg = PreferenceTrainConfig(
            random_init=tiny_config,
            tokenizer_kind="word",
            steps=3,
            batch_size=8,
            grad_accum=grad_accum,
            lr=1e-2,
            eval_fraction=0.0,
            seed=seed,
            output_dir=tmp_path / out,
        )
        train_preference(cfg, train=data)
        return load_judge(tmp_path / out, device="cpu").logit(prompts, a, b)

    # Compare the learned functions, not raw weights: some weights (e.g. the final layer-norm
    # bias) cancel in v(x,y,y') - v(x,y',y), get zero gradient up to float noise, and Adam
    # amplifies that noise into visible but meaningless weight differences.
    full, accumulated = run(1, "full"), run(4, "accum")
    torch.testing.assert_close(full, accumulated, rtol=0, atol=1e-4)
    # not vacuous: a different seed (initialisation and data order) ends far away
    other = run(1, "other", seed=1)
    assert float((full - other).abs().max()) > 1e-3  # 10x the tolerance above


def test_eval_split_taken_from_data_never_shares_a_prompt(tmp_path, tiny_config, capsys):
    cfg = PreferenceTrainConfig(
        data=str(FIXTURES / "native.jsonl"),
        eval_split="test",
        random_init=tiny_config,
        steps=1,
        batch_size=2,
        output_dir=tmp_path / "run",
    )
    metrics = train_preference(cfg)
    # rows without a split or with split "train" train; of the two "test" rows, the one whose
    # prompt also occurs in training is dropped from eval
    assert metrics["train/comparisons"] == 3 and metrics["eval/comparisons"] == 1
    assert "dropped 1 eval comparisons whose prompt is also in the training data" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="eval_split: no rows of split 'dev'"):
        train_preference(PreferenceTrainConfig(**{**vars(cfg), "eval_split": "dev"}))
