"""Load pairwise comparisons from local files or Hugging Face ``datasets``; write the native JSONL.

Sources, by what ``path_or_name`` is:

- a ``.jsonl`` file (one JSON object per line) or a ``.json`` file (a JSON array, or JSON lines);
- a ``.csv`` / ``.tsv`` file (header row; nested values as JSON text in a cell);
- a ``.parquet`` file;
- a directory written by ``datasets``' ``save_to_disk`` (``load_from_disk``), or a directory of
  data files (``datasets.load_dataset`` on that directory);
- otherwise a Hugging Face hub name, loaded with ``datasets.load_dataset`` (needs a connection;
  nothing is downloaded unless you name a hub dataset).

Text files are UTF-8 with or without a byte-order mark (:mod:`nlhf.data.textfile`); a CSV
header (or a Parquet schema) is checked against the format before any row is read, and every
CSV row must have the header's number of cells. Every row goes through a format converter
(:mod:`nlhf.data.formats`) and the schema checks (:mod:`nlhf.data.schema`). A bad row raises
``ValueError`` naming the file, the line/row and the field; with ``skip_invalid=True`` it is
dropped, counted and reported instead. A file that cannot be read as a whole (not UTF-8, bad
header, broken quoting) is always an error.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nlhf.data import textfile
from nlhf.data.formats import FORMATS, check_columns, convert_row
from nlhf.data.schema import Comparison, InvalidComparisonError, as_text
from nlhf.data.textfile import iter_lines, read_text
from nlhf.jsonio import write_text

log = logging.getLogger(__name__)

FILE_SUFFIXES = {
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}


class Comparisons(list):
    """A ``list[Comparison]`` (or of other loaded items) that also says what was dropped with
    ``skip_invalid``.

    ``skipped``: one message per dropped row (``"file: line 3: field 'label': ..."``);
    ``source``: where the rows came from; ``duplicates``: how many kept items repeat an earlier
    one exactly.
    """

    def __init__(self, items: Iterable[Comparison] = (), skipped=None, source: str = ""):
        super().__init__(items)
        self.skipped: list[str] = list(skipped or [])
        self.source = source
        self.duplicates = 0

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
    if "cells, but the header" in message:
        return "wrong number of CSV cells"
    if "no name in the header" in message:
        return "a value in an unnamed CSV column"
    if "field '" in message:
        return "field '" + message.split("field '", 1)[1].split("'", 1)[0] + "'"
    return "other"


# ----------------------------------------------------------------------------- row sources


ColumnCheck = Callable[[list[str]], None]
"""``check(column_names)`` raises ``InvalidComparisonError`` when a table's columns (a CSV
header, a Parquet schema) cannot hold the rows a loader reads."""


def _rows_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    first = True
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            row = textfile.loads(line)
        except json.JSONDecodeError as err:
            stripped = line.strip()
            if first and stripped.startswith("["):
                raise ValueError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno}); the file looks "
                    f"like one JSON array, not JSON lines: name it .json"
                ) from None
            if first and stripped == "{":
                raise ValueError(
                    f"{where}: not valid JSON ({err.msg} at column {err.colno}); a JSON object "
                    f"spreads over several lines, but JSON lines needs one object per line"
                ) from None
            row = ValueError(f"{where}: not valid JSON ({err.msg} at column {err.colno})")
        except InvalidComparisonError as err:  # a repeated key
            row = ValueError(f"{where}: {err}")
        first = False
        yield where, row


def _looks_like_columns(data: dict[str, Any]) -> bool:
    """A column-oriented table (pandas' default ``to_json``: ``{column: {index: value}}``, or
    ``{column: [values]}``) rather than one row."""
    values = list(data.values())
    if not values:
        return False
    if all(isinstance(v, dict) and v and all(str(k).isdigit() for k in v) for v in values):
        return True
    return all(
        isinstance(v, list) and len(v) == len(values[0]) and v and not isinstance(v[0], dict)
        for v in values
    )


def _rows_json(path: Path) -> Iterator[tuple[str, Any]]:
    text = read_text(path)
    repeated_keys = False
    try:
        data = textfile.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("["):
            raise ValueError(
                f"{path}: line {err.lineno}: not valid JSON ({err.msg} at column {err.colno})"
            ) from None
        yield from _rows_jsonl(path)  # JSON lines under a .json name
        return
    except InvalidComparisonError:  # a repeated key: parse again to find the rows it is in
        data = json.loads(text, object_pairs_hook=textfile.RepeatedKeys.hook)
        repeated_keys = True
    if isinstance(data, dict):
        if _looks_like_columns(data):
            raise ValueError(
                f"{path}: a JSON object of columns {sorted(data)[:8]}, not rows; write a JSON "
                f"array of row objects (pandas: df.to_json(path, orient='records')) or JSON lines"
            )
        data = [data]
    if not isinstance(data, list):
        raise ValueError(
            f"{path}: expected a JSON array of objects or JSON lines, got a JSON "
            f"{type(data).__name__}"
        )
    for i, row in enumerate(data):
        where = f"{path}: row {i + 1}"
        repeated = textfile.RepeatedKeys.find(row) if repeated_keys else None
        yield where, ValueError(f"{where}: {repeated}") if repeated else row


def _rows_csv(
    path: Path, delimiter: str, check: ColumnCheck | None = None
) -> Iterator[tuple[str, Any]]:
    """Rows of a CSV/TSV file: the first non-blank line is the header (one name per column);
    a row with another number of cells is an error (unless the extra or missing cells are
    empty and unnamed: a trailing delimiter), blank rows are skipped; a quoted cell may span
    lines (a row's line is its first)."""
    consumed = 0  # the last line handed to the csv parser

    def lines() -> Iterator[str]:
        nonlocal consumed
        for number, text in iter_lines(path):
            consumed = number
            yield text

    reader = csv.reader(lines(), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    header_line = n_rows = 0
    limit = csv.field_size_limit(2**31 - 1)  # a cell may be as long as a whole post
    try:
        while True:
            start = consumed + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                span = f"line {consumed}" if consumed <= start else f"lines {start}-{consumed}"
                hint = ""
                if "unexpected end of data" in str(err):
                    hint = f"; a quote opened in the row starting on line {start} is never closed"
                raise ValueError(f"{path}: {span}: not valid CSV ({err}){hint}") from None
            if not any(cell.strip() for cell in cells):
                continue  # a blank line, or a row of empty cells
            if header is None:
                header, header_line = _csv_header(path, start, cells, delimiter, check), start
                continue
            n_rows += 1
            span = f"line {start}" if consumed <= start else f"lines {start}-{consumed}"
            where = f"{path}: row {n_rows} ({span})"
            yield where, _csv_row(where, header, header_line, cells, delimiter)
    finally:
        csv.field_size_limit(limit)
    if header is None:
        raise ValueError(f"{path}: the file is empty (a CSV file starts with a header line)")
    if n_rows == 0:
        raise ValueError(f"{path}: only a header (line {header_line}), no rows")


def _delimiter_hint(cell: str, delimiter: str) -> str:
    kind = "tab" if delimiter == "\t" else "comma"
    for sep, name in ((";", "';'"), ("\t", "a tab"), (",", "','"), ("|", "'|'")):
        if sep != delimiter and sep in cell:
            return f" (the file is read as {kind}-separated, and this line contains {name})"
    return ""


def _csv_header(
    path: Path, line: int, cells: list[str], delimiter: str, check: ColumnCheck | None
) -> list[str]:
    names = [cell.strip() for cell in cells]
    where = f"{path}: line {line} (the header)"
    for j, name in enumerate(names):
        if name and name in names[:j]:
            raise ValueError(
                f"{where}: column {j + 1} repeats the name {name!r} of column "
                f"{names.index(name) + 1}"
            )
    if check is not None:
        try:
            check([n for n in names if n])
        except InvalidComparisonError as err:
            hint = _delimiter_hint(cells[0], delimiter) if len(cells) == 1 else ""
            problem = err.message if err.field == "*" else str(err)
            raise ValueError(
                f"{where}: {problem}{hint}; the first line of a CSV file names the columns"
            ) from None
    return names


def _csv_row(
    where: str, header: list[str], header_line: int, cells: list[str], delimiter: str
) -> dict[str, Any] | ValueError:
    n = len(header)
    if any(header[len(cells) :]) or any(cell.strip() for cell in cells[n:]):
        hint = ""
        if len(cells) > n:
            name = "a tab" if delimiter == "\t" else f"a {delimiter!r}"
            hint = f"; is {name} inside a cell not quoted?"
        return ValueError(
            f"{where}: {len(cells)} cells, but the header (line {header_line}) names {n} "
            f"columns{hint}"
        )
    for j, (name, cell) in enumerate(zip(header, cells)):
        if not name and cell.strip():
            return ValueError(
                f"{where}: column {j + 1} has no name in the header (line {header_line}) but "
                f"holds {cell!r:.40}"
            )
    return {name: (cell if cell != "" else None) for name, cell in zip(header, cells) if name}


def _rows_parquet(path: Path, check: ColumnCheck | None = None) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a corrupt file
        with path.open("rb") as fh:
            head = fh.read(64).lstrip()
        hint = ""
        if head[:1] in (b"{", b"["):
            hint = "; it looks like JSON: name it .jsonl or .json"
        elif head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
            hint = "; it looks like text (CSV?): name it after its format"
        problem = _first_line(err)
        raise ValueError(f"{path}: not a readable Parquet file ({problem}){hint}") from None
    if check is not None:
        try:
            check(list(table.column_names))
        except InvalidComparisonError as err:
            problem = err.message if err.field == "*" else str(err)
            raise ValueError(f"{path}: {problem}") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i + 1}", row


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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


LOCAL_SOURCES = (
    "a .jsonl, .json, .csv, .tsv or .parquet file, a directory written by datasets' "
    "save_to_disk, or a directory of such files"
)


def _offline() -> bool:
    import datasets.config

    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False)) or any(
        f.strip().upper() in ("1", "ON", "YES", "TRUE") for f in flags
    )


def _hub_error(name: str, err: Exception) -> Exception:
    """A hub load that failed, explained: the name was not a local path, so it went to the hub."""
    taken = f"{name}: no local file or directory of that name, so it was taken as a Hugging Face "
    if _offline():
        return ValueError(
            f"{taken}hub data set, but the hub is offline (HF_HUB_OFFLINE) and it is not in the "
            f"local datasets cache; give a local source ({LOCAL_SOURCES}), or download it with "
            f"the hub reachable first"
        )
    if isinstance(err, FileNotFoundError):
        return FileNotFoundError(
            f"{taken}hub data set, and the hub has none ({_first_line(err)}); local sources: "
            f"{LOCAL_SOURCES}"
        )
    return ValueError(
        f"{taken}hub data set, and loading it failed ({type(err).__name__}: {_first_line(err)}); "
        f"local sources: {LOCAL_SOURCES}"
    )


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
            problem = _first_line(err)
            raise ValueError(f"{path}: cannot load the saved dataset ({problem})") from None
    elif path.is_dir():
        try:
            ds = datasets.load_dataset(str(path), config_name)
        except Exception as err:
            raise ValueError(
                f"{path}: a directory, but datasets cannot read it ({type(err).__name__}: "
                f"{_first_line(err)}); give {LOCAL_SOURCES}"
            ) from None
    else:
        try:
            ds = datasets.load_dataset(path_or_name, config_name)
        except Exception as err:
            raise _hub_error(path_or_name, err) from None
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


def _file_rows(path: Path, check: ColumnCheck | None) -> Iterator[tuple[str, Any, str | None]]:
    kind = FILE_SUFFIXES.get(path.suffix.lower())
    if kind == "jsonl":
        rows = _rows_jsonl(path)
    elif kind == "json":
        rows = _rows_json(path)
    elif kind in ("csv", "tsv"):
        rows = _rows_csv(path, "," if kind == "csv" else "\t", check)
    elif kind == "parquet":
        rows = _rows_parquet(path, check)
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
    path_or_name: str | Path | Any,
    split: str | None = None,
    config_name: str | None = None,
    check_columns: ColumnCheck | None = None,
) -> tuple[Iterator[tuple[str, Any, str | None]], str, bool]:
    """The raw rows of any supported source, before conversion.

    Returns ``(rows, source, from_file)``: ``rows`` yields ``(where, row, split_name)`` with
    ``where`` naming the file and line/row for error messages (a row that cannot be read, e.g.
    not valid JSON or a CSV row with the wrong number of cells, is a ``ValueError`` in place of
    the row); ``split_name`` is the dataset split a row came from (``None`` for files, whose
    rows may carry their own ``split`` field). ``check_columns(names)`` vets the column names of
    a CSV header or a Parquet schema before any row is read.
    """
    if not isinstance(path_or_name, str | Path):  # an in-memory datasets.Dataset(Dict)
        return _dataset_object_rows(path_or_name, split), type(path_or_name).__name__, False
    source = str(path_or_name)
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return _file_rows(path, check_columns), source, True
    if path.is_dir() or _looks_like_hub_name(source):
        name = str(path) if path.is_dir() else source
        return _hf_rows(name, split, config_name), source, False
    if path.exists():
        raise ValueError(f"{path}: neither a file nor a directory")
    raise FileNotFoundError(f"{path}: no such file or directory")


def _key(item: Any) -> Any:
    """A hashable stand-in for a loaded item's fields (text, chat lists, numbers)."""
    key = tuple(vars(item).values())
    try:
        hash(key)
    except TypeError:  # chat lists
        return _freeze(key)
    return key


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def load_rows(
    path_or_name: str | Path | Any,
    convert: Callable[[Any], Any],
    *,
    split: str | None = None,
    skip_invalid: bool = False,
    config_name: str | None = None,
    what: str = "rows",
    result: type[Comparisons] | None = None,
    check_columns: ColumnCheck | None = None,
) -> Comparisons:
    """Read a source (:func:`read_rows`) and convert every row with ``convert(row)``.

    ``convert`` raises :class:`InvalidComparisonError` (or another error with a ``field``) for a
    bad row; the error is re-raised as ``ValueError`` naming the file, line/row and field, or,
    with ``skip_invalid``, the row is dropped and counted. A converted item that has a ``split``
    attribute of ``None`` gets the dataset split it came from; for a file, ``split`` keeps the
    items whose ``split`` equals it. ``what`` names the items in "no valid ..." errors.
    Items that repeat an earlier one exactly are kept, counted in ``result.duplicates`` and
    reported in one warning (the same comparison twice counts twice in training).
    """
    rows, source, from_file = read_rows(path_or_name, split, config_name, check_columns)
    kept: list[Any] = []
    skipped: list[str] = []
    seen_splits: set[str | None] = set()
    first_seen: dict[Any, str] = {}
    duplicates: list[tuple[str, str]] = []
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
        if hasattr(item, "__dict__"):
            key = _key(item)
            if key in first_seen:
                duplicates.append((where, first_seen[key]))
            else:
                first_seen[key] = where

    loaded = (result or Comparisons)(kept, skipped, source)
    loaded.duplicates = len(duplicates)
    if skipped:
        log.warning("%s; first: %s", loaded.skipped_summary(), skipped[0])
    if duplicates:
        where, earlier = duplicates[0]
        log.warning(
            "%s: %d %s repeat an earlier one exactly (first: %s repeats %s); they are kept",
            source,
            len(duplicates),
            what,
            _short(where, source),
            _short(earlier, source),
        )
    if not kept:
        if from_file and split is not None and seen_splits:
            raise ValueError(
                f"{source}: no rows with split {split!r}; splits present: "
                f"{sorted(str(s) for s in seen_splits)}"
            )
        if skipped:
            raise ValueError(
                f"{source}: no valid {what}: all {len(skipped)} rows are invalid "
                f"(first: {_short(skipped[0], source)})"
            )
        raise ValueError(f"{source}: no {what} (the source has no rows)")
    return loaded


def _short(message: str, source: str) -> str:
    """``message`` without a leading ``"source: "``."""
    return message.removeprefix(f"{source}: ")


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
        check_columns=lambda columns: check_columns(columns, format),
    )


def write_jsonl(comparisons: Iterable[Comparison], path: str | Path) -> Path:
    """Write comparisons in the native format: one JSON object per line. The file appears
    whole or not at all (written to a temporary sibling, then renamed)."""
    rows = (json.dumps(c.to_dict(), ensure_ascii=False, allow_nan=False) for c in comparisons)
    return write_text(path, "".join(row + "\n" for row in rows))


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
    keys = [as_text(c.prompt) for c in comparisons]
    prompts = sorted(set(keys))
    if len(prompts) < 2:
        raise ValueError(
            f"cannot split {len(comparisons)} comparisons by prompt: they have "
            f"{len(prompts)} distinct prompt(s), need at least 2"
        )
    random.Random(seed).shuffle(prompts)
    n_eval = min(max(1, math.ceil(eval_fraction * len(prompts))), len(prompts) - 1)
    eval_prompts = set(prompts[:n_eval])
    train = [c for c, key in zip(comparisons, keys) if key not in eval_prompts]
    evals = [c for c, key in zip(comparisons, keys) if key in eval_prompts]
    return train, evals


def drop_shared_prompts(
    train: Sequence[Comparison], evals: Sequence[Comparison]
) -> tuple[list[Comparison], int]:
    """Remove from ``evals`` every comparison whose prompt also occurs in ``train``."""
    train_prompts = {as_text(c.prompt) for c in train}
    kept = [c for c in evals if as_text(c.prompt) not in train_prompts]
    return kept, len(evals) - len(kept)


def train_and_eval(
    cfg: Any,
    load: Callable[[str, str | None], Sequence[Any]],
    train: Sequence[Any] | None,
    evals: Sequence[Any] | None,
    say: Callable[[str], None],
    noun: str,
) -> tuple[list[Any], list[Any]]:
    """A trainer's training and held-out rows (comparisons or demonstrations, named ``noun``):
    ``train`` / ``evals`` as given in memory, else from ``cfg.data`` / ``cfg.eval_data``
    through ``load(path, split)``, a ``cfg.eval_split`` of ``cfg.data`` (one read) or a
    prompt-disjoint ``cfg.eval_fraction`` of the training rows. Eval rows whose prompt is also in
    training are dropped (and it is an error when that leaves none) unless
    ``cfg.allow_shared_eval_prompts``. ``load``'s result may carry ``skipped`` rows
    (``--skip-invalid``), which ``say`` reports."""

    def read(path: str, split: str | None) -> Sequence[Any]:
        rows = load(path, split)
        if getattr(rows, "skipped", None):
            say(rows.skipped_summary())  # type: ignore[attr-defined]
        return rows

    eval_from_data = evals is None and cfg.eval_data is None and cfg.eval_split is not None
    if train is None:
        if cfg.data is None:
            raise ValueError(f"data: give a {noun} file, dataset directory or hub name")
        rows = read(cfg.data, None if eval_from_data else cfg.split)
        if eval_from_data:  # one read of data, both splits taken from it
            evals = [r for r in rows if r.split == cfg.eval_split]
            if not evals:
                raise ValueError(f"eval_split: no rows of split {cfg.eval_split!r} in {cfg.data}")
            wanted = cfg.split or None
            train = [
                r for r in rows if (r.split == wanted if wanted else r.split != cfg.eval_split)
            ]
        else:
            train = rows
    train = list(train)
    if evals is None:
        if cfg.eval_data is not None:
            evals = read(cfg.eval_data, cfg.eval_split)
        elif cfg.eval_split is not None:
            raise ValueError("eval_split: give eval_data or data to take the split from")
        elif cfg.eval_fraction > 0:
            train, evals = split_by_prompt(train, cfg.eval_fraction, cfg.seed)
        else:
            evals = []
    evals = list(evals)
    if not cfg.allow_shared_eval_prompts:
        kept, dropped = drop_shared_prompts(train, evals)
        if evals and not kept:
            source = cfg.eval_data or (f"split {cfg.eval_split!r}" if cfg.eval_split else "eval")
            raise ValueError(
                f"eval_data: every one of the {len(evals)} eval {noun} ({source}) has a prompt "
                "that also occurs in the training data, so nothing would be held out; give eval "
                f"{noun} on other prompts, or pass --allow-shared-eval-prompts to evaluate on "
                "them anyway"
            )
        if dropped:
            say(f"dropped {dropped} eval {noun} whose prompt is also in the training data")
        evals = kept
    if not train:
        raise ValueError(f"data: no training {noun} left")
    return train, evals
