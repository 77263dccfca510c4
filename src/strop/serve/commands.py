"""`strop generate|chat|serve`: answer prompts with a model, in the terminal or over OpenAI's HTTP API.

Each stage owns its commands: ``PARSERS`` adds them to the `strop` parser (strop/cli.py), and the
handlers import their heavy modules only when they run, so `strop --help` stays instant.
"""
from __future__ import annotations

import math

from ..core.errors import StropError
from ..core.pickle_guard import ALLOW_PICKLE_HELP as PICKLE_HELP


def check_decoding(args) -> None:
    """--max-new-tokens and --temperature, in one line each, before the model loads."""
    if args.max_new_tokens < 1:
        raise StropError(f"option --max-new-tokens: must be at least 1, got {args.max_new_tokens}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise StropError(f"option --temperature: must be a finite number >= 0 (0: greedy), got {args.temperature}")


def check_serving(args) -> None:
    """--host, --port and the server's limits, before the slow model load."""
    if not args.host.strip():
        raise StropError("option --host: empty; give an address such as 127.0.0.1 (this machine only) or 0.0.0.0")
    if not 1 <= args.port <= 65535:
        raise StropError(f"option --port: must be 1 to 65535, got {args.port}")
    for name in ("max_batch", "max_waiting", "max_tokens_cap"):
        if getattr(args, name) < 1:
            raise StropError(f"option --{name.replace('_', '-')}: must be at least 1, got {getattr(args, name)}")
    if not (math.isfinite(args.drain_timeout) and args.drain_timeout >= 0):
        raise StropError(f"option --drain-timeout: must be a finite number of seconds >= 0, got {args.drain_timeout}")


def generate_cmd(args) -> int:
    from ..models.engine import Engine

    check_decoding(args)
    engine = Engine(args.model, allow_pickle=args.allow_pickle)
    print(engine.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    return 0


def chat_cmd(args) -> int:
    from ..models.engine import Engine

    check_decoding(args)
    engine = Engine(args.model, allow_pickle=args.allow_pickle)
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


def serve_cmd(args) -> int:
    import os

    check_serving(args)
    from ..http.guard import check_bind
    from .server import run

    key = args.api_key or os.environ.get("STROP_API_KEY")
    check_bind(args.host, key, args.no_auth)  # before the slow model load
    if args.engine == "vllm":
        from .vllm import run_vllm

        return run_vllm(args.model, host=args.host, port=args.port, api_key=key, adapters=args.adapter)
    return run(args.model, host=args.host, port=args.port, api_key=key, adapters=args.adapter,
               max_batch=args.max_batch, max_waiting=args.max_waiting, max_tokens_cap=args.max_tokens_cap,
               drain_timeout=args.drain_timeout, allow_pickle=args.allow_pickle)


def add_generate(sub) -> None:
    g = sub.add_parser("generate", help="answer one prompt with a model or run")
    g.add_argument("model", help="run directory, model directory, .gguf file or alias")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    g.set_defaults(func=generate_cmd)


def add_chat(sub) -> None:
    c = sub.add_parser("chat", help="interactive chat in the terminal")
    c.add_argument("model")
    c.add_argument("--max-new-tokens", type=int, default=256)
    c.add_argument("--temperature", type=float, default=0.0)
    c.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    c.set_defaults(func=chat_cmd)


def add_serve(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    s.add_argument("model")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", help="require this bearer key (or set STROP_API_KEY)")
    s.add_argument("--no-auth", action="store_true",
                   help="allow a non-loopback --host without an API key (anyone who can reach it can use it)")
    s.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="also serve this adapter (run or adapter directory) over the same base, as model NAME")
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    s.add_argument("--max-waiting", type=int, default=64, help="queued requests before answering 429")
    s.add_argument("--max-tokens-cap", type=int, default=2048)
    s.add_argument("--drain-timeout", type=float, default=30.0, help="seconds SIGTERM waits for in-flight requests")
    s.add_argument("--engine", choices=["strop", "vllm"], default="strop", help="vllm: hand off to vLLM (GPU)")
    s.add_argument("--allow-pickle", action="store_true",
                   help="load .bin/.pt weights (pickle; read with weights_only=True) when no safetensors exist")
    s.set_defaults(func=serve_cmd)


PARSERS = {"generate": add_generate, "chat": add_chat, "serve": add_serve}
