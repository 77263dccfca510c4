"""`strop export`: merge adapters or write GGUF, verified against the run.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

import math

from ..core.errors import StropError
from .converter import QUANTS

DTYPES = ("float32", "bfloat16", "float16")  # what --dtype may write the merged weights in


def check_options(args) -> None:
    """--dtype, --prompts and --min-greedy, in one line each, before minutes of merging."""
    if args.dtype is not None and args.dtype not in DTYPES:
        raise StropError(f"option --dtype: {args.dtype!r} is not one of {', '.join(DTYPES)}")
    if args.dtype is not None and args.format != "merged":
        raise StropError("option --dtype: applies to --format merged (the GGUF tensor type is --quant)")
    if args.prompts < 1:
        raise StropError(f"option --prompts: the number of held-out prompts to verify on must be at least 1, "
                         f"got {args.prompts}")
    if not (math.isfinite(args.min_greedy) and 0 <= args.min_greedy <= 1):
        raise StropError(f"option --min-greedy: {args.min_greedy} is not a fraction between 0 and 1")


def export_cmd(args) -> int:
    from . import export
    from .verify import summary

    check_options(args)
    report = export(args.run, args.format, args.output, quant=args.quant, dtype=args.dtype, n_prompts=args.prompts,
                    min_greedy=args.min_greedy)  # exit 5, one line, when the export fails verification
    v = report["verification"]
    print(f"exported {args.run} as {args.format} to {report['output']}")
    print(f"verified on {v['prompts']} held-out prompts ({v['greedy_tokens']} greedy tokens each): {summary(v)}")
    return 0


def _count(text: str) -> int:
    """--prompts N; a file name gets a message that says what N is (argparse reports the ValueError's text)."""
    import argparse

    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: --prompts N is how many held-out prompts to "
                                         "verify on, not a file") from None


def add_export(sub) -> None:
    x = sub.add_parser("export", help="merge adapters / write GGUF, verified against the run")
    x.add_argument("run", help="run directory")
    x.add_argument("--format", choices=["merged", "gguf"], default="merged")
    x.add_argument("--output", help="output directory (default RUN/export/FORMAT)")
    x.add_argument("--quant", choices=QUANTS, default="q8_0",
                   help="GGUF tensor type (q4_k_m, q5_k_m, q6_k need llama-cpp-python; docs/export.md)")
    x.add_argument("--dtype", metavar="|".join(DTYPES),
                   help="merged weights dtype (default: the base model's own)")
    x.add_argument("--prompts", type=_count, default=8, metavar="N",
                   help="how many held-out prompts to verify on (a number; they come from the run's eval_data, "
                        "else strop's built-in sets)")
    x.add_argument("--min-greedy", type=float, default=0.5, metavar="FRACTION",
                   help="fail (exit 5) unless greedy output equals the tuned model's on this share of prompts")
    x.set_defaults(func=export_cmd)


PARSERS = {"export": add_export}
