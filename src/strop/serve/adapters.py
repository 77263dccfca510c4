"""Several adapters over one base, named at start-up (`strop serve BASE --adapter NAME=DIR`).

A request's ``model`` field is only ever looked up in this table; it is never
turned into a path. Start-up refuses names that look like paths and adapter
directories reached through a symlink, so what is served is exactly what the
operator named.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..core.errors import StropError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BASE = "__base__"  # peft's name for "no adapter" in mixed-adapter batches


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or ".." in name:
        raise StropError(f"option --adapter: {name!r} is not a valid adapter name "
                         "(letters, digits, '.', '_', '-'; no paths, no '..')")
    return name


def check_dir(name: str, raw: str) -> Path:
    path = Path(raw).expanduser()
    if any(p.is_symlink() for p in [path, *path.parents]):
        raise StropError(f"option --adapter {name}: {raw} is or passes through a symlink; name the real directory")
    if (path / "final").is_dir():
        path = path / "final"  # a run directory
    if not (path / "adapter_config.json").is_file():
        raise StropError(f"option --adapter {name}: {raw} holds no adapter (adapter_config.json)")
    return path.resolve()


def parse(specs: list[str], allow_pickle: bool = False) -> dict[str, Path]:
    """``["NAME=DIR", ...]`` -> {name: adapter directory}, every entry checked (pickled weights refused)."""
    from ..models import check_weights

    table: dict[str, Path] = {}
    for spec in specs:
        name, sep, raw = spec.partition("=")
        if not sep:
            raise StropError(f"option --adapter: {spec!r} should be NAME=DIR")
        if check_name(name) in table:
            raise StropError(f"option --adapter: {name!r} is named twice")
        table[name] = check_dir(name, raw)
        check_weights(table[name], allow_pickle)
    return table


def system_prompt(path: Path) -> str:
    info = path / "strop_run.json"
    return json.loads(info.read_text()).get("system_prompt", "") if info.is_file() else ""


def attach(model, adapters: dict[str, Path]):
    """Load every adapter into one PeftModel over the shared base weights."""
    from peft import PeftModel

    for name, path in adapters.items():
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    return model.eval()
