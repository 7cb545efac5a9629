"""``nlhf demo``: the quick run end to end, its report, resuming, and the stage machinery."""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np
import pytest

from nlhf.cli import main
from nlhf.config import load_yaml
from nlhf.tasks.demo import (
    DemoConfig,
    PolicySpec,
    add_arguments,
    policy_specs,
    resolve_config,
    run_demo,
    stages,
)
from nlhf.tasks.demo.config import QUICK_PRESET, PolicyStageConfig
from nlhf.tasks.demo.pipeline import Pipeline, Stage
from nlhf.tasks.demo.reading import paper_reading

ROOT = Path(__file__).resolve().parents[1]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _run(cfg: DemoConfig) -> tuple[Path, list[str], list[str]]:
    lines: list[str] = []
    report = run_demo(cfg, log=lines.append)
    ran = [ln.split("(")[-1].split(",")[0].rstrip(")") for ln in lines if "skipped" not in ln]
    skipped = [ln.split("(")[-1].rstrip(")") for ln in lines if "skipped" in ln]
    return report, ran, skipped


def test_configs_in_the_repository_match_the_code():
    assert load_yaml(DemoConfig, ROOT / "configs" / "demo.yaml") == DemoConfig()
    quick = resolve_config(_args("--quick"))
    assert QUICK_PRESET == ROOT / "configs" / "demo-quick.yaml"
    assert resolve_config(_args("--config", str(QUICK_PRESET))) == quick
    assert quick.policy.steps < DemoConfig().policy.steps
    # precedence: defaults < --quick (its YAML) < flags
    assert resolve_config(_args("--quick", "--policy.steps", "3")).policy.steps == 3
    assert resolve_config(_args("--quick", "--policy.steps", "3")).data.n_comparisons == 600
    large = load_yaml(DemoConfig, ROOT / "configs" / "demo-large.yaml")
    assert large.policy.steps >= DemoConfig().policy.steps
    assert large.sft.n_embd > DemoConfig().sft.n_embd


def test_bad_settings_are_clear_errors(tmp_path, capsys):
    assert main(["demo", "--quick", "--policy.betas", "1.5", "--output-dir", str(tmp_path)]) == 2
    assert "policy.betas" in capsys.readouterr().err
    assert main(["demo", "--quick", "--tournament.n-prompts", "5000"]) == 2
    assert "tournament.n_prompts" in capsys.readouterr().err
    assert main(["demo", "--quick", "--policy.methods", "sp", "sp"]) == 2
    assert "listed twice" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  stepz: 3\n")
    assert main(["demo", "--config", str(bad)]) == 2
    assert "stepz" in capsys.readouterr().err
    assert main(["demo", "--quick", "--config", str(bad)]) == 2
    assert "give one of them" in capsys.readouterr().err


def test_policy_specs_name_the_runs():
    specs = policy_specs(DemoConfig())
    assert [s.name for s in specs] == ["RLHF", "SP", "MD0.125", "MD0.25", "MD0.5", "BR", "EMA"]
    md = specs[2]
    assert md == PolicySpec("MD0.125", "md", "mixture", beta=0.125)
    assert md.stage == "05_md0.125" and not md.reward_model and md.averaged_name is None
    assert specs[0].reward_model and specs[5].beta == 1.0 and specs[6].averaged_name == "EMA*"
    subset = DemoConfig(policy=PolicyStageConfig(methods=["sp", "md"], betas=[0.25]))
    assert [s.name for s in policy_specs(subset)] == ["SP", "MD0.25"]


# ------------------------------------------------------------------------------- stage cache


def _write(name: str, text: str, calls: list[str] | None, out: Path) -> None:
    if calls is not None:
        calls.append(name)
    if text == "fail":
        (out / "half.txt").write_text("half")
        raise RuntimeError(f"stage {name} failed")
    (out / "out.txt").write_text(text)


def test_pipeline_skips_unchanged_stages_and_reruns_downstream(tmp_path):
    calls: list[str] = []

    def run_all(a_input: int, b_text: str = "b") -> None:
        pipe = Pipeline(tmp_path, log=lambda _: None)
        pipe.run(
            Stage(
                "a", "A", {"x": a_input}, [], functools.partial(_write, "a", f"a{a_input}", calls)
            )
        )
        pipe.run(Stage("b", "B", {}, ["a"], functools.partial(_write, "b", b_text, calls)))

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


def test_a_failed_stage_keeps_the_old_outputs(tmp_path):
    pipe = Pipeline(tmp_path, log=lambda _: None)
    pipe.run(Stage("a", "A", {"v": 1}, [], functools.partial(_write, "a", "old", None)))
    with pytest.raises(RuntimeError, match="stage a failed"):
        pipe.run(Stage("a", "A", {"v": 2}, [], functools.partial(_write, "a", "fail", None)))
    assert (tmp_path / "a" / "out.txt").read_text() == "old"  # complete outputs untouched
    assert not (tmp_path / "a" / "half.txt").exists()
    assert pipe.marker("a") is not None  # still the marker of the old, complete outputs
    pipe.run(Stage("a", "A", {"v": 2}, [], functools.partial(_write, "a", "new", None)))
    assert (tmp_path / "a" / "out.txt").read_text() == "new"
    assert not (tmp_path / "a.partial").exists() and not (tmp_path / "a.old").exists()


def test_parallel_stages_run_in_workers_and_one_failure_spares_the_others(tmp_path):
    pipe = Pipeline(tmp_path, log=lambda _: None)
    group = [
        Stage(n, n, {"t": t}, [], functools.partial(_write, n, t, None))
        for n, t in (("x", "X"), ("y", "fail"), ("z", "Z"))
    ]
    with pytest.raises(RuntimeError, match="stage y failed"):
        pipe.run_parallel(group, workers=2)
    assert (tmp_path / "x" / "out.txt").read_text() == "X"
    assert (tmp_path / "z" / "out.txt").read_text() == "Z"
    assert pipe.marker("y") is None and pipe.marker("x")["cpu_seconds"] >= 0
    group[1] = Stage("y", "y", {"t": "Y"}, [], functools.partial(_write, "y", "Y", None))
    pipe.run_parallel(group, workers=2)
    assert pipe.skipped == ["x", "z"] and (tmp_path / "y" / "out.txt").read_text() == "Y"


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_quick_demo_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--output-dir", str(out)]) == 0
    report = out / "07_report" / "report.md"
    text = report.read_text()
    for heading in (
        "## Headline",
        "Preference matrix",
        "Against the paper's findings",
        "Convergence in the learned style game",
        "Built-in task",
    ):
        assert heading in text, heading
    assert text.index("## Headline") < text.index("## Preference matrix")
    for png in ("heatmap.png", "styles.png", "training_curves.png", "trajectories.png",
                "distances.png"):  # fmt: skip
        assert (out / "07_report" / png).stat().st_size > 1000, png

    data = json.loads((out / "07_report" / "tournament.json").read_text())
    names = data["names"]
    assert names[0] == "SFT"
    assert {"RLHF", "SP", "MD0.125", "MD0.5", "BR", "EMA", "EMA*"} <= set(names)
    M, lo, hi = (np.asarray(data[k]) for k in ("matrix", "lower", "upper"))
    np.testing.assert_allclose(M + M.T, np.ones_like(M), atol=1e-12)
    np.testing.assert_allclose(np.diag(M), 0.5)
    assert np.all(lo - 1e-12 <= M) and np.all(hi + 1e-12 >= M)

    # the training-side measure: every policy's style shares from step 0 (= SFT) on
    targets = json.loads((out / "05_targets" / "targets.json").read_text())
    sft = np.asarray(targets["sft_shares"])
    for name in ("SP", "MD0.125", "BR", "EMA"):
        rows = [json.loads(x) for x in (out / f"05_{name.lower()}" / "convergence.jsonl").open()]
        assert rows[0]["step"] == 0 and rows[-1]["step"] == 8
        np.testing.assert_allclose(rows[0]["shares"], sft, atol=1e-6)
    assert "average_shares" in rows[-1]
    pi_star = np.asarray(targets["pi_star_tau"])
    assert pi_star.shape == (3,) and abs(pi_star.sum() - 1) < 1e-9

    # An unchanged re-run does nothing.
    cfg = resolve_config(_args("--quick", "--output-dir", str(out), "--workers", "1"))
    _, ran, skipped = _run(cfg)
    assert ran == [] and "02_sft" in skipped and "07_report" in skipped

    # A crash inside stage 5 (the second policy): earlier stages stay done ...
    sft_weights = out / "02_sft" / "model.safetensors"
    sft_mtime = sft_weights.stat().st_mtime_ns
    real_stage_policy = stages.stage_policy
    for d in (out / "05_sp", out / "05_md0.125"):
        (d / ".stage.json").unlink()

    def crash(cfg, spec, *args, **kwargs):
        if spec.name == "MD0.125":
            raise RuntimeError("simulated crash")
        return real_stage_policy(cfg, spec, *args, **kwargs)

    monkeypatch.setattr(stages, "stage_policy", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(cfg)
    assert not (out / "05_md0.125" / ".stage.json").exists()
    # ... and the resumed run picks up where it stopped.
    monkeypatch.setattr(stages, "stage_policy", real_stage_policy)
    report, ran, skipped = _run(cfg)
    assert ran[0] == "05_md0.125" and set(ran) <= {"05_md0.125", "06_tournament", "07_report"}
    assert {"01_task", "02_sft", "03_comparisons", "04_preference", "05_sp", "05_br"} <= set(
        skipped
    )
    assert sft_weights.stat().st_mtime_ns == sft_mtime
    assert report.is_file()

    # A changed late setting re-runs only the stages that depend on it.
    cfg2 = resolve_config(
        _args("--quick", "--output-dir", str(out), "--workers", "1", "--tournament.n-prompts", "60")
    )
    _, ran, _ = _run(cfg2)
    assert ran == ["06_tournament", "07_report"]
    assert json.loads((out / "07_report" / "tournament.json").read_text())["n_prompts"] == 60

    # Any valid subset of methods works (the trained policies are reused).
    cfg3 = resolve_config(
        _args("--quick", "--output-dir", str(out), "--policy.methods", "sp", "md",
              "--policy.betas", "0.125")
    )  # fmt: skip
    _, ran, _ = _run(cfg3)
    assert ran == ["05_targets", "06_tournament", "07_report"]
    names = json.loads((out / "07_report" / "tournament.json").read_text())["names"]
    assert names == ["SFT", "SP", "MD0.125"]
    assert "Convergence in the learned style game" in (out / "07_report" / "report.md").read_text()


# ------------------------------------------------------------------------------- the reading


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
    md = {"MD0.125": 0.125, "MD0.5": 0.5}
    # the paper's picture: everyone beats SFT, MD0.125 beats everyone, BR is worst
    win = {(n, "SFT"): 0.7 for n in trained}
    win.update({("MD0.125", n): 0.6 for n in names if n not in ("MD0.125", "SFT")})
    win.update({(n, "BR"): 0.58 for n in trained if n not in ("BR", "MD0.125")})
    text = paper_reading(_result(names, win), md)
    assert "5 of 5 findings reproduced" in text and "| disagrees |" not in text
    # the opposite: SFT beats everyone significantly, MD0.125 loses to SP
    win = {(n, "SFT"): 0.3 for n in trained}
    win[("MD0.125", "SP")] = 0.4
    text = paper_reading(_result(names, win), md)
    row = next(ln for ln in text.splitlines() if ln.startswith("| every method beats SFT"))
    assert row.endswith("| disagrees |")
    row = next(ln for ln in text.splitlines() if ln.startswith("| small-beta Nash-MD"))
    assert row.endswith("| disagrees |")
    assert "0 of 5 findings reproduced" in text


def test_convergence_reading_tells_settled_from_circling():
    from nlhf.tasks.demo.reading import convergence_reading, headline, nash_md_reading
    from nlhf.tasks.demo.report import Track

    steps = np.arange(0, 1001, 25)
    pi_star, raters = np.array([0.6, 0.2, 0.2]), np.array([0.5, 0.2, 0.3])
    own = np.array([0.7, 0.15, 0.15])
    decay = np.exp(-steps / 150.0)[:, None]
    start = np.array([0.2, 0.5, 0.3])
    settled = (1 - decay) * own + decay * start  # converges to its own target
    angle = steps / 50.0  # keeps circling pi*_tau at a fixed radius
    circling = pi_star + 0.15 * np.stack([np.cos(angle), -np.cos(angle), 0 * angle], 1)
    none = np.zeros((len(steps), 1))
    tracks = [
        Track("MD0.5", "preference model", steps, np.hstack([settled, none]), pi_star,
              "pi*_tau", own, pi_star, raters, beta=0.5),
        Track("EMA", "preference model", steps, np.hstack([circling, none]), pi_star,
              "pi*_tau", pi_star, pi_star, raters),
    ]  # fmt: skip
    assert tracks[0].settled() and not tracks[1].settled()
    text = convergence_reading(tracks)
    assert "**MD0.5** settled" in text and "**EMA** not settled" in text
    assert "It circled its target" in text.splitlines()[1]
    md = nash_md_reading(tracks, {"pi_star_tau": pi_star.tolist()})
    assert "| MD0.5 | 0.5 |" in md and "Settled (the whole last quarter" in md
    assert "For MD0.5 the fixed-beta bias is larger than the band" in md
    names = ["SFT", "MD0.5", "EMA"]
    result = _result(names, {("MD0.5", "SFT"): 0.6, ("EMA", "MD0.5"): 0.45})
    text = headline(result, tracks)
    assert "Not settled at its own target by the end of training: EMA" in text
    assert "| MD0.5 | preference model (pi*_tau) |" in text
