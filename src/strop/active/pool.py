"""Read an unlabelled pool: one input per row, each with a stable id and a fingerprint.

A row is ``{"id": ..., "prompt": "..."}`` (``text``, ``input``, ``question`` or
``instruction`` also name the input; ``messages`` holding the user turns works
too). Rows without an id get one from their content, so the same input keeps
the same id across runs. Any ``label``/``answer``/``completion`` field is kept
aside: the loop uses it as the hidden oracle, scoring never looks at it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import StropError
from ..data.readers import read_rows

INPUT_KEYS = ("prompt", "text", "input", "question", "instruction")
ANSWER_KEYS = ("label", "answer", "completion", "output")


@dataclass
class PoolItem:
    id: str
    messages: list[dict]  # what the model is asked (user/system turns only)
    where: str  # file:line, for error messages
    answer: str | None = None  # the oracle answer, when the file has one
    extra: dict = field(default_factory=dict)

    @property
    def text(self) -> str:
        """The input as one string (what is embedded and shown to labellers)."""
        return "\n".join(m["content"] for m in self.messages if m["role"] != "system")

    @property
    def sha(self) -> str:
        return fingerprint(self.text)


def fingerprint(text: str) -> str:
    """Identifies an input's exact text, so a label can be checked against what was asked."""
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()[:16]


def _messages(row: dict, where: str) -> list[dict]:
    for key in INPUT_KEYS:
        if isinstance(row.get(key), str) and row[key].strip():
            return [{"role": "user", "content": row[key]}]
    msgs = row.get("messages")
    if isinstance(msgs, list) and msgs:
        kept = [m for m in msgs if isinstance(m, dict) and m.get("role") in ("system", "user")]
        if kept and all(isinstance(m.get("content"), str) for m in kept):
            return [{"role": m["role"], "content": m["content"]} for m in kept]
    raise StropError(f"{where}: no input text; a pool row needs one of {', '.join(INPUT_KEYS)} or user 'messages'")


def read_pool(path: str | Path) -> list[PoolItem]:
    """All rows of ``path``; an empty pool or a repeated id is an error."""
    path = Path(path)
    items, seen = [], {}
    for line, row in read_rows(path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise StropError(f"{where}: each pool row must be a JSON object")
        msgs = _messages(row, where)
        text = "\n".join(m["content"] for m in msgs if m["role"] != "system")
        item_id = str(row["id"]) if row.get("id") not in (None, "") else "h" + fingerprint(text)
        if item_id in seen:
            raise StropError(f"{where}: id {item_id!r} repeats {seen[item_id]}; pool ids must be unique")
        seen[item_id] = where
        answer = next((str(row[k]) for k in ANSWER_KEYS if row.get(k) not in (None, "")), None)
        extra = {k: v for k, v in row.items() if k not in ("id", "messages", *INPUT_KEYS, *ANSWER_KEYS)}
        items.append(PoolItem(item_id, msgs, where, answer, extra))
    if not items:
        raise StropError(f"{path}: the pool is empty (0 rows); nothing to score")
    return items


def labelled_texts(path: str | Path) -> list[str]:
    """The user inputs of an existing training file (any supported format)."""
    from ..data import load

    texts = []
    for conv in load(path).conversations:
        texts.append("\n".join(m.content for m in conv.prompt_messages if m.role != "system"))
    return texts


def drop_overlap(items: list[PoolItem], train_texts: list[str], train_path: str) -> tuple[list[PoolItem], int]:
    """Remove pool items whose exact input is already in the training set."""
    known = {fingerprint(t) for t in train_texts}
    kept = [it for it in items if it.sha not in known]
    return kept, len(items) - len(kept)
