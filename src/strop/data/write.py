"""Write rows back out in the user's own format (the parsed source rows), and keep outputs off inputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..core.errors import StropError
from .readers import SUFFIXES
from .records import Conversation


def row_of(conv: Conversation) -> dict:
    if conv.row is not None:
        return conv.row
    return {"messages": [{"role": m.role, "content": m.content, "weight": m.weight} for m in conv.messages]}


def _input_file(src: str | os.PathLike) -> Path:
    """The file an input names: ``dataset_info.json#NAME`` is the entry's data file."""
    text = str(src)
    path = Path(text).expanduser()
    if "#" in text and not path.exists():
        from . import registry

        reg, name = text.rsplit("#", 1)
        try:
            return registry.resolve(Path(reg).expanduser(), name)[0]
        except (StropError, OSError, ValueError):
            return Path(reg).expanduser()  # the load reports a bad registry in its own words
    return path


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (symbolic links, ./, ..) or hard links to one inode."""
    a, b = Path(a).expanduser(), Path(b).expanduser()
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def refuse_collisions(inputs: list[tuple[str | os.PathLike | None, str]],
                      outputs: list[tuple[str | os.PathLike | None, str]]) -> None:
    """Stop, in one line, before an output would overwrite an input or another output of the same command.

    ``inputs`` and ``outputs`` are (path, label) pairs; a label is the option that named the path
    ("--output") or "input" for the positional file. ``None`` paths are skipped. An input folder
    counts as every data file in it (an existing one would be overwritten).
    """
    ins = [(_input_file(p), label) for p, label in inputs if p is not None and str(p) != ""]
    outs = [(Path(p).expanduser(), label) for p, label in outputs if p is not None and str(p) != ""]
    for k, (out, label) in enumerate(outs):
        for src, src_label in ins:
            if same_file(out, src) or (src.is_dir() and out.suffix.lower() in SUFFIXES and _inside(out, src)
                                       and out.exists()):
                what = "the input file" if src_label == "input" else f"the {src_label} file"
                raise StropError(f"option {label}: {out} is {what}; strop never edits input in place")
        for other, other_label in outs[:k]:
            if same_file(out, other):
                raise StropError(f"options {other_label} and {label}: both name {out}; "
                                 f"give each output its own file")


def rows_file(output: str | Path, label: str = "--output") -> Path:
    """An output of rows: a .jsonl or .json file."""
    out = Path(output)
    if out.suffix.lower() not in (".jsonl", ".json"):
        raise StropError(f"option {label}: {out} must end in .jsonl or .json")
    return out


def refuse_overwrite(output: str | Path, *inputs: str | Path, label: str = "--output") -> Path:
    refuse_collisions([(src, "input") for src in inputs if src], [(output, label)])
    return rows_file(output, label)


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


def write_text(path: str | Path, text: str) -> Path:
    """A report or page: missing folders are created (as ``write_rows`` does), then written whole."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
