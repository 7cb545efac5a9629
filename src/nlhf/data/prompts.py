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

from nlhf.data import textfile
from nlhf.data.schema import InvalidComparisonError, Text, _check_text
from nlhf.data.textfile import iter_lines, read_text

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
    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if suffix in _FILE_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    if path.is_dir() and suffix in (".txt", ".json", ".jsonl"):
        raise ValueError(f"prompt file {path} is a directory, not a {suffix} file")
    if path.is_file() and suffix not in (".json", ".jsonl", ".csv", ".tsv", ".parquet"):
        if split is not None:
            raise ValueError(f"prompts: {path} is a text file; it has no split {split!r}")
        prompts: list[Text] = _text_prompts(path)
    elif path.is_file() and suffix in (".json", ".jsonl"):
        prompts = _json_prompts(path, split)
    else:
        prompts = _dataset_prompts(name, split)
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


def _text_prompts(path: Path) -> list[Text]:
    """One prompt per line (``\\n``, ``\\r\\n`` or ``\\r``), blank lines skipped."""
    prompts: list[Text] = []
    for number, line in iter_lines(path, lambda n: f"{path}, line {n}"):
        for part in line.rstrip("\n").split("\r"):
            if part.strip():
                prompts.append(_text_prompt(part, path, number))
    if prompts and all(p.lstrip().startswith("{") and p.rstrip().endswith("}") for p in prompts):
        try:
            first = json.loads(prompts[0])
        except json.JSONDecodeError:
            first = None
        if isinstance(first, dict):
            raise ValueError(
                f"{path}: every line is a JSON object, but a {path.suffix or 'text'} prompt file "
                f"is read as one text prompt per line; name it .jsonl to read the objects' "
                f'"prompt" or "messages"'
            )
    return prompts


def _text_prompt(text: str, path: Path, number: int) -> str:
    try:
        return _check_text(text, "prompt")
    except InvalidComparisonError as err:
        raise ValueError(f"{path}, line {number}: {err}") from None


def _json_prompts(path: Path, split: str | None) -> list[Text]:
    rows: list[tuple[str, Any]] = []
    if path.suffix.lower() == ".json":
        text = read_text(path, lambda n: f"{path}, line {n}")
        repeated_keys = False
        try:
            data = textfile.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{path}, line {err.lineno}: not JSON ({err.msg} at column {err.colno})"
            ) from None
        except InvalidComparisonError:  # a repeated key: parse again to find the item
            data = json.loads(text, object_pairs_hook=textfile.RepeatedKeys.hook)
            repeated_keys = True
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        for i, row in enumerate(data):
            repeated = textfile.RepeatedKeys.find(row) if repeated_keys else None
            if repeated is not None:
                raise ValueError(f"{path}, item {i}: {repeated}")
            rows.append((f"{path}, item {i}", row))
    else:
        for i, line in iter_lines(path, lambda n: f"{path}, line {n}"):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}, line {i}", textfile.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{path}, line {i}: not JSON ({err.msg} at column {err.colno})"
                ) from None
            except InvalidComparisonError as err:
                raise ValueError(f"{path}, line {i}: {err}") from None
    prompts = []
    for where, row in rows:
        if split is not None and not (isinstance(row, Mapping) and row.get("split") == split):
            continue
        prompts.append(prompt_of(row, where))
    if split is not None and not prompts:
        raise ValueError(f"{path}: no prompts with split {split!r}")
    return prompts


def check_prompt_columns(columns: list[str]) -> None:
    """The column names of a table (CSV header, Parquet schema) must hold prompts."""
    if "prompt" not in columns and "messages" not in columns:
        raise InvalidComparisonError(
            "prompt", f"no such column, nor 'messages' (the columns are {columns})"
        )


def _dataset_prompts(name: str, split: str | None) -> list[Text]:
    from nlhf.data.loaders import read_rows

    rows, source, from_file = read_rows(name, split, check_columns=check_prompt_columns)
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
        messages = _from_json_text(row.get("messages"))
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
    try:
        return _check_text(row, "prompt")
    except InvalidComparisonError as err:
        raise ValueError(f"{where}: {err}") from None


def _from_json_text(value: Any) -> Any:
    """A chat list stored as JSON text (a CSV cell) -> the list; anything else as it is."""
    if isinstance(value, str) and value[:1] == "[":
        with contextlib.suppress(json.JSONDecodeError):
            return json.loads(value)
    return value


def _checked(value: Any, where: str, field: str) -> Text:
    value = _from_json_text(value)
    if not isinstance(value, str | list | tuple):
        raise ValueError(
            f"{where}: the prompt must be a non-empty string or chat list, got {value!r:.80}"
        )
    try:
        return _check_text(value, field)
    except InvalidComparisonError as err:
        raise ValueError(f"{where}: {err}") from None
