"""`nlhf tournament` end to end through the CLI, with each kind of judge."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_eval_tournament import CONTENT, STYLE_GAME, STYLES, forced_policy

from nlhf.cli import main
from nlhf.eval.command import load_prompts
from nlhf.eval.tournament import TournamentResult, parse_policy_specs
from nlhf.models.tokenizer import build_tokenizer

JUDGE_MODULE = f"""
STYLES = {STYLES!r}
GAME = {STYLE_GAME.tolist()!r}


def style_game(prompts, a, b):
    return [GAME[STYLES.index(x.split()[0])][STYLES.index(y.split()[0])] for x, y in zip(a, b)]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tokenizer = build_tokenizer([" ".join(STYLES + CONTENT)], kind="word")
    for i, style in enumerate(STYLES):
        forced_policy(tokenizer, [style, CONTENT[i]], root / style)
    (root / "judge.py").write_text(JUDGE_MODULE)
    prompts = [
        json.dumps({"prompt": f"<bos> {w} {w} <sep>", "id": i}) for i, w in enumerate(CONTENT)
    ]
    (root / "prompts.jsonl").write_text("\n".join(prompts * 5) + "\n")
    return root


def test_cli_python_judge_writes_the_report(setup, tmp_path, capsys):
    out = tmp_path / "report"
    lines = [json.dumps({"step": t, "pref/mean": 0.5 + t / 100}) for t in range(20)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    rc = main(
        [
            "tournament",
            "--training-curves",
            f"brief={tmp_path / 'metrics.jsonl'}",
            "--policies", *(f"{s}={setup / s}" for s in STYLES),
            "--prompts", str(setup / "prompts.jsonl"),
            "--judge", f"python:{setup / 'judge.py'}:style_game",
            "--labels", "prob", "--n-prompts", "0", "--max-new-tokens", "4",
            "--output-dir", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "[1] brief" in printed and "meta-Nash" in printed and "report.md" in printed
    result = TournamentResult.from_json(out / "tournament.json")
    assert result.settings["n_prompts"] == 40
    np.testing.assert_allclose(result.matrix, STYLE_GAME.T, atol=1e-6)
    np.testing.assert_allclose(result.meta_nash, [0.5, 0.2, 0.3], atol=1e-6)
    report = (out / "report.md").read_text()
    assert "python:" in report and "0.650 [0.650, 0.650]" in report
    assert "![training curves](training_curves.png)" in report


def test_cli_builtin_judge_adds_styles_and_quality(setup, tmp_path):
    out = tmp_path / "builtin"
    rc = main(
        [
            "tournament", "--policies", *(str(setup / s) for s in STYLES), "--judge", "builtin",
            "--n-prompts", "60", "--max-new-tokens", "4", "--output-dir", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    result = TournamentResult.from_json(out / "tournament.json")
    assert result.names == STYLES and result.settings["judge"] == "SimulatedRaters"
    assert np.array_equal(result.matrix + result.matrix.T, np.ones((3, 3)))
    assert np.all(result.lower <= result.matrix) and np.all(result.matrix <= result.upper)
    report = (out / "report.md").read_text()
    assert "Built-in task: response styles and quality" in report
    assert "| brief | 1.00 | 0.00 | 0.00 |" in report  # the brief policy only says "brief ..."
    assert (out / "styles.png").stat().st_size > 0


def test_cli_learned_judge_directory(setup, tmp_path):
    from nlhf.models import RewardModel, random_backbone

    tokenizer = build_tokenizer([" ".join(STYLES + CONTENT)], kind="word")
    torch.manual_seed(0)
    backbone = random_backbone(
        {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2}, tokenizer
    )
    RewardModel.from_backbone(backbone, tokenizer).save_pretrained(tmp_path / "rm")
    out = tmp_path / "learned"
    rc = main(
        [
            "tournament", "--policies", f"a={setup / 'brief'}", f"b={setup / 'story'}",
            "--prompts", str(setup / "prompts.jsonl"), "--judge", str(tmp_path / "rm"),
            "--labels", "prob", "--n-prompts", "16", "--max-new-tokens", "4",
            "--output-dir", str(out), "--quiet",
        ]
    )  # fmt: skip
    assert rc == 0
    result = TournamentResult.from_json(out / "tournament.json")
    assert 0.0 < result.matrix[0, 1] < 1.0 and result.matrix[0, 1] != 0.5


def test_cli_errors_name_the_culprit(setup, tmp_path, capsys):
    base = ["tournament", "--prompts", str(setup / "prompts.jsonl"), "--quiet"]
    base += [
        "--output-dir",
        str(tmp_path / "x"),
        "--judge",
        f"python:{setup / 'judge.py'}:style_game",
    ]
    rc = main(base + ["--policies", f"brief={setup / 'brief'}", f"gone={tmp_path / 'gone'}"])
    assert rc == 2
    assert "policy 'gone'" in capsys.readouterr().err
    two = [str(setup / "brief"), str(setup / "story")]
    rc = main(base[:-2] + ["--judge", "python:json:nope", "--policies", *two])
    assert rc == 2 and "no attribute 'nope'" in capsys.readouterr().err
    rc = main(base + ["--policies", str(setup / "brief"), str(setup / "brief")])
    assert rc == 2 and "appears twice" in capsys.readouterr().err


def test_load_prompts_formats(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("first <sep>\n\nsecond <sep>\n")
    assert load_prompts(text) == ["first <sep>", "second <sep>"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('"a <sep>"\n{"prompt": "b <sep>"}\n{"text": "c"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl, line 3: no \"prompt\" key"):
        load_prompts(jsonl)
    jsonl.write_text('"a <sep>"\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_prompts(jsonl)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_prompts(tmp_path / "missing.txt")


def test_policy_specs(tmp_path):
    (tmp_path / "sft").mkdir()
    specs = parse_policy_specs(["md=runs/x", str(tmp_path / "sft")])
    assert list(specs) == ["md", "sft"] and str(specs["md"]) == "runs/x"
