"""Read rows from files, remembering where each row came from.

Each reader yields ``(line, row)``: the 1-based line where the row starts, and
the parsed object. Parse errors become one-line ``StropError``s naming file
and line. JSON arrays are walked element by element so that even a 5 MB
``.json`` file reports real line numbers.
"""
from __future__ import annotations

import bisect
import csv
import json
from pathlib import Path
from typing import Iterator

from ..errors import StropError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def read_rows(path: Path) -> Iterator[tuple[int, object]]:
    if not path.exists():
        raise StropError(f"{path}: file not found")
    if path.is_dir():
        raise StropError(f"{path}: is a directory; pass a data file ({', '.join(SUFFIXES)})")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl(path)
    if suffix == ".json":
        return _json(path)
    if suffix == ".csv":
        return _csv(path)
    if suffix == ".parquet":
        return _parquet(path)
    raise StropError(f"{path}: unknown file type {suffix or '(none)'}; expected one of {', '.join(SUFFIXES)}")


def _text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # tolerate a BOM written by Windows editors
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise StropError(f"{path}:{line}: not valid UTF-8 (byte {exc.start})") from None


def _jsonl(path: Path) -> Iterator[tuple[int, object]]:
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise StropError(f"{path}:{number}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def _json(path: Path) -> Iterator[tuple[int, object]]:
    text = _text(path)
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(newlines, offset - 1) + 1

    decoder = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    if pos >= len(text):
        raise StropError(f"{path}:1: empty JSON file")
    if text[pos] != "[":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StropError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from None
        if isinstance(obj, dict) and any(isinstance(v, list) for v in obj.values()) and len(obj) == 1:
            # {"data": [...]} style wrappers
            (rows,) = obj.values()
            for i, row in enumerate(rows):
                yield 1, row
            return
        yield 1, obj
        return
    pos = _skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise StropError(f"{path}:{line_of(exc.pos)}: invalid JSON ({exc.msg})") from None
        yield line_of(pos), obj
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
            continue
        if pos < len(text) and text[pos] == "]":
            return
        raise StropError(f"{path}:{line_of(pos)}: invalid JSON (expected ',' or ']' between array items)")


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _csv(path: Path) -> Iterator[tuple[int, object]]:
    reader = csv.DictReader(_text(path).splitlines(keepends=True))
    start = 2
    for row in reader:
        if None in row:
            raise StropError(f"{path}:{start}: more values than the header has columns")
        yield start, {k: v for k, v in row.items() if v not in (None, "")}
        start = reader.line_num + 1


def _parquet(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        raise StropError(f"{path}: cannot read parquet ({exc})") from None
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, {k: v for k, v in row.items() if v is not None}
