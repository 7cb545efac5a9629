"""One run directory for every trainer: validate -> lock -> config -> checkpoints -> metrics -> end.

``nlhf sft``, ``nlhf train-preference`` and ``nlhf train`` write their output directory through
:class:`RunDirectory`, so that a fault never loses data or leaves garbage:

1. :meth:`RunDirectory.check` validates everything *before anything is written*: the output
   path is not a file, it is not one of the run's inputs (training in place), it holds no other
   run unless ``--resume`` or ``--overwrite`` is given, and on ``--resume`` the checkpoint's
   stored configuration matches the new one except for the fields that may change (the step
   budget, logging); it returns the checkpoint to resume from.
2. :meth:`RunDirectory.open` takes an exclusive lock (``.nlhf-run.lock``, released by the OS
   when the process dies, so a killed run never blocks the next), clears an overwritten run,
   writes ``config.yaml`` and truncates ``metrics.jsonl`` to the resumed step.
3. :meth:`RunDirectory.save_checkpoint` writes ``checkpoint.new/``, marks it complete last (the
   marker holds the step and the resolved config), then swaps it in:
   ``checkpoint/ -> checkpoint.old/``, ``checkpoint.new/ -> checkpoint/``, delete the old one.
   At every moment a complete checkpoint exists under one of the three names, and
   :func:`find_checkpoint` picks the newest complete one; a failed write (e.g. disk full) leaves
   the previous checkpoint as it was.
4. :meth:`RunDirectory.log` appends one metrics record per line, non-finite numbers as ``null``.
5. :meth:`RunDirectory.close` releases the lock.

The module also holds the pieces every trainer shares: the learning-rate schedule
(:func:`lr_factor`), the resumable shuffled index stream (:func:`shuffled_indices`), the finite
check of a step (:func:`check_finite_step`) and the reset of accelerate's process-wide state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from nlhf.config import save_yaml, to_dict
from nlhf.jsonio import dumps, write_json

__all__ = [
    "Checkpoint",
    "NonFiniteError",
    "RunDirectory",
    "check_finite_config",
    "check_finite_step",
    "find_checkpoint",
    "lr_factor",
    "reset_accelerate_state",
    "shuffled_indices",
]

CHECKPOINT = "checkpoint"
MARKER = "nlhf_checkpoint.json"  # written last: a checkpoint directory without it is incomplete
LOCK = ".nlhf-run.lock"
METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
# what a run directory may hold that marks it as a run (for the refuse-unless-overwrite check)
_RUN_FILES = (CONFIG, METRICS, CHECKPOINT, f"{CHECKPOINT}.new", f"{CHECKPOINT}.old")


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


def _read_checkpoint(path: Path) -> Checkpoint | None:
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        return Checkpoint(
            path, int(data["step"]), dict(data["config"]), dict(data.get("extra", {}))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a marker cut short by a kill counts as incomplete


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

    ``config`` is the run's config dataclass; ``inputs`` names the paths the run reads (e.g.
    ``{"policy": cfg.policy}``), which the output directory must not be; ``may_change`` lists
    the config fields that a ``--resume`` may change (the step budget, logging, progress).
    ``barrier`` synchronises processes in a distributed run; only the main process writes.
    """

    def __init__(
        self,
        output_dir: str | Path,
        config: Any,
        *,
        resume: bool = False,
        overwrite: bool = False,
        inputs: Mapping[str, str | Path | None] | None = None,
        may_change: Iterable[str] = (),
        is_main: bool = True,
        barrier: Callable[[], None] = lambda: None,
    ):
        self.path = Path(output_dir)
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.inputs = {k: Path(v) for k, v in (inputs or {}).items() if v is not None}
        self.may_change = set(may_change) | {"resume", "overwrite", "output_dir"}
        self.is_main = is_main
        self.barrier = barrier
        self._lock_fd: int | None = None
        self.start: Checkpoint | None = None

    # -- 1. validate (writes nothing) --------------------------------------------------------

    def check(self) -> Checkpoint | None:
        """Validate the output directory against the config; return the checkpoint to resume
        from (None for a fresh start). Raises ``ValueError`` naming what is wrong."""
        out = self.path
        check_finite_config(self.config)
        if out.exists() and not out.is_dir():
            raise ValueError(f"output_dir: {out} exists and is a file, not a directory")
        for name, src in self.inputs.items():
            if _inside(src, out) and not self.overwrite:
                raise ValueError(
                    f"output_dir: {out} is (or contains) the {name} {src} this run reads; "
                    "training in place would overwrite it: choose another --output-dir "
                    "(or pass --overwrite)"
                )
        existing = [n for n in _RUN_FILES if (out / n).exists()] if out.is_dir() else []
        checkpoint = find_checkpoint(out) if out.is_dir() else None
        if self.resume:
            if checkpoint is None:
                if existing and not self.overwrite:
                    raise ValueError(
                        f"resume: {out} holds a run ({', '.join(existing)}) but no complete "
                        "checkpoint to resume from; pass --overwrite to start it afresh"
                    )
                self.start = None
                return None
            changed = config_changes(checkpoint.config, to_dict(self.config), self.may_change)
            if changed:
                raise ValueError(
                    f"resume: the checkpoint in {checkpoint.path} (step {checkpoint.step}) was "
                    f"trained with other settings; these fields differ and would change the run: "
                    f"{'; '.join(changed)}. Resume with the same values, or start a new run in "
                    "another --output-dir (fields that may change: "
                    f"{', '.join(sorted(self.may_change))})"
                )
            self.start = checkpoint
            return checkpoint
        if existing and not self.overwrite:
            raise ValueError(
                f"output_dir: {out} already holds a run ({', '.join(existing)}); pass --resume "
                "to continue it or --overwrite to replace it"
            )
        self.start = None
        return None

    # -- 2. open: lock, clear, config, metrics -----------------------------------------------

    def open(self) -> RunDirectory:
        """Lock the directory and write ``config.yaml`` (after :meth:`check`)."""
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            in_place = any(_inside(src, self.path) for src in self.inputs.values())
            if self.start is None and self.overwrite and not in_place:
                _clear_run(self.path)
            if self.start is not None:
                _settle_checkpoints(self.path)
                self.start = find_checkpoint(self.path)
            save_yaml(self.config, self.path / CONFIG)
            self._truncate_metrics(self.start.step if self.start else 0)
        self.barrier()
        if self.start is not None:  # every process reads the settled location
            self.start = find_checkpoint(self.path)
        return self

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(
                f"output_dir: {self.path} is in use by another run ({holder}); wait for it to "
                "finish or choose another --output-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._lock_fd = fd

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
        tmp = path.with_name(f".{METRICS}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)

    # -- 3. checkpoints ----------------------------------------------------------------------

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
                marker = {
                    "step": step,
                    "config": to_dict(self.config),
                    "extra": dict(extra or {}),
                }
                write_json(new / MARKER, marker)
                _fsync_dir(new)
        except OSError as err:
            if self.is_main:
                shutil.rmtree(new, ignore_errors=True)
            previous = find_checkpoint(out)
            kept = f"step {previous.step} in {previous.path}" if previous else "none"
            raise OSError(
                err.errno,
                f"could not write the checkpoint of step {step} in {out} ({err.strerror or err}); "
                f"the previous checkpoint is intact ({kept})",
            ) from err
        if self.is_main:
            if main.exists():
                shutil.rmtree(old, ignore_errors=True)
                os.replace(main, old)
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

    # -- 5. close ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # the file stays: unlinking it could let two runs lock
            self._lock_fd = None

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clear_run(out: Path) -> None:
    """Remove an overwritten run's files (only from a directory that holds a run)."""
    if not any((out / n).exists() for n in _RUN_FILES):
        return
    for entry in out.iterdir():
        if entry.name == LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _inside(path: Path, directory: Path) -> bool:
    try:
        path.resolve().relative_to(directory.resolve())
        return True
    except ValueError:
        return False


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
        previous = find_checkpoint(output_dir)
        kept = (
            f"the last good checkpoint is step {previous.step} in {previous.path}"
            if previous
            else "no checkpoint had been saved"
        )
        names = ", ".join(f"{k} = {v}" for k, v in bad.items())
        raise NonFiniteError(
            f"step {step}: {names}; the run stopped without saving ({kept}). Lower the learning "
            "rate, enable gradient clipping or check the inputs"
        )


def lr_factor(
    step: int,
    total: int,
    warmup: int = 0,
    schedule: Literal["constant", "linear", "cosine"] = "linear",
) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based): linear warm-up
    over ``warmup`` steps, then constant, linear decay to 0 at ``total``, or cosine to 0."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_schedule: unknown schedule {schedule!r}")


def shuffled_indices(n: int, seed: int, start: int, count: int) -> list[int]:
    """Items ``start .. start + count - 1`` of an endless stream of shuffled passes over
    ``range(n)`` (a fresh permutation per pass). Item ``k`` depends only on ``(n, seed, k)``, so
    a resumed run sees exactly the data it would have seen, and processes can take disjoint
    slices of a global batch by offset."""
    if n < 1:
        raise ValueError("shuffled_indices: the data set is empty")
    out: list[int] = []
    perm: list[int] = []
    epoch_of_perm = -1
    for k in range(start, start + count):
        epoch, pos = divmod(k, n)
        if epoch != epoch_of_perm:
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm, epoch_of_perm = torch.randperm(n, generator=g).tolist(), epoch
        out.append(perm[pos])
    return out


def reset_accelerate_state() -> None:
    """Let one single-process Python session run several trainings with different settings
    (accelerate keeps a process-wide state that otherwise refuses to change, e.g. mixed
    precision). Never touched under a distributed launch."""
    from accelerate.state import AcceleratorState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and AcceleratorState._shared_state:
        AcceleratorState._reset_state(reset_partial_state=True)
