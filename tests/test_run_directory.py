"""The shared run directory: validation before writing, lock, atomic checkpoints, resume checks."""

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nlhf.jsonio import dumps
from nlhf.train.run import (
    MARKER,
    NonFiniteError,
    RunDirectory,
    check_finite_step,
    find_checkpoint,
    lr_factor,
    shuffled_indices,
)


@dataclass
class Sub:
    width: int = 4
    """a nested field"""


@dataclass
class Cfg:
    lr: float = 1e-3
    """learning rate"""
    steps: int = 10
    """steps"""
    policy: str | None = None
    """an input path"""
    progress: bool = True
    """logging only"""
    sub: Sub = field(default_factory=Sub)
    """nested section"""


def _open(out, cfg=None, **kw) -> RunDirectory:
    run = RunDirectory(out, cfg or Cfg(), may_change={"steps", "progress"}, **kw)
    run.check()
    return run.open()


def _write(payload: str):
    def write(d: Path) -> None:
        (d / "state.txt").write_text(payload)

    return write


def test_fresh_run_writes_config_checkpoint_and_metrics(tmp_path):
    out = tmp_path / "run"
    with _open(out) as run:
        run.log({"step": 1, "loss": float("nan"), "acc": float("inf")})
        run.save_checkpoint(1, _write("one"))
        run.save_checkpoint(2, _write("two"))
    assert (out / "config.yaml").is_file()
    line = (out / "metrics.jsonl").read_text().strip()
    assert json.loads(line) == {"step": 1, "loss": None, "acc": None}  # never bare NaN
    ckpt = find_checkpoint(out)
    assert ckpt.step == 2 and (ckpt.path / "state.txt").read_text() == "two"
    assert not (out / "checkpoint.new").exists() and not (out / "checkpoint.old").exists()


@pytest.mark.parametrize("state", ["new_only", "old_and_new", "old_only", "main_and_partial"])
def test_a_kill_at_any_moment_of_the_swap_leaves_a_findable_checkpoint(tmp_path, state):
    out = tmp_path / "run"
    with _open(out) as run:
        run.save_checkpoint(1, _write("one"))
        run.save_checkpoint(2, _write("two"))
    main = out / "checkpoint"
    # reproduce each intermediate state of save_checkpoint(3)
    new = out / "checkpoint.new"
    new.mkdir()
    (new / "state.txt").write_text("three")
    if state != "main_and_partial":
        marker = json.loads((main / MARKER).read_text())
        (new / MARKER).write_text(json.dumps({**marker, "step": 3}))
    if state in ("old_and_new", "old_only", "new_only"):
        os.replace(main, out / "checkpoint.old")
    if state == "old_only":
        import shutil

        shutil.rmtree(new)
    if state == "new_only":
        import shutil

        shutil.rmtree(out / "checkpoint.old")
    want = {"new_only": 3, "old_and_new": 3, "old_only": 2, "main_and_partial": 2}[state]
    assert find_checkpoint(out).step == want
    run = RunDirectory(out, Cfg(), resume=True, may_change={"steps"})
    assert run.check().step == want
    with run.open():
        assert run.start.path == main and run.start.step == want
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint"
    ]


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    out = tmp_path / "run"

    def disk_full(d: Path) -> None:
        (d / "partial").write_text("x")
        raise OSError(28, "No space left on device")

    with _open(out) as run:
        run.save_checkpoint(1, _write("one"))
        with pytest.raises(OSError, match=r"step 2 .*No space left.*previous checkpoint is intact"):
            run.save_checkpoint(2, disk_full)
    assert find_checkpoint(out).step == 1
    assert (out / "checkpoint" / "state.txt").read_text() == "one"


def test_validation_before_anything_is_written(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        RunDirectory(file, Cfg()).check()
    src = tmp_path / "policy"
    src.mkdir()
    with pytest.raises(ValueError, match="training in place"):
        RunDirectory(src, Cfg(policy=str(src)), inputs={"policy": src}).check()
    with pytest.raises(ValueError, match="lr: must be a finite number"):
        RunDirectory(tmp_path / "x", Cfg(lr=float("nan"))).check()
    assert not (tmp_path / "x").exists()

    out = tmp_path / "run"
    with _open(out) as run:
        run.save_checkpoint(3, _write("three"))
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        RunDirectory(out, Cfg()).check()
    changed = Cfg(lr=2e-3, sub=Sub(width=8), steps=20, progress=False)
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.002; sub.width: 4 -> 8") as err:
        RunDirectory(out, changed, resume=True, may_change={"steps", "progress"}).check()
    assert "steps" not in str(err.value).split("differ")[1].split("Resume")[0]
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing touched


def test_overwrite_replaces_an_old_run(tmp_path):
    out = tmp_path / "run"
    with _open(out) as run:
        run.log({"step": 1})
        run.save_checkpoint(1, _write("one"))
    (out / "model.safetensors").write_text("old weights")
    with _open(out, overwrite=True) as run:
        assert run.start is None
    assert not (out / "checkpoint").exists() and not (out / "model.safetensors").exists()
    assert not (out / "metrics.jsonl").exists()


def test_resume_truncates_metrics_to_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    with _open(out) as run:
        for step in range(1, 5):
            run.log({"step": step})
            if step == 2:
                run.save_checkpoint(2, _write("two"))
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 5, "lo')  # a line cut short by a kill
    with _open(out, resume=True) as run:
        assert run.start.step == 2
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


LOCKER = """
import sys, time
from nlhf.train.run import RunDirectory
from dataclasses import dataclass
@dataclass
class C:
    x: int = 1
    '''x'''
run = RunDirectory(sys.argv[1], C())
run.check(); run.open()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_run_into_a_locked_directory_is_refused_until_the_first_dies(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        run = RunDirectory(out, Cfg(), overwrite=True)
        run.check()
        with pytest.raises(ValueError, match=rf"in use by another run \(pid {proc.pid}\)"):
            run.open()
    finally:
        proc.kill()  # kill -9: the OS releases the lock
        proc.wait()
    deadline = time.time() + 10
    while True:
        try:
            with _open(out, overwrite=True):
                break
        except ValueError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def test_non_finite_step_names_the_step_and_the_kept_checkpoint(tmp_path):
    out = tmp_path / "run"
    with _open(out) as run:
        run.save_checkpoint(4, _write("four"))
    check_finite_step(5, out, loss=1.0, grad_norm=2.0)
    with pytest.raises(NonFiniteError, match=r"step 7: grad_norm = nan.*step 4 in"):
        check_finite_step(7, out, loss=1.0, grad_norm=float("nan"))


def test_shared_schedule_and_data_order():
    assert lr_factor(0, 10, warmup=1) == 0.5
    assert lr_factor(5, 10, schedule="constant") == 1.0
    assert lr_factor(10, 10, schedule="linear") == 0.0
    assert lr_factor(10, 10, schedule="cosine") == pytest.approx(0.0)
    stream = shuffled_indices(7, seed=3, start=0, count=21)
    for epoch in range(3):
        assert sorted(stream[7 * epoch : 7 * epoch + 7]) == list(range(7))
    assert shuffled_indices(7, 3, 9, 5) == stream[9:14]  # any offset, same items
    assert stream[:7] != stream[7:14]
    assert dumps({"a": [float("-inf"), 1.5]}) == '{"a": [null, 1.5]}'
