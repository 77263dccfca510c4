"""Read rows from files, remembering where each row came from.

Each reader yields ``(line, row)``: the 1-based line where the row starts and
the parsed object, or a ``Bad`` saying why that row could not be read. A bad
row never stops the file: the loader decides (strict or lenient) what to do
with it, so one run can report every problem with its file:line. JSON arrays
are walked element by element so even a 5 MB ``.json`` file reports real line
numbers, and a broken element is skipped by resynchronising on the next
element that starts a line.
"""
from __future__ import annotations

import bisect
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..core.errors import StropError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# One row larger than this is almost certainly a broken export (a whole file
# on one line, a base64 blob); refusing it keeps memory use predictable.
MAX_ROW_BYTES = 16 * 1024 * 1024
BOM = b"\xef\xbb\xbf"


@dataclass
class Bad:
    code: str
    reason: str


class CsvRow(dict):
    """A CSV row without its empty cells; ``empty`` names them, so a missing field can be told from a blank one."""

    empty: tuple[str, ...] = ()


def _refuse_wide_encoding(path: Path, raw: bytes) -> None:
    """A UTF-16 or UTF-32 file (Windows "Unicode" exports) cannot be read as UTF-8: say so instead of 'NUL byte'."""
    boms = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
            (b"\xfe\xff", "UTF-16"))
    name = next((enc for bom, enc in boms if raw.startswith(bom)), None)
    if name is None:
        head = raw[:64]
        even, odd = head[0::2], head[1::2]
        # Mostly-ASCII text in UTF-16: every other byte is NUL.
        if len(head) >= 4 and (odd.count(0) >= 0.9 * len(odd) > even.count(0)
                               or even.count(0) >= 0.9 * len(even) > odd.count(0)):
            name = "UTF-16"
    if name:
        raise StropError(f"{path}: the file is {name}-encoded text; save it as UTF-8 and read it again")


def read_rows(path: Path) -> Iterator[tuple[int, object]]:
    if not path.exists():
        raise StropError(f"{path}: file not found")
    if path.is_dir():
        raise StropError(f"{path}: is a directory; pass a data file ({', '.join(SUFFIXES)})")
    suffix = path.suffix.lower()
    readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
    if suffix not in readers:
        raise StropError(f"{path}: unknown file type {suffix or '(none)'}; expected one of {', '.join(SUFFIXES)}")
    return readers[suffix](path)


def _decode_line(raw: bytes) -> str | Bad:
    if len(raw) > MAX_ROW_BYTES:
        return Bad("row_too_large", f"row is {len(raw) / 2**20:.1f} MiB, over the {MAX_ROW_BYTES // 2**20} MiB limit")
    if b"\x00" in raw:
        column = raw.index(b"\x00") + 1
        return Bad("nul_byte", f"NUL byte at column {column}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Bad("invalid_utf8", f"not valid UTF-8 (byte {exc.start + 1} of the line)")


def _parse_line(text: str) -> object:
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    try:
        obj, end = decoder.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        return Bad("invalid_json", f"invalid JSON ({exc.msg} at column {exc.colno})")
    rest = text[end:].strip()
    if rest:
        try:
            decoder.raw_decode(rest)
            return Bad("several_objects", "several JSON values on one line; put one object per line")
        except json.JSONDecodeError:
            return Bad("invalid_json", f"invalid JSON (extra data at column {end + 1})")
    return obj


def _jsonl(path: Path) -> Iterator[tuple[int, object]]:
    raw = path.read_bytes()
    _refuse_wide_encoding(path, raw)
    if raw.startswith(BOM):  # tolerate a BOM written by Windows editors
        raw = raw[len(BOM):]
    _refuse_whole_json(path, raw)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        text = _decode_line(line.rstrip(b"\r"))
        if isinstance(text, Bad):
            yield number, text
        elif text.strip():
            yield number, _parse_line(text)


def _refuse_whole_json(path: Path, raw: bytes) -> None:
    """A .jsonl file that holds one pretty-printed JSON document (an array, or an object over many lines)."""
    start = re.match(rb"\s*", raw).end()
    if raw[start:start + 1] not in (b"[", b"{"):
        return
    end = raw.find(b"\n", start)
    first = raw[start:end if end >= 0 else len(raw)].strip()
    try:
        line = json.loads(first)
    except (json.JSONDecodeError, UnicodeDecodeError):
        line = None
    if isinstance(line, dict):
        return  # an ordinary first row
    try:
        whole = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        whole = None
    lines = raw.count(b"\n") + 1
    rows = isinstance(whole, list) and bool(whole) and isinstance(whole[0], dict)
    if rows or first == b"[":
        raise StropError(f"{path}: this looks like a JSON array ({lines} lines), not JSON Lines; name the file "
                         ".json, or write one object per line")
    if isinstance(whole, dict):
        raise StropError(f"{path}: holds one JSON object spread over {lines} lines, not JSON Lines; write each "
                         "row as one object on its own line")
    objects = _concatenated_objects(raw)
    if objects > 1:
        raise StropError(f"{path}: holds {objects} JSON objects written over {lines} lines, not one per line as "
                         "JSON Lines needs; write each row as one object on its own line")


_SPACE = re.compile(r"\s*")


def _concatenated_objects(raw: bytes) -> int:
    """How many JSON objects ``raw`` holds one after another (pretty-printed, so not one per line); 0 where it
    is not wholly such a sequence."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return 0
    decoder, at, count = json.JSONDecoder(), 0, 0
    while True:
        at = _SPACE.match(text, at).end()
        if at >= len(text):
            return count
        try:
            obj, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return 0
        if not isinstance(obj, dict):
            return 0
        count += 1


def _text(path: Path) -> str | Bad:
    raw = path.read_bytes()
    _refuse_wide_encoding(path, raw)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return Bad("invalid_utf8", f"line {line}: not valid UTF-8 (byte {exc.start}); the file cannot be read")


def _json(path: Path) -> Iterator[tuple[int, object]]:
    text = _text(path)
    if isinstance(text, Bad):
        yield 1, text
        return
    newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(newlines, offset - 1) + 1

    pos = _skip_ws(text, 0)
    if pos >= len(text):
        yield 1, Bad("empty_file", "empty JSON file")
        return
    if text[pos] != "[":
        yield from _json_object(path, text)
        return
    yield from _json_array(text, _skip_ws(text, pos + 1), line_of)


def _json_object(path: Path, text: str) -> Iterator[tuple[int, object]]:
    from .formats import detect

    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and _first_line_is_json(text):
            raise StropError(f"{path}: holds JSON Lines (one object per line), not one JSON document; name the "
                             "file .jsonl") from None
        yield exc.lineno, Bad("invalid_json", f"invalid JSON ({exc.msg})")
        return
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), list):
        items = next(iter(obj.values()))
        if not (detect(obj) and not any(detect(item) for item in items[:1])):
            for row in items:  # {"data": [...]} style wrappers
                yield 1, row
            return
    if isinstance(obj, dict) and detect(obj):
        # One row where a list of rows belongs (a {"messages": [...]} would otherwise pass for a wrapper).
        raise StropError(f"{path}: holds one JSON object (a single {detect(obj).name} row), not a list of rows; "
                         "put the rows in a JSON array [{...}, {...}], or one per line in a .jsonl file")
    yield 1, obj


def _first_line_is_json(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    try:
        return isinstance(json.loads(first), (dict, list))
    except json.JSONDecodeError:
        return False


# An element that starts a line: where to pick up again after a broken one.
_NEXT_ELEMENT = re.compile(r"\n[ \t]*[{\[]")


def _json_array(text: str, pos: int, line_of) -> Iterator[tuple[int, object]]:
    decoder = json.JSONDecoder()
    while pos < len(text) and text[pos] != "]":
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            yield line_of(pos), Bad("invalid_json", f"invalid JSON ({exc.msg} on line {line_of(exc.pos)})")
            found = _NEXT_ELEMENT.search(text, pos + 1)
            if not found:
                return
            pos = found.end() - 1
            continue
        yield line_of(pos), obj
        pos = _skip_ws(text, end)
        if pos < len(text) and text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
        elif pos >= len(text):
            yield line_of(pos), Bad("truncated", "the JSON array is not closed with ']'")
        elif text[pos] != "]":
            yield line_of(pos), Bad("invalid_json", "invalid JSON (expected ',' or ']' between array items)")
            found = _NEXT_ELEMENT.search(text, pos)
            if not found:
                return
            pos = found.end() - 1


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _csv(path: Path) -> Iterator[tuple[int, object]]:
    # surrogateescape keeps undecodable bytes visible so one bad row is
    # reported alone instead of the whole file failing.
    raw = path.read_bytes()
    _refuse_wide_encoding(path, raw)
    text = raw.decode("utf-8-sig", errors="surrogateescape")
    reader = csv.DictReader(text.splitlines(keepends=True))
    start = 2
    for row in reader:
        yield start, _csv_row(row)
        start = reader.line_num + 1


def _csv_row(row: dict) -> object:
    if None in row:
        return Bad("extra_columns", "more values than the header has columns")
    missing = [k for k, v in row.items() if v is None]
    if missing:
        return Bad("missing_columns", f"row ends before column(s) {', '.join(missing)}")
    joined = "".join(row.values())
    if "\x00" in joined:
        return Bad("nul_byte", "NUL byte in a value")
    if re.search("[\udc80-\udcff]", joined):
        return Bad("invalid_utf8", "not valid UTF-8")
    out = CsvRow((k, v) for k, v in row.items() if v != "")
    out.empty = tuple(k for k, v in row.items() if v == "")
    return out


def _parquet(path: Path) -> Iterator[tuple[int, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for bad files
        yield 1, Bad("unreadable_file", f"cannot read parquet ({str(exc).splitlines()[0]})")
        return
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, {k: v for k, v in row.items() if v is not None}


def hf_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Rows of a dataset saved with ``datasets.save_to_disk`` (the 'train' split of a DatasetDict)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError, ValueError, ... for bad dirs
        raise StropError(f"{path}: cannot read the saved Hugging Face dataset ({str(exc).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        if "train" not in ds:
            raise StropError(f"{path}: saved DatasetDict has no 'train' split (splits: {', '.join(ds)})")
        ds = ds["train"]
    for i, row in enumerate(ds, start=1):
        yield i, {k: v for k, v in row.items() if v is not None}
