"""The `strop` command: parse, call one stage function, print.

Heavy libraries are imported inside the command functions so `strop --help`
and option errors are instant.
"""
from __future__ import annotations

import argparse
import sys

from .core import __version__
from .core.errors import StropError
from .core.logs import quiet_libraries

# The commands in the order `strop --help` lists them, each with the stage module that owns it.
COMMANDS = (
    ("train", "train.commands"), ("generate", "serve.commands"), ("chat", "serve.commands"),
    ("eval", "eval.commands"), ("data", "data.commands"), ("serve", "serve.commands"),
    ("service", "service.commands"), ("studio", "service.commands"), ("export", "export.commands"),
    ("models", "models.commands"), ("demo", "demo"), ("compare", "compare"), ("plan", "plan.commands"),
    ("license", "plan.commands"), ("env", "plan.commands"), ("al", "active.commands"),
    ("tinker-serve", "tinker.commands"),
)
RAW_COMMANDS = ("train", "plan")  # free-form --KEY VALUE config options, parsed by strop.core.config


def build_parser() -> argparse.ArgumentParser:
    import importlib

    p = argparse.ArgumentParser(prog="strop", description="Fine-tune, evaluate and serve language models.",
                                epilog="Any command also takes --threads auto|N|fixed: CPU threads, by default sized to "
                                       "the cores other programs leave free (STROP_THREADS; docs/performance.md).")
    p.add_argument("--version", action="version", version=f"strop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, module in COMMANDS:
        importlib.import_module(f"strop.{module}").PARSERS[name](sub)
    return p


def _take_threads(argv: list[str]) -> list[str]:
    """``--threads N|auto|fixed`` may follow any command; it becomes STROP_THREADS (strop/core/threads.py)."""
    import os

    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--threads" and i + 1 < len(argv):
            os.environ["STROP_THREADS"], i = argv[i + 1], i + 2
        elif argv[i].startswith("--threads="):
            os.environ["STROP_THREADS"], i = argv[i].split("=", 1)[1], i + 1
        else:
            out.append(argv[i])
            i += 1
    return out


THREADED_COMMANDS = ("generate", "chat", "eval", "serve")  # training sizes its pool between steps instead


def main(argv: list[str] | None = None) -> int:
    from .patches import bnb_import

    bnb_import.defer()  # bitsandbytes only for 4-bit weights: 1.2-1.4 s less to start each command
    parser = build_parser()
    argv = _take_threads(sys.argv[1:] if argv is None else list(argv))
    if argv[:1] and argv[0] in RAW_COMMANDS:
        # argparse cannot hand free-form --key value pairs to a subcommand, so
        # `train` and `plan` take their arguments raw; every config key is an option.
        args, extra = parser.parse_args(argv[:1]), []
        args.rest = argv[1:]
    else:
        args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    quiet_libraries()
    try:
        from .core import threads

        threads.policy()  # a bad --threads / STROP_THREADS stops here, in one line
        if getattr(args, "command", None) in THREADED_COMMANDS:
            threads.configure_once()
        return args.func(args)
    except StropError as exc:
        from .train.launch import report_in_child

        if not report_in_child(exc):  # a launched rank other than 0 leaves the message to rank 0 / the launcher
            print(f"strop: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("strop: interrupted", file=sys.stderr)
        return 130
