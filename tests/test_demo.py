"""``nlhf demo``: the quick run end to end, its report, resuming, and the stage machinery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from nlhf.cli import main
from nlhf.config import load_yaml
from nlhf.tasks import demo
from nlhf.tasks.demo import DemoConfig, Pipeline, add_arguments, resolve_config, run_demo

ROOT = Path(__file__).resolve().parents[1]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _run(cfg: DemoConfig) -> tuple[Path, list[str], list[str]]:
    lines: list[str] = []
    report = run_demo(cfg, log=lines.append)
    ran = [ln.split("(")[-1].rstrip(")") for ln in lines if "skipped" not in ln]
    skipped = [ln.split("(")[-1].rstrip(")") for ln in lines if "skipped" in ln]
    return report, ran, skipped


def test_configs_in_the_repository_match_the_code():
    assert load_yaml(DemoConfig, ROOT / "configs" / "demo.yaml") == DemoConfig()
    quick = resolve_config(_args("--quick"))
    assert resolve_config(_args("--config", str(ROOT / "configs" / "demo-quick.yaml"))) == quick
    assert quick.policy.steps < DemoConfig().policy.steps
    # precedence: defaults < --quick < --config < flags
    assert resolve_config(_args("--quick", "--policy.steps", "3")).policy.steps == 3
    assert resolve_config(_args("--quick", "--policy.steps", "3")).data.n_comparisons == 600


def test_bad_settings_are_clear_errors(tmp_path, capsys):
    assert main(["demo", "--quick", "--policy.betas", "1.5", "--output-dir", str(tmp_path)]) == 2
    assert "policy.betas" in capsys.readouterr().err
    assert main(["demo", "--quick", "--tournament.n-prompts", "5000"]) == 2
    assert "tournament.n_prompts" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  stepz: 3\n")
    assert main(["demo", "--config", str(bad)]) == 2
    assert "stepz" in capsys.readouterr().err


def test_pipeline_skips_unchanged_stages_and_reruns_downstream(tmp_path):
    calls: list[str] = []

    def make(name: str, text: str):
        def fn(out: Path):
            calls.append(name)
            (out / "out.txt").write_text(text)

        return fn

    def run_all(a_input: int, b_text: str = "b") -> None:
        pipe = Pipeline(tmp_path, total=2, log=lambda _: None)
        pipe.run(1, "a", {"x": a_input}, [], make("a", f"a{a_input}"), "A")
        pipe.run(2, "b", {}, ["a"], make("b", b_text), "B")

    run_all(1)
    run_all(1)
    assert calls == ["a", "b"]  # second run: everything skipped
    run_all(2)
    assert calls[2:] == ["a", "b"]  # changed input: the stage and its dependants re-run
    (tmp_path / "b" / "out.txt").write_text("tampered")
    run_all(2)
    assert calls[4:] == ["b"]  # a damaged output re-runs only that stage
    (tmp_path / "b" / ".stage.json").unlink()  # crashed before finishing
    run_all(2)
    assert calls[5:] == ["b"]


@pytest.mark.slow
def test_quick_demo_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--threads", "1", "--output-dir", str(out)]) == 0
    report = out / "07_report" / "report.md"
    assert report.is_file()
    text = report.read_text()
    for heading in ("Preference matrix", "Against the paper's findings", "Built-in task"):
        assert heading in text
    for png in ("heatmap.png", "styles.png", "training_curves.png"):
        assert (out / "07_report" / png).stat().st_size > 1000

    data = json.loads((out / "07_report" / "tournament.json").read_text())
    names = data["names"]
    assert names[0] == "SFT"
    assert {"RLHF", "SP", "MD0.125", "MD0.5", "BR", "EMA", "EMA*"} <= set(names)
    M, lo, hi = (np.asarray(data[k]) for k in ("matrix", "lower", "upper"))
    np.testing.assert_allclose(M + M.T, np.ones_like(M), atol=1e-12)
    np.testing.assert_allclose(np.diag(M), 0.5)
    assert np.all(lo - 1e-12 <= M) and np.all(hi + 1e-12 >= M)
    assert np.all((lo >= 0) & (hi <= 1))

    # An unchanged re-run does nothing.
    cfg = resolve_config(_args("--quick", "--threads", "1", "--output-dir", str(out)))
    _, ran, skipped = _run(cfg)
    assert ran == [] and "02_sft" in skipped and "07_report" in skipped

    # A crash inside stage 5 (the second policy): earlier stages stay done ...
    sft_weights = out / "02_sft" / "model.safetensors"
    sft_mtime = sft_weights.stat().st_mtime_ns
    real_stage_policy = demo.stage_policy
    for d in (out / "05_sp", out / "05_md0.125"):
        (d / ".stage.json").unlink()

    def crash(cfg, spec, *args):
        if spec["name"] == "MD0.125":
            raise RuntimeError("simulated crash")
        return real_stage_policy(cfg, spec, *args)

    monkeypatch.setattr(demo, "stage_policy", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(cfg)
    assert not (out / "05_md0.125" / ".stage.json").exists()
    # ... and the resumed run picks up where it stopped.
    monkeypatch.setattr(demo, "stage_policy", real_stage_policy)
    report, ran, skipped = _run(cfg)
    assert ran[0] == "05_md0.125" and set(ran) <= {"05_md0.125", "06_tournament", "07_report"}
    assert {"01_task", "02_sft", "03_comparisons", "04_preference", "05_sp", "05_br"} <= set(
        skipped
    )
    assert sft_weights.stat().st_mtime_ns == sft_mtime
    assert report.is_file()

    # A changed late setting re-runs only the stages that depend on it.
    cfg2 = resolve_config(
        _args("--quick", "--threads", "1", "--output-dir", str(out), "--tournament.n-prompts", "60")
    )
    _, ran, _ = _run(cfg2)
    assert ran == ["06_tournament", "07_report"]
    assert json.loads((out / "07_report" / "tournament.json").read_text())["n_prompts"] == 60


def _result(names: list[str], win: dict[tuple[str, str], float], half: float = 0.03):
    """A TournamentResult whose P(a > b) = win[(a, b)] (default 1/2) and intervals +- half."""
    from nlhf.eval.tournament import TournamentResult

    K = len(names)
    M = np.full((K, K), 0.5)
    for (a, b), p in win.items():
        i, j = names.index(b), names.index(a)  # matrix[row=b, col=a] = P(a > b)
        M[i, j], M[j, i] = p, 1 - p
    lo, hi = np.clip(M - half, 0, 1), np.clip(M + half, 0, 1)
    np.fill_diagonal(lo, 0.5)
    np.fill_diagonal(hi, 0.5)
    mean = np.array([np.mean([M[r, c] for r in range(K) if r != c]) for c in range(K)])
    return TournamentResult(
        names=names,
        paths=[""] * K,
        prompts=[],
        samples={},
        matrix=M,
        lower=lo,
        upper=hi,
        mean_win_rate=mean,
        worst_case=mean,
        worst_opponent=names,
        meta_nash=np.full(K, 1 / K),
        meta_value=0.5,
        exploitability=np.zeros(K),
        meta_nash_exploitability=0.0,
        labels="sampled",
        interval="t",
        confidence=0.95,
    )


def test_paper_reading_verdicts_follow_the_numbers():
    names = ["SFT", "RLHF", "SP", "MD0.125", "MD0.5", "BR", "EMA", "EMA*"]
    trained = names[1:]
    # the paper's picture: everyone beats SFT, MD0.125 beats everyone, BR is worst
    win = {(n, "SFT"): 0.7 for n in trained}
    win.update({("MD0.125", n): 0.6 for n in names if n not in ("MD0.125", "SFT")})
    win.update({(n, "BR"): 0.58 for n in trained if n not in ("BR", "MD0.125")})
    text = demo.paper_reading(_result(names, win), ["MD0.125", "MD0.5"])
    assert "5 of 5 findings reproduced" in text and "| disagrees |" not in text
    # the opposite: SFT beats everyone significantly, MD0.125 loses to SP
    win = {(n, "SFT"): 0.3 for n in trained}
    win[("MD0.125", "SP")] = 0.4
    text = demo.paper_reading(_result(names, win), ["MD0.125", "MD0.5"])
    row = next(ln for ln in text.splitlines() if ln.startswith("| every method beats SFT"))
    assert row.endswith("| disagrees |")
    row = next(ln for ln in text.splitlines() if ln.startswith("| small-beta Nash-MD"))
    assert row.endswith("| disagrees |")
    assert "0 of 5 findings reproduced" in text
