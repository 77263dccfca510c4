"""`strop models`: the built-in model aliases and where they live.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import StropError


def models_cmd(args) -> int:
    from .. import models

    if args.action == "path":
        if not args.alias:
            raise StropError("usage: strop models path ALIAS")
        path = models.resolve(args.alias)
        if not isinstance(path, Path):  # resolve passes an unknown name on as a hub id
            known = ", ".join(sorted(models.ALIASES))
            raise StropError(f"{args.alias}: not a built-in alias, model directory, run or .gguf file "
                             f"(aliases: {known})")
        print(path)
        return 0
    for row in models.describe():
        state = "cached" if row["cached"] else "not yet converted"
        print(f"{row['alias']:<26} {row['license']:<12} {state:<18} {row['path']}")
    return 0


def add_models(sub) -> None:
    m = sub.add_parser("models", help="built-in model aliases; `strop models path ALIAS` prints the local directory")
    m.add_argument("action", nargs="?", choices=["list", "path"], default="list")
    m.add_argument("alias", nargs="?")
    m.set_defaults(func=models_cmd)


PARSERS = {"models": add_models}
