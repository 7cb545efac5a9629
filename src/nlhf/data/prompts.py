"""Prompt sets for policy training and evaluation: one reader for every command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_prompts(path: str | Path) -> list[str]:
    """Prompts from ``.txt`` (one per line, blank lines skipped), ``.jsonl`` (per line a JSON
    string or an object with a ``"prompt"`` string) or ``.json`` (a list of either).

    Errors name the file and the line (``.json``: the list item).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not JSON ({err.msg})") from None
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of prompts")
        prompts = [_prompt(row, f"{path}, item {i}") for i, row in enumerate(rows)]
    elif suffix == ".jsonl":
        prompts = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {i}: not JSON ({err.msg})") from None
            prompts.append(_prompt(row, f"{path}, line {i}"))
    else:
        prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file {path} has no prompts")
    return prompts


def _prompt(row: Any, where: str) -> str:
    if isinstance(row, dict):
        if "prompt" not in row:
            raise ValueError(f'{where}: no "prompt" key (keys: {sorted(row)})')
        row = row["prompt"]
    if not isinstance(row, str) or not row.strip():
        raise ValueError(f"{where}: the prompt must be a non-empty string, got {row!r:.80}")
    return row
