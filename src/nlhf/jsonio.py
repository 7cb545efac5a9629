"""JSON that every tool can read: non-finite numbers become ``null``, files appear atomically.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON; every JSON or JSONL file
nlhf writes (metrics, evaluations, tournament results, reports' data) goes through
:func:`dumps`, which writes them as ``null`` instead.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["finite", "dumps", "write_json", "write_text"]

_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process's umask (setting it back at once)


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively
    through dicts, lists and tuples; numpy / torch scalars become Python numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        return finite(value.item())
    if hasattr(value, "tolist") and hasattr(value, "ndim"):  # numpy array / tensor
        return finite(value.tolist())
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes non-finite numbers as ``null`` (never bare ``NaN``)."""
    return json.dumps(finite(value), allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Write ``value`` as JSON to ``path`` atomically (a temporary sibling, then a rename), so a
    reader never sees a half-written file and a kill never leaves one."""
    return write_text(path, dumps(value, indent=indent) + "\n")


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically: a temporary sibling,
    then a rename. For every whole file nlhf writes (JSON, JSONL built with :func:`dumps`, CSV,
    YAML)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give what open() would
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
