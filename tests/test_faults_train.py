"""Faults of the three trainers (`nlhf train`, `nlhf train-preference`, `nlhf sft`), through
the command line with tiny local models: each bad input is a clear error (exit 2, one line
naming the argument, file, field or step) that leaves the output directory untouched, or the
right behaviour; and the kill -9 loop: runs killed at random moments and inside checkpoint and
final saves, resumed each time, end bit for bit where an uninterrupted run ends, with every step
in metrics.jsonl exactly once.

The killed runs are real processes (SIGKILL), forked from a multiprocessing fork server that has
imported nlhf once, so a start costs a fraction of a second instead of the imports. Kills inside
a save use the test-only ``NLHF_TEST_PAUSE`` variable of ``nlhf.train.run`` (the process stops
at a named point of the save and the test kills it there).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nlhf.cli import main
from nlhf.train.run import PAUSE_ENV, find_checkpoint

WORDS = ["good", "bad", "the", "cat", "sat", "on", "a", "mat"]
PROMPTS = ["the cat <sep>", "a mat <sep>", "sat on the mat <sep>", "cat <sep>", "a <sep>"]
TINY = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64}
TINY.update(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
JUDGES = """
def raises(prompts, a, b):
    raise RuntimeError("the rater server is down")

def strings(prompts, a, b):
    return ["0.7"] * len(a)

def prob_only(prompts, a, b):
    return [0.5] * len(a)
"""


# ------------------------------------------------------------------------------------ assets


def _lm(tok, seed=0, vocab_size=None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=vocab_size or len(tok), n_positions=32,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny local models and data: a policy, another policy (a different reference), a reward
    model (the judge), Python judges, prompts, comparisons and demonstrations."""
    from cyclic_raters import cyclic_comparisons

    from nlhf.data import write_jsonl
    from nlhf.data.schema import Comparison
    from nlhf.models import RewardModel, random_backbone
    from nlhf.models.tokenizer import build_tokenizer

    base = tmp_path_factory.mktemp("assets")
    tok = build_tokenizer([" ".join(WORDS)], kind="word")
    for name, seed in (("policy", 0), ("other", 1)):
        _lm(tok, seed).save_pretrained(base / name)
        tok.save_pretrained(base / name)
    torch.manual_seed(0)
    RewardModel(random_backbone(dict(TINY), tok), tok).save_pretrained(base / "rm")
    (base / "judges.py").write_text(JUDGES)
    (base / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    (base / "tiny.json").write_text(json.dumps(TINY))
    data = cyclic_comparisons(n_prompts=12, comparisons_per_prompt=2, seed=3)
    write_jsonl(data, base / "comparisons.jsonl")
    ties = [Comparison(f"new prompt {i}", "brief a", "list b", 0.5) for i in range(4)]
    write_jsonl(ties, base / "ties.jsonl")  # held-out prompts, all ties: accuracy undefined
    rng = random.Random(0)
    demos = []
    for _ in range(24):
        words = rng.sample(WORDS[2:], 3)
        demos.append({"prompt": f"{' '.join(words)} <sep>", "completion": f"good {words[0]}"})
    (base / "demos.jsonl").write_text("".join(json.dumps(d) + "\n" for d in demos))
    return base


def train_args(a: Path, out: Path, *extra: str) -> list[str]:
    args = ["train", "--policy", str(a / "policy"), "--judge", str(a / "rm")]
    args += ["--prompts", str(a / "prompts.txt"), "--output-dir", str(out), "--steps", "4"]
    args += ["--batch-size", "4", "--max-new-tokens", "5", "--lr", "1e-3", "--tau", "0.05"]
    return [*args, "--checkpoint-every", "2", "--cpu", "--no-progress", *extra]


def pref_args(a: Path, out: Path, *extra: str) -> list[str]:
    args = ["train-preference", "--data", str(a / "comparisons.jsonl")]
    args += ["--random-init", str(a / "tiny.json"), "--tokenizer-kind", "word", "--steps", "4"]
    args += ["--batch-size", "4", "--lr", "1e-2", "--eval-fraction", "0.25", "--log-every", "1"]
    return [*args, "--output-dir", str(out), "--cpu", "--no-progress", *extra]


def sft_args(a: Path, out: Path, *extra: str) -> list[str]:
    args = ["sft", "--data", str(a / "demos.jsonl"), "--random-init", str(a / "tiny.json")]
    args += ["--tokenizer-kind", "word", "--steps", "4", "--batch-size", "4", "--lr", "1e-2"]
    args += ["--eval-fraction", "0.25", "--log-every", "1", "--save-every", "2"]
    return [*args, "--output-dir", str(out), "--cpu", "--no-progress", *extra]


def snapshot(path: Path) -> dict[str, str]:
    """Every file under ``path`` with its content hash and mtime: a rejected run changes none."""
    if not path.exists():
        return {}
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path.parent)): f"{hashlib.sha1(p.read_bytes()).hexdigest()}:"
        f"{p.stat().st_mtime_ns}"
        for p in files
    }


def rejected(argv: list[str], capsys, pattern: str, untouched: Path | None = None) -> str:
    """Run the command; assert exit 2 with one line matching ``pattern`` and, for
    ``untouched``, nothing changed in that path. Returns the error line."""
    capsys.readouterr()
    before = snapshot(untouched) if untouched is not None else None
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err[-2000:]
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    if untouched is not None:
        assert snapshot(untouched) == before, f"{untouched} was changed by a rejected run"
    return err


def ok(argv: list[str], capsys) -> str:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return captured.out + captured.err


def steps_logged(out: Path, key: str | None = None) -> list[int]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if key is None or key in r]


def same_weights(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    for k in x:
        assert torch.equal(x[k], y[k]), (a, k)


def finite_weights(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(path).values())


# ------------------------------------------------------------------------ nlhf train: config


def test_train_rejects_bad_config_before_creating_anything(assets, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--tau", "nan"], r"tau: must be a finite number"),
        (["--lr", "inf", "--optimizer", "sgd"], r"lr: must be a finite number"),
        (["--model-free", "--reward-model"], r"model_free / reward_model: choose one"),
        (["--reward-baseline", "alternative"], r"reward_baseline: 'alternative' is used only"),
        (["--steps", "0"], r"steps must be >= 1"),
        (["--log-with", "nonesuch"], r"log_with: unknown tracker\(s\) \['nonesuch'\]"),
        (
            ["--judge", f"python:{assets / 'judges.py'}:prob_only", "--reward-model"],
            r"reward_model: the --judge python:.* has no \.reward",
        ),  # fmt: skip
        (["--policy", str(assets / "rm")], r"policy \(.*rm\): this is a preference/reward-model"),
        (["--policy", str(tmp_path / "missing")], r"policy \(.*missing\): checkpoint does not"),
        (["--prompts", str(tmp_path / "none.txt")], r"none\.txt"),
    ]
    for extra, pattern in cases:
        rejected(train_args(assets, out, *extra), capsys, pattern)
        assert not out.exists(), extra
    file = tmp_path / "a-file"
    file.write_text("keep me")
    rejected(train_args(assets, file), capsys, r"output_dir: .*a-file exists and is a file", file)


def test_train_rejects_bad_checkpoints_naming_the_file(assets, tmp_path, capsys):
    out = tmp_path / "out"
    broken = tmp_path / "broken"
    shutil.copytree(assets / "policy", broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated
    rejected(
        train_args(assets, out, "--policy", str(broken)), capsys,
        r"policy \(.*broken\): corrupted weight file model\.safetensors", broken,
    )  # fmt: skip
    from nlhf.models.tokenizer import build_tokenizer

    big = build_tokenizer([" ".join(WORDS + [f"w{i}" for i in range(40)])], kind="word")
    big.save_pretrained(tmp_path / "bigtok")
    rejected(
        train_args(assets, out, "--tokenizer", str(tmp_path / "bigtok")), capsys,
        r"tokenizer has \d+ tokens but the policy's vocabulary has only \d+",
    )  # fmt: skip
    assert not out.exists()


def test_train_in_place_is_refused(assets, tmp_path, capsys):
    policy = tmp_path / "policy"
    shutil.copytree(assets / "policy", policy)
    argv = train_args(assets, policy, "--policy", str(policy))
    rejected(argv, capsys, r"training in place", policy)


# ---------------------------------------------------------------- nlhf train: the run directory


@pytest.fixture(scope="module")
def finished_train(assets, tmp_path_factory):
    """A finished 4-step run (constant schedule, checkpoint every 2 steps)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(train_args(assets, out)) == 0
    return out


def test_train_resume_refuses_changes_and_a_finished_run_is_left_alone(
    assets, finished_train, capsys
):
    out = finished_train
    assert steps_logged(out) == [1, 2, 3, 4]
    rejected(
        train_args(assets, out), capsys,
        r"already holds a run \(config\.yaml, metrics\.jsonl, nlhf_finished\.json, checkpoint\); "
        r"pass --resume to continue it or --overwrite to replace it", out,
    )  # fmt: skip
    err = rejected(
        train_args(assets, out, "--resume", "--lr", "0.01", "--seed", "3", "--tau", "0.1",
                   "--alternative", "self", "--batch-size", "2"),
        capsys, r"resume: the finished run in .* \(step 4\) was trained with other settings", out,
    )  # fmt: skip
    for field in ("alternative: 'mixture' -> 'self'", "batch_size: 4 -> 2", "lr: 0.001 -> 0.01",
                  "seed: 0 -> 3", "tau: 0.05 -> 0.1"):  # fmt: skip
        assert field in err
    rejected(
        train_args(assets, out, "--resume", "--reference", str(assets / "other")), capsys,
        r"reference: None -> '.*other'", out,
    )  # fmt: skip
    rejected(
        train_args(assets, out, "--resume", "--steps", "2"), capsys,
        r"resume: the run in .* is at step 4, beyond the 2 steps asked for", out,
    )  # fmt: skip
    missing = _missing_tracker()
    if missing:
        for flags in ([], ["--resume"]):
            rejected(
                train_args(assets, out, *flags, "--log-with", missing), capsys,
                rf"log_with: tracker\(s\) \['{missing}'\] are not installed", out,
            )  # fmt: skip
    before = snapshot(out)
    printed = ok(train_args(assets, out, "--resume", "--log-every", "2"), capsys)
    assert "nothing to do: the run in" in printed and "finished at step 4" in printed
    assert snapshot(out) == before


def _missing_tracker() -> str | None:
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    return next((t for t in ("tensorboard", "wandb", "aim", "mlflow") if t not in available), None)


def test_train_overwrite_and_extending_a_finished_run(assets, finished_train, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished_train, out)
    ok(train_args(assets, out, "--resume", "--steps", "6"), capsys)  # constant lr: may grow
    assert steps_logged(out) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "nlhf_finished.json").read_text())["step"] == 6
    (out / "notes.txt").write_text("from the old run")
    ok(train_args(assets, out, "--overwrite"), capsys)
    assert steps_logged(out) == [1, 2, 3, 4] and not (out / "notes.txt").exists()
    same_weights(out / "model.safetensors", finished_train / "model.safetensors")


def test_train_non_finite_step_stops_and_keeps_the_last_good_checkpoint(assets, tmp_path, capsys):
    out = tmp_path / "nan"
    capsys.readouterr()
    code = main(
        train_args(assets, out, "--lr", "1e30", "--optimizer", "sgd", "--max-grad-norm", "0",
                   "--checkpoint-every", "1", "--steps", "6")
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    match = re.search(r"nlhf train: error: step (\d+): (loss = nan|grad_norm = nan|the weights)",
                      err)  # fmt: skip
    assert match, err
    assert not (out / "model.safetensors").exists() and not (out / "nlhf_finished.json").exists()
    kept = find_checkpoint(out)
    if kept is not None:  # the last good one: finite, before the step that failed
        assert kept.step < int(match.group(1)) and f"step {kept.step} in" in err
        assert finite_weights(kept.path / "model.safetensors")


def test_train_judge_errors_name_the_judge(assets, tmp_path, capsys):
    judges = assets / "judges.py"
    for fn, pattern in (
        ("raises", r"--judge python:.*judges\.py:raises .*raised RuntimeError: the rater server "
                   r"is down \(at judges\.py:3 in raises\)"),
        ("strings", r"--judge python:.*judges\.py:strings .*returned str '0\.7' at index 0"),
    ):  # fmt: skip
        capsys.readouterr()
        code = main(train_args(assets, tmp_path / fn, "--judge", f"python:{judges}:{fn}"))
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and re.search(pattern, err), err


# ------------------------------------------------------------- processes killed with SIGKILL


@pytest.fixture(scope="module")
def fork():
    """A fork server with nlhf imported: ``fork(argv, log, pause=None, fsize=None)`` starts
    ``nlhf ARGV`` in a new process (stdout and stderr to ``log``)."""
    import multiprocessing.forkserver as forkserver

    forkserver._forkserver._stop()  # a server started elsewhere would lack the preload
    ctx = multiprocessing.get_context("forkserver")
    preload = ["nlhf.cli", "nlhf.train.policy", "nlhf.train.preference", "nlhf.train.sft"]
    ctx.set_forkserver_preload([*preload, "nlhf.models.judges", Path(__file__).stem])

    def start(argv, log, pause=None, fsize=None):
        proc = ctx.Process(target=_child, args=(argv, str(log), pause, fsize))
        proc.start()
        return proc

    yield start
    forkserver._forkserver._stop()


def _child(argv: list[str], log: str, pause: str | None, fsize: int | None) -> None:
    """The body of a forked ``nlhf`` process."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    import threading

    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())  # not a multiprocessing lock: a killed process leaks none
    os.environ.pop(PAUSE_ENV, None)
    if pause:
        os.environ[PAUSE_ENV] = pause
    if fsize:  # a full disk: writes past fsize bytes fail (EFBIG) instead of killing us
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
    from nlhf.cli import main as cli

    sys.exit(cli(argv))


def _wait(proc, flag: Path | None, metrics: Path, delay: float | None, log: Path) -> str:
    """Kill ``proc`` when it reaches its pause (``flag`` appears) or, with ``delay``, that many
    seconds after it logged its first new step, whichever comes first. Returns where it died:
    "pause", "random" or "finished"."""
    lines0 = len(metrics.read_text().splitlines()) if metrics.exists() else 0
    started, deadline = None, time.time() + 120
    while time.time() < deadline:
        if flag is not None and flag.exists():
            proc.kill()
            proc.join()
            return "pause"
        if not proc.is_alive():
            proc.join()
            assert proc.exitcode == 0, log.read_text()[-3000:]
            return "finished"
        if delay is not None:
            if started is None and metrics.exists():
                text = metrics.read_text()
                if len(text.splitlines()) > lines0 or (lines0 and not text):
                    started = time.time()
            if started is not None and time.time() - started >= delay:
                proc.kill()
                proc.join()
                return "random"
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"timed out: {log.read_text()[-3000:]}")


def kill_loop(fork, argv, out: Path, plan, rng: random.Random, tmp: Path) -> list[str]:
    """Run ``argv`` (with ``--resume``) once per entry of ``plan`` (``(pause or None, random
    delay or None, checkpoint step expected at the pause)``), killing it as the entry says, then
    once more to the end. Checks that each restart resumes where the kill left the checkpoint.
    Returns what happened."""
    events = []
    for i, (pause, random_delay, expected) in enumerate([*plan, (None, None, None)]):
        log, flag = tmp / f"log{i}.txt", tmp / f"paused{i}"
        spec = f"{pause}:{flag}" if pause else None
        delay = None if random_delay is None else rng.uniform(0.0, random_delay)
        before = find_checkpoint(out)
        proc = fork(argv, log, pause=spec)
        how = _wait(proc, flag if pause else None, out / "metrics.jsonl", delay, log)
        if i == len(plan):
            assert how == "finished"
            break
        assert how == "finished" or proc.exitcode == -9
        resumed = re.search(r"resumed from .* at step (\d+)", log.read_text())
        at = int(resumed.group(1)) if resumed else 0
        assert at == (before.step if before else 0), log.read_text()[-2000:]
        if how == "pause":
            assert find_checkpoint(out).step == expected, (pause, find_checkpoint(out))
            events.append(f"killed at {pause}")
        else:
            state = find_checkpoint(out)
            at = state.step if state else "none"
            events.append(f"{how} at a random moment ({delay:.2f} s in; checkpoint: {at})")
    return events


LOOP_STEPS = 12


def _loop_train_args(assets: Path, out: Path) -> list[str]:
    return train_args(
        assets, out, "--steps", str(LOOP_STEPS), "--checkpoint-every", "1", "--grad-accum", "2",
        "--alternative", "ema", "--ema-decay", "0.5", "--model-free", "--lr-schedule", "cosine",
        "--warmup-steps", "2", "--log-every", "1",
    )  # fmt: skip


def test_kill_loop_train(assets, fork, tmp_path, capsys):
    """`nlhf train` with a checkpoint every step, killed (SIGKILL) inside checkpoint saves
    (files written but no marker; complete but not swapped; half-swapped), inside the final
    save, and at random moments, resumed each time: the final policy and EMA equal an
    uninterrupted run bit for bit, and every step is in metrics.jsonl exactly once."""
    full = tmp_path / "full"
    ok(_loop_train_args(assets, full), capsys)
    out = tmp_path / "killed"
    argv = [*_loop_train_args(assets, out), "--resume"]
    plan = [  # (pause point, random kill within this many seconds, checkpoint at the pause);
        # a random kill's pause only bounds it, ahead of the next deterministic pause
        ("checkpoint-written@2", None, 1),  # files written, no marker yet
        ("checkpoint-written@5", 0.2, 4),
        ("checkpoint-swapping@5", None, 5),  # checkpoint/ -> checkpoint.old/ done, not the rest
        ("checkpoint-marked@7", None, 7),  # complete, not swapped in
        ("checkpoint-written@11", 0.2, 10),
        ("final-moving@12", None, 12),  # some of the final model's files in place
    ]
    events = kill_loop(fork, argv, out, plan, random.Random(0), tmp_path)
    assert sum(e.startswith("killed at") for e in events) >= 4  # every deterministic pause
    for name in ("model.safetensors", "ema/model.safetensors"):
        same_weights(full / name, out / name)
    assert steps_logged(out) == list(range(1, LOOP_STEPS + 1))
    a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for ra, rb in zip(a, b):
        assert {k: v for k, v in ra.items() if not k.startswith("time/")} == {
            k: v for k, v in rb.items() if not k.startswith("time/")
        }
    assert not list(out.glob("checkpoint.*")) and not (out / ".final.new").exists()
    print("kill loop (nlhf train):", "; ".join(events))


def test_two_runs_into_one_directory_and_a_full_disk(assets, fork, tmp_path, capsys):
    """A second run into a directory in use is refused (the lock); a checkpoint that cannot be
    written (the file-size limit of a full disk) keeps the previous one, and the run resumes
    from it to the same weights as an uninterrupted run."""
    out = tmp_path / "run"
    argv = _loop_train_args(assets, out)
    flag = tmp_path / "paused"
    proc = fork(argv, tmp_path / "log.txt", pause=f"checkpoint-marked@2:{flag}")
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert proc.is_alive() and time.time() < deadline, (tmp_path / "log.txt").read_text()
            time.sleep(0.01)
        rejected(argv + ["--overwrite"], capsys, rf"is in use by another run \(pid {proc.pid}\)")
        rejected(argv, capsys, r"already holds a run")
    finally:
        proc.kill()
        proc.join()
    # the disk fills up: the step-4 checkpoint cannot be written (its weights alone exceed the
    # file-size limit), the step-3 one stays
    argv = [*argv, "--resume"]
    proc = fork(argv + ["--stop-after", "1"], tmp_path / "log1.txt")  # to step 3
    proc.join()
    assert proc.exitcode == 0 and find_checkpoint(out).step == 3
    proc = fork(argv, tmp_path / "log2.txt", fsize=20_000)
    proc.join()
    log = (tmp_path / "log2.txt").read_text()
    assert proc.exitcode == 1, log[-2000:]
    assert re.search(
        r"nlhf train: error: could not write the checkpoint of step 4 in .* \(.*File too large"
        r".*\); the previous checkpoint is intact \(step 3 in .*checkpoint\)", log
    ), log[-2000:]  # fmt: skip
    assert find_checkpoint(out).step == 3 and not (out / "checkpoint.new").exists()
    proc = fork(argv, tmp_path / "log3.txt")
    proc.join()
    assert proc.exitcode == 0
    assert steps_logged(out) == list(range(1, LOOP_STEPS + 1))
    full = tmp_path / "full"
    ok(_loop_train_args(assets, full), capsys)
    same_weights(full / "model.safetensors", out / "model.safetensors")


# ------------------------------------------------------------------ nlhf train-preference


def test_preference_rejects_bad_models_and_data(assets, tmp_path, capsys):
    out = tmp_path / "out"
    base = pref_args(assets, out)
    model_args = [*base[:3], "--model", "{model}", *base[7:]]  # --model instead of random init

    def with_model(model, *extra):
        return [x.replace("{model}", str(model)) for x in model_args] + list(extra)

    no_tok = tmp_path / "no-tokenizer"
    no_tok.mkdir()
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (assets / "policy" / f).exists():
            shutil.copy(assets / "policy" / f, no_tok / f)
    rejected(with_model(no_tok), capsys, r"model \(.*no-tokenizer\): no tokenizer files", no_tok)
    from nlhf.models.tokenizer import build_tokenizer

    big = build_tokenizer([" ".join(WORDS + [f"w{i}" for i in range(40)])], kind="word")
    big.save_pretrained(tmp_path / "bigtok")
    rejected(
        with_model(assets / "policy", "--tokenizer", str(tmp_path / "bigtok")), capsys,
        r"tokenizer \(.*bigtok\): the tokenizer has \d+ tokens but the model's vocabulary has "
        r"only \d+",
    )  # fmt: skip
    broken = tmp_path / "broken"
    shutil.copytree(assets / "policy", broken)
    weights = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(weights[:-100])
    rejected(with_model(broken), capsys, r"corrupted weight file model\.safetensors", broken)
    for missing in (tmp_path / "runs" / "pm" / "nope", "./nope"):
        err = rejected(with_model(missing), capsys, r"model \(.*nope\): checkpoint does not exist")
        assert "hub" not in err.lower()
    rejected(with_model(broken, "--output-dir", str(broken)), capsys, r"training in place", broken)
    assert not out.exists()
    # eval data sharing every prompt with the training data
    shared = str(assets / "comparisons.jsonl")
    rejected(
        [*base, "--eval-data", shared], capsys,
        r"eval_data: every one of the 24 eval comparisons \(.*comparisons\.jsonl\) has a "
        r"prompt that also occurs in the training data.*--allow-shared-eval-prompts",
    )  # fmt: skip
    assert not out.exists()
    printed = ok([*base, "--eval-data", shared, "--allow-shared-eval-prompts"], capsys)
    assert json.loads((out / "eval.json").read_text())["eval/comparisons"] == 24
    assert "NaN" not in printed


def test_preference_nan_free_outputs_resume_checks_and_non_finite_steps(assets, tmp_path, capsys):
    out = tmp_path / "run"
    printed = ok(pref_args(assets, out, "--eval-data", str(assets / "ties.jsonl")), capsys)
    text = (out / "eval.json").read_text()
    assert "NaN" not in text and "NaN" not in printed and "Infinity" not in text
    assert json.loads(text)["eval/accuracy"] is None  # all ties: undefined, written as null
    assert '"eval/accuracy": null' in printed
    assert "NaN" not in (out / "metrics.jsonl").read_text()
    argv = pref_args(assets, out, "--eval-data", str(assets / "ties.jsonl"))
    rejected(argv, capsys, r"already holds a run", out)
    rejected(argv + ["--resume", "--lr", "0.5"], capsys, r"lr: 0\.01 -> 0\.5", out)
    rejected(argv + ["--resume", "--steps", "8"], capsys, r"steps: 4 -> 8", out)  # lr decays
    before = snapshot(out)
    assert "finished at step 4" in ok(argv + ["--resume", "--eval-every", "2"], capsys)
    assert snapshot(out) == before
    nan = tmp_path / "nan"
    capsys.readouterr()
    assert main(pref_args(assets, nan, "--lr", "1e30", "--save-every", "1", "--steps", "6")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"nlhf train-preference: error: step \d+: (loss|grad_norm|the weights)", err)
    assert not (nan / "model.safetensors").exists()
    kept = find_checkpoint(nan)
    assert kept is None or finite_weights(kept.path / "model" / "model.safetensors")


def test_kill_loop_preference(assets, fork, tmp_path, capsys):
    full = tmp_path / "full"
    argv = pref_args(assets, full, "--steps", "6", "--save-every", "1", "--eval-every", "2")
    ok(argv, capsys)
    out = tmp_path / "killed"
    argv = pref_args(assets, out, "--steps", "6", "--save-every", "1", "--eval-every", "2")
    plan = [
        ("checkpoint-written@2", 0.3, 1),
        ("checkpoint-swapping@3", None, 3),
        ("final-moving@6", None, 6),
    ]
    events = kill_loop(fork, [*argv, "--resume"], out, plan, random.Random(1), tmp_path)
    same_weights(full / "model.safetensors", out / "model.safetensors")
    assert steps_logged(out, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert steps_logged(out, "eval/log_loss") == [2, 4, 6]
    print("kill loop (nlhf train-preference):", "; ".join(events))


# ------------------------------------------------------------------------------- nlhf sft


def test_sft_faults(assets, tmp_path, capsys):
    out = tmp_path / "run"
    shared = str(assets / "demos.jsonl")
    rejected(
        sft_args(assets, out, "--eval-data", shared), capsys,
        r"eval_data: every one of the 24 eval demonstrations .*--allow-shared-eval-prompts",
    )  # fmt: skip
    rejected(sft_args(assets, out, "--lr", "nan"), capsys, r"lr: must be a finite number")
    rejected(
        sft_args(assets, out, "--model", str(tmp_path / "nope"), "--random-init", "none"),
        capsys, r"model \(.*nope\): checkpoint does not exist",
    )  # fmt: skip
    assert not out.exists()
    ok(sft_args(assets, out), capsys)
    assert not (out / "checkpoint").exists()  # finished: the model is the result
    rejected(sft_args(assets, out), capsys, r"already holds a run", out)
    rejected(sft_args(assets, out, "--resume", "--seed", "2"), capsys, r"seed: 0 -> 2", out)
    rejected(sft_args(assets, out, "--resume", "--steps", "8"), capsys, r"steps: 4 -> 8", out)
    before = snapshot(out)
    assert "finished at step 4" in ok(sft_args(assets, out, "--resume"), capsys)
    assert snapshot(out) == before
    nan = tmp_path / "nan"
    capsys.readouterr()
    assert main(sft_args(assets, nan, "--lr", "1e30", "--save-every", "1", "--steps", "6")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(r"nlhf sft: error: step \d+: (loss|grad_norm|the weights)", err), err
    assert not (nan / "model.safetensors").exists()


def test_kill_loop_sft(assets, fork, tmp_path, capsys):
    full = tmp_path / "full"
    ok(sft_args(assets, full, "--steps", "6", "--save-every", "1"), capsys)
    out = tmp_path / "killed"
    argv = [*sft_args(assets, out, "--steps", "6", "--save-every", "1"), "--resume"]
    plan = [
        ("checkpoint-marked@3", None, 3),
        ("checkpoint-written@5", 0.3, 4),
        ("final-written@6", None, 5),  # no final checkpoint in sft: the step-5 one is kept
    ]
    events = kill_loop(fork, argv, out, plan, random.Random(2), tmp_path)
    same_weights(full / "model.safetensors", out / "model.safetensors")
    assert steps_logged(out, "train/loss") == [1, 2, 3, 4, 5, 6]
    assert steps_logged(out, "eval/loss") == [6]
    assert not (out / "checkpoint").exists()
    print("kill loop (nlhf sft):", "; ".join(events))
