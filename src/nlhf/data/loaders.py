"""Load pairwise comparisons from local files or Hugging Face ``datasets``; write the native JSONL.

Sources, by what ``path_or_name`` is:

- a ``.jsonl`` file (one JSON object per line) or a ``.json`` file (a JSON array, or JSON lines);
- a ``.csv`` / ``.tsv`` file (header row; nested values as JSON text in a cell);
- a ``.parquet`` file;
- a directory written by ``datasets``' ``save_to_disk`` (``load_from_disk``), or a directory of
  data files (``datasets.load_dataset`` on that directory);
- otherwise a Hugging Face hub name, loaded with ``datasets.load_dataset`` (needs a connection;
  nothing is downloaded unless you name a hub dataset).

Every row goes through a format converter (:mod:`nlhf.data.formats`) and the schema checks
(:mod:`nlhf.data.schema`). A bad row raises ``ValueError`` naming the file, the line/row and the
field; with ``skip_invalid=True`` it is dropped, counted and reported instead.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nlhf.data.formats import FORMATS, convert_row
from nlhf.data.schema import Comparison, InvalidComparisonError, as_text

log = logging.getLogger(__name__)

FILE_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
FILE_SUFFIXES[".parquet"] = "parquet"


class Comparisons(list):
    """A ``list[Comparison]`` (or of other loaded items) that also says what was dropped with
    ``skip_invalid``.

    ``skipped``: one message per dropped row (``"file: line 3: field 'label': ..."``);
    ``source``: where the rows came from.
    """

    def __init__(self, items: Iterable[Comparison] = (), skipped=None, source: str = ""):
        super().__init__(items)
        self.skipped: list[str] = list(skipped or [])
        self.source = source

    def skipped_summary(self) -> str:
        """``"skipped 2 of 10 rows (1 x field 'label', 1 x invalid JSON)"`` or ``""``."""
        if not self.skipped:
            return ""
        reasons = Counter(_reason(m) for m in self.skipped)
        total = len(self) + len(self.skipped)
        detail = ", ".join(f"{n} x {r}" for r, n in reasons.most_common())
        return f"{self.source}: skipped {len(self.skipped)} of {total} rows ({detail})"


def _reason(message: str) -> str:
    if "not valid JSON" in message:
        return "invalid JSON"
    if "field '" in message:
        return "field '" + message.split("field '", 1)[1].split("'", 1)[0] + "'"
    return "other"


# ----------------------------------------------------------------------------- row sources


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}: line {lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield (
                    where,
                    ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})"),
                )


def _rows_json(path: Path) -> Iterator[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from _rows_jsonl(path)  # JSON lines under a .json name
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects or JSON lines")
    for i, row in enumerate(data):
        yield f"{path}: row {i + 1}", row


def _rows_csv(path: Path, delimiter: str) -> Iterator[tuple[str, Any]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        if reader.fieldnames is None:
            return
        for i, row in enumerate(reader):
            # line numbers count the header as line 1
            yield (
                f"{path}: row {i + 1} (line {reader.line_num})",
                {k: (v if v != "" else None) for k, v in row.items() if k is not None},
            )


def _rows_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i + 1}", row


def _rows_dataset(ds: Any, label: str) -> Iterator[tuple[str, Any]]:
    for i, row in enumerate(ds):
        yield f"{label}: row {i + 1}", row


def _split_rows(ds: Any, split: str | None, label: str) -> Iterator[tuple[str, Any, str | None]]:
    """Rows of every split of a split mapping (or of ``split`` only), tagged with the split."""
    names = list(ds.keys())
    if split is not None:
        if split not in ds:
            raise ValueError(f"{label}: no split {split!r}; splits are {names}")
        names = [split]
    for name in names:
        for where, row in _rows_dataset(ds[name], f"{label}[{name}]"):
            yield where, row, name


def _hf_rows(
    path_or_name: str, split: str | None, config_name: str | None
) -> Iterator[tuple[str, Any, str | None]]:
    """Rows of a ``datasets`` dataset (local dir or hub name), with the split each came from."""
    import datasets

    path = Path(path_or_name)
    if path.is_dir() and (
        (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists()
    ):
        try:
            ds = datasets.load_from_disk(str(path))
        except Exception as err:
            raise ValueError(f"{path}: cannot load the saved dataset ({err})") from None
    else:
        try:
            ds = datasets.load_dataset(path_or_name, config_name)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path_or_name}: no such file, directory or Hugging Face dataset"
            ) from None
        except Exception as err:
            raise ValueError(
                f"{path_or_name}: cannot load it as a Hugging Face dataset "
                f"({type(err).__name__}: {err})"
            ) from None
    if isinstance(ds, datasets.DatasetDict):
        yield from _split_rows(ds, split, str(path_or_name))
    else:
        for where, row in _rows_dataset(ds, str(path_or_name)):
            yield where, row, None


def _dataset_object_rows(ds: Any, split: str | None) -> Iterator[tuple[str, Any, str | None]]:
    splits = hasattr(ds, "keys") and all(
        hasattr(ds[k], "__iter__") and not isinstance(ds[k], str | dict) for k in ds
    )
    if splits:  # a DatasetDict, or a mapping of split name -> rows
        yield from _split_rows(ds, split, type(ds).__name__)
        return
    for where, row in _rows_dataset(ds, type(ds).__name__):
        yield where, row, None


def _file_rows(path: Path) -> Iterator[tuple[str, Any, str | None]]:
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    if kind == "jsonl":
        rows = _rows_jsonl(path)
    elif kind == "json":
        rows = _rows_json(path)
    elif kind in ("csv", "tsv"):
        rows = _rows_csv(path, "," if kind == "csv" else "\t")
    elif kind == "parquet":
        rows = _rows_parquet(path)
    else:
        raise ValueError(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl, .json, .csv, .tsv or .parquet"
        )
    for where, row in rows:
        yield where, row, None


def _looks_like_hub_name(name: str) -> bool:
    """``owner/name`` or ``name``, not a local-looking path nor a file name."""
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        return False
    return Path(name).suffix.lower() not in FILE_SUFFIXES


# ----------------------------------------------------------------------------- public API


def read_rows(
    path_or_name: str | Path | Any, split: str | None = None, config_name: str | None = None
) -> tuple[Iterator[tuple[str, Any, str | None]], str, bool]:
    """The raw rows of any supported source, before conversion.

    Returns ``(rows, source, from_file)``: ``rows`` yields ``(where, row, split_name)`` with
    ``where`` naming the file and line/row for error messages (a row that is not valid JSON is
    a ``ValueError`` in place of the row); ``split_name`` is the dataset split a row came from
    (``None`` for files, whose rows may carry their own ``split`` field).
    """
    if not isinstance(path_or_name, str | Path):  # an in-memory datasets.Dataset(Dict)
        return _dataset_object_rows(path_or_name, split), type(path_or_name).__name__, False
    source = str(path_or_name)
    path = Path(path_or_name)
    if path.is_file():
        return _file_rows(path), source, True
    if path.is_dir() or _looks_like_hub_name(source):
        return _hf_rows(source, split, config_name), source, False
    raise FileNotFoundError(f"{path}: no such file or directory")


def load_rows(
    path_or_name: str | Path | Any,
    convert: Callable[[Any], Any],
    *,
    split: str | None = None,
    skip_invalid: bool = False,
    config_name: str | None = None,
    what: str = "rows",
    result: type[Comparisons] | None = None,
) -> Comparisons:
    """Read a source (:func:`read_rows`) and convert every row with ``convert(row)``.

    ``convert`` raises :class:`InvalidComparisonError` (or another error with a ``field``) for a
    bad row; the error is re-raised as ``ValueError`` naming the file, line/row and field, or,
    with ``skip_invalid``, the row is dropped and counted. A converted item that has a ``split``
    attribute of ``None`` gets the dataset split it came from; for a file, ``split`` keeps the
    items whose ``split`` equals it. ``what`` names the items in "no valid ..." errors.
    """
    rows, source, from_file = read_rows(path_or_name, split, config_name)
    kept: list[Any] = []
    skipped: list[str] = []
    seen_splits: set[str | None] = set()
    for where, row, row_split in rows:
        try:
            if isinstance(row, Exception):
                raise row
            item = convert(row)
        except InvalidComparisonError as err:
            message = f"{where}: {err}"
            if not skip_invalid:
                raise ValueError(message) from None
            skipped.append(message)
            continue
        except ValueError as err:
            if not skip_invalid:
                raise
            skipped.append(str(err))
            continue
        if getattr(item, "split", "") is None and row_split is not None:
            item.split = row_split
        item_split = getattr(item, "split", None)
        seen_splits.add(item_split)
        if from_file and split is not None and item_split != split:
            continue
        kept.append(item)

    loaded = (result or Comparisons)(kept, skipped, source)
    if skipped:
        log.warning("%s; first: %s", loaded.skipped_summary(), skipped[0])
    if not kept:
        if from_file and split is not None and seen_splits:
            raise ValueError(
                f"{source}: no rows with split {split!r}; splits present: "
                f"{sorted(str(s) for s in seen_splits)}"
            )
        raise ValueError(
            f"{source}: no valid {what}" + (f" ({len(skipped)} skipped)" if skipped else "")
        )
    return loaded


def load_comparisons(
    path_or_name: str | Path | Any,
    format: str = "auto",
    split: str | None = None,
    skip_invalid: bool = False,
    config_name: str | None = None,
) -> Comparisons:
    """Read comparisons from a file, a saved/local ``datasets`` dataset, a hub name, or an
    in-memory ``datasets.Dataset`` / ``DatasetDict`` (or any iterable of row mappings).

    ``format``: ``"auto"`` (detected per row from its keys) or one of
    ``native, chosen_rejected, summarize_from_feedback, hh_rlhf``. ``split``: for a dataset with
    splits, the split to read (default: all, each row's ``split`` set to its split name); for a
    file, keep the rows whose ``split`` field equals it. ``skip_invalid``: drop bad rows and
    report them (``result.skipped``, a warning) instead of raising. ``config_name``: the dataset
    configuration of a hub dataset.
    """
    if format != "auto" and format not in FORMATS:
        raise ValueError(f"format: unknown format {format!r}; choose one of {['auto', *FORMATS]}")
    return load_rows(
        path_or_name,
        lambda row: convert_row(row, format),
        split=split,
        skip_invalid=skip_invalid,
        config_name=config_name,
        what="comparisons",
    )


def write_jsonl(comparisons: Iterable[Comparison], path: str | Path) -> Path:
    """Write comparisons in the native format: one JSON object per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for c in comparisons:
            fh.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
    return path


def split_by_prompt(
    comparisons: Sequence[Comparison], eval_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Comparison], list[Comparison]]:
    """Train/eval split that never puts one prompt on both sides (of comparisons, or of any items
    with a ``prompt``, such as SFT demonstrations).

    Distinct prompts are shuffled with ``seed``; ``ceil(eval_fraction * n_prompts)`` of them (at
    least one, at most ``n_prompts - 1``) go to eval with all their comparisons.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction: must be in (0, 1), got {eval_fraction}")
    prompts = sorted({as_text(c.prompt) for c in comparisons})
    if len(prompts) < 2:
        raise ValueError(
            f"cannot split {len(comparisons)} comparisons by prompt: they have "
            f"{len(prompts)} distinct prompt(s), need at least 2"
        )
    random.Random(seed).shuffle(prompts)
    n_eval = min(max(1, math.ceil(eval_fraction * len(prompts))), len(prompts) - 1)
    eval_prompts = set(prompts[:n_eval])
    train = [c for c in comparisons if as_text(c.prompt) not in eval_prompts]
    evals = [c for c in comparisons if as_text(c.prompt) in eval_prompts]
    return train, evals


def drop_shared_prompts(
    train: Sequence[Comparison], evals: Sequence[Comparison]
) -> tuple[list[Comparison], int]:
    """Remove from ``evals`` every comparison whose prompt also occurs in ``train``."""
    train_prompts = {as_text(c.prompt) for c in train}
    kept = [c for c in evals if as_text(c.prompt) not in train_prompts]
    return kept, len(evals) - len(kept)
