"""`strop plan|license|env`: memory, time, cost and advice before training; licenses; what this machine offers.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

import argparse
import json


def plan_cmd(args) -> int:
    rest = list(args.rest)
    if any(a in ("-h", "--help") for a in rest):
        print("usage: strop plan [CONFIG.yaml] [--KEY VALUE ...] [--device cpu|cuda|cuda:NAME] [--json OUT]\n"
              "       [--price-per-hour P] [--utilisation U] [--optim adamw|adamw_8bit|paged_adamw_8bit]\n"
              "       [--measure [--measure-steps N]] [--goal knowledge]   (config keys: strop train --help)\n"
              "       [--nproc N --distributed ddp|fsdp|deepspeed-zero2|deepspeed-zero3]   (memory per device)\n"
              "       without --data: the worst case (every row at --max-length), time for --rows N (default 1000)")
        return 0
    config = rest.pop(0) if rest and not rest[0].startswith("--") else None
    from .. import models

    with models.named_by("--base-model"):
        return _plan(config, rest)


def _plan(config: str | None, rest: list[str]) -> int:
    from ..core.config import parse_overrides
    from ..methods.options import load_train_config
    from .estimate import format_plan, make_plan, split_options

    opts, overrides = split_options(parse_overrides(rest))
    if opts.get("json"):
        from ..core.paths import check_output

        check_output(opts["json"], label="--json")  # before --measure trains for a while
    plan = make_plan(load_train_config(config, overrides), opts)
    print(format_plan(plan))
    if opts.get("json"):
        from pathlib import Path

        Path(opts["json"]).expanduser().parent.mkdir(parents=True, exist_ok=True)  # as the data commands do
        with open(Path(opts["json"]).expanduser(), "w") as fh:
            json.dump(plan, fh, indent=2)
    return 0


def license_cmd(args) -> int:
    from .license import check, format_check

    result = check(args.model, data=args.data or [], use=args.use)
    print(format_check(result))
    return 1 if result["verdict"] == "not allowed" else 0


def env_cmd(args) -> int:
    from .env import collect, format_env

    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else format_env(facts))
    return 0


def add_plan(sub) -> None:
    pl = sub.add_parser("plan", help="memory, fit, time, cost and method advice before training (no weights loaded)")
    pl.add_argument("rest", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [--KEY VALUE ...] [--device D] [--json OUT]")
    pl.set_defaults(func=plan_cmd)


def add_license(sub) -> None:
    li = sub.add_parser("license", help="licenses a model, run or dataset carries, and what they allow")
    li.add_argument("model", help="alias, model directory, .gguf file or run directory")
    li.add_argument("--data", action="append", help="a dataset file or directory (repeatable)")
    li.add_argument("--use", choices=["commercial", "research"], default="commercial")
    li.set_defaults(func=license_cmd)


def add_env(sub) -> None:
    en = sub.add_parser("env", help="what strop will use here: CPU features, GPU, library versions")
    en.add_argument("--json", action="store_true", help="print the facts as JSON")
    en.set_defaults(func=env_cmd)


PARSERS = {"plan": add_plan, "license": add_license, "env": add_env}
