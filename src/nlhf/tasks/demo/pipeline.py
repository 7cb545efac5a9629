"""A stage cache: named stages under one directory, each skipped while its inputs and outputs
are intact, run one at a time or as a group in parallel worker processes.

A stage's *input hash* covers its inputs (a JSON-able value, e.g. its config section) and the
output digests of the upstream stages it reads. A stage writes into ``<name>.partial/``; only
when it has finished is the marker ``.stage.json`` (input hash, output digests, seconds) written
there and the directory swapped in for ``<name>/``. So an interrupted or failed stage leaves the
previous complete outputs (if any) in place and is simply run again next time.
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

MARKER = ".stage.json"
PARTIAL = ".partial"


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
        if f.name == MARKER:
            continue
        h = hashlib.sha256()
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[str(f.relative_to(path))] = h.hexdigest()
    return out


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

    def __init__(self, root: Path, log: Callable[[str], None] = print, version: str = ""):
        self.root = Path(root)
        self.log = log
        self.version = version
        self.ran: list[str] = []
        self.skipped: list[str] = []

    # ------------------------------------------------------------------ bookkeeping
    def marker(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / name / MARKER).read_text())
        except (OSError, ValueError):
            return None

    def input_hash(self, stage: Stage) -> str:
        """Hash of the stage's inputs and of the upstream outputs it reads."""
        ups = {}
        for u in stage.upstream:
            name, _, only = u.partition(":")
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
        (partial / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        out = self.root / stage.name
        if out.exists():
            old = self.root / (stage.name + ".old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out, old)
            os.replace(partial, out)
            shutil.rmtree(old)
        else:
            os.replace(partial, out)
        self.ran.append(stage.name)
        return out

    def pending(self, stages: Sequence[Stage]) -> list[Stage]:
        """The stages that would run (not up to date)."""
        return [s for s in stages if not self.up_to_date(s, self.input_hash(s))]

    # ------------------------------------------------------------------ running
    def run(self, stage: Stage) -> Path:
        """Run ``stage`` in this process unless it is up to date; returns its directory."""
        want = self.input_hash(stage)
        if self.up_to_date(stage, want):
            self.log(f"{self._prefix(stage)}{stage.title}: up to date, skipped ({stage.name})")
            self.skipped.append(stage.name)
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
            want = self.input_hash(stage)
            if self.up_to_date(stage, want):
                self.log(f"{self._prefix(stage)}{stage.title}: up to date, skipped ({stage.name})")
                self.skipped.append(stage.name)
            else:
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
