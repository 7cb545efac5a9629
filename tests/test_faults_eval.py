"""Bad input and faults in `nlhf tournament` and `nlhf demo`, through the command line.

Every case ends in exit status 2 with one line naming the argument, file, policy or judge, or
in the right behaviour (a previous report or a stage's previous outputs intact after a kill, a
re-run resuming). Tiny real checkpoints (tests/test_eval_tournament.py's forced policies), one
torch thread.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_eval_tournament import CONTENT, STYLE_GAME, STYLES, forced_policy

from nlhf.cli import main
from nlhf.eval import tournament as tournament_module
from nlhf.eval.tournament import TournamentResult
from nlhf.locking import LOCK, DirectoryLock
from nlhf.models.tokenizer import build_tokenizer
from nlhf.tasks.demo.pipeline import MARKER, Pipeline, Stage, file_digests

JUDGES = f"""
import os
import time

STYLES = {STYLES!r}
GAME = {STYLE_GAME.tolist()!r}


def style_game(prompts, a, b):
    return [GAME[STYLES.index(x.split()[0])][STYLES.index(y.split()[0])] for x, y in zip(a, b)]


def boom(prompts, a, b):
    raise RuntimeError("judge exploded")


def nan(prompts, a, b):
    return [float("nan")] * len(a)


def words(prompts, a, b):
    return ["0.5"] * len(a)


def short(prompts, a, b):
    return [0.5]


def slow(prompts, a, b):
    open(os.environ["JUDGING_FLAG"], "w").close()
    time.sleep(float(os.environ.get("JUDGE_SLEEP_S", "30")))
    return style_game(prompts, a, b)


class Raising:
    def prob(self, prompts, a, b):
        raise KeyError("rater 7")


raising = Raising()
"""


def env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", TQDM_DISABLE="1")


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pool")
    tokenizer = build_tokenizer([" ".join(STYLES + CONTENT)], kind="word")
    for i, style in enumerate(STYLES):
        forced_policy(tokenizer, [style, CONTENT[i]], root / style)
    (root / "judges.py").write_text(JUDGES)
    (root / "prompts.txt").write_text("".join(f"<bos> {w} {w} <sep>\n" for w in CONTENT))
    return root


@pytest.fixture
def no_sampling(monkeypatch):
    """Records every sampling call: a check that fails "before any work" leaves it empty."""
    calls: list = []
    real = tournament_module._generate_texts
    monkeypatch.setattr(
        tournament_module, "_generate_texts", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    return calls


def tournament_args(pool: Path, out: Path, *extra: str, judge: str = "style_game") -> list[str]:
    args = ["tournament", "--output-dir", str(out), "--quiet", "--max-new-tokens", "4"]
    if "--policies" not in extra:
        args += ["--policies", f"brief={pool / 'brief'}", f"list={pool / 'list'}"]
    if "--prompts" not in extra:
        args += ["--prompts", str(pool / "prompts.txt")]
    if "--judge" not in extra:
        args += ["--judge", f"python:{pool / 'judges.py'}:{judge}"]
    return args + list(extra)


def fails(argv: list[str], capsys, *expected: str) -> str:
    """Run the CLI: exit status 2, one line on stderr holding every expected piece."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for piece in expected:
        assert piece in err, (piece, err)
    return err


# ------------------------------------------------------------------------------ tournament


def test_output_dir_that_is_a_file_fails_before_any_work(pool, tmp_path, capsys, no_sampling):
    (tmp_path / "file").write_text("not a directory")
    fails(tournament_args(pool, tmp_path / "file"), capsys, "--output-dir", "is a file")
    fails(tournament_args(pool, tmp_path / "file" / "sub"), capsys, "--output-dir", "is a file")
    inside = pool / "brief" / "report"
    fails(tournament_args(pool, inside), capsys, "--output-dir", "inside the policy 'brief'")
    assert no_sampling == [] and not inside.exists()


def test_a_device_this_machine_lacks_is_named(pool, tmp_path, capsys, no_sampling):
    devices = [f"cuda:{torch.cuda.device_count()}", "gpu"]
    devices += [] if torch.cuda.is_available() else ["cuda"]
    devices += [] if torch.backends.mps.is_available() else ["mps"]
    for device in devices:
        err = fails(tournament_args(pool, tmp_path / "out", "--device", device), capsys, "--device")
        assert device in err and "available here: cpu" in err
    assert no_sampling == [] and not (tmp_path / "out").exists()


def _damaged(pool: Path, tmp_path: Path, damage: str) -> Path:
    bad = tmp_path / "bad"
    shutil.copytree(pool / "list", bad)
    if damage == "truncated weights":
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    elif damage == "preference model":
        (bad / "nlhf_model.json").write_text(json.dumps({"kind": "pairwise"}))
    elif damage == "tokenizer larger than the vocabulary":
        bigger = build_tokenizer([" ".join(STYLES + CONTENT + ["extra", "words"])], kind="word")
        bigger.save_pretrained(bad)
    return bad


@pytest.mark.parametrize(
    "damage, expected",
    [
        ("truncated weights", "corrupted weight file model.safetensors"),
        ("preference model", "preference/reward-model directory"),
        ("tokenizer larger than the vocabulary", "but the model's vocabulary has only"),
    ],
)
def test_a_bad_checkpoint_is_named_before_sampling(
    pool, tmp_path, capsys, no_sampling, damage, expected
):
    bad = _damaged(pool, tmp_path, damage)
    argv = tournament_args(pool, tmp_path / "out", "--policies", f"brief={pool / 'brief'}",
                           f"broken={bad}")  # fmt: skip
    fails(argv, capsys, "policy 'broken'", str(bad), expected)
    assert no_sampling == [] and not (tmp_path / "out").exists()


def test_a_bad_pool_is_named(pool, tmp_path, capsys, no_sampling):
    out = tmp_path / "out"
    brief = str(pool / "brief")
    cases = {
        "same checkpoint twice": (["a=" + brief, "b=" + brief], "are the same checkpoint"),
        "same name twice": ([brief, brief], "appears twice"),
        "one policy": ([brief], "at least 2 policies"),
        "missing": ([brief, f"gone={tmp_path / 'gone'}"], "policy 'gone'"),
    }
    for specs, expected in cases.values():
        fails(tournament_args(pool, out, "--policies", *specs), capsys, expected)
    assert no_sampling == [] and not out.exists()


@pytest.mark.parametrize(
    "judge, labels, expected",
    [
        ("boom", "sampled", "raised RuntimeError: judge exploded"),
        ("boom", "prob", "raised RuntimeError: judge exploded"),
        ("nan", "sampled", "returned P = nan at index 0"),
        ("words", "prob", "returned str '0.5' at index 0, not a number"),
        ("short", "prob", "returned 1 value for 8 pairs"),
        ("raising", "prob", "raised KeyError: 'rater 7'"),
    ],
)
def test_judge_errors_name_the_judge(pool, tmp_path, capsys, judge, labels, expected):
    spec = f"python:{pool / 'judges.py'}:{judge}"
    argv = tournament_args(pool, tmp_path / "out", "--labels", labels, judge=judge)
    fails(argv, capsys, f"--judge {spec} on list vs brief, prompts 1-8", expected)
    assert not (tmp_path / "out" / "report.md").exists()


def test_a_judge_spec_that_does_not_exist_is_named(pool, tmp_path, capsys, no_sampling):
    out = tmp_path / "out"
    for spec, expected in [
        (str(tmp_path / "no-such-model"), "no such model directory"),
        ("nosuchscheme:x", "not a known judge scheme"),
        (f"builtin:{tmp_path / 'missing.yaml'}", "the task config file does not exist"),
        (str(tmp_path / "judge.yaml"), "the judge spec file does not exist"),
        (f"python:{pool / 'judges.py'}:nothing", "has no attribute 'nothing'"),
    ]:
        fails(tournament_args(pool, out, "--judge", spec), capsys, "--judge", expected)
    assert no_sampling == [] and not out.exists()


def test_bad_prompts_are_named_before_sampling(pool, tmp_path, capsys, no_sampling):
    out = tmp_path / "out"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    fails(tournament_args(pool, out, "--prompts", str(empty)), capsys, str(empty), "no prompts")
    fails(tournament_args(pool, out, "--n-prompts", "9"), capsys, "--n-prompts 9", "only 8")
    long = tmp_path / "long.txt"
    long.write_text("<bos> rain <sep>\n<bos> " + "rain " * 80 + "<sep>\n")
    fails(
        tournament_args(pool, out, "--prompts", str(long)),
        capsys,
        "policy 'brief'",
        "prompt 2 ('<bos> rain rain",
        "has 82 tokens, which leaves no room for a response in the model's context of 64",
    )
    assert no_sampling == [] and not out.exists()


def test_a_prompt_that_leaves_less_than_max_new_tokens_is_reported(pool, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("<bos> " + "rain " * 58 + "<sep>\n<bos> goal <sep>\n")  # 60 of 64 tokens
    argv = tournament_args(pool, tmp_path / "out", "--prompts", str(prompts), "--labels", "prob")
    argv[argv.index("--max-new-tokens") + 1] = "8"
    assert main(argv) == 0
    assert "1 prompt(s) leave fewer than max_new_tokens=8" in capsys.readouterr().err
    result = TournamentResult.from_json(tmp_path / "out" / "tournament.json")
    assert "leave fewer than" in result.settings["warnings"][0]


def test_training_curves_are_read_before_sampling(pool, tmp_path, capsys, no_sampling):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "pref/mean": 0.5}\n{oops\n{"step": 3}\n')
    fails(tournament_args(pool, out, "--training-curves", f"x={bad}"), capsys, "line 2: not JSON")
    missing = tmp_path / "run"
    missing.mkdir()
    fails(
        tournament_args(pool, out, "--training-curves", f"x={missing}"),
        capsys,
        "--training-curves",
        "has no metrics.jsonl",
    )
    assert no_sampling == [] and not out.exists()
    # a run still writing (or killed) ends in an unfinished line: plotted without it
    (missing / "metrics.jsonl").write_text('{"step": 1, "pref/mean": 0.5}\n{"step": 2, "pre')
    assert main(tournament_args(pool, out, "--training-curves", f"x={missing}")) == 0
    assert (out / "training_curves.png").is_file()


def test_tournament_json_never_holds_bare_nan(pool, tmp_path):
    assert main(tournament_args(pool, tmp_path / "out", "--labels", "prob")) == 0
    result = TournamentResult.from_json(tmp_path / "out" / "tournament.json")
    result.timings["judging_s"] = float("nan")
    result.settings["ratio"] = float("inf")
    result.exploitability[0] = float("nan")
    path = result.to_json(tmp_path / "t.json")
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = TournamentResult.from_json(path)
    assert np.isnan(back.exploitability[0]) and back.timings["judging_s"] is None
    result.policies_to_csv(tmp_path / "p.csv")
    assert "nan" not in (tmp_path / "p.csv").read_text().lower()


def test_a_second_tournament_into_a_busy_directory_stops_at_once(
    pool, tmp_path, capsys, no_sampling
):
    out = tmp_path / "out"
    with DirectoryLock(out):  # another run holds the directory (flock: also within a process)
        fails(tournament_args(pool, out), capsys, f"output_dir: {out} is in use by another run",
              f"(pid {os.getpid()})")  # fmt: skip
    assert no_sampling == [] and sorted(p.name for p in out.iterdir()) == [LOCK]
    assert main(tournament_args(pool, out)) == 0  # released: the next run goes ahead


def _report_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != LOCK}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_tournament_killed_while_judging_keeps_the_previous_report(pool, tmp_path, sig):
    out = tmp_path / "out"
    assert main(tournament_args(pool, out, "--labels", "prob")) == 0
    before = _report_files(out)
    flag = tmp_path / "judging"
    argv = tournament_args(pool, out, "--labels", "prob", judge="slow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "nlhf", *argv],
        env={**env(), "JUDGING_FLAG": str(flag)},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), proc.stderr.read() if proc.poll() is not None else "timeout"
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    err = proc.stderr.read()
    if sig == signal.SIGINT:
        assert rc == 130 and err.strip().endswith("nlhf tournament: interrupted"), err
        assert "Traceback" not in err
    assert _report_files(out) == before  # nothing of the killed run, nothing lost
    assert main(tournament_args(pool, out, "--labels", "prob")) == 0  # the lock went with it


def test_a_failure_while_writing_the_report_keeps_the_previous_one(
    pool, tmp_path, monkeypatch, capsys
):
    from nlhf.eval import report as report_module

    out = tmp_path / "out"
    assert main(tournament_args(pool, out, "--judge", "builtin")) == 0
    before = _report_files(out)
    assert "styles.png" in before

    def broken(*args, **kwargs):
        raise ValueError("disk trouble while plotting")

    monkeypatch.setattr(report_module, "plot_training_curves", broken)
    curves = tmp_path / "metrics.jsonl"
    curves.write_text('{"step": 1, "pref/mean": 0.5}\n')
    argv = tournament_args(pool, out, "--training-curves", f"x={curves}")
    fails(argv, capsys, "disk trouble while plotting")
    assert _report_files(out) == before
    assert not list(out.glob(".report-staging-*"))
    # a complete new report under another judge: the old report's extra figure goes with it
    monkeypatch.undo()
    assert main(tournament_args(pool, out)) == 0
    assert not (out / "styles.png").exists() and (out / "report.md").is_file()


# ------------------------------------------------------------------------------ demo

TINY = """\
workers: 1
data: {n_demonstrations: 40, n_comparisons: 20, n_policy_prompts: 16, n_eval_prompts: 16,
       n_probe_prompts: 10, max_new_tokens: 6}
sft: {steps: 3, n_layer: 1, n_embd: 16, n_head: 2, n_positions: 32, batch_size: 8}
preference: {epochs: 1.0, batch_size: 8}
policy: {steps: 2, batch_size: 4, betas: [0.125], probe_every: 1, methods: [sp]}
tournament: {n_prompts: 16}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    """A finished tiny demo (SP only) and its config file."""
    root = tmp_path_factory.mktemp("demo")
    config = root / "tiny.yaml"
    config.write_text(TINY)
    assert main(["demo", "--config", str(config), "--output-dir", str(root / "run")]) == 0
    return config, root / "run"


def demo_copy(tiny, tmp_path: Path) -> tuple[list[str], Path]:
    config, run = tiny
    out = tmp_path / "run"
    shutil.copytree(run, out)
    return ["demo", "--config", str(config), "--output-dir", str(out)], out


def test_demo_rejects_bad_settings_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "out"
    quick = ["demo", "--quick", "--output-dir", str(out)]
    fails([*quick, "--policy.tau", "nan"], capsys, "--policy.tau: must be a finite number")
    fails([*quick, "--policy.lr", "inf"], capsys, "--policy.lr: must be a finite number")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy:\n  tau: .nan\n")
    fails(["demo", "--config", str(bad)], capsys, f"{bad}.policy.tau: must be a finite")
    bad.write_text("device: cuda\n")
    fails(["demo", "--config", str(bad)], capsys, f"{bad}.device: 'cuda' is not one of")
    with pytest.raises(SystemExit) as exit_:
        main([*quick, "--device", "cuda:7"])
    assert exit_.value.code == 2
    assert "argument --device: invalid choice: 'cuda:7'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    fails(["demo", "--quick", "--output-dir", str(tmp_path / "file")], capsys, "is a file")
    fails(["demo", "--quick", "--output-dir", str(tmp_path / "file" / "x")], capsys, "is a file")
    assert not out.exists()


def test_demo_refuses_a_directory_that_is_not_a_demo_run(tiny, tmp_path, capsys):
    config, _ = tiny
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    argv = ["demo", "--config", str(config), "--output-dir", str(out), "--until", "1"]
    fails(argv, capsys, str(out), "not a demo run (thesis.tex)", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert main([*argv, "--overwrite"]) == 0
    assert (out / "thesis.tex").read_text() == "years of work"
    assert (out / "01_task" / MARKER).is_file()
    assert main(argv) == 0  # now it is a demo run


def test_a_second_demo_into_a_busy_directory_stops_at_once(tiny, tmp_path, capsys):
    argv, out = demo_copy(tiny, tmp_path)
    before = file_digests(out)
    with DirectoryLock(out):
        fails(argv, capsys, str(out), "in use by another run")
    assert file_digests(out) == before


def _no_bare_nan(root: Path) -> None:
    for f in [*root.rglob("*.json"), *root.rglob("*.jsonl"), *root.rglob(MARKER)]:
        text = f.read_text()
        assert "NaN" not in text and "Infinity" not in text, f


def test_demo_any_subset_of_methods(tiny, tmp_path):
    argv, out = demo_copy(tiny, tmp_path)
    for methods, names in [
        (["sp", "md"], ["SFT", "SP", "MD0.125"]),
        (["rlhf"], ["SFT", "RLHF"]),
        (["md", "br", "ema"], ["SFT", "MD0.125", "BR", "EMA", "EMA*"]),
        (["br"], ["SFT", "BR"]),
    ]:
        assert main([*argv, "--policy.methods", *methods]) == 0, methods
        result = json.loads((out / "07_report" / "tournament.json").read_text())
        assert result["names"] == names
        report = (out / "07_report" / "report.md").read_text()
        assert "## Headline" in report and "Against the paper's findings" in report
        assert "nan" not in report.replace("Nash", "").lower().split("sampling took")[0]
    _no_bare_nan(out)
    assert (out / "04_reward" / MARKER).is_file()  # trained once RLHF was asked for


def test_demo_overwrite_runs_every_stage_again(tiny, tmp_path):
    argv, out = demo_copy(tiny, tmp_path)
    finished = json.loads((out / "01_task" / MARKER).read_text())["finished"]
    marker = json.loads((out / "02_sft" / MARKER).read_text())
    time.sleep(1.1)  # the marker's time stamp has one-second resolution
    assert main([*argv, "--until", "2", "--overwrite"]) == 0
    assert json.loads((out / "01_task" / MARKER).read_text())["finished"] != finished
    again = json.loads((out / "02_sft" / MARKER).read_text())
    assert again["finished"] != marker["finished"]
    weights = "model.safetensors"
    assert again["files"][weights] == marker["files"][weights]  # the same run, reproduced


class Killed(BaseException):
    """Stands for SIGKILL at one point of the stage swap (nothing after it runs)."""


class _KillAt:
    """``os`` / ``shutil`` for the pipeline module that die at the ``n``-th rename, or at the
    removal of ``<stage>.old``."""

    def __init__(self, module, renames_allowed: int | None, kill_rmtree_old: bool = False):
        self._module, self._left, self._rmtree = module, renames_allowed, kill_rmtree_old

    def __getattr__(self, name):
        return getattr(self._module, name)

    def replace(self, src, dst):
        if self._left is not None:
            if self._left == 0:
                raise Killed
            self._left -= 1
        os.replace(src, dst)

    def rmtree(self, path, *args, **kwargs):
        if self._rmtree and str(path).endswith(".old"):
            raise Killed
        shutil.rmtree(path, *args, **kwargs)


@pytest.mark.parametrize(
    "kill_at", ["after the marker", "between the renames", "before removing the old outputs"]
)
def test_a_kill_during_the_stage_swap_loses_nothing(tmp_path, monkeypatch, kill_at):
    import functools

    from nlhf.tasks.demo import pipeline as pipeline_module

    def write(text: str, out: Path) -> None:
        (out / "out.txt").write_text(text)

    def stage(version: str) -> Stage:
        return Stage("a", "A", {"v": version}, [], functools.partial(write, version))

    Pipeline(tmp_path, log=lambda _: None).run(stage("old"))
    renames = {"after the marker": 0, "between the renames": 1}.get(kill_at)
    monkeypatch.setattr(pipeline_module, "os", _KillAt(os, renames))
    monkeypatch.setattr(pipeline_module, "shutil", _KillAt(shutil, None, renames is None))
    with pytest.raises(Killed):
        Pipeline(tmp_path, log=lambda _: None).run(stage("new"))
    monkeypatch.undo()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert any((tmp_path / n / MARKER).is_file() for n in names)  # a complete version is there
    # the next run finds the new, complete outputs and does not redo the work
    calls = []
    again = stage("new")
    again.fn = calls.append
    pipe = Pipeline(tmp_path, log=lambda _: None)
    assert pipe.run(again) == tmp_path / "a" and calls == [] and pipe.skipped == ["a"]
    assert (tmp_path / "a" / "out.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_an_unfinished_partial_never_replaces_complete_outputs(tmp_path):
    import functools

    def write(text: str, out: Path) -> None:
        (out / "out.txt").write_text(text)

    pipe = Pipeline(tmp_path, log=lambda _: None)
    pipe.run(Stage("a", "A", {}, [], functools.partial(write, "old")))
    os.replace(tmp_path / "a", tmp_path / "a.old")  # killed between the renames ...
    (tmp_path / "a.partial").mkdir()  # ... of a partial whose marker was cut short
    (tmp_path / "a.partial" / MARKER).write_text('{"stage": "a", "inp')
    pipe.settle("a")
    assert (tmp_path / "a" / "out.txt").read_text() == "old" and not (tmp_path / "a.old").exists()


def test_a_demo_killed_mid_stage_keeps_that_stage_and_resumes(tiny, tmp_path):
    argv, out = demo_copy(tiny, tmp_path)
    sp = out / "05_sp"
    before = file_digests(sp)
    marker = json.loads((sp / MARKER).read_text())
    argv += ["--policy.steps", "60"]  # a change that re-runs the policy stage
    proc = subprocess.Popen([sys.executable, "-m", "nlhf", *argv], env=env(),
                            stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        partial = out / "05_sp.partial"
        deadline = time.monotonic() + 120
        while not (partial / "convergence.jsonl").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, "the demo ended before it could be killed"
            time.sleep(0.02)
        proc.kill()  # SIGKILL, in the middle of training SP
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert partial.is_dir() and not (partial / MARKER).exists()  # it was killed mid-stage
    assert file_digests(sp) == before == marker["files"]  # the previous outputs, intact
    assert json.loads((sp / MARKER).read_text()) == marker
    # a re-run resumes: the earlier stages are skipped, SP is trained afresh
    import argparse

    from nlhf.tasks.demo import resolve_config, run_demo
    from nlhf.tasks.demo.command import add_arguments

    lines: list[str] = []
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run_demo(resolve_config(parser.parse_args(argv[1:])), log=lines.append)
    ran = [ln for ln in lines if "skipped" not in ln]
    assert any("(05_sp)" in ln for ln in ran) and not any("02_sft" in ln for ln in ran), lines
    rows = (sp / "convergence.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 60 and not partial.exists()
