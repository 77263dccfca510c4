"""`strop train`: fine-tune a model (every config key is an option).

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def train_cmd(args) -> int:
    rest = list(args.rest)
    if any(a in ("-h", "--help") for a in rest):
        print(train_help())
        return 0
    config = rest.pop(0) if rest and not rest[0].startswith("--") else None
    from .. import models

    with models.named_by("--base-model"):
        return _train(config, rest)


def _train(config: str | None, rest: list[str]) -> int:
    from ..core.config import parse_overrides
    from ..methods.options import load_train_config
    from .launch import split_launch_options

    launch_opts, overrides = split_launch_options(parse_overrides(rest))
    cfg = load_train_config(config, overrides)
    _check_sources(cfg)
    if launch_opts.wanted:  # --nproc/--nnodes/--distributed: this process becomes the launcher
        from .launch import start

        return start(launch_opts, cfg, config, overrides)
    from .run import train

    run = train(cfg)
    if cfg.objective != "sft":
        from .preference import describe

        print(describe(cfg, run))
        return 0
    from .distributed import world

    if not world().is_main:
        return 0  # rank 0 reports for every process
    summary = json.loads(run.summary.read_text())
    print(f"trained {summary['method']} on {cfg.base_model}: {summary['steps']} steps, "
          f"train loss {summary['train_loss']:.4f}, {_best(summary)}, "
          f"{summary['tokens_per_s']} tokens/s, peak RSS {summary['peak_rss_mb']:.0f} MB")
    if summary.get("world_size", 1) > 1:
        print(f"{summary['world_size']} processes ({summary['distributed']}), effective batch "
              f"{summary['effective_batch_size']} sequences per step; tokens/s counts all processes")
    print(f"run directory: {run.root}  (model in {run.final})")
    return 0


def _best(summary: dict) -> str:
    """``best eval loss 1.2345``, or the task metric that chose the checkpoint (``best gen_rougeL 0.8123``)."""
    best = summary.get("best_metric") or {"name": "loss"}
    if best["name"] == "loss":
        return f"best eval loss {_fmt(summary['best_eval_loss'])}"
    return f"best {best['name']} {_fmt(best['value'])}"


def _check_sources(cfg) -> None:
    """Name a missing or unreadable data file, or for SFT a bad row, now, not after the training
    libraries' imports (6-7 s here). SFT's rows are read again when the run prepares them: a second pass
    over a file costs far less than the tokenization that follows it."""
    from ..data.load import load, sources

    for value in (cfg.data, cfg.eval_data):
        if value and cfg.objective == "sft":
            load(value)  # the same call strop.train.sft_data.prepare makes (it finds the files first)
        elif value:
            sources(Path(value))  # finds the files and their readers; reads no row


def train_help() -> str:
    import dataclasses

    from ..core.config import GROUPS

    lines = ["usage: strop train [CONFIG.yaml] [--KEY VALUE ...]", "", "keys (YAML name / --option, default), by concern:"]
    for group in GROUPS:
        lines.append(f" {group.__name__.removesuffix('Options').lower()}")
        for f in dataclasses.fields(group):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name:<30} --{f.name.replace('_', '-'):<32} {default!r}")
    lines += ["", "several processes (docs/distributed.md): --nproc N [--distributed ddp|fsdp|deepspeed-zero2|"
              "deepspeed-zero3|FILE.yaml]", "  multi-node: --nnodes M --node-rank R --main-process-ip IP --main-process-port P"]
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "n/a"


def add_train(sub) -> None:
    t = sub.add_parser("train", help="fine-tune a model: strop train [CONFIG.yaml] [--KEY VALUE ...]",
                       description="Every config key is also an option, e.g. --base-model, --data, --method, --num-epochs.")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [--KEY VALUE ...]")
    t.set_defaults(func=train_cmd)


PARSERS = {"train": add_train}
