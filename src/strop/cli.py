"""The `strop` command: parse, call one stage function, print.

Heavy libraries are imported inside the command functions so `strop --help`
and option errors are instant.
"""
from __future__ import annotations

import argparse
import json
import sys

from . import __version__
from .errors import StropError


def _quiet_libraries() -> None:
    """Keep library chatter (deprecations, load bars) out of the user's way."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


def cmd_train(args, extra: list[str]) -> int:
    from .config import load_train_config, parse_overrides
    from .train.sft import train

    rest = list(args.rest)
    if any(a in ("-h", "--help") for a in rest):
        print(train_help())
        return 0
    config = rest.pop(0) if rest and not rest[0].startswith("--") else None
    cfg = load_train_config(config, parse_overrides(rest))
    run = train(cfg)
    summary = json.loads(run.summary.read_text())
    print(f"trained {summary['method']} on {cfg.base_model}: {summary['steps']} steps, "
          f"train loss {summary['train_loss']:.4f}, best eval loss {_fmt(summary['best_eval_loss'])}, "
          f"{summary['tokens_per_s']} tokens/s, peak RSS {summary['peak_rss_mb']:.0f} MB")
    print(f"run directory: {run.root}  (model in {run.final})")
    return 0


def train_help() -> str:
    import dataclasses

    from .config import TrainConfig

    lines = ["usage: strop train [CONFIG.yaml] [--KEY VALUE ...]", "", "keys (YAML name / --option, default):"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"  {f.name:<30} --{f.name.replace('_', '-'):<32} {default!r}")
    return "\n".join(lines)


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, float) else "n/a"


def cmd_generate(args, extra) -> int:
    from .serve.engine import Engine

    engine = Engine(args.model)
    print(engine.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    return 0


def cmd_chat(args, extra) -> int:
    from .serve.engine import Engine

    engine = Engine(args.model)
    history: list[dict] = []
    print("chatting with", args.model, "- empty line or Ctrl-D to quit, /reset to forget the conversation")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            return 0
        if line == "/reset":
            history.clear()
            continue
        history.append({"role": "user", "content": line})
        print("model> ", end="", flush=True)
        pieces = []
        for piece in engine.stream(history, max_new_tokens=args.max_new_tokens, temperature=args.temperature):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print()
        history.append({"role": "assistant", "content": "".join(pieces)})


def cmd_eval(args, extra) -> int:
    from .eval.run import evaluate
    from .report.html import format_table

    result = evaluate(args.model, args.data, output=args.output, max_new_tokens=args.max_new_tokens,
                      general=args.general, compare_base=not args.no_base)
    print(format_table(result["systems"]))
    print(f"report: {result['output']}/report.html")
    return 0


def cmd_data_check(args, extra) -> int:
    from .data.check import check, format_report

    report = check(args.file, base_model=args.base_model, max_length=args.max_length)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 1 if args.strict and report["errors"] else 0


def cmd_serve(args, extra) -> int:
    import os

    from .serve.server import run

    run(args.model, host=args.host, port=args.port, api_key=args.api_key or os.environ.get("STROP_API_KEY"))
    return 0


def cmd_models(args, extra) -> int:
    from . import models

    if args.action == "path":
        if not args.alias:
            raise StropError("usage: strop models path ALIAS")
        print(models.resolve(args.alias))
        return 0
    for row in models.describe():
        state = "cached" if row["cached"] else "not yet converted"
        print(f"{row['alias']:<26} {row['license']:<12} {state:<18} {row['path']}")
    return 0


def cmd_demo(args, extra) -> int:
    from .demo import run_demo

    return run_demo(args.output_dir, epochs=args.num_epochs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="strop", description="Fine-tune, evaluate and serve language models.")
    p.add_argument("--version", action="version", version=f"strop {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a model: strop train [CONFIG.yaml] [--KEY VALUE ...]",
                       description="Every config key is also an option, e.g. --base-model, --data, --method, --num-epochs.")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="[CONFIG.yaml] [--KEY VALUE ...]")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="answer one prompt with a model or run")
    g.add_argument("model", help="run directory, model directory, .gguf file or alias")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the terminal")
    c.add_argument("model")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0)
    c.set_defaults(func=cmd_chat)

    e = sub.add_parser("eval", help="perplexity and generation metrics on held-out conversations")
    e.add_argument("model", help="run directory (base vs tuned) or a model")
    e.add_argument("--data", required=True, help="held-out conversations")
    e.add_argument("--general", help="general questions with a 'keyword' field, to check kept ability")
    e.add_argument("--output", help="directory for metrics.json, predictions.jsonl, report.html")
    e.add_argument("--max-new-tokens", type=int, default=64)
    e.add_argument("--no-base", action="store_true", help="with a run directory, skip the base model")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("data", help="data stage: strop data check FILE")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dc = dsub.add_parser("check", help="detect the format, validate and report")
    dc.add_argument("file")
    dc.add_argument("--base-model", default="smollm2-135m-instruct", help="tokenizer used for length statistics")
    dc.add_argument("--max-length", type=int, default=512)
    dc.add_argument("--json", help="also write the report as JSON here")
    dc.add_argument("--strict", action="store_true", help="exit 1 when the report has errors")
    dc.set_defaults(func=cmd_data_check)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    s.add_argument("model")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require this bearer key (or set STROP_API_KEY)")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="built-in model aliases; `strop models path ALIAS` prints the local directory")
    m.add_argument("action", nargs="?", choices=["list", "path"], default="list")
    m.add_argument("alias", nargs="?")
    m.set_defaults(func=cmd_models)

    dm = sub.add_parser("demo", help="the main job on the built-in default model")
    dm.add_argument("--output-dir", default="runs/demo")
    dm.add_argument("--num-epochs", type=float, default=5.0)
    dm.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:
        # argparse cannot hand free-form --key value pairs to a subcommand, so
        # `train` takes its arguments raw; every config key is an option.
        args, extra = argparse.Namespace(func=cmd_train, rest=argv[1:]), []
    else:
        args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _quiet_libraries()
    try:
        return args.func(args, extra)
    except StropError as exc:
        print(f"strop: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("strop: interrupted", file=sys.stderr)
        return 130
