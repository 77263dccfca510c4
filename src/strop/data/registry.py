"""LLaMA-Factory's ``dataset_info.json``: a registry of datasets with column mappings.

``load("data/dataset_info.json#alpaca_en_demo")`` reads the entry's local file
and renames its columns (and ShareGPT role tags) into the field names the
format table in ``formats.py`` already understands, so a mapped dataset is
validated exactly like a plain one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ..core.errors import StropError

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "chosen": "chosen", "rejected": "rejected", "kto_tag": "label"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools",
                    "chosen": "chosen", "rejected": "rejected", "kto_tag": "label"}
DEFAULT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}
# The tag names LLaMA-Factory uses -> ShareGPT role names formats.py knows.
TAG_ROLES = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"}


def is_registry(path: Path) -> bool:
    """A LLaMA-Factory registry (not the dataset_info.json inside a saved HF dataset)."""
    if path.name != "dataset_info.json" or not path.is_file():
        return False
    if (path.parent / "state.json").exists() or (path.parent / "dataset_dict.json").exists():
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())


def entries(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text(encoding="utf-8"))


def local_names(path: Path) -> list[str]:
    """Entries whose file is present beside the registry."""
    return [name for name, e in entries(path).items()
            if "file_name" in e and (path.parent / e["file_name"]).exists()]


def resolve(path: Path, name: str) -> tuple[Path, Callable[[dict], dict]]:
    """The data file of entry ``name`` and a function mapping its rows to canonical field names."""
    table = entries(path)
    if name not in table:
        raise StropError(f"{path}: no dataset named {name!r} (local ones: {', '.join(local_names(path)) or 'none'})")
    entry = table[name]
    if "file_name" not in entry:
        raise StropError(f"{path}#{name}: only hub-hosted ({', '.join(k for k in entry if k.endswith('_url'))}); strop reads local files only")
    data = path.parent / entry["file_name"]
    if not data.exists():
        raise StropError(f"{path}#{name}: file {entry['file_name']} not found beside the registry")
    return data, mapper(entry)


def mapper(entry: dict) -> Callable[[dict], dict]:
    sharegpt = entry.get("formatting", "alpaca") == "sharegpt"
    defaults = SHAREGPT_COLUMNS if sharegpt else ALPACA_COLUMNS
    # The defaults double as LLaMA-Factory's default source column names.
    columns = {**defaults, **entry.get("columns", {})}
    # source column -> canonical field
    renames = {columns[k]: canonical for k, canonical in defaults.items() if k in columns}
    tags = {**DEFAULT_TAGS, **entry.get("tags", {})}
    roles = {tags[t]: role for t, role in TAG_ROLES.items()}

    def turn(t):
        if not isinstance(t, dict):
            return t  # let the format's converter report it
        return {"from": roles.get(t.get(tags["role_tag"]), t.get(tags["role_tag"])), "value": t.get(tags["content_tag"])}

    def apply(row: dict) -> dict:
        out = {renames.get(k, k): v for k, v in row.items()}
        if sharegpt:
            for key in ("conversations", "chosen", "rejected"):
                value = out.get(key)
                if isinstance(value, list):
                    out[key] = [turn(t) for t in value]
                elif isinstance(value, dict):
                    out[key] = turn(value)
        return out

    return apply
