"""One run directory for every trainer: validate -> lock -> config -> checkpoints -> metrics -> end.

``nlhf sft``, ``nlhf train-preference`` and ``nlhf train`` write their output directory through
:class:`RunDirectory`, so that a fault never loses data or leaves garbage:

1. :meth:`RunDirectory.check` validates everything *before anything is written*: the output
   path is not a file, it is not one of the run's inputs (training in place), it holds no other
   run unless ``--resume`` or ``--overwrite`` is given, and on ``--resume`` the checkpoint's
   stored configuration matches the new one except for the fields that may change (the step
   budget, logging), and the checkpoint is not beyond the run's step budget; it returns the
   checkpoint to resume from (none when the run was stopped before its first checkpoint: it
   starts again, if its ``config.yaml`` matches). A finished run resumed with the same settings
   sets :attr:`RunDirectory.finished`: there is nothing to do.
2. :meth:`RunDirectory.open` takes the exclusive lock of :class:`nlhf.locking.DirectoryLock`
   (``.nlhf-run.lock``, released by the OS when the process dies, so a killed run never blocks
   the next; tournaments and the demo take the same lock), clears an overwritten run, writes
   ``config.yaml`` and truncates ``metrics.jsonl`` to the resumed step.
3. :meth:`RunDirectory.save_checkpoint` writes ``checkpoint.new/``, marks it complete last (the
   marker holds the step and the resolved config), then swaps it in:
   ``checkpoint/ -> checkpoint.old/``, ``checkpoint.new/ -> checkpoint/``, delete the old one.
   At every moment a complete checkpoint exists under one of the three names, and
   :func:`find_checkpoint` picks the newest complete one; a failed write (e.g. disk full) leaves
   the previous checkpoint as it was.
4. :meth:`RunDirectory.log` appends one metrics record per line, non-finite numbers as ``null``;
   a trainer logs a step before it checkpoints that step, so after a kill and ``--resume``
   every step is in ``metrics.jsonl`` exactly once.
5. :meth:`RunDirectory.save_final` writes the finished model into ``.final.new/``, moves its
   files into the output directory one atomic rename each, and only then writes
   ``nlhf_finished.json`` (the step and the config): a kill before that leaves the run
   unfinished and its checkpoint in place, and ``--resume`` writes the model again.
6. :meth:`RunDirectory.close` releases the lock.

The module also holds the pieces every trainer shares: the learning-rate schedule
(:func:`lr_factor`), the resumable shuffled index stream (:func:`shuffled_indices`), the finite
checks of a step and of the weights (:func:`check_finite_step`, :func:`check_finite_weights`),
the check of ``--log-with`` trackers and the reset of accelerate's process-wide state.

Testing only: the environment variable ``NLHF_TEST_PAUSE=<point>@<step>:<file>`` makes the
process create ``<file>`` and sleep at one point of a save (see :data:`PAUSE_POINTS`), so that a
test can kill it exactly there (``tests/test_faults_train.py``). Never set it otherwise.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from nlhf.config import save_yaml, to_dict
from nlhf.jsonio import dumps, write_json, write_text
from nlhf.locking import LOCK, DirectoryLock, check_output_dir, is_inside
from nlhf.models.checkpoint import first_line

__all__ = [
    "Checkpoint",
    "NonFiniteError",
    "RunDirectory",
    "check_finite_config",
    "check_finite_step",
    "check_finite_weights",
    "check_trackers",
    "find_checkpoint",
    "find_finished",
    "lr_factor",
    "per_process_batch",
    "read_metrics",
    "reset_accelerate_state",
    "run_command",
    "shuffled_indices",
    "start_accelerator",
]

CHECKPOINT = "checkpoint"
MARKER = "nlhf_checkpoint.json"  # written last: a checkpoint directory without it is incomplete
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
FINISHED = "nlhf_finished.json"  # written after the final model: the run is complete
FINAL_TMP = ".final.new"
# what a run directory may hold that marks it as a run (for the refuse-unless-overwrite check)
_RUN_FILES = (CONFIG, METRICS, FINISHED, CHECKPOINT, f"{CHECKPOINT}.new", f"{CHECKPOINT}.old")

PAUSE_ENV = "NLHF_TEST_PAUSE"
PAUSE_POINTS = (
    "checkpoint-written",  # the checkpoint's files are in checkpoint.new/, its marker is not
    "checkpoint-marked",  # checkpoint.new/ is complete, the swap has not started
    "checkpoint-swapping",  # checkpoint/ was renamed to checkpoint.old/, checkpoint.new/ not yet in
    "final-written",  # the final model is in .final.new/, nothing moved into place yet
    "final-moving",  # the first of the final model's files has been moved into place
)
"""Where ``NLHF_TEST_PAUSE`` can stop a save (tests only)."""


def _test_pause(point: str, step: int) -> None:
    """Tests only: sleep here when ``NLHF_TEST_PAUSE`` is ``<point>@<step>:<file>``, after
    creating ``<file>`` so that the test knows when to kill the process."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    where, _, flag = spec.partition(":")
    if where != f"{point}@{step}":
        return
    Path(flag).write_text(str(os.getpid()))
    time.sleep(3600)


class NonFiniteError(ValueError):
    """A training step produced a non-finite loss or gradient norm."""


# --------------------------------------------------------------------------------------------
# checkpoints


@dataclass
class Checkpoint:
    """A complete checkpoint: its directory, step, the resolved config it was trained with and
    trainer-specific facts (e.g. a fingerprint of the reference policy)."""

    path: Path
    step: int
    config: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


def _read_record(record: Path, path: Path) -> Checkpoint | None:
    """The step, config and extra facts in a checkpoint marker or ``nlhf_finished.json``; None
    when it is missing, or cut short by a kill (it counts as incomplete)."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        return Checkpoint(
            path, int(data["step"]), dict(data["config"]), dict(data.get("extra", {}))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _read_checkpoint(path: Path) -> Checkpoint | None:
    return _read_record(path / MARKER, path)


def find_checkpoint(output_dir: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint among ``checkpoint/``, ``checkpoint.new/`` and
    ``checkpoint.old/`` (a kill during a swap can leave it under either of the last two)."""
    out = Path(output_dir)
    found = [
        c
        for name in (CHECKPOINT, f"{CHECKPOINT}.new", f"{CHECKPOINT}.old")
        if (c := _read_checkpoint(out / name)) is not None
    ]
    return max(found, key=lambda c: c.step) if found else None


def find_finished(output_dir: str | Path) -> Checkpoint | None:
    """The finished-run record (``nlhf_finished.json``: step and config), if the run in
    ``output_dir`` has written its final model."""
    return _read_record(Path(output_dir) / FINISHED, Path(output_dir))


def _settle_checkpoints(out: Path) -> None:
    """Make the newest complete checkpoint ``checkpoint/`` and remove the others; each rename
    keeps a complete checkpoint findable, so a kill in here loses nothing either."""
    best = find_checkpoint(out)
    main = out / CHECKPOINT
    if best is not None and best.path != main:
        if main.exists():
            shutil.rmtree(main)  # older or incomplete: the best one is elsewhere
        os.replace(best.path, main)
    for name in (f"{CHECKPOINT}.new", f"{CHECKPOINT}.old"):
        shutil.rmtree(out / name, ignore_errors=True)
    if best is None and main.exists():
        shutil.rmtree(main)  # incomplete


# --------------------------------------------------------------------------------------------
# config comparison on resume


def _same(old: Any, new: Any) -> bool:
    if old == new:
        return True
    if isinstance(old, str) and isinstance(new, str) and Path(old).exists() and Path(new).exists():
        return Path(old).resolve() == Path(new).resolve()  # the same path written differently
    return False


def config_changes(
    saved: Mapping[str, Any], now: Mapping[str, Any], may_change: Iterable[str], prefix: str = ""
) -> list[str]:
    """Dotted names of the fields whose values differ between two config dicts, except those in
    ``may_change`` (dotted names too)."""
    allowed = set(may_change)
    changed = []
    for key in sorted(set(saved) | set(now)):
        name = f"{prefix}{key}"
        if name in allowed:
            continue
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed += config_changes(old, new, allowed, prefix=f"{name}.")
        elif not _same(old, new):
            changed.append(f"{name}: {old!r} -> {new!r}")
    return changed


def check_finite_config(cfg: Any, where: str = "") -> None:
    """Raise ``ValueError`` naming the field if any float in a config dataclass is NaN or
    infinite (``--tau nan``, ``--lr inf``)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{where}{f.name}"
        if dataclasses.is_dataclass(value):
            check_finite_config(value, where=f"{name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name}: must be a finite number, got {value}")


# --------------------------------------------------------------------------------------------
# the run directory


class RunDirectory:
    """The output directory of one training run (see the module docstring).

    ``config`` is the run's config dataclass; ``inputs`` names the checkpoints the run reads
    (e.g. ``{"policy": cfg.policy}``), which the output directory must not be or contain unless
    ``overwrite`` (training in place); ``reads`` names other files it reads (data, prompts),
    which replacing an old run never deletes; ``may_change`` lists the config fields that a
    ``--resume`` may change (the step budget, logging, progress). ``barrier`` synchronises
    processes in a distributed run; only the main process writes.
    """

    def __init__(
        self,
        output_dir: str | Path,
        config: Any,
        *,
        resume: bool = False,
        overwrite: bool = False,
        inputs: Mapping[str, str | Path | None] | None = None,
        reads: Iterable[str | Path | None] = (),
        may_change: Iterable[str] = (),
        is_main: bool = True,
        barrier: Callable[[], None] = lambda: None,
    ):
        self.path = Path(output_dir)
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.inputs = {k: Path(v) for k, v in (inputs or {}).items() if v is not None}
        self.reads = [Path(r) for r in reads if r is not None]
        self.may_change = set(may_change) | {"resume", "overwrite", "output_dir"}
        self.is_main = is_main
        self.barrier = barrier
        self._lock = DirectoryLock(self.path, flag="output_dir")
        self.start: Checkpoint | None = None
        self.finished: Checkpoint | None = None
        """set by :meth:`check` when ``--resume`` finds the run already finished: nothing to
        do (its ``step`` and ``config`` are those of ``nlhf_finished.json``)"""

    # -- 1. validate (writes nothing) --------------------------------------------------------

    @classmethod
    def for_data_trainer(cls, cfg: Any, accelerator: Any) -> RunDirectory:
        """The run directory of a trainer that starts from ``cfg.model`` / ``cfg.tokenizer``
        (or ``cfg.random_init``) and reads ``cfg.data`` / ``cfg.eval_data`` (``nlhf sft``,
        ``nlhf train-preference``); local model and tokenizer paths are its inputs."""
        local = {name: path for name in ("model", "tokenizer") if (path := getattr(cfg, name))}
        return cls(
            cfg.output_dir, cfg, resume=cfg.resume, overwrite=cfg.overwrite,
            inputs={k: v for k, v in local.items() if Path(v).exists()},
            reads=[cfg.data, cfg.eval_data, cfg.random_init], may_change=cfg.may_change,
            is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone,
        )  # fmt: skip

    def check(self, total_steps: int | None = None) -> Checkpoint | None:
        """Validate the output directory against the config; return the checkpoint to resume
        from (None for a fresh start, or when :attr:`finished` is set). ``total_steps`` is the
        run's step budget: a checkpoint beyond it is an error (a run is never relabelled to
        fewer steps). Raises ``ValueError`` naming what is wrong."""
        out = self.path
        check_finite_config(self.config)
        check_output_dir(out, flag="output_dir")
        for name, src in self.inputs.items():
            if is_inside(src, out) and not self.overwrite:
                raise ValueError(
                    f"output_dir: {out} is (or contains) the {name} {src} this run reads; "
                    "training in place would overwrite it: choose another --output-dir "
                    "(or pass --overwrite)"
                )
        existing = [n for n in _RUN_FILES if (out / n).exists()] if out.is_dir() else []
        self.start = self.finished = None
        if not self.resume:
            if existing and not self.overwrite:
                raise ValueError(
                    f"output_dir: {out} already holds a run ({', '.join(existing)}); pass "
                    "--resume to continue it or --overwrite to replace it"
                )
            return None
        checkpoint = find_checkpoint(out) if out.is_dir() else None
        finished = find_finished(out) if out.is_dir() else None
        if finished is not None and (checkpoint is None or checkpoint.step <= finished.step):
            self._check_config(finished, "finished run")
            if total_steps is None or finished.step == total_steps:
                self.finished = finished
                return None
            if finished.step > total_steps:
                self._beyond_budget(finished, total_steps)
            if checkpoint is None or checkpoint.step < finished.step:
                raise ValueError(
                    f"resume: the run in {out} finished at step {finished.step} and kept no "
                    f"checkpoint of that step, so it cannot continue to step {total_steps}; "
                    "start a new run in another --output-dir (or pass --overwrite)"
                )
        if checkpoint is None:  # killed before its first checkpoint: it starts again
            if existing and not self.overwrite:
                saved = _read_config_yaml(out)
                if saved is None:
                    raise ValueError(
                        f"resume: {out} holds a run ({', '.join(existing)}) but no complete "
                        "checkpoint and no config.yaml; pass --overwrite to start it afresh"
                    )
                changed = config_changes(saved, to_dict(self.config), self.may_change)
                if changed:
                    raise ValueError(
                        f"resume: {out} holds a run with no complete checkpoint yet that was "
                        f"started with other settings ({'; '.join(changed)}); resume with the "
                        "same values, or pass --overwrite to replace it"
                    )
            return None
        self._check_config(checkpoint, "checkpoint")
        if total_steps is not None and checkpoint.step > total_steps:
            self._beyond_budget(checkpoint, total_steps)
        self.start = checkpoint
        return checkpoint

    def _check_config(self, saved: Checkpoint, what: str) -> None:
        changed = config_changes(saved.config, to_dict(self.config), self.may_change)
        if changed:
            where = saved.path if what == "checkpoint" else saved.path / FINISHED
            raise ValueError(
                f"resume: the {what} in {where} (step {saved.step}) was trained with other "
                f"settings; these fields differ and would change the run: {'; '.join(changed)}. "
                "Resume with the same values, or start a new run in another --output-dir "
                f"(fields that may change: {', '.join(sorted(self.may_change))})"
            )

    def _beyond_budget(self, saved: Checkpoint, total_steps: int) -> None:
        raise ValueError(
            f"resume: the run in {self.path} is at step {saved.step}, beyond the {total_steps} "
            f"steps asked for; a run cannot be shortened: resume with at least {saved.step} "
            "steps, or start a new run in another --output-dir"
        )

    # -- 2. open: lock, clear, config, metrics -----------------------------------------------

    @property
    def nothing_to_do(self) -> str:
        """What a trainer says when ``--resume`` finds the run finished (:attr:`finished`)."""
        step = self.finished.step if self.finished is not None else None
        return (
            f"nothing to do: the run in {self.path} finished at step {step} "
            "(start a new one with --overwrite or another --output-dir)"
        )

    def open(self) -> RunDirectory:
        """Lock the directory and write ``config.yaml`` (after :meth:`check`)."""
        if self.finished is not None:
            raise RuntimeError("RunDirectory.open: the run is finished; there is nothing to do")
        self.barrier()  # every process has checked before anything changes
        if self.is_main:
            self._lock.acquire()  # creates the directory
            in_place = any(is_inside(src, self.path) for src in self.inputs.values())
            if self.start is None and self.overwrite and not in_place:
                _clear_run(self.path, keep=self.reads)
            shutil.rmtree(self.path / FINAL_TMP, ignore_errors=True)
            if self.start is not None:
                _settle_checkpoints(self.path)
                self.start = find_checkpoint(self.path)
            save_yaml(self.config, self.path / CONFIG)
            self._truncate_metrics(self.start.step if self.start else 0)
        self.barrier()
        if self.start is not None:  # every process reads the settled location
            self.start = find_checkpoint(self.path)
        return self

    def _truncate_metrics(self, keep_through: int) -> None:
        path = self.path / METRICS
        if not path.is_file():
            return
        kept = []
        if keep_through > 0:
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    if int(json.loads(line).get("step", 0)) <= keep_through:
                        kept.append(line + "\n")
                except (ValueError, TypeError, AttributeError):
                    continue  # a line cut short by a kill
        write_text(path, "".join(kept))

    # -- 3. checkpoints ----------------------------------------------------------------------

    def open_and_resume(self, accelerator: Any, say: Callable[[str], None], state: str = "") -> int:
        """:meth:`open`, then restore accelerate's state (model, optimizer, scheduler, RNGs)
        from the checkpoint's ``state`` subdirectory when resuming; returns the step to start
        from (0 for a new run)."""
        self.open()
        if self.start is None:
            if self.resume:
                say(f"resume: no complete checkpoint in {self.path} yet; starting at step 0")
            return 0
        accelerator.load_state(str(self.start.path / state))
        say(f"resumed from {self.start.path} at step {self.start.step}")
        return self.start.step

    def save_checkpoint(
        self, step: int, write: Callable[[Path], None], extra: Mapping[str, Any] | None = None
    ) -> Path:
        """Write a checkpoint of ``step`` with ``write(directory)`` (called on every process),
        then make it the current one atomically. On a write error (disk full, ...) the new
        checkpoint is removed, the previous one stays, and the error says so."""
        out = self.path
        new, old, main = out / f"{CHECKPOINT}.new", out / f"{CHECKPOINT}.old", out / CHECKPOINT
        if self.is_main:
            shutil.rmtree(new, ignore_errors=True)
            new.mkdir(parents=True)
        self.barrier()
        try:
            write(new)
            self.barrier()
            if self.is_main:
                _test_pause("checkpoint-written", step)
                marker = {
                    "step": step,
                    "config": to_dict(self.config),
                    "extra": dict(extra or {}),
                }
                write_json(new / MARKER, marker)
                _fsync_dir(new)
        except Exception as err:  # disk full surfaces as OSError, SafetensorError, RuntimeError
            if self.is_main:
                shutil.rmtree(new, ignore_errors=True)
            previous = find_checkpoint(out)
            kept = f"step {previous.step} in {previous.path}" if previous else "none"
            raise _write_error(
                err,
                f"could not write the checkpoint of step {step} in {out} ({_reason(err)}); "
                f"the previous checkpoint is intact ({kept})",
            ) from err
        if self.is_main:
            _test_pause("checkpoint-marked", step)
            if main.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(main, old)
                _test_pause("checkpoint-swapping", step)
            os.replace(new, main)
            _fsync_dir(out)
            shutil.rmtree(old, ignore_errors=True)
        self.barrier()
        return main

    # -- 4. metrics --------------------------------------------------------------------------

    def log(self, record: Mapping[str, Any]) -> None:
        """Append one metrics record (a JSON line; NaN/inf as null) on the main process."""
        if not self.is_main:
            return
        with (self.path / METRICS).open("a", encoding="utf-8") as fh:
            fh.write(dumps(dict(record)) + "\n")

    # -- 5. the final model ------------------------------------------------------------------

    def save_final(
        self, step: int, write: Callable[[Path], None], remove_checkpoint: bool = False
    ) -> None:
        """Write the run's result with ``write(directory)`` (called on every process) into
        ``.final.new/``, move each of its entries into the output directory (one atomic rename
        each), then record the run as finished (``nlhf_finished.json``). Until that record is
        written the checkpoint stays, so a kill at any moment leaves a run that ``--resume``
        finishes; ``remove_checkpoint`` deletes the checkpoint once the run is finished."""
        out, tmp = self.path, self.path / FINAL_TMP
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.barrier()
        try:
            write(tmp)
        except Exception as err:  # disk full surfaces as OSError, SafetensorError, RuntimeError
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            previous = find_checkpoint(out)
            kept = (
                f"the checkpoint of step {previous.step} is intact: --resume writes it again"
                if previous
                else "no checkpoint was kept"
            )
            raise _write_error(
                err,
                f"could not write the final model of step {step} in {out} ({_reason(err)}); {kept}",
            ) from err
        self.barrier()
        if self.is_main:
            _test_pause("final-written", step)
            for i, entry in enumerate(sorted(tmp.iterdir())):
                target = out / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
                if i == 0:
                    _test_pause("final-moving", step)
            tmp.rmdir()
            write_json(out / FINISHED, {"step": step, "config": to_dict(self.config)})
            _fsync_dir(out)
            if remove_checkpoint:
                for name in (CHECKPOINT, f"{CHECKPOINT}.new", f"{CHECKPOINT}.old"):
                    shutil.rmtree(out / name, ignore_errors=True)
        self.barrier()

    # -- 6. close ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lock."""
        self._lock.release()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_config_yaml(out: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load((out / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _reason(err: BaseException) -> str:
    return (err.strerror if isinstance(err, OSError) and err.strerror else None) or first_line(err)


def _write_error(err: BaseException, message: str) -> OSError:
    """An ``OSError`` carrying ``message`` (and the errno of ``err`` when it has one)."""
    return OSError(getattr(err, "errno", None) or errno.EIO, message)


def _clear_run(out: Path, keep: Iterable[Path] = ()) -> None:
    """Remove an overwritten run's files (only from a directory that holds a run), except the
    entries that hold one of the ``keep`` paths (files the new run reads)."""
    if not any((out / n).exists() for n in _RUN_FILES):
        return
    keep = list(keep)
    for entry in out.iterdir():
        if entry.name == LOCK or any(is_inside(k, entry) for k in keep):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# shared training pieces


def check_finite_step(step: int, output_dir: str | Path, **values: float | torch.Tensor) -> None:
    """Stop with :class:`NonFiniteError` naming the step if any value (loss, gradient norm, ...)
    is NaN or infinite; the last good checkpoint stays untouched (nothing is saved)."""
    bad = {k: float(v) for k, v in values.items() if not math.isfinite(float(v))}
    if bad:
        names = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteError(
            f"step {step}: {names}; the run stopped without saving ({_kept(output_dir)}). "
            "Lower the learning rate, enable gradient clipping or check the inputs"
        )


def check_finite_weights(step: int, output_dir: str | Path, model: torch.nn.Module) -> None:
    """Stop with :class:`NonFiniteError` if a weight of ``model`` is NaN or infinite (a finite
    gradient times a huge learning rate can overflow): called before every save, so that no
    checkpoint or final model ever holds non-finite weights."""
    params = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not params:
        return
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).cpu()
    if not bool(finite.all()):
        name = params[int((~finite).nonzero()[0])][0]
        raise NonFiniteError(
            f"step {step}: the weights are no longer finite (e.g. {name}) after the update; "
            f"the run stopped without saving ({_kept(output_dir)}). Lower the learning rate "
            "or enable gradient clipping"
        )


def _kept(output_dir: str | Path) -> str:
    previous = find_checkpoint(output_dir)
    if previous is None:
        return "no checkpoint had been saved"
    return f"the last good checkpoint is step {previous.step} in {previous.path}"


def check_trackers(names: Sequence[str]) -> list[str]:
    """The ``--log-with`` trackers, checked before anything is written: each must be one
    accelerate knows (or registered with it) and installed. Raises ``ValueError`` naming the
    unknown or missing ones."""
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    known = {str(t) for t in LoggerType} | {str(t) for t in LOGGER_TYPE_TO_CLASS}
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        raise ValueError(
            f"log_with: unknown tracker(s) {unknown}; accelerate knows {sorted(known - {'all'})}"
        )
    available = {str(t) for t in get_available_trackers()}
    builtin = {str(t) for t in LoggerType}
    missing = sorted(n for n in names if n != "all" and n in builtin and n not in available)
    if missing:
        raise ValueError(
            f"log_with: tracker(s) {missing} are not installed; install them (e.g. pip install "
            f"{missing[0]}) or drop them from --log-with"
        )
    return list(names)


def lr_factor(
    step: int,
    total: int,
    warmup: int = 0,
    schedule: Literal["constant", "linear", "cosine"] = "linear",
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then constant, or a linear or cosine decay from 1 to ``min_ratio`` at
    ``total``. Only the decaying schedules depend on ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        shape = max(0.0, 1.0 - progress)
    elif schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"lr_schedule: unknown schedule {schedule!r}")
    return min_ratio + (1.0 - min_ratio) * shape


def shuffled_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items ``start .. start + count - 1`` of an endless stream of shuffled passes over
    ``range(n)`` (a fresh permutation per pass). Item ``k`` depends only on ``(n, seed, k)``, so
    a resumed run sees exactly the data it would have seen, and processes can take disjoint
    slices of a global batch by offset."""
    if n < 1:
        raise ValueError("shuffled_indices: the data set is empty")
    return [_permutation(n, seed, k // n)[k % n] for k in range(start, start + count)]


@functools.lru_cache(maxsize=2)  # the current pass and the next: a batch may straddle them
def _permutation(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """Pass ``epoch`` of :func:`shuffled_indices`, drawn once (the trainers ask every step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def reset_accelerate_state() -> None:
    """Let one single-process Python session run several trainings with different settings
    (accelerate keeps a process-wide state that otherwise refuses to change, e.g. mixed
    precision). Never touched under a distributed launch."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)


def start_accelerator(
    mixed_precision: str, cpu: bool, **kwargs: Any
) -> tuple[Any, Callable[[str], None]]:
    """A fresh ``accelerate.Accelerator`` for one run (the process-wide state reset first) and
    ``say(msg)``, which prints to stderr on the main process only. ``mixed_precision="auto"``:
    bf16 on a GPU that supports it, else none. ``kwargs`` go to the ``Accelerator``."""
    from accelerate import Accelerator

    if mixed_precision == "auto":
        use_gpu = torch.cuda.is_available() and not cpu
        mixed_precision = "bf16" if use_gpu and torch.cuda.is_bf16_supported() else "no"
    reset_accelerate_state()
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu, **kwargs)

    def say(msg: str) -> None:
        if accelerator.is_main_process:
            print(msg, file=sys.stderr, flush=True)

    return accelerator, say


def per_process_batch(batch_size: int, grad_accum: int, world: int, unit: str = "") -> int:
    """Rows of one micro-batch on each of ``world`` processes, or a ``ValueError`` when the
    micro-batch (``batch_size / grad_accum``) does not divide among them."""
    micro = batch_size // grad_accum
    if micro % world:
        raise ValueError(
            f"batch_size: {batch_size} / grad_accum {grad_accum} = {micro}{unit} per "
            f"micro-batch is not divisible by the {world} processes"
        )
    return micro // world


def read_metrics(path: str | Path) -> dict[str, float]:
    """A finished run's ``eval.json`` (null read back as NaN); {} when it is missing or bad."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: math.nan if v is None else float(v) for k, v in data.items()}


def run_command(command: str, train: Callable[[], Any]) -> tuple[int, Any]:
    """Run a trainer for the CLI ``command``: ``(0, result)``, or ``(1, None)`` after one line
    on stderr when writing failed (e.g. a full disk; the message says what was kept). A missing
    input (``FileNotFoundError``) is raised: bad input, exit 2."""
    try:
        return 0, train()
    except FileNotFoundError:
        raise
    except OSError as err:
        print(f"{command}: error: {err.strerror or err}", file=sys.stderr)
        return 1, None
