"""Load a data file into canonical conversations, validating every row."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StropError
from .formats import FORMATS, Format, RowError, detect
from .readers import read_rows
from .records import Conversation, Message


@dataclass
class Dataset:
    path: str
    format: str
    conversations: list[Conversation]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.conversations)


def load(path: str | Path, fmt: str | None = None) -> Dataset:
    """Read ``path``; the format comes from the first row unless ``fmt`` names one."""
    path = Path(path)
    chosen: Format | None = FORMATS.get(fmt) if fmt else None
    if fmt and chosen is None:
        raise StropError(f"unknown data format {fmt!r} (known: {', '.join(FORMATS)})")
    convs: list[Conversation] = []
    kind = "line"
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise StropError(f"{where}: each row must be a JSON object, got {type(row).__name__}")
        if chosen is None:
            chosen = detect(row)
            if chosen is None:
                raise StropError(
                    f"{where}: unknown data format (fields: {', '.join(sorted(row)) or 'none'}); "
                    f"expected one of: {'; '.join(f.summary for f in FORMATS.values())}"
                )
        elif not chosen.detect(row):
            raise StropError(f"{where}: row does not match the file's {chosen.name} format (fields: {', '.join(sorted(row))})")
        try:
            messages = chosen.convert(row)
            validate(messages)
        except RowError as exc:
            raise StropError(f"{where}: {exc}") from None
        meta = {k: v for k, v in row.items() if k in ("keyword", "id", "label")}
        convs.append(Conversation(messages, str(path), line, kind, meta))
    if not convs:
        raise StropError(f"{path}: no rows found")
    return Dataset(str(path), chosen.name, convs)


def validate(messages: list[Message]) -> None:
    """Structural checks every trainable conversation must pass."""
    if not messages:
        raise RowError("empty conversation")
    if not any(m.role == "assistant" for m in messages):
        raise RowError("conversation has no assistant message")
    for i, m in enumerate(messages):
        if m.role == "system" and i != 0:
            raise RowError(f"message {i}: a system message may only come first")
    for i, m in enumerate(messages):
        if m.role == "assistant" and not m.content.strip():
            raise RowError(f"message {i}: empty assistant content")
    if messages[-1].role != "assistant":
        raise RowError("conversation must end with an assistant message")


def split(convs: list[Conversation], val_size: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Seeded train/validation split; ``val_size`` < 1 is a fraction, >= 1 a count."""
    if val_size <= 0:
        return list(convs), []
    n_val = int(round(len(convs) * val_size)) if val_size < 1 else int(val_size)
    n_val = max(1, n_val)
    if n_val >= len(convs):
        raise StropError(f"option val_size: {val_size} leaves no training rows out of {len(convs)}")
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    return [c for i, c in enumerate(convs) if i not in val_idx], [c for i, c in enumerate(convs) if i in val_idx]
