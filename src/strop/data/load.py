"""Load data into canonical conversations, validating every row.

Strict loading (the default, used by training) refuses a file with any bad
row; lenient loading (``strict=False``, used by ``strop data check/clean``)
keeps every valid row and counts the rest by reason code. Either way every
problem is collected with its file:line, so one run reports all of them.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..core.errors import StropError
from . import registry
from .formats import FORMATS, Format, RowError, detect
from .readers import SUFFIXES, Bad, hf_rows, read_rows
from .records import KINDS, Conversation, Message, PreferencePair, Problem

SFT_ONLY = ("sft",)
ANY_KIND = tuple(KINDS)


class DataError(StropError):
    """A strict load found bad rows; ``problems`` holds every one of them."""

    def __init__(self, problems: list[Problem]) -> None:
        more = f" (and {len(problems) - 1} more problems; `strop data check FILE` lists them all)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")
        self.problems = problems


@dataclass
class Dataset:
    path: str
    format: str
    conversations: list[Conversation]
    skipped: dict[str, int] = field(default_factory=dict)  # reason code -> rows left out (lenient)
    problems: list[Problem] = field(default_factory=list)
    kind: str = "sft"
    rows_read: int = 0

    def __len__(self) -> int:
        return len(self.conversations)

    def pairs(self) -> list[PreferencePair]:
        """The preference view, for DPO-style trainers."""
        if self.kind != "preference":
            raise StropError(f"{self.path}: holds {KINDS[self.kind]}, not paired preference data")
        return [c.pair() for c in self.conversations]


@dataclass
class Source:
    name: str
    rows: Iterator[tuple[int, object]]
    line_kind: str = "line"
    mapper: Callable[[dict], dict] | None = None


def sources(path: Path) -> list[Source]:
    """A file, a folder of files, a saved Hugging Face dataset, or ``dataset_info.json#NAME``."""
    text = str(path)
    if "#" in text and not path.exists():
        reg, name = text.rsplit("#", 1)
        data, mapper = registry.resolve(Path(reg), name)
        return [Source(str(data), read_rows(data), _line_kind(data), mapper)]
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return [Source(str(path), hf_rows(path), "item")]
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file()
                       and not registry.is_registry(p))
        if not files:
            raise StropError(f"{path}: folder holds no data files ({', '.join(SUFFIXES)})")
        return [Source(str(p), read_rows(p), _line_kind(p)) for p in files]
    if registry.is_registry(path):
        names = registry.local_names(path)
        raise StropError(f"{path}: a LLaMA-Factory dataset registry with {len(names)} local datasets "
                         f"({', '.join(names)}); load one as {path}#NAME")
    return [Source(str(path), read_rows(path), _line_kind(path))]


def _line_kind(path: Path) -> str:
    # JSON arrays report real line numbers; parquet rows only have an index.
    return "item" if path.suffix.lower() == ".parquet" else "line"


def load(path: str | Path, fmt: str | None = None, *, strict: bool = True,
         kinds: tuple[str, ...] = SFT_ONLY) -> Dataset:
    """Read ``path``; the format comes from the first good row unless ``fmt`` names one.

    ``kinds`` lists what the caller can use (see ``records.KINDS``); SFT
    training keeps the default so preference data is refused, not half-used.
    """
    path = Path(path)
    chosen: Format | None = FORMATS.get(fmt) if fmt else None
    if fmt and chosen is None:
        raise StropError(f"unknown data format {fmt!r} (known: {', '.join(FORMATS)})")
    convs: list[Conversation] = []
    problems: list[Problem] = []
    rows_read = 0
    for src in sources(path):
        for line, row in src.rows:
            rows_read += 1
            where = f"{src.name}[{line - 1}]" if src.line_kind == "item" else f"{src.name}:{line}"
            result = _one(row, chosen, src, line, "prompt" in kinds)
            if isinstance(result, Problem):
                result.where = where
                problems.append(result)
                continue
            chosen, conv = result
            convs.append(conv)
    return _finish(path, chosen, convs, problems, rows_read, strict, kinds)


def _one(row: object, chosen: Format | None, src: Source, line: int,
         prompts: bool = True) -> tuple[Format, Conversation] | Problem:
    if isinstance(row, Bad):
        return Problem("", row.code, row.reason)
    if not isinstance(row, dict):
        return Problem("", "not_object", f"each row must be a JSON object, got {type(row).__name__}")
    mapped = src.mapper(row) if src.mapper else row
    blank = _blank_cells(row, mapped, chosen, src, prompts)
    if blank:
        return blank
    if chosen is None:
        chosen = detect(mapped, prompts)
        if chosen is None:
            return Problem("", "unknown_format", f"unknown data format (fields: {', '.join(sorted(row)) or 'none'}); "
                           f"expected one of: {'; '.join(f.summary for f in FORMATS.values())}")
    elif not chosen.detect(mapped):
        other = detect(mapped, prompts)
        code = "format_mismatch" if other else "missing_field"
        return Problem("", code, f"row does not match the {chosen.name} format of the first row "
                       f"({f'it looks like {other.name}' if other else 'fields missing'}; fields: {', '.join(sorted(row)) or 'none'})")
    try:
        parsed = chosen.convert(mapped)
        validate(parsed.messages, chosen.kind)
        if parsed.rejected is not None:
            _validate_rejected(parsed.rejected)
    except RowError as exc:
        return Problem("", exc.code, str(exc))
    meta = {k: v for k, v in mapped.items() if k in ("keyword", "id", "label", "tools")}
    return chosen, Conversation(parsed.messages, src.name, line, src.line_kind, meta, parsed.rejected, parsed.label, row)


def _blank_cells(row: object, mapped: dict, chosen: Format | None, src: Source, prompts: bool) -> Problem | None:
    """A CSV row that fits its format only with its empty cells counted: name the empty cells, since
    'unknown data format (fields: prompt)' hides that the completion cell is blank."""
    empty = getattr(row, "empty", ())
    if not empty:
        return None

    def fits(filled: list[str]) -> bool:
        r = {**row, **{k: "" for k in filled}}
        r = src.mapper(r) if src.mapper else r
        return bool(chosen.detect(r) if chosen else detect(r, prompts))

    if fits([]) or not fits(list(empty)):
        return None
    cells = [k for k in empty if not fits([j for j in empty if j != k])] or list(empty)
    return Problem("", "empty_content", f"empty {', '.join(repr(k) for k in cells)} "
                   f"{'cell' if len(cells) == 1 else 'cells'} on this line")


def _finish(path: Path, chosen: Format | None, convs: list[Conversation], problems: list[Problem],
            rows_read: int, strict: bool, kinds: tuple[str, ...]) -> Dataset:
    if strict and problems:
        raise DataError(problems)
    if not convs:
        if problems:
            raise StropError(f"{path}: no usable rows; {len(problems)} problems, the first: {problems[0]}")
        raise StropError(f"{path}: no rows found")
    if chosen.kind not in kinds:
        raise StropError(f"{path}: holds {KINDS[chosen.kind]} (format {chosen.name}); this step takes only "
                         f"{' or '.join(KINDS[k] for k in kinds)}, e.g. SFT cannot use it")
    skipped = dict(Counter(p.code for p in problems))
    return Dataset(str(path), chosen.name, convs, skipped, problems, chosen.kind, rows_read)


def validate(messages: list[Message], kind: str = "sft") -> None:
    """Structural checks every trainable conversation must pass."""
    if not messages:
        raise RowError("empty conversation", "empty_conversation")
    if kind == "text":
        if not messages[0].content.strip():
            raise RowError("empty text", "empty_content")
        return
    if kind == "prompt":
        for i, m in enumerate(messages):
            if m.role == "system" and i != 0:
                raise RowError(f"message {i}: a system message may only come first", "role_order")
            if not m.content.strip():
                raise RowError(f"message {i}: empty {m.role} content", "empty_content")
        return
    if not any(m.role == "assistant" for m in messages):
        raise RowError("conversation has no assistant message", "no_assistant")
    for i, m in enumerate(messages):
        if m.role == "system" and i != 0:
            raise RowError(f"message {i}: a system message may only come first", "role_order")
        if i and m.role in ("user", "assistant") and messages[i - 1].role == m.role:
            raise RowError(f"message {i}: two {m.role} messages in a row", "role_order")
        if m.role in ("assistant", "user") and not m.content.strip():
            raise RowError(f"message {i}: empty {m.role} content", "empty_content")
    if messages[-1].role != "assistant":
        raise RowError("conversation must end with an assistant message", "role_order")


def _validate_rejected(rejected: list[Message]) -> None:
    if not rejected or not any(m.role == "assistant" and m.content.strip() for m in rejected):
        raise RowError("the rejected answer is empty", "empty_content")


def split(convs: list[Conversation], val_size: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Seeded train/validation split; ``val_size`` < 1 is a fraction, >= 1 a whole count, 0 none."""
    if not math.isfinite(val_size):
        raise StropError(f"option val_size: must be a fraction below 1 or a whole count, got {val_size}")
    if val_size <= 0:
        return list(convs), []
    if val_size >= 1 and val_size != int(val_size):
        raise StropError(f"option val_size: {val_size} is neither a fraction below 1 nor a whole count of rows")
    n_val = int(round(len(convs) * val_size)) if val_size < 1 else int(val_size)
    n_val = max(1, n_val)
    if n_val >= len(convs):
        raise StropError(f"option val_size: {val_size} leaves no training rows out of {len(convs)}")
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [c for i, c in enumerate(convs) if i not in val_idx], [c for i, c in enumerate(convs) if i in val_idx]
