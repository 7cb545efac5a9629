"""A stage cache: named stages under one directory, each skipped while its inputs and outputs
are intact, run one at a time or as a group in parallel worker processes.

A stage's *input hash* covers its inputs (a JSON-able value, e.g. its config section) and the
output digests of the upstream stages it reads. A stage writes into ``<name>.partial/``; only
when it has finished is the marker ``.stage.json`` (input hash, output digests, seconds) written
there (atomically) and the directory swapped in for ``<name>/``: ``<name>/ -> <name>.old/``,
``<name>.partial/ -> <name>/``, delete ``<name>.old/``. So an interrupted or failed stage leaves
the previous complete outputs (if any) in place and is simply run again next time; a kill
between the two renames leaves both complete versions on disk, and the next run takes the new
one (:meth:`Pipeline.settle`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nlhf.jsonio import write_json

MARKER = ".stage.json"
PARTIAL = ".partial"
OLD = ".old"
# not outputs: the lock file that trainers (and the demo) keep in the directories they write
UNHASHED = (".nlhf-run.lock",)


@dataclass
class Stage:
    """One unit of cached work."""

    name: str
    """directory name under the pipeline's root (e.g. ``02_sft``)"""
    title: str
    """what the progress log calls it"""
    inputs: Any
    """JSON-able value that enters the input hash (config sections, seeds)"""
    upstream: list[str]
    """stages it reads: ``"stage"`` (all outputs) or ``"stage:file1,dir2"`` (only those)"""
    fn: Callable[[Path], Any]
    """writes the outputs into the directory it is given; must be picklable (a module-level
    function or a ``functools.partial`` of one) to run in a worker process"""
    index: int = 0
    """stage number shown in the log"""
    total: int = 0
    """number of stages shown in the log"""
    info: dict[str, Any] = field(default_factory=dict)
    """extra fields for the marker"""


def file_digests(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path`` (the marker excluded), by relative name."""
    out = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        if f.name == MARKER or f.name in UNHASHED:
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[str(f.relative_to(path))] = h.hexdigest()
    return out


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a complete stage directory, or None (missing, or cut short by a kill)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def _combine(digests: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()


def _init_worker(threads: int) -> None:
    """A worker process: no progress bars of its own (the driver shows one), ``threads`` torch
    threads."""
    os.environ["TQDM_DISABLE"] = "1"
    if threads:
        import torch

        torch.set_num_threads(threads)


def _run_in_worker(fn: Callable[[Path], Any], out: Path) -> tuple[float, float]:
    """Worker-process body: run the stage; its (wall, CPU) seconds."""
    start, cpu = time.time(), time.process_time()
    fn(out)
    return time.time() - start, time.process_time() - cpu


class Pipeline:
    """Runs stages under ``root`` (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        log: Callable[[str], None] = print,
        version: str = "",
        rerun: bool = False,
    ):
        self.root = Path(root)
        self.log = log
        self.version = version
        self.rerun = rerun
        """run every stage once even if it is up to date (``nlhf demo --overwrite``)"""
        self.ran: list[str] = []
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ bookkeeping
    def marker(self, name: str) -> dict[str, Any] | None:
        return read_marker(self.root / name)

    def settle(self, name: str, want: str | None = None) -> None:
        """Finish a swap that a kill interrupted: with ``<name>/`` missing, the complete
        ``<name>.partial/`` (its marker written) or else the complete ``<name>.old/`` becomes
        ``<name>/``; a leftover ``<name>.old/`` next to ``<name>/`` is removed. With ``want``
        (the stage's input hash now), a complete partial made for exactly these inputs replaces
        ``<name>/`` too (a kill came after its marker, before the swap)."""
        out = self.root / name
        partial, old = self.root / (name + PARTIAL), self.root / (name + OLD)
        done = read_marker(partial) if partial.is_dir() else None
        if (
            out.exists()
            and want is not None
            and done is not None
            and done.get("input_hash") == want
            and file_digests(partial) == done.get("files")
        ):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        if not out.exists():
            for candidate in (partial, old):
                if candidate.is_dir() and read_marker(candidate) is not None:
                    os.replace(candidate, out)
                    break
        if out.exists() and old.exists():
            shutil.rmtree(old)

    def input_hash(self, stage: Stage) -> str:
        """Hash of the stage's inputs and of the upstream outputs it reads."""
        ups = {}
        for u in stage.upstream:
            name, _, only = u.partition(":")
            self.settle(name)
            m = self.marker(name)
            if m is None:
                raise RuntimeError(f"stage {stage.name} needs stage {name}, which has not run")
            files = m.get("files", {})
            if only:
                keep = only.split(",")
                files = {
                    k: v
                    for k, v in files.items()
                    if any(k == p or k.startswith(p + "/") for p in keep)
                }
                if not files:
                    raise RuntimeError(f"stage {stage.name}: stage {name} has no output {keep}")
            ups[u] = _combine(files)
        blob = json.dumps(
            {"stage": stage.name, "inputs": stage.inputs, "upstream": ups, "nlhf": self.version},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def up_to_date(self, stage: Stage, want: str) -> bool:
        if self.rerun and stage.name not in self.ran:
            return False
        have = self.marker(stage.name)
        out = self.root / stage.name
        return (
            have is not None
            and have.get("input_hash") == want
            and out.is_dir()
            and file_digests(out) == have.get("files")
        )

    def _prefix(self, stage: Stage) -> str:
        return f"[{stage.index}/{stage.total}] " if stage.total else ""

    def _begin(self, stage: Stage) -> Path:
        partial = self.root / (stage.name + PARTIAL)
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        return partial

    def _finish(self, stage: Stage, want: str, seconds: float, cpu_seconds: float) -> Path:
        """Write the marker into the partial directory, then swap it in for the old outputs."""
        partial = self.root / (stage.name + PARTIAL)
        marker = {
            "stage": stage.name,
            "input_hash": want,
            "files": file_digests(partial),
            "seconds": round(seconds, 2),
            "cpu_seconds": round(cpu_seconds, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **stage.info,
        }
        write_json(partial / MARKER, marker)
        out = self.root / stage.name
        if out.exists():
            old = self.root / (stage.name + OLD)
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(partial, out)  # a kill before this line: settle() takes partial
            shutil.rmtree(old)
        else:
            os.replace(partial, out)
        self.ran.append(stage.name)
        return out

    def pending(self, stages: Sequence[Stage]) -> list[Stage]:
        """The stages that would run (not up to date)."""
        for s in stages:
            self.settle(s.name)
        return [s for s in stages if not self.up_to_date(s, self.input_hash(s))]

    # ------------------------------------------------------------------ running
    def _due(self, stage: Stage) -> str | None:
        """``stage``'s input hash if it must run; None (logged as skipped) if up to date."""
        self.settle(stage.name)
        want = self.input_hash(stage)
        self.settle(stage.name, want)
        if not self.up_to_date(stage, want):
            return want
        self.log(f"{self._prefix(stage)}{stage.title}: up to date, skipped ({stage.name})")
        self.skipped.append(stage.name)
        return None

    def run(self, stage: Stage) -> Path:
        """Run ``stage`` in this process unless it is up to date; returns its directory."""
        want = self._due(stage)
        if want is None:
            return self.root / stage.name
        self.log(f"{self._prefix(stage)}{stage.title} ({stage.name})")
        partial = self._begin(stage)
        start, cpu = time.time(), time.process_time()
        stage.fn(partial)
        return self._finish(stage, want, time.time() - start, time.process_time() - cpu)

    def run_parallel(
        self,
        stages: Sequence[Stage],
        workers: int,
        threads: int = 1,
        poll: Callable[[], None] | None = None,
    ) -> dict[str, Path]:
        """Run the stages that are not up to date in ``workers`` spawned processes (``threads``
        torch threads each); returns every stage's directory by name. A stage that fails leaves
        no marker; the others still finish, then the first error is raised. ``poll`` is called
        about twice a second while the workers run (e.g. to drain a progress queue)."""
        import concurrent.futures as cf
        import multiprocessing

        todo: list[tuple[Stage, str]] = []
        for stage in stages:
            want = self._due(stage)
            if want is not None:
                todo.append((stage, want))
        if len(todo) <= 1 or workers <= 1:
            for stage, _ in todo:
                self.run(stage)
            return {s.name: self.root / s.name for s in stages}
        errors: list[tuple[str, BaseException]] = []
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=min(workers, len(todo)),
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(threads,),
        ) as pool:
            running = {}
            for stage, want in todo:
                self.log(f"{self._prefix(stage)}{stage.title} ({stage.name}, in a worker)")
                partial = self._begin(stage)
                future = pool.submit(_run_in_worker, stage.fn, partial)
                running[future] = (stage, want)
            pending = set(running)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                if poll is not None:
                    poll()
                for future in done:
                    stage, want = running[future]
                    try:
                        wall, cpu = future.result()
                    except BaseException as err:  # noqa: BLE001  (re-raised below)
                        errors.append((stage.name, err))
                        self.log(f"{stage.title} ({stage.name}) failed: {err}")
                        continue
                    self._finish(stage, want, wall, cpu)
        if poll is not None:
            poll()
        if errors:
            raise errors[0][1]
        return {s.name: self.root / s.name for s in stages}
