"""Output directories shared by every command: checked before any work, locked while in use.

- :func:`check_output_dir` validates an ``--output-dir`` without writing anything: it is not a
  file, no parent of it is a file, and it can be created or written to.
- :class:`DirectoryLock` takes an exclusive lock on a directory (the file ``.nlhf-run.lock``,
  an ``flock`` that the operating system releases when the process dies, so a killed run never
  blocks the next). A second command into the same directory stops at once with a clear error
  instead of interleaving its files with the first one's. Trainers, tournaments and the demo
  use the same lock file, so they exclude each other too.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["LOCK", "DirectoryLock", "check_output_dir", "is_inside"]

LOCK = ".nlhf-run.lock"


def check_output_dir(path: str | Path, flag: str = "--output-dir") -> Path:
    """``path`` if a command can write its outputs there, else a ``ValueError`` naming ``flag``:
    it exists and is not a directory, a parent of it is a file, or it cannot be written.
    Writes nothing."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag}: {out} exists and is a file, not a directory")
    parent = out
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{flag}: {out} cannot be created: {parent} is a file, not a directory")
    if parent.exists() and not os.access(parent, os.W_OK | os.X_OK):
        what = "written to" if parent == out else f"created ({parent} is not writable)"
        raise ValueError(f"{flag}: {out} cannot be {what}")
    return out


def is_inside(path: str | Path, directory: str | Path) -> bool:
    """Whether ``path`` is ``directory`` or below it (symbolic links resolved)."""
    try:
        Path(path).resolve().relative_to(Path(directory).resolve())
        return True
    except ValueError:
        return False


class DirectoryLock:
    """An exclusive lock on directory ``path`` (created if needed) for one command's run::

        with DirectoryLock(out):
            ...  # nobody else writes into out

    ``acquire`` raises ``ValueError`` naming the directory and the process holding it when
    another process holds the lock. The lock file stays (unlinking it could let two runs lock
    two different files of the same name)."""

    def __init__(self, path: str | Path, flag: str = "output_dir"):
        self.path = Path(path)
        self.flag = flag
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ValueError(
                f"{self.flag}: {self.path} is in use by another run ({holder}); wait for it to "
                "finish or choose another --output-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
