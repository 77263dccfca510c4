"""`strop export`: merge adapters or write GGUF, verified against the run.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

from .converter import QUANTS


def export_cmd(args) -> int:
    from . import export
    from .verify import summary

    report = export(args.run, args.format, args.output, quant=args.quant, dtype=args.dtype, n_prompts=args.prompts,
                    min_greedy=args.min_greedy)  # exit 5, one line, when the export fails verification
    v = report["verification"]
    print(f"exported {args.run} as {args.format} to {report['output']}")
    print(f"verified on {v['prompts']} held-out prompts ({v['greedy_tokens']} greedy tokens each): {summary(v)}")
    return 0


def add_export(sub) -> None:
    x = sub.add_parser("export", help="merge adapters / write GGUF, verified against the run")
    x.add_argument("run", help="run directory")
    x.add_argument("--format", choices=["merged", "gguf"], default="merged")
    x.add_argument("--output", help="output directory (default RUN/export/FORMAT)")
    x.add_argument("--quant", choices=QUANTS, default="q8_0",
                   help="GGUF tensor type (q4_k_m, q5_k_m, q6_k need llama-cpp-python; docs/export.md)")
    x.add_argument("--dtype", help="merged weights dtype (default: the base model's own)")
    x.add_argument("--prompts", type=int, default=8, help="held-out prompts to verify on")
    x.add_argument("--min-greedy", type=float, default=0.5, metavar="FRACTION",
                   help="fail (exit 5) unless greedy output equals the tuned model's on this share of prompts")
    x.set_defaults(func=export_cmd)


PARSERS = {"export": add_export}
