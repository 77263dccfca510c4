"""Write rows back out in the user's own format (the parsed source rows)."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import StropError
from .records import Conversation


def row_of(conv: Conversation) -> dict:
    if conv.row is not None:
        return conv.row
    return {"messages": [{"role": m.role, "content": m.content, "weight": m.weight} for m in conv.messages]}


def refuse_overwrite(output: str | Path, *inputs: str | Path) -> Path:
    out = Path(output)
    for src in inputs:
        if src and out.resolve() == Path(str(src).split("#")[0]).resolve():
            raise StropError(f"option --output: {out} is the input file; strop never edits input in place")
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise StropError(f"option --output: {out} must end in .jsonl or .json")
    return out


def write_rows(path: str | Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        if path.suffix.lower() == ".json":
            json.dump(rows, fh, ensure_ascii=False, indent=1)
        else:
            for r in rows:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    tmp.replace(path)  # a half-written file never carries the final name
    return path
