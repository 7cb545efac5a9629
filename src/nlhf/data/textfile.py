"""Reading the text files of every data loader: UTF-8, with or without a byte-order mark.

A file that is not UTF-8 text is a ``ValueError`` naming the file, the line and the byte (with
a hint when the file is recognisably something else: UTF-16, gzip, Parquet); a file that cannot
be opened is a ``ValueError`` naming it. JSON objects with a repeated key are refused (Python's
``json`` silently keeps the last value).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nlhf.data.schema import InvalidComparisonError

BOM = b"\xef\xbb\xbf"

LineLabel = Callable[[int], str]
"""``label(line_number) -> "file: line 3"``: how a loader names a line in its errors."""


def line_label(path: Path) -> LineLabel:
    return lambda n: f"{path}: line {n}"


def _what_it_is(head: bytes) -> str:
    """A hint for a file that is recognisably not UTF-8 text, from its first bytes."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "; it starts with a UTF-16 byte-order mark: save it as UTF-8"
    if head.startswith(b"\x1f\x8b"):
        return "; it is gzip-compressed: decompress it first"
    if head.startswith(b"PAR1"):
        return "; it is a Parquet file: name it .parquet"
    if head.startswith(b"PK\x03\x04"):
        return "; it is a zip archive (an Excel .xlsx?): export it as UTF-8 CSV"
    return "; save the file as UTF-8"


def _not_utf8(label: str, line: bytes, at: int, line_offset: int, head: bytes) -> ValueError:
    """``line[at]`` is the first byte that is not UTF-8; the line starts at ``line_offset``."""
    return ValueError(
        f"{label}: not UTF-8 text (byte 0x{line[at]:02x} at byte {at + 1} of the line, "
        f"offset {line_offset + at} in the file){_what_it_is(head)}"
    )


def _nul(label: str, raw: bytes, line_offset: int, head: bytes) -> ValueError:
    at = raw.index(b"\0")
    hint = _what_it_is(head)
    if hint == "; save the file as UTF-8":
        hint = "; is it UTF-16 or a binary file? save it as UTF-8 text"
    return ValueError(
        f"{label}: a NUL byte (0x00) at byte {at + 1} of the line, offset {line_offset + at} "
        f"in the file{hint}"
    )


def _open(path: Path):
    try:
        return path.open("rb")
    except OSError as err:
        raise ValueError(f"{path}: cannot read it ({err.strerror or err})") from None


def iter_lines(path: Path, label: LineLabel | None = None) -> Iterator[tuple[int, str]]:
    """``(line_number, text)`` for every line of a UTF-8 file, streamed; ``text`` keeps its line
    ending (``\\n`` or ``\\r\\n``). A leading byte-order mark is dropped."""
    label = label or line_label(path)
    with _open(path) as fh:
        head = fh.read(4)
        fh.seek(0)
        offset = 0
        for number, raw in enumerate(fh, start=1):
            start = 0
            if number == 1 and raw.startswith(BOM):
                start = len(BOM)
            body = raw[start:]
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(label(number), body, err.start, offset + start, head) from None
            if "\0" in text:
                raise _nul(label(number), body, offset + start, head)
            yield number, text
            offset += len(raw)


def read_text(path: Path, label: LineLabel | None = None) -> str:
    """The whole text of a UTF-8 file (a leading byte-order mark dropped); errors name the line."""
    label = label or line_label(path)
    with _open(path) as fh:
        raw = fh.read()
    start = len(BOM) if raw.startswith(BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        position = err.start + start
        number, line_start = _line_at(raw, position)
        line = raw[line_start:]
        raise _not_utf8(label(number), line, position - line_start, line_start, raw[:4]) from None
    if "\0" in text:
        number, line_start = _line_at(raw, raw.index(b"\0"))
        raise _nul(label(number), raw[line_start:], line_start, raw[:4])
    return text


def _line_at(raw: bytes, position: int) -> tuple[int, int]:
    """``(line_number, offset of the line's start)`` of byte ``position`` of ``raw``."""
    return raw.count(b"\n", 0, position) + 1, raw.rfind(b"\n", 0, position) + 1


REPEATED = "appears twice in one JSON object; which value is meant?"


def _repeated_key(pairs: list[tuple[str, Any]], obj: dict[str, Any]) -> str | None:
    if len(obj) == len(pairs):
        return None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    key = _repeated_key(pairs, obj)
    if key is not None:
        raise InvalidComparisonError(key, REPEATED)
    return obj


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def loads(text: str) -> Any:
    """``json.loads`` that refuses an object with a repeated key (``InvalidComparisonError``
    naming the key) instead of keeping its last value."""
    return _DECODER.decode(text)


class RepeatedKeys(dict):
    """An object that repeated a key, parsed with :meth:`hook`: to find which row of a JSON
    array it is in once :func:`loads` has refused the file."""

    key: str

    @staticmethod
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        key = _repeated_key(pairs, obj)
        if key is None:
            return obj
        marked = RepeatedKeys(obj)
        marked.key = key
        return marked

    @staticmethod
    def find(value: Any) -> InvalidComparisonError | None:
        """The error for the first object with a repeated key inside ``value``, if any."""
        if isinstance(value, RepeatedKeys):
            return InvalidComparisonError(value.key, REPEATED)
        children = value.values() if isinstance(value, dict) else value
        if isinstance(value, dict | list):
            for child in children:
                found = RepeatedKeys.find(child)
                if found is not None:
                    return found
        return None
