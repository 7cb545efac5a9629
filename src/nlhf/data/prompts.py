"""Prompt sets for policy training and evaluation: one reader for every command.

A prompt is text or a chat message list (``Text``); the policy renders a chat prompt through
its tokenizer's chat template (:mod:`nlhf.models.chat`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nlhf.data.schema import InvalidComparisonError, Text, _check_text

_FILE_SUFFIXES = (".txt", ".json", ".jsonl", ".csv", ".tsv", ".parquet")
_SPLIT_SUFFIX = re.compile(r"^(?P<source>.+):(?P<split>[A-Za-z0-9_.\-]+)$")


def parse_source(source: str | Path) -> tuple[str, str | None]:
    """``"NAME:SPLIT"`` -> ``("NAME", "SPLIT")``; an existing path, or a name without such a
    suffix, -> ``(source, None)``."""
    text = str(source)
    match = _SPLIT_SUFFIX.match(text)
    if match is None or Path(text).exists():
        return text, None
    return match["source"], match["split"]


def load_prompts(source: str | Path, split: str | None = None) -> list[Text]:
    """Prompts from a file or a data set; ``SOURCE:SPLIT`` names a split (e.g.
    ``trl-lib/tldr:test``).

    - ``.txt``: one prompt per line, blank lines skipped;
    - ``.jsonl`` / ``.json``: per line (``.json``: per list item) a JSON string, or an object;
    - ``.csv`` / ``.tsv`` / ``.parquet``, a ``datasets`` directory, or a hub name (downloads only
      then): one object per row.

    From an object: its ``"messages"`` chat list up to (not including) the last assistant
    message, when it has one; else its ``"prompt"``, text or a chat list. ``split``: the split of
    a data set, or for a file the rows whose ``"split"`` field equals it. Errors name the file
    and the line (``.json``: the item; data sets: the row).
    """
    name, suffix_split = parse_source(source)
    if split is None:
        split = suffix_split
    elif suffix_split is not None and suffix_split != split:
        raise ValueError(f"prompts: {source} names split {suffix_split!r}, but split={split!r}")
    path = Path(name)
    suffix = path.suffix.lower()
    if suffix in _FILE_SUFFIXES and not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.is_file() and suffix not in (".json", ".jsonl", ".csv", ".tsv", ".parquet"):
        if split is not None:
            raise ValueError(f"prompts: {path} is a text file; it has no split {split!r}")
        prompts: list[Text] = [line for line in path.read_text().splitlines() if line.strip()]
    elif path.is_file() and suffix in (".json", ".jsonl"):
        prompts = _json_prompts(path, split)
    else:
        prompts = _dataset_prompts(name, split)
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


def _json_prompts(path: Path, split: str | None) -> list[Text]:
    text = path.read_text()
    rows: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg})") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        rows = [(f"{path}, item {i}", row) for i, row in enumerate(data)]
    else:
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}, line {i}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {i}: not JSON ({err.msg})") from None
    prompts = []
    for where, row in rows:
        if split is not None and not (isinstance(row, Mapping) and row.get("split") == split):
            continue
        prompts.append(prompt_of(row, where))
    if split is not None and not prompts:
        raise ValueError(f"{path}: no prompts with split {split!r}")
    return prompts


def _dataset_prompts(name: str, split: str | None) -> list[Text]:
    from nlhf.data.loaders import read_rows

    rows, source, from_file = read_rows(name, split)
    prompts = []
    for where, row, _ in rows:
        if isinstance(row, Exception):
            raise row
        if from_file and split is not None and row.get("split") != split:
            continue
        prompts.append(prompt_of(row, where))
    if split is not None and not prompts:
        raise ValueError(f"{source}: no prompts with split {split!r}")
    return prompts


def prompt_of(row: Any, where: str) -> Text:
    """The prompt of one row (see :func:`load_prompts`); errors name ``where``."""
    if isinstance(row, Mapping):
        messages = row.get("messages")
        if isinstance(messages, list | tuple) and messages:
            last = max(
                (
                    i
                    for i, m in enumerate(messages)
                    if isinstance(m, Mapping) and m.get("role") == "assistant"
                ),
                default=len(messages),
            )
            return _checked(list(messages[:last]), where, "messages")
        if "prompt" not in row:
            raise ValueError(f'{where}: no "prompt" key (nor "messages"; keys: {sorted(row)})')
        return _checked(row["prompt"], where, "prompt")
    if not isinstance(row, str) or not row.strip():
        raise ValueError(f"{where}: the prompt must be a non-empty string, got {row!r:.80}")
    return row


def _checked(value: Any, where: str, field: str) -> Text:
    if isinstance(value, str) and value[:1] == "[":  # a chat list stored as JSON text (CSV)
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value)
    if not isinstance(value, str | list | tuple):
        raise ValueError(
            f"{where}: the prompt must be a non-empty string or chat list, got {value!r:.80}"
        )
    try:
        return _check_text(value, field)
    except InvalidComparisonError as err:
        raise ValueError(f"{where}: {err}") from None
